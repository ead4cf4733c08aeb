"""``energyloss-evaluate``: files and builder databases, targets, training split for novelty, errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
ase_io = pytest.importorskip("ase.io")

from energyloss_plugins.data import build_dataset, find_split_file, read_dataset, read_split  # noqa: E402
from energyloss_plugins.metrics import generation_metrics, molecule_smiles_set  # noqa: E402
from energyloss_plugins.metrics.cli import main, read_molecules, training_molecules  # noqa: E402

torch.set_num_threads(1)

SMILES = ["CCO", "CC(=O)C", "C1CC1", "CC#N", "OCCN", "CCC"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A real builder database: 6 molecules, MMFF94 targets, two input rows each, split 4/1/1."""
    root = tmp_path_factory.mktemp("evaluate")
    smi = root / "mols.smi"
    smi.write_text("\n".join(SMILES) + "\n")
    db = root / "data.db"
    build_dataset(str(smi), db, inputs=("uff", "thermal"), split=(0.67, 0.17, 0.16), seed=0, progress=False)
    return db


def _run(argv, capsys):
    code = main([*map(str, argv), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_extxyz_file_table_and_json_agree_with_the_api(tmp_path, capsys, built):
    targets = read_molecules(str(built), "target")
    stretched = targets[0].copy()
    stretched.positions *= 1.3  # every bond stretched past its threshold: no atom is stable
    molecules = [*targets, stretched]
    path = tmp_path / "samples.extxyz"
    ase_io.write(path, molecules)
    code, out, _ = _run([path, "--json", tmp_path / "m.json"], capsys)
    assert code == 0
    assert "molecule stability" in out and "novelty" in out
    record = json.loads((tmp_path / "m.json").read_text())
    expected = generation_metrics(molecules)
    for key, value in expected.items():
        assert record[key] == value or (isinstance(value, float) and math.isclose(record[key], value))
    assert record["n"] == len(SMILES) + 1 and record["novelty"] is None


def test_database_targets_once_per_molecule_and_novelty_from_train_split(built, capsys):
    records = read_dataset(built)
    assert len(records) == 2 * len(SMILES)  # two input rows per molecule
    code, out, _ = _run([built, "--positions", "target", "--train", built, "--json", "-"], capsys)
    assert code == 0
    record = json.loads(out[out.index("{"):])
    assert record["n"] == len(SMILES)
    # MMFF94 minima of closed-shell molecules without aromatic rings are stable and valid
    assert record["mol_stability"] == 1.0 and record["validity"] == 1.0 and record["uniqueness"] == 1.0
    # novelty: exactly the molecules outside the train split are new
    split = read_split(find_split_file(built))
    train_mols = {records[i].mol_id for i in split["train_idx"]}
    assert 0 < len(train_mols) < len(SMILES)
    assert math.isclose(record["novelty"], 1 - len(train_mols) / len(SMILES))
    assert record["n_train_smiles"] == len(train_mols)
    # the training molecules are read from the targets of the train rows
    train = training_molecules(str(built))
    assert len(train) == len(train_mols)
    assert molecule_smiles_set(train) <= molecule_smiles_set(read_molecules(str(built), "target"))


def test_database_input_positions_differ_from_targets(built, capsys):
    code, out, _ = _run([built, "--json", "-"], capsys)
    assert code == 0
    record = json.loads(out[out.index("{"):])
    assert record["n"] == 2 * len(SMILES)  # every row, at its input geometry
    inputs = read_molecules(str(built), "atoms")
    targets = read_dataset(built)
    assert not np.allclose(inputs[1].positions, targets[1].target_positions.numpy())
    code, out, _ = _run([built, "--limit", "3", "--json", "-"], capsys)
    assert code == 0 and json.loads(out[out.index("{"):])["n"] == 3


def test_errors_exit_2_with_a_message(tmp_path, capsys, monkeypatch, built):
    code, _, err = _run([tmp_path / "missing.extxyz"], capsys)
    assert code == 2 and "No file" in err
    path = tmp_path / "one.extxyz"
    ase_io.write(path, read_molecules(str(built), "target")[:1])
    code, _, err = _run([path, "--positions", "target"], capsys)
    assert code == 2 and "plain structure file" in err
    monkeypatch.setitem(sys.modules, "rdkit", None)  # as if RDKit were not installed
    code, _, err = _run([path], capsys)
    assert code == 2 and "energyloss-plugins[data]" in err and len(err.strip().splitlines()) == 1


def test_module_runs_as_a_script(tmp_path, built):
    path = tmp_path / "mols.extxyz"
    ase_io.write(path, read_molecules(str(built), "target"))
    result = subprocess.run([sys.executable, "-m", "energyloss_plugins.metrics.cli", str(path), "--no-progress"],
                            capture_output=True, text=True, check=True)
    assert "atom stability" in result.stdout and "100.00 %" in result.stdout
