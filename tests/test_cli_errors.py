"""Console scripts: user errors are one line with exit status 2, Ctrl-C is 130 without a partial file,
nothing is replaced without ``--overwrite``, and diverged samples are counted and left out."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("ase")
pytest.importorskip("rdkit")

from ase.build import molecule  # noqa: E402
from ase.io import read, write  # noqa: E402

from energyloss_plugins import sample_cli  # noqa: E402
from energyloss_plugins.io import atomic_write, check_output_path  # noqa: E402
from energyloss_plugins.metrics.cli import main as evaluate  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _exit_status(main, argv) -> int:
    """The exit status of a console script's ``main`` (argparse errors exit through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _one_line(capsys, prog: str, *names: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(prog) and "Traceback" not in err, err
    for name in names:
        assert name.lower() in lines[0].lower(), (name, lines[0])
    return lines[0]


@pytest.fixture()
def molecules_file(tmp_path):
    path = tmp_path / "mols.extxyz"
    write(path, [molecule("H2O"), molecule("CH4")])
    return str(path)


@pytest.mark.parametrize("content, name, expect", [
    (b"", "x.extxyz", "empty"), (bytes(range(256)) * 4, "x.extxyz", "x.extxyz"), (b"hi\n", "x.qqq", "x.qqq"),
    (None, "d.extxyz", "directory"), (b"notes\n", "x.db", "ASE database"),
])
def test_evaluate_unreadable_files_are_one_line(tmp_path, capsys, content, name, expect):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    before = None if content is None else path.read_bytes()
    assert evaluate([str(path), "--no-progress"]) == 2
    _one_line(capsys, "energyloss-evaluate", expect)
    assert content is None or path.read_bytes() == before


@pytest.mark.parametrize("argv, name", [(["--limit", "-1"], "--limit"), (["--limit", "0"], "--limit"),
                                        (["--positions", "target"], "target")])
def test_evaluate_bad_options_are_one_line(molecules_file, capsys, argv, name):
    assert _exit_status(evaluate, [molecules_file, "--no-progress", *argv]) == 2
    _one_line(capsys, "energyloss-evaluate", name)


