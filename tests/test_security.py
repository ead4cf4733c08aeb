"""Opening a file runs no code from it (issue 18): every entry point that loads a checkpoint or a split
file, fed a pickle whose ``__reduce__`` creates a marker file, refuses it with a clear error and the
marker never appears; our own checkpoints still load and predict with the safe default."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import warnings

import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule

pytest.importorskip("schnetpack")
pytest.importorskip("rdkit")


from _schnetpack_helpers import loader, structure_task, trained_structure_files  # noqa: E402
from energyloss_plugins.checkpoints import (  # noqa: E402
    CorruptCheckpointError,
    UntrustedCheckpointError,
    from_plain,
    load_checkpoint,
    pickle_globals,
    to_plain,
)

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Payload:
    """Unpickling this runs ``exec``, which creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _evil(directory, fmt: str = "zip") -> tuple[str, str]:
    """A malicious checkpoint (``torch.save`` zip or a raw pickle, as a ``best_model`` could be) and its marker."""
    marker = str(directory / f"pwned_{fmt}")
    path = str(directory / f"evil_{fmt}.ckpt")
    content = {"state_dict": {}, "hyper_parameters": {"model": _Payload(marker)}}
    if fmt == "zip":
        torch.save(content, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(content, f, protocol=2)
    return path, marker


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny structure task trained 2 steps: its Lightning checkpoint and a best_model (whole-model pickle)."""
    files = trained_structure_files(tmp_path_factory.mktemp("security"), steps=2)
    return {**files, "task": files["task"].eval()}


@pytest.mark.parametrize("fmt", ["zip", "raw"])
def test_the_malicious_file_does_run_code_when_fully_unpickled(tmp_path, fmt):
    """The guard's tests below are meaningful: a full unpickle (the opt-in) of this file runs its code."""
    path, marker = _evil(tmp_path, fmt)
    assert not os.path.exists(marker)
    if fmt == "zip":
        load_checkpoint(path, trusted=True)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert os.path.exists(marker)


def _entry_points():
    from energyloss_plugins.adapters import resolve
    from energyloss_plugins.ase import predict_structures, run_diffusion_model
    from schnetpack_ext import DiffusionTask, GenerationTask, StructureTask, load_generation_model
    from schnetpack_ext.checkpoint import apply_ema_weights

    points = {
        "resolve(load=False)": lambda p: resolve(p, load=False),
        "resolve": lambda p: resolve(p),
        "schnetpack_ext.load_generation_model": lambda p: load_generation_model(p),
        "StructureTask.load_from_checkpoint": lambda p: StructureTask.load_from_checkpoint(p),
        "DiffusionTask.load_from_checkpoint": lambda p: DiffusionTask.load_from_checkpoint(p),
        "GenerationTask.load_from_checkpoint": lambda p: GenerationTask.load_from_checkpoint(p),
        "apply_ema_weights": lambda p: apply_ema_weights(structure_task(), p),
        "predict_structures": lambda p: predict_structures(p, [molecule("H2O")]),
        "run_diffusion_model": lambda p: run_diffusion_model(p, [molecule("H2O")], steps=2),
    }
    try:
        import torchmdnet_ext
        from torchmdnet_ext import TorchMDNetCalculator
        from torchmdnet_ext import adapter as tmd_adapter
        from torchmdnet_ext.inference import objective_from_checkpoint
    except ImportError:
        return points
    points.update({
        "TorchMDNetCalculator": lambda p: TorchMDNetCalculator(p),
        "torchmdnet_ext.load_generation_model": lambda p: torchmdnet_ext.load_generation_model(p),
        "torchmdnet adapter load": lambda p: tmd_adapter.load(p),
        "torchmdnet load_position_model": lambda p: tmd_adapter.load_position_model(p),
        "objective_from_checkpoint": lambda p: objective_from_checkpoint(p),
    })
    return points


@pytest.mark.parametrize("fmt", ["zip", "raw"])
def test_no_entry_point_runs_code_from_a_malicious_checkpoint(tmp_path, fmt):
    path, marker = _evil(tmp_path, fmt)
    for name, call in _entry_points().items():
        with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint") as info:
            call(path)
        assert "builtins.exec" in str(info.value), (name, info.value)
        assert not os.path.exists(marker), name


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "energyloss_plugins.sample_cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_energyloss_sample_refuses_a_malicious_checkpoint_in_one_line(tmp_path):
    path, marker = _evil(tmp_path)
    proc = _cli(path, "-n", "3", "-o", str(tmp_path / "out.xyz"), "--quiet")
    assert proc.returncode == 2, proc.stderr
    # NVIDIA Warp (imported by a framework) prints a CUDA notice on machines without a GPU: not ours.
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("Warp CUDA warning")]
    err = "\n".join(lines)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "full unpickle" in err and "--trust-checkpoint" in err
    assert not os.path.exists(marker) and not os.path.exists(tmp_path / "out.xyz")


