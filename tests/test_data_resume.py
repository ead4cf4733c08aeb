"""Interrupted builds resume to exactly the uninterrupted result; the CLI works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("ase")

from energyloss_plugins.data import (  # noqa: E402
    build_dataset,
    builder,
    read_metadata,
    read_split,
    split_file_for,
)
from energyloss_plugins.data.partial import partial_state  # noqa: E402

torch.set_num_threads(1)

KW = dict(inputs=("cheap", "thermal", "etkdg"), max_molecules=8, seed=5, progress=False)
# C[Se]C has no MMFF94 parameters: a molecule that is skipped while processing (and must stay skipped
# after a resume); the last line is beyond max_molecules.
SMILES = ["CCO", "c1ccccc1O", "CC(=O)N", "C[Se]C", "OCC(O)CO", "CC#N", "C1CCOC1", "NCC(=O)O", "FC(F)F", "CC=CC", "CCCC"]


@pytest.fixture(scope="module")
def smi(tmp_path_factory):
    path = tmp_path_factory.mktemp("smi") / "mols.smi"
    path.write_text("\n".join(SMILES) + "\n")
    return path


def _rows(path):
    from ase.db import connect

    out = []
    for r in connect(str(path), type="db").select(sort="id"):
        kvp = dict(r.key_value_pairs)
        out.append((r.id, r.numbers.tolist(), r.positions.copy(), kvp, {k: np.asarray(v) for k, v in r.data.items()}))
    return out


def _assert_same_build(a, b):
    ra, rb = _rows(a), _rows(b)
    assert len(ra) == len(rb) > 0
    for (ia, za, pa, ka, da), (ib, zb, pb, kb, db) in zip(ra, rb, strict=True):
        assert ia == ib and za == zb
        assert np.array_equal(pa, pb)  # exact, not approximately
        assert ka == kb
        assert da.keys() == db.keys()
        for k in da:
            assert np.array_equal(da[k], db[k], equal_nan=True), k
    sa, sb = read_split(split_file_for(a)), read_split(split_file_for(b))
    for k in sa:
        assert np.array_equal(sa[k], sb[k])
    ma, mb = read_metadata(a)["energyloss"], read_metadata(b)["energyloss"]
    for k in ("settings", "n_molecules", "n_rows", "rows_per_kind", "median_input_rmsd", "skipped", "filtered"):
        assert ma[k] == mb[k], k


@pytest.fixture(scope="module")
def reference(tmp_path_factory, smi):
    out = tmp_path_factory.mktemp("ref") / "data.db"
    report = build_dataset(smi, out, **KW)
    assert report.n_molecules == 8 and report.skipped == {"no_mmff_params": 1}
    return out


def test_interrupt_midway_and_resume(reference, smi, tmp_path, monkeypatch):
    out = tmp_path / "data.db"
    calls = {"n": 0}
    original = builder.process_entry

    def interrupted(entry, s):
        calls["n"] += 1
        if calls["n"] == 6:  # Ctrl-C while the 6th molecule is being made
            raise KeyboardInterrupt
        return original(entry, s)

    monkeypatch.setattr(builder, "process_entry", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(smi, out, **KW)
    partial = str(out) + ".partial"
    assert os.path.exists(partial) and not out.exists()
    # nothing built is lost: 4 molecules written, the Se molecule recorded as skipped
    assert sorted({r[3]["source_index"] for r in _rows(partial)}) == [0, 1, 2, 4]
    assert partial_state(partial)[2] == {3: "no_mmff_params"}
    monkeypatch.setattr(builder, "process_entry", original)

    # resuming with other settings is refused, not silently mixed
    with pytest.raises(ValueError, match="other settings"):
        build_dataset(smi, out, **{**KW, "seed": 6})
    calls["n"] = 0
    monkeypatch.setattr(builder, "process_entry", interrupted)  # counts the molecules actually processed
    report = build_dataset(smi, out, **{**KW, "progress": True})
    assert calls["n"] == 4  # indices 5..8 only: nothing is redone
    assert report.resumed == 4 and report.skipped == {"no_mmff_params": 1}
    assert not os.path.exists(partial)
    _assert_same_build(reference, out)
    # a complete build with the same settings is not redone
    assert build_dataset(smi, out, **KW).already_built


def test_sigkill_and_resume_from_cli(reference, smi, tmp_path):
    """Kill -9 a CLI build (slowed down) once it has written molecules, then resume with the same command."""
    out = tmp_path / "data.db"
    args = ["build", str(smi), "-o", str(out), "--inputs", "cheap,thermal,etkdg", "--max-molecules", "8",
            "--seed", "5", "--no-progress"]  # fmt: skip
    slow = (
        "import sys, time\n"
        "import energyloss_plugins.data.builder as b\n"
        "orig = b.process_entry\n"
        "def slow(e, s):\n"
        "    time.sleep(0.3)\n"
        "    return orig(e, s)\n"
        "b.process_entry = slow\n"
        "from energyloss_plugins.data.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", slow, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = str(out) + ".partial"
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            if os.path.exists(partial):
                try:
                    n = len({r[3]["source_index"] for r in _rows(partial)})
                except Exception:  # the writer may hold the database for a moment
                    n = 0
                if n >= 2:
                    break
            assert proc.poll() is None, "the build finished before it could be interrupted"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not out.exists()
    from energyloss_plugins.data.cli import main

    assert main(args) == 0
    _assert_same_build(reference, out)


def test_cli_info_and_errors(reference, capsys):
    from energyloss_plugins.data.cli import main

    assert main(["info", str(reference)]) == 0
    assert '"n_molecules": 8' in capsys.readouterr().out
    assert main(["build", "nowhere", "-o", "/tmp/never.db"]) == 2
    assert "Valid sources" in capsys.readouterr().err


def test_console_script_declared():
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="console_scripts") if ep.name == "energyloss-data"]
    if not eps:
        pytest.skip("package not installed with its console scripts")
    assert eps[0].value == "energyloss_plugins.data.cli:main"
    assert eps[0].load() is __import__("energyloss_plugins.data.cli", fromlist=["main"]).main