def test_evaluate_json_is_checked_before_the_work_and_never_replaced_without_overwrite(molecules_file, tmp_path,
                                                                                      capsys, monkeypatch):
    import energyloss_plugins.metrics.generation as gen

    notes = tmp_path / "notes.json"
    notes.write_text("my notes\n")
    calls = []
    real = gen.generation_metrics
    monkeypatch.setattr(gen, "generation_metrics", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert evaluate([molecules_file, "--json", str(notes), "--no-progress"]) == 2
    _one_line(capsys, "energyloss-evaluate", "--overwrite")
    assert evaluate([molecules_file, "--json", str(tmp_path / "no" / "m.json"), "--no-progress"]) == 2
    _one_line(capsys, "energyloss-evaluate", "folder")
    assert notes.read_text() == "my notes\n" and not calls  # refused before any metric was computed
    assert evaluate([molecules_file, "--json", str(notes), "--overwrite", "--no-progress"]) == 0
    import json

    assert json.loads(notes.read_text())["n"] == 2 and calls
    assert sorted(os.listdir(tmp_path)) == ["mols.extxyz", "notes.json"]  # no temporary file left


def test_evaluate_refuses_a_crystal(tmp_path, capsys):
    from ase.build import bulk

    path = tmp_path / "cu.extxyz"
    write(path, [molecule("H2O"), bulk("Cu", "fcc", a=3.6)])
    assert evaluate([str(path), "--no-progress"]) == 2
    _one_line(capsys, "energyloss-evaluate", "periodic")


@pytest.mark.parametrize("argv, name", [
    (["-n", "2", "--steps", "0"], "--steps"), (["-n", "2", "--batch-size", "0"], "--batch-size"),
    (["-n", "0"], "-n"), (["-n", "2", "--method", "heun"], "heun"), (["-n", "2", "--device", "tpu7"], "--device"),
])
def test_sample_bad_options_are_one_line(tmp_path, capsys, argv, name):
    ckpt = tmp_path / "m.ckpt"
    ckpt.write_text("x")
    assert _exit_status(sample_cli.main, [str(ckpt), "-o", str(tmp_path / "o.xyz"), "--quiet", *argv]) == 2
    _one_line(capsys, "energyloss-sample", name)


def test_sample_output_is_checked_before_the_model_is_loaded(tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the output check")

    monkeypatch.setattr(sample_cli, "resolve", never)
    existing = tmp_path / "out.xyz"
    existing.write_text("my notes\n")
    for out, name in [(existing, "--overwrite"), ("-", "-o"), (tmp_path, "directory"),
                      (tmp_path / "no" / "x.xyz", "folder"), (tmp_path / "x.qqq", "format")]:
        assert sample_cli.main([str(tmp_path / "m.ckpt"), "-n", "2", "-o", str(out), "--quiet"]) == 2
        _one_line(capsys, "energyloss-sample", name)
    assert existing.read_text() == "my notes\n"


def _nan_samples(args):
    images = [molecule("H2O") for _ in range(4)]
    for i in (1, 3):
        images[i].positions[0, 0] = math.nan
    return images


def test_sample_leaves_diverged_samples_out_and_counts_them(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sample_cli, "run", _nan_samples)
    out = tmp_path / "s.extxyz"
    assert sample_cli.main(["m.ckpt", "-n", "4", "-o", str(out), "--quiet"]) == 0
    assert "2 diverged" in capsys.readouterr().out
    written = read(out, ":")
    assert len(written) == 2 and all(np.isfinite(a.positions).all() for a in written)
    kept = tmp_path / "k.extxyz"
    assert sample_cli.main(["m.ckpt", "-n", "4", "-o", str(kept), "--quiet", "--keep-diverged"]) == 0
    assert len(read(kept, ":")) == 4


def test_sample_where_every_sample_diverged_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sample_cli, "run", lambda args: [a for a in _nan_samples(args) if not
                                                         np.isfinite(a.positions).all()])
    out = tmp_path / "s.extxyz"
    assert sample_cli.main(["m.ckpt", "-n", "2", "-o", str(out), "--quiet"]) == 1
    _one_line(capsys, "energyloss-sample", "diverged")
    assert not out.exists()


def test_sample_structures_leaves_nan_samples_out_with_a_count():
    import torch

    from energyloss_plugins.ase import sample_structures

    def denoiser(x, t, batch, numbers):  # the second structure diverges
        out = torch.zeros_like(x)
        out[batch == 1] = math.nan
        return out

    with pytest.warns(UserWarning, match="1 of 3 samples diverged"):
        out = sample_structures(denoiser, [molecule("H2O")] * 3, steps=2)
    assert [a.info["sample_of"] for a in out] == [0, 2]


def test_ctrl_c_exits_130_and_leaves_no_partial_file(tmp_path):
    out = tmp_path / "out.extxyz"
    script = textwrap.dedent(f"""
        import sys, time
        import ase.io
        from ase.build import molecule
        from energyloss_plugins import sample_cli

        def slow_write(path, images, **kwargs):  # interrupted in the middle of writing
            with open(path, "w") as fh:
                fh.write("partial")
            print("writing", flush=True)
            time.sleep(60)

        sample_cli.run = lambda args: [molecule("H2O")]
        ase.io.write = slow_write
        sys.exit(sample_cli.main(["m.ckpt", "-n", "1", "-o", {str(out)!r}, "--quiet"]))
    """)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []  # neither the output nor a temporary file


def test_atomic_write_keeps_the_old_file_on_error_and_replaces_it_on_success(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("writer failed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    with atomic_write(path) as tmp, open(tmp, "w") as fh:
        fh.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["a.txt"]


def test_check_output_path_rules(tmp_path):
    existing = tmp_path / "x.txt"
    existing.write_text("mine")
    for path, name in [(existing, "overwrite"), ("-", "not a file name"), (tmp_path, "directory"),
                       (tmp_path / "no" / "x", "does not exist"), (existing / "x", "not a folder")]:
        with pytest.raises(ValueError, match=name):
            check_output_path(path)
    assert check_output_path(existing, overwrite=True) == str(existing)
    assert check_output_path(tmp_path / "no" / "x", create_folder=True) == str(tmp_path / "no" / "x")


def test_data_build_where_every_molecule_fails_exits_2_and_writes_nothing(tmp_path, capsys):
    from energyloss_plugins.data.cli import main as data_main

    source = tmp_path / "bad.smi"
    source.write_text("not_a_smiles\nC1CC\n")
    out = tmp_path / "out.db"
    assert data_main(["build", str(source), "-o", str(out), "--no-progress"]) == 2
    _one_line(capsys, "energyloss-data", "no molecule")
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["bad.smi"]


def test_torchmd_train_user_errors_are_one_line(tmp_path, capsys):
    pytest.importorskip("torchmdnet")
    from torchmdnet_ext.cli import main as train

    base = ["--dataset", "EnergyLossDB", "--log-dir", str(tmp_path / "logs")]
    db = tmp_path / "d.db"
    db.write_text("x")
    for argv, name in [(base, "--dataset-root"), ([*base, "--dataset-root", str(tmp_path / "no.db")], "no.db"),
                       ([*base, "--dataset-root", str(db), "--task", "generation", "--elements", "1,6.5"],
                        "elements"),
                       ([*base, "--dataset-root", str(db), "--task", "generation", "--elements", "1,6",
                         "--position-weight", "-1"], "--position-weight")]:
        assert train(argv) == 2
        _one_line(capsys, "energyloss-torchmd-train", name)


def test_torchmd_train_on_a_database_without_validation_molecules_fails_up_front(tmp_path, capsys):
    pytest.importorskip("torchmdnet")
    from energyloss_plugins.data import build_dataset
    from torchmdnet_ext.cli import main as train

    smi = tmp_path / "three.smi"
    smi.write_text("CCO\nCCN\nCCC\n")
    db = tmp_path / "three.db"
    build_dataset(str(smi), db, inputs=("uff",), split=(1.0, 0.0, 0.0), seed=0, progress=False)
    argv = ["--conf", "structure_tensornet", "--dataset-root", str(db), "--dataset-arg", "{input_kinds: [uff]}",
            "--embedding-dimension", "8", "--num-layers", "1", "--num-rbf", "4", "--batch-size", "2",
            "--num-epochs", "1", "--log-dir", str(tmp_path / "logs")]
    assert train(argv) == 2
    line = _one_line_among(capsys, "energyloss-torchmd-train")
    assert "validation split" in line and "0 val" in line
    assert not list((tmp_path / "logs").glob("*.ckpt"))  # failed before the first epoch


def _one_line_among(capsys, prog: str) -> str:
    """The one line ``prog`` printed (Lightning's loggers may write other lines around it)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(prog)]
    assert len(lines) == 1, err
    return lines[0]
