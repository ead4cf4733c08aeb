"""``energyloss-sample``: checkpoints of both adapters, found by entry-point discovery, run from the command line."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("ase")
pytest.importorskip("schnetpack")
pytest.importorskip("rdkit")

from ase.io import read, write  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from _schnetpack_helpers import trained_structure_files  # noqa: E402
from energyloss_plugins.ase import predict_structures  # noqa: E402
from energyloss_plugins.sample_cli import main  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny PaiNN structure task trained for a few steps: its Lightning checkpoint, best_model and inputs."""
    directory = tmp_path_factory.mktemp("sample_cli")
    files = trained_structure_files(directory, steps=4)
    task, ckpt, best_model, db = files["task"], files["ckpt"], files["best_model"], files["db"]
    from ase.db import connect

    with connect(db) as conn:
        images = [row.toatoms() for row in conn.select(limit=5)]
    inputs = str(directory / "inputs.extxyz")
    write(inputs, images)
    return {"task": task, "ckpt": ckpt, "best_model": best_model, "inputs": inputs, "images": images}


@pytest.mark.parametrize("which", ["ckpt", "best_model"])
def test_structure_checkpoint_predictions_match_the_model_in_memory(trained, tmp_path, which):
    out = str(tmp_path / "pred.extxyz")
    trust = ["--trust-checkpoint"] if which == "best_model" else []  # a whole pickled model: the opt-in
    assert main([trained[which], "--inputs", trained["inputs"], "-o", out, "--quiet", *trust]) == 0
    written = read(out, index=":")
    expected = predict_structures(trained["task"], trained["images"])
    assert len(written) == len(expected) == 5
    for a, b, x in zip(written, expected, trained["images"], strict=True):
        assert list(a.numbers) == list(x.numbers)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-4)
    assert any(np.abs(a.positions - x.positions).max() > 1e-4 for a, x in zip(written, trained["images"], strict=True))


def test_predictions_are_invariant_to_rigid_motions_of_the_inputs(trained, tmp_path):
    moved = []
    for i, atoms in enumerate(trained["images"]):
        atoms = atoms.copy()
        atoms.positions = atoms.positions @ Rotation.random(random_state=i).as_matrix().T + np.array([1.0, -2.0, 0.5])
        moved.append(atoms)
    moved_inputs = str(tmp_path / "moved.extxyz")
    write(moved_inputs, moved)
    out_a, out_b = str(tmp_path / "a.extxyz"), str(tmp_path / "b.extxyz")
    assert main([trained["ckpt"], "--inputs", trained["inputs"], "-o", out_a, "--quiet", "--no-align"]) == 0
    assert main([trained["ckpt"], "--inputs", moved_inputs, "-o", out_b, "--quiet", "--no-align"]) == 0
    from energyloss_plugins import aligned_rmsd

    for a, b in zip(read(out_a, index=":"), read(out_b, index=":"), strict=True):
        assert float(aligned_rmsd(torch.tensor(a.positions), torch.tensor(b.positions))[0]) < 1e-3


def test_ase_database_output_and_no_silent_overwrite(trained, tmp_path):
    out = str(tmp_path / "pred.db")
    assert main([trained["ckpt"], "--inputs", trained["inputs"], "-o", out, "--quiet"]) == 0
    first = read(out, index=":")
    assert len(first) == 5
    before = os.path.getmtime(out), os.path.getsize(out)
    assert main([trained["ckpt"], "--inputs", trained["inputs"], "-o", out, "--quiet"]) == 2  # exists: refused
    assert (os.path.getmtime(out), os.path.getsize(out)) == before
    assert main([trained["ckpt"], "--inputs", trained["inputs"], "-o", out, "--quiet", "--overwrite"]) == 0
    assert len(read(out, index=":")) == 5  # replaced, not appended
    assert sorted(os.listdir(tmp_path)) == ["pred.db"]  # no temporary file left behind


def test_usage_errors_are_one_line_with_exit_status_2(trained, tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, junk)
    out = str(tmp_path / "x.extxyz")
    cases = [
        ([str(junk), "-n", "3", "-o", out], "No adapter recognises"),
        ([str(tmp_path / "missing.ckpt"), "-n", "3", "-o", out], "does not exist"),
        ([trained["ckpt"], "-o", out], "--inputs"),  # a structure model needs inputs
        ([trained["ckpt"], "--inputs", trained["inputs"], "-n", "2", "-o", out], "drop -n"),
        ([trained["ckpt"], "--inputs", str(tmp_path / "none.xyz"), "-o", out], "does not exist"),
        ([trained["ckpt"], "--inputs", trained["inputs"], "-o", out, "--framework", "torchmdnet"],
         "torchmdnet adapter"),
        ([trained["ckpt"], "--inputs", trained["inputs"], "-o", out, "--framework", "nope"], "Registered adapters"),
    ]
    for argv, message in cases:
        assert main(argv + ["--quiet"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    assert not os.path.exists(out)


def test_torchmdnet_structure_and_diffusion_checkpoints(tmp_path):
    pytest.importorskip("torchmdnet")
    from _torchmdnet_args import tiny_model_args
    from torchmdnet_ext import PositionLNNP

    molecules = _molecules()
    inputs = str(tmp_path / "mols.extxyz")
    write(inputs, molecules)
    for task, head, extra, per_input in (("structure", "PositionOutput", [], 1),
                                         ("diffusion", "NoiseOutput", ["--steps", "3", "-n", "2"], 2)):
        torch.manual_seed(0)
        module = PositionLNNP(tiny_model_args(output_model=head, task=task))
        path = tmp_path / f"{task}.ckpt"
        torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
        out = str(tmp_path / f"{task}.extxyz")
        assert main([str(path), "--inputs", inputs, "-o", out, "--quiet", *extra]) == 0
        result = read(out, index=":")
        assert [a.get_chemical_formula() for a in result] == [
            m.get_chemical_formula() for m in molecules for _ in range(per_input)
        ]
        assert all(np.isfinite(a.positions).all() for a in result)
        if task == "diffusion":  # conformers are centred and differ between draws
            assert max(np.abs(a.positions.mean(0)).max() for a in result) < 1e-4
            assert np.abs(result[0].positions - result[1].positions).max() > 1e-3


def _molecules():
    from ase.build import molecule

    return [molecule("CH3OH"), molecule("NH3")]


def test_console_script_entry_point_runs(trained, tmp_path):
    """The module behind ``energyloss-sample`` as a process (what the installed script runs)."""
    out = str(tmp_path / "p.extxyz")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "energyloss_plugins.sample_cli", trained["best_model"], "--inputs",
                           trained["inputs"], "-o", out, "--quiet", "--trust-checkpoint"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 5 structures" in proc.stdout and len(read(out, index=":")) == 5
