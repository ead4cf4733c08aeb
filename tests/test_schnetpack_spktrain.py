"""`spktrain` as a subprocess with the shipped experiment (found by the Hydra search-path plugin).

One epoch on a tiny database built with `energyloss-data`'s builder, once with the energy loss and
once with MSE chosen by a command-line override; the loss decreases, checkpoints are written, and
the trained model reloads and predicts. CPU only, offline.
"""

import csv
import glob
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("schnetpack")
pytest.importorskip("rdkit")

from _schnetpack_helpers import tiny_structure_db  # noqa: E402

SPKTRAIN = os.path.join(os.path.dirname(sys.executable), "spktrain")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return tiny_structure_db(str(tmp_path_factory.mktemp("spk_cli_db")))


def _env():
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    return env


def _train_losses(run_dir):
    (metrics,) = glob.glob(os.path.join(run_dir, "csv", "version_*", "metrics.csv"))
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    return [float(r["train_loss"]) for r in rows if r.get("train_loss")], rows


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["energy", "mse"])
def test_spktrain_one_epoch_with_plugin_experiment(db, tmp_path, loss):
    from ase.db import connect

    from schnetpack_ext import StructureTask, predict_structures

    run_id = f"run_{loss}"
    cmd = [SPKTRAIN, "experiment=energyloss_structure", f"data.datapath={db}", f"globals.loss={loss}",
           f"run.path={tmp_path}", f"run.id={run_id}", "trainer.max_epochs=1", "trainer.accelerator=cpu",
           "+trainer.log_every_n_steps=1", "+trainer.enable_progress_bar=false", "data.num_workers=0",
           "data.batch_size=2", "globals.lr=3e-3", "model.representation.n_atom_basis=16",
           "model.representation.n_interactions=2", "+seed=0", "print_config=false"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / run_id

    losses, rows = _train_losses(run_dir)
    assert len(losses) >= 8, losses
    k = 3
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k, losses
    # the core's metrics are logged per epoch
    assert any(r.get("val_rmsd") for r in rows) and any(r.get("val_bond_mae") for r in rows)

    ckpts = glob.glob(str(run_dir / "checkpoints" / "*.ckpt"))
    assert ckpts and (run_dir / "best_model").exists()
    task = StructureTask.load_from_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"), map_location="cpu")
    assert task.outputs[0].loss_fn.loss_name == loss
    with connect(db) as conn:
        atoms = [row.toatoms() for row in conn.select(limit=4)]
    for model, trusted in ((task, False), (str(run_dir / "best_model"), True)):  # best_model: a whole-model pickle
        predicted = predict_structures(model, atoms, trusted=trusted)
        assert [len(a) for a in predicted] == [len(a) for a in atoms]
        assert all(torch.isfinite(torch.as_tensor(a.positions)).all() for a in predicted)