def test_even_the_opt_in_does_not_unpickle_a_file_no_adapter_claims(tmp_path, capsys):
    """Identification reads only the names a pickle refers to; trusting is for files an adapter recognises."""
    from energyloss_plugins.sample_cli import main

    path, marker = _evil(tmp_path)
    assert main([path, "-n", "3", "-o", str(tmp_path / "out.xyz"), "--quiet", "--trust-checkpoint"]) == 2
    assert "No adapter recognises" in capsys.readouterr().err
    assert not os.path.exists(marker)


def test_truncated_checkpoint_is_reported_as_corrupt(trained, tmp_path, capsys):
    from energyloss_plugins.adapters import resolve
    from energyloss_plugins.sample_cli import main
    from schnetpack_ext import StructureTask

    data = open(trained["ckpt"], "rb").read()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    for call in (lambda p: resolve(p), lambda p: resolve(p, load=False), StructureTask.load_from_checkpoint):
        with pytest.raises(CorruptCheckpointError, match="corrupt or truncated"):
            call(str(cut))
    inputs = tmp_path / "x.xyz"  # inputs that exist: the CLI checks them before it opens the checkpoint
    ase.io.write(inputs, molecule("H2O"))
    assert main([str(cut), "--inputs", str(inputs), "-o", str(tmp_path / "o.xyz"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt or truncated" in err and len(err.splitlines()) == 1


def test_plain_description_naming_a_class_outside_the_allow_list_is_refused(trained, tmp_path):
    """A checkpoint that loads with weights_only=True may still describe objects: only allowed names are built."""
    from schnetpack_ext import StructureTask

    checkpoint = torch.load(trained["ckpt"], weights_only=True)
    for name in ("os:system", "builtins:exec", "subprocess:Popen"):
        checkpoint["hyper_parameters"] = {"__dict__": [["model", {"__object__": name, "id": 0, "state": None}]]}
        path = tmp_path / "crafted.ckpt"
        torch.save(checkpoint, path)
        with pytest.raises(UntrustedCheckpointError, match=name.replace(":", r"\.")):
            StructureTask.load_from_checkpoint(str(path))
    with pytest.raises(UntrustedCheckpointError, match="not a class"):  # an allowed function is never called
        from_plain({"__object__": "schnetpack.utils:load_model", "id": 0, "state": None})
    with pytest.raises(UntrustedCheckpointError, match="not under the allowed"):  # no way out through an import
        from_plain({"__global__": "energyloss_plugins.checkpoints:os.system"})


def test_plain_description_round_trip_keeps_the_model(trained):
    task = trained["task"]
    rebuilt = from_plain(to_plain({"model": task.model, "outputs": task.outputs}))
    assert type(rebuilt["model"]) is type(task.model) and rebuilt["model"] is not task.model
    inputs = _inputs(task)
    expected = task.model(dict(inputs))["positions_pred"]
    np.testing.assert_allclose(rebuilt["model"].eval()(dict(inputs))["positions_pred"].detach(), expected.detach())
    assert type(rebuilt["outputs"][0].loss_fn) is type(task.outputs[0].loss_fn)


def _inputs(task):
    from schnetpack.interfaces import AtomsConverter
    from schnetpack.transform import MatScipyNeighborList

    converter = AtomsConverter(neighbor_list=MatScipyNeighborList(cutoff=5.0), dtype=torch.float32)
    return converter([molecule("CH3OH"), molecule("NH3")])


def test_our_checkpoint_loads_with_weights_only_and_predicts_as_in_memory(trained):
    from energyloss_plugins.adapters import resolve
    from energyloss_plugins.ase import predict_structures
    from schnetpack_ext import StructureTask

    content = torch.load(trained["ckpt"], weights_only=True)  # no safe globals needed
    assert "builtins.exec" not in pickle_globals(trained["ckpt"]) and "hyper_parameters" in content
    images = [molecule("CH3OH"), molecule("NH3")]
    expected = predict_structures(trained["task"], images)
    for model in (StructureTask.load_from_checkpoint(trained["ckpt"]), resolve(trained["ckpt"]).model,
                  StructureTask.load_from_checkpoint(trained["ckpt"], trusted=True), trained["ckpt"]):
        for a, b in zip(predict_structures(model, images), expected, strict=True):
            np.testing.assert_allclose(a.positions, b.positions, atol=1e-5)


def test_checkpoint_with_pickled_hyperparameters_needs_the_opt_in(trained, tmp_path):
    """A checkpoint written before plain hyperparameters: identified by its output class, loaded only if trusted."""
    from energyloss_plugins.adapters import resolve
    from energyloss_plugins.ase import predict_structures
    from schnetpack_ext.checkpoint import PLAIN_HPARAMS_KEY

    checkpoint = torch.load(trained["ckpt"], weights_only=True)
    checkpoint["hyper_parameters"] = from_plain(checkpoint.pop(PLAIN_HPARAMS_KEY) and checkpoint["hyper_parameters"])
    del checkpoint["energyloss_task_class"]
    old = str(tmp_path / "old.ckpt")
    torch.save(checkpoint, old)
    assert resolve(old, load=False).kind == "structure"
    with pytest.raises(UntrustedCheckpointError, match="schnetpack"):
        resolve(old)
    images = [molecule("NH3")]
    np.testing.assert_allclose(predict_structures(old, images, trusted=True)[0].positions,
                               predict_structures(trained["task"], images)[0].positions, atol=1e-5)


def test_best_model_needs_the_opt_in_and_then_predicts(trained, tmp_path, capsys):
    from energyloss_plugins.adapters import resolve
    from energyloss_plugins.ase import predict_structures
    from energyloss_plugins.sample_cli import main

    assert resolve(trained["best_model"], load=False).kind == "structure"  # identified without unpickling
    with pytest.raises(UntrustedCheckpointError, match="trusted=True"):
        resolve(trained["best_model"])
    images = [molecule("CH3OH")]
    trusted = predict_structures(trained["best_model"], images, trusted=True)
    np.testing.assert_allclose(trusted[0].positions, predict_structures(trained["task"], images)[0].positions,
                               atol=1e-5)
    from ase.io import write

    inputs = str(tmp_path / "in.xyz")
    write(inputs, images)
    out = str(tmp_path / "o.xyz")
    assert main([trained["best_model"], "--inputs", inputs, "-o", out, "--quiet"]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err and not os.path.exists(out)
    assert main([trained["best_model"], "--inputs", inputs, "-o", out, "--quiet", "--trust-checkpoint"]) == 0


def test_lightning_resume_reads_our_checkpoint_weights_only(trained):
    """Resuming a run from its own checkpoint (spktrain's last.ckpt) goes through SafeCheckpointIO."""
    import pytorch_lightning as pl

    from schnetpack_ext import SafeCheckpointIO

    class Count(pl.Callback):
        batches = 0

        def on_train_batch_end(self, *args):
            Count.batches += 1

    torch.manual_seed(1)
    fresh = structure_task()
    trainer = pl.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", plugins=[SafeCheckpointIO()],
                         callbacks=[Count()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(fresh, loader(trained["db"], batch_size=4, shuffle=True), ckpt_path=trained["ckpt"])
    assert trainer.global_step == 4 and Count.batches == 2  # resumed at step 2, not restarted


def test_split_file_with_pickled_arrays_is_refused(trained, tmp_path):
    """``energyloss-torchmd-train --dataset-root dir/x.db`` picks up ``x.split.npz``: it is read without pickle."""
    pytest.importorskip("torchmdnet")
    directory = tmp_path / "data"
    directory.mkdir()
    db = directory / "x.db"
    shutil.copy(trained["db"], db)
    marker = str(tmp_path / "pwned_split")
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    np.savez(directory / "x.split.npz", train_idx=evil, val_idx=evil, test_idx=evil)
    conf = tmp_path / "conf.yaml"
    conf.write_text("dataset: EnergyLossDB\nmodel: tensornet\nembedding_dimension: 8\nnum_layers: 1\nnum_rbf: 8\n"
                    "cutoff_upper: 4.0\nmax_num_neighbors: 16\nbatch_size: 2\ninference_batch_size: 2\n"
                    "num_epochs: 1\nsave_interval: 1\nnum_workers: 0\nseed: 1\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    script = os.path.join(os.path.dirname(sys.executable), "energyloss-torchmd-train")
    proc = subprocess.run([script, "--conf", str(conf), "--dataset-root", str(db), "--log-dir", str(tmp_path / "log")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "holds pickled Python objects" in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(marker)


@pytest.mark.parametrize("option", ["--load-weights", "--load-model"])
def test_energyloss_torchmd_train_refuses_a_malicious_starting_checkpoint(tmp_path, capsys, option):
    pytest.importorskip("torchmdnet")
    from torchmdnet_ext.cli import main

    path, marker = _evil(tmp_path)
    (tmp_path / "hparams.yaml").write_text("{}\n")  # upstream's --load-model reads the hparams.yaml beside it
    assert main([option, path, "--log-dir", str(tmp_path / "log")]) == 2  # the console wrapper's user error
    assert "--trust-checkpoint" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not os.path.exists(marker)
