"""`energyloss-torchmd-train` on TorchMD-Net's own dataset formats, one run per folder.

Files in the layouts ``torchmdnet.datasets.HDF5`` and ``Custom`` read (tests/_host_datasets.py), with
energies and forces as TorchMD-Net requires and no targets: generation and diffusion train on their
positions. Structure prediction needs targets, which TorchMD-Net's formats do not hold: the same
HDF5 layout plus a ``pos_target`` array, read by ``dataset: PositionHDF5``. Two structure runs with
different losses leave two complete run folders.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import subprocess
import sys
import warnings

import pytest
import yaml

pytest.importorskip("torchmdnet")

import torchmdnet_ext  # noqa: E402,F401  (registers the plugin)
from _host_datasets import torchmdnet_custom, torchmdnet_hdf5  # noqa: E402
from _torchmdnet_args import tiny_model_args  # noqa: E402

TINY = ["--embedding-dimension", "16", "--num-layers", "1", "--num-rbf", "8", "--num-heads", "2", "--batch-size", "8",
        "--inference-batch-size", "8", "--num-epochs", "1", "--num-workers", "0", "--sampling-steps", "2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tmd_files")
    custom = torchmdnet_custom(str(folder / "custom"))
    return {
        "HDF5": ["--dataset", "HDF5", "--dataset-root", torchmdnet_hdf5(str(folder / "plain.h5"))],
        "Custom": ["--dataset", "Custom", *(x for key, glob_ in custom.items() for x in (f"--{key.replace('_', '-')}",
                                                                                          glob_))],
        "PositionHDF5": ["--dataset", "PositionHDF5",
                         "--dataset-root", torchmdnet_hdf5(str(folder / "targets.h5"), with_targets=True)],
    }


def _train(tmp_path, *argv: str) -> str:
    """Run the console script's main in ``tmp_path`` (no --log-dir); returns the run folder it made."""
    from torchmdnet_ext.cli import main

    before = set(glob.glob(str(tmp_path / "logs" / "*")))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main([*argv, *TINY]) == 0
    finally:
        os.chdir(cwd)
    assert not [w for w in caught if "not empty" in str(w.message)]  # a fresh run folder, no warning
    (run,) = set(glob.glob(str(tmp_path / "logs" / "*"))) - before
    return run


def _losses(run: str) -> list[float]:
    with open(os.path.join(run, "metrics.csv")) as f:
        return [float(v) for row in csv.DictReader(f) for k, v in row.items() if k.endswith("_loss") and v]


@pytest.mark.slow
@pytest.mark.parametrize(("dataset", "conf"), [("HDF5", "generation_et"), ("HDF5", "diffusion_et"),
                                               ("Custom", "generation_et"), ("Custom", "diffusion_et")])
def test_generation_and_diffusion_train_on_torchmdnet_formats(files, tmp_path, dataset, conf):
    extra = ["--elements", "1,6,7,8,9"] if conf.startswith("generation") else []
    run = _train(tmp_path, "--conf", conf, *files[dataset], *extra)
    name = os.path.basename(run)
    assert name.startswith(f"{conf}-energy_loss-")
    hparams = yaml.safe_load(open(os.path.join(run, "hparams.yaml")))
    assert hparams["dataset"] == dataset and hparams["task"] == conf.split("_")[0]
    losses = _losses(run)
    assert losses and all(math.isfinite(v) for v in losses)
    (ckpt,) = glob.glob(os.path.join(run, "epoch=0-*.ckpt"))
    if conf.startswith("generation"):
        model = torchmdnet_ext.load_generation_model(ckpt)
        mols = model.sample_molecules(2, steps=2, seed=0, progress=False)
        assert all(set(m.numbers.tolist()) <= {1, 6, 7, 8, 9} for m in mols)


@pytest.mark.slow
def test_two_structure_runs_with_different_losses_keep_two_intact_folders(files, tmp_path):
    runs = {loss: _train(tmp_path, "--conf", "structure_tensornet", *files["PositionHDF5"], "--train-loss", loss)
            for loss in ("energy_loss", "mse_loss")}
    assert len(set(runs.values())) == 2
    for loss, run in runs.items():
        assert os.path.basename(run).startswith(f"structure_tensornet-{loss}-")
        assert yaml.safe_load(open(os.path.join(run, "hparams.yaml")))["train_loss"] == loss
        assert yaml.safe_load(open(os.path.join(run, "input.yaml")))["train_loss"] == loss
        (ckpt,) = glob.glob(os.path.join(run, "*.ckpt"))  # one epoch: its own checkpoint only
        assert "val_loss" in os.path.basename(ckpt)
        assert all(math.isfinite(v) for v in _losses(run))


def test_run_folder_rules(tmp_path, monkeypatch):
    import argparse

    from torchmdnet_ext.cli import RUN_FOLDER_ENV, run_folder

    monkeypatch.setenv(RUN_FOLDER_ENV, "")  # restored after the test (run_folder sets it)
    args = argparse.Namespace(log_dir=str(tmp_path / "logs"), task="structure", train_loss="energy_loss")
    assert run_folder(args, ["--log-dir", "mine"]) == "mine"  # given: the run folder itself, untouched
    assert run_folder(args, ["-l", "mine2"]) == "mine2"
    first = run_folder(args, ["--conf", "some/dir/my_conf.yaml"])
    second = run_folder(args, ["--conf", "some/dir/my_conf.yaml"])
    assert os.path.basename(first).startswith("my_conf-energy_loss-") and first != second
    assert os.path.isdir(first) and not os.listdir(first) and os.path.dirname(first) == args.log_dir
    own = run_folder(args, [])
    assert os.path.basename(own).startswith("structure-energy_loss-")
    # a DDP process Lightning starts (same argv, LOCAL_RANK > 0) joins rank 0's folder instead of making one
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert run_folder(args, []) == own
    assert len(os.listdir(args.log_dir)) == 3


def test_stock_lnnp_refuses_a_position_task_naming_the_wrapper():
    from torchmdnet.module import LNNP

    from torchmdnet_ext import PositionLNNP

    for hparams in (tiny_model_args(train_loss="energy_loss", output_model="Scalar"),
                    tiny_model_args(output_model="PositionOutput"),
                    tiny_model_args(output_model="Scalar", dataset="EnergyLossDB")):
        with pytest.raises(ValueError, match="energyloss-torchmd-train"):
            LNNP(hparams)
    LNNP(tiny_model_args(output_model="Scalar"))  # energies and forces: upstream unchanged
    PositionLNNP(tiny_model_args(train_loss="energy_loss", output_model="PositionOutput", task="structure"))


def test_python_m_torchmdnet_ext_train_is_the_same_command():
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "torchmdnet_ext.train", "--help"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    from torchmdnet_ext.cli import get_argparse

    ours = {opt for action in get_argparse()._actions for opt in action.option_strings}
    assert {opt for opt in ours if opt.startswith("--")} <= set(res.stdout.split()) | {
        w.rstrip(",") for w in res.stdout.split()}
