"""`spktrain` on SchNetPack's own database formats, without `energyloss-data`.

The databases are written by SchNetPack's own writer (``ASEAtomsData.create`` + ``add_systems``) in
the layout ``schnetpack.datasets.QM9`` and ``MD17`` produce (property names, units, metadata; see
tests/_host_datasets.py). Each applicable task trains a couple of optimiser steps through the shipped
experiment, bounded by ``trainer.max_steps`` (no ``+``): generation and diffusion on both, structure
prediction on a QM9-style database that also holds a ``target_positions`` property. No split file
exists beside these databases, so SchNetPack splits by the experiments' num_train/num_val fractions.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("schnetpack")

from _host_datasets import QM9_ELEMENTS, md17_style_db, qm9_style_db  # noqa: E402

SPKTRAIN = os.path.join(os.path.dirname(sys.executable), "spktrain")
TINY = ["trainer.max_steps=2", "trainer.accelerator=cpu", "data.num_workers=0", "data.batch_size=4",
        "model.representation.n_atom_basis=16", "model.representation.n_interactions=1", "print_config=false",
        "+trainer.enable_progress_bar=false", "+seed=0"]


@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("host_dbs")
    return {"qm9": qm9_style_db(str(folder / "qm9.db")),
            "qm9_targets": qm9_style_db(str(folder / "qm9_targets.db"), with_targets=True),
            "md17": md17_style_db(str(folder / "md17.db"))}


def _env():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONWARNINGS="ignore", WANDB_MODE="disabled")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([here, env.get("PYTHONPATH", "")])
    return env


def _spktrain(tmp_path, experiment: str, datapath: str, *extra: str):
    cmd = [SPKTRAIN, f"experiment={experiment}", f"data.datapath={datapath}", f"run.path={tmp_path}", "run.id=run",
           *TINY, *extra]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path / "run"


def _metrics(run_dir):
    (path,) = glob.glob(str(run_dir / "csv" / "version_*" / "metrics.csv"))
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize(("db", "experiment"), [
    ("qm9", "energyloss_generation"), ("qm9", "energyloss_diffusion"), ("qm9_targets", "energyloss_structure"),
    ("md17", "energyloss_generation"), ("md17", "energyloss_diffusion")])
def test_spktrain_trains_on_a_schnetpack_database(dbs, tmp_path, db, experiment):
    from ase.db import connect

    run_dir = _spktrain(tmp_path, experiment, dbs[db])
    rows = _metrics(run_dir)
    steps = {int(r["step"]) for r in rows if r.get("train_loss")}
    assert max(steps) <= 2  # trainer.max_steps bounds the run
    losses = [float(r[key]) for r in rows for key in ("train_loss", "val_loss", "test_loss") if r.get(key)]
    assert losses and all(math.isfinite(v) for v in losses)
    # cut before the end of the epoch, the run still validated and kept a best checkpoint (spktrain tests it)
    assert any(r.get("val_loss") for r in rows) and any(r.get("test_loss") for r in rows)
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "best_model").exists()
    # no split file beside the database: SchNetPack split it by the fractions 0.8 / 0.1 in the run folder
    n_rows = connect(dbs[db]).count()
    with np.load(run_dir / "split.npz") as split:
        train, val = split["train_idx"], split["val_idx"]
    assert len(train) == int(0.8 * n_rows) and len(val) == int(0.1 * n_rows) and not set(train) & set(val)

    if experiment == "energyloss_generation":
        from schnetpack_ext import load_generation_model

        model = load_generation_model(str(run_dir / "checkpoints" / "last.ckpt"))
        assert set(model.elements) == QM9_ELEMENTS  # the experiment's default: QM9's elements
        with connect(dbs[db]) as conn:
            sizes = {len(row.numbers) for row in conn.select()}
        assert model.atom_counts.max_atoms <= max(sizes)  # the histogram of the training split
        mols = model.sample_molecules(2, steps=2, seed=0, progress=False)
        assert len(mols) == 2 and all(set(m.numbers.tolist()) <= QM9_ELEMENTS for m in mols)


def test_structure_on_a_database_without_targets_names_the_tasks_that_fit(dbs):
    """QM9 as SchNetPack writes it has no targets: the structure experiment refuses it and says what works."""
    from schnetpack_ext.resolvers import split_file_beside

    assert split_file_beside(dbs["qm9"], None) == "split.npz"  # diffusion/generation: SchNetPack splits
    with pytest.raises(ValueError, match="target_positions") as info:
        split_file_beside(dbs["qm9"], "target_positions")
    message = str(info.value)
    assert "energy_U0" in message and "energyloss_generation" in message and "energyloss_diffusion" in message
    assert split_file_beside(dbs["qm9_targets"], "target_positions") == "split.npz"


def test_a_database_without_schnetpack_units_is_refused_before_training(tmp_path):
    from ase.build import molecule
    from ase.db import connect

    from schnetpack_ext.resolvers import split_file_beside

    plain = str(tmp_path / "plain.db")
    with connect(plain) as conn:
        conn.write(molecule("CH4"))
    with pytest.raises(ValueError, match="_distance_unit") as info:
        split_file_beside(plain, None)
    assert "ASEAtomsData.create" in str(info.value)
