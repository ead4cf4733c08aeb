"""energyloss-torchmd-train wraps TorchMD-Net's torchmd-train: every upstream option, shipped configs by name."""

from __future__ import annotations

import contextlib
import csv
import glob
import os
import re
import subprocess
import sys
import types

import pytest

pytest.importorskip("torchmdnet")

from torchmdnet.scripts import train as upstream  # noqa: E402

from torchmdnet_ext.cli import get_argparse, get_args  # noqa: E402
from torchmdnet_ext.configs import config_names, config_path  # noqa: E402

BIN = os.path.dirname(sys.executable)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
# upstream options whose definition the wrapper replaces (documented in torchmdnet_ext/cli.py)
REDEFINED = {"conf", "checkpoint_monitor", "early_stopping_monitor"}


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[A-Za-z0-9][\w-]*", help_text))


def _help(command: str) -> str:
    path = os.path.join(BIN, command)
    if not os.path.exists(path):
        pytest.skip(f"{command} is not installed in this environment")
    res = subprocess.run([path, "--help"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_help_lists_every_option_of_the_installed_torchmd_train():
    theirs, ours = _options(_help("torchmd-train")), _options(_help("energyloss-torchmd-train"))
    assert len(theirs) > 50  # the parse found the options
    assert theirs <= ours, sorted(theirs - ours)
    assert {"--task", "--parameterization", "--noise-schedule", "--max-weight", "--sampling-steps",
            "--log-structure-metrics"} <= ours


def test_every_upstream_option_parses_to_the_same_value():
    """Each upstream option given on the command line (with upstream's default as its value) parses
    in our parser to what upstream's own parser makes of it."""
    theirs = upstream.get_argparse()
    ours = get_argparse()
    # argparse has no public list of a parser's actions; _actions is the only way to enumerate them
    argv = []
    for action in theirs._actions:
        if not action.option_strings or action.dest in REDEFINED | {"help", "load_model"}:
            continue
        opt = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if action.nargs == 0:  # a flag (store_true)
            argv.append(opt)
        elif action.default is not None:
            argv += [opt, str(action.default)]
    assert len(argv) > 100
    up, mine = vars(theirs.parse_args(argv)), vars(ours.parse_args(argv))
    assert {k: v for k, v in up.items() if k not in REDEFINED} == {k: mine[k] for k in up if k not in REDEFINED}
    # the redefined monitors take any metric (upstream allows two mse names)
    assert ours.parse_args(["--checkpoint-monitor", "val_rmsd"]).checkpoint_monitor == "val_rmsd"


def test_shipped_config_found_by_name_and_a_path_still_works(tmp_path):
    assert {"structure_tensornet", "diffusion_et"} <= set(config_names())
    path = config_path("structure_tensornet")
    assert os.path.isfile(path) and config_path("structure_tensornet.yaml") == path
    by_name = get_args(["--conf", "structure_tensornet", "--log-dir", str(tmp_path / "a")])
    by_path = get_args(["--conf", path, "--log-dir", str(tmp_path / "b")])
    assert by_name.task == "structure" and by_name.model == "tensornet"
    assert by_name.output_model.startswith("PositionOutput") and by_name.train_loss == "energy_loss"
    assert {k: v for k, v in vars(by_name).items() if k != "log_dir"} == {
        k: v for k, v in vars(by_path).items() if k != "log_dir"}
    diffusion = get_args(["--conf", "diffusion_et", "--log-dir", str(tmp_path / "c"), "--num-epochs", "3"])
    assert (diffusion.task, diffusion.model, diffusion.num_epochs) == ("diffusion", "equivariant-transformer", 3)
    assert diffusion.checkpoint_monitor == "val_total_energy_loss"  # follows train_loss


def test_unknown_config_name_lists_the_shipped_ones(capsys):
    with pytest.raises(SystemExit) as info:
        get_argparse().parse_args(["--conf", "no_such_config"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "no_such_config" in err and "structure_tensornet" in err and "diffusion_et" in err
    with pytest.raises(ValueError, match="structure_tensornet"):
        config_path("no_such_config")


def test_upstream_module_is_restored_after_main_and_get_args(tmp_path):
    before = (upstream.get_args, upstream.get_argparse, upstream.LNNP, upstream.DataModule)
    get_args(["--dataset", "EnergyLossDB", "--log-dir", str(tmp_path)])
    from torchmdnet_ext.cli import main

    # a bad combination: one line, exit 2
    assert main(["--dataset", "EnergyLossDB", "--dataset-root", "x.db", "--derivative", "true",
                 "--log-dir", str(tmp_path)]) == 2
    assert (upstream.get_args, upstream.get_argparse, upstream.LNNP, upstream.DataModule) == before


TINY = ["--embedding-dimension", "16", "--num-layers", "1", "--num-rbf", "8", "--num-heads", "2", "--batch-size", "8",
        "--inference-batch-size", "8", "--num-epochs", "1", "--num-workers", "0", "--save-interval", "1"]


@contextlib.contextmanager
def _writes_recorded(modules, writes: list):
    """Record every attribute set or deleted on ``modules`` (as ``(module, name)``) inside the block."""

    class Recording(types.ModuleType):
        def __setattr__(self, name, value):
            writes.append((self.__name__, name))
            super().__setattr__(name, value)

        def __delattr__(self, name):
            writes.append((self.__name__, name))
            super().__delattr__(name)

    for module in modules:
        module.__class__ = Recording
    try:
        yield
    finally:
        for module in modules:
            types.ModuleType.__setattr__(module, "__class__", types.ModuleType)


def _val_losses(run, column: str) -> list[float]:
    with open(os.path.join(run, "metrics.csv")) as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column)]


def test_runs_compose_torchmdnets_public_pieces_and_never_write_to_its_modules(tmp_path):
    """Structure and energy runs, a resumed run (--load-model) and --load-weights train and test without
    setting anything in torchmd-train's module or those of its LNNP and DataModule."""
    import torchmdnet.data
    import torchmdnet.module

    from _host_datasets import torchmdnet_hdf5
    from torchmdnet_ext.cli import main

    h5 = torchmdnet_hdf5(str(tmp_path / "t.h5"), with_targets=True)
    modules = (upstream, torchmdnet.module, torchmdnet.data)
    before = {module.__name__: dict(vars(module)) for module in modules}
    energy = ["--dataset", "HDF5", "--dataset-root", h5, "--model", "tensornet", *TINY]
    runs = {name: str(tmp_path / name) for name in ("structure", "energy", "resumed", "weights")}
    writes: list = []
    with _writes_recorded(modules, writes):
        assert main(["--conf", "structure_tensornet", "--dataset", "PositionHDF5", "--dataset-root", h5, *TINY,
                     "--log-dir", runs["structure"]]) == 0
        assert main([*energy, "--log-dir", runs["energy"]]) == 0
        (first,) = glob.glob(os.path.join(runs["structure"], "epoch=0-*.ckpt"))
        assert main(["--load-model", first, "--num-epochs", "2", "--log-dir", runs["resumed"]]) == 0
        (trained,) = glob.glob(os.path.join(runs["energy"], "epoch=0-*.ckpt"))
        assert main([*energy, "--load-weights", trained, "--log-dir", runs["weights"]]) == 0
    assert writes == []
    for module in modules:  # the same objects as before: nothing swapped and restored
        assert all(vars(module)[name] is value for name, value in before[module.__name__].items())
    # each run tested its best checkpoint after fitting (upstream's test step)
    for run in runs.values():
        assert _val_losses(run, "test_total_l1_loss")
    # resumed at epoch 1 from the structure run's checkpoint: no epoch-0 checkpoint of its own
    assert [os.path.basename(p).split("-")[0] for p in glob.glob(os.path.join(runs["resumed"], "*.ckpt"))] == [
        "epoch=1"]
    # same seed and data: only the loaded weights can make the validation loss differ from the energy run's
    assert _val_losses(runs["weights"], "val_total_mse_loss") != _val_losses(runs["energy"], "val_total_mse_loss")
