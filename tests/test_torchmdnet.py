"""TorchMD-Net adapter (torchmdnet_ext): registration, heads, datasets, LNNP, console script, DDP.

Data: ~10 g2 molecules built with the offline builder (thermal inputs at 3000 K, so the untrained
model, which returns its input, leaves room to improve); no file from ../shared.
"""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("torchmdnet")
pytest.importorskip("lightning")

import torchmdnet_ext  # noqa: E402
from _torchmdnet_args import tiny_model_args  # noqa: E402
from energyloss_plugins.alignment import random_rotations  # noqa: E402
from energyloss_plugins.losses import call_loss  # noqa: E402

BIN = os.path.dirname(sys.executable)
SCRIPT = os.path.join(BIN, "energyloss-torchmd-train")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _fallback_db(path: str):
    """A contract-conforming database without the builder (ASE g2 geometries, noisy inputs)."""
    import ase.db
    from ase.build import molecule
    from ase.neighborlist import natural_cutoffs, neighbor_list

    rng = np.random.default_rng(0)
    names = ["CH4", "NH3", "H2O", "C2H6", "CH3OH", "C2H4", "HCOOH", "CH3CHO", "C2H5OH", "CH3NH2"]
    db = ase.db.connect(path, append=False)
    mol_ids = []
    for mol_id, name in enumerate(names):
        atoms = molecule(name)
        target = atoms.get_positions()
        i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms))
        bonds = np.stack([i, j], 1)[i < j]
        for _ in range(3):
            inp = atoms.copy()
            inp.set_positions(target + rng.normal(scale=0.1, size=target.shape))
            db.write(inp, mol_id=mol_id, input_kind="thermal", smiles=name, method="as-given", source="g2",
                     data={"target_positions": target, "ref_energy": np.array([np.nan]), "bonds": bonds,
                           "bond_orders": np.ones(len(bonds))})
            mol_ids.append(mol_id)
    mol_ids = np.asarray(mol_ids)
    rows = np.arange(len(mol_ids))
    np.savez(os.path.join(os.path.dirname(path), "split.npz"), train_idx=rows[mol_ids < 8],
             val_idx=rows[mol_ids == 8], test_idx=rows[mol_ids == 9])


@pytest.fixture(scope="module")
def db_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tmd_data") / "g2.db")
    try:
        from energyloss_plugins.data import build_dataset
    except ImportError:
        _fallback_db(path)
        return path
    build_dataset("g2", path, method="mmff", inputs=("thermal",), n_thermal=3, temperature=3000.0,
                  max_molecules=10, max_heavy_atoms=6, seed=0, progress=False)
    return path


def _molecule(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.tensor([6, 8, 1, 1, 7, 1][:n])
    pos = torch.randn(n, 3, generator=g) * 1.2
    return z, pos


# ----------------------------------------------------------------------------------- registration
def test_import_registers_losses_heads_datasets():
    from torchmdnet import datasets
    from torchmdnet.loss import loss_class_mapping
    from torchmdnet.models import output_modules

    assert loss_class_mapping["energy_loss"] is torchmdnet_ext.energy_loss
    assert loss_class_mapping["kabsch_loss"] is torchmdnet_ext.kabsch_loss
    for name in ("PositionOutput", "NoiseOutput", "EquivariantPositionOutput", "EquivariantNoiseOutput"):
        assert hasattr(output_modules, name)
    assert "PositionOutput" in output_modules.__all__
    assert datasets.EnergyLossDB is torchmdnet_ext.EnergyLossDB and "PositionHDF5" in datasets.__all__
    # the console parser (TorchMD-Net's own) now accepts the names on the command line
    from torchmdnet_ext.cli import get_argparse

    args = get_argparse().parse_args(["--train-loss", "energy_loss", "--output-model", "PositionOutput",
                                      "--dataset", "EnergyLossDB", "--task", "diffusion", "--noise-schedule", "cosine"])
    assert (args.train_loss, args.task, args.noise_schedule) == ("energy_loss", "diffusion", "cosine")


def test_registered_energy_loss_matches_core_and_rejects_energies():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    opts = {"coefficients": "exp", "graph": "complete"}
    assert torch.allclose(torchmdnet_ext.energy_loss(pred, target, batch, **opts),
                          call_loss("energy", pred, target, batch, **opts))
    assert torch.allclose(torchmdnet_ext.kabsch_loss(pred, target, batch), call_loss("kabsch", pred, target, batch))
    with pytest.raises(ValueError, match="energyloss-torchmd-train"):
        torchmdnet_ext.energy_loss(torch.randn(4, 1), torch.randn(4, 1))  # stock LNNP: energies (B, 1)


# ------------------------------------------------------------------------------------------ heads
@pytest.mark.parametrize("arch", ["tensornet", "equivariant-transformer"])
def test_position_head_identity_at_init_and_equivariant(arch):
    from torchmdnet.models.model import create_model

    from torchmdnet_ext.module import prepare_hparams

    torch.manual_seed(0)
    model = create_model(prepare_hparams(tiny_model_args(arch)))
    z, pos = _molecule()
    y, _ = model(z, pos)
    assert y.shape == (6, 3) and torch.allclose(y, pos, atol=1e-6)  # Δ = 0 at initialisation
    with torch.no_grad():  # give the head a non-zero displacement
        for p in model.output_model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    rot = random_rotations(1, generator=torch.Generator().manual_seed(3))[0]
    shift = torch.tensor([0.3, -1.0, 2.0])
    y, _ = model(z, pos)
    y_rot, _ = model(z, pos @ rot.T + shift)
    assert not torch.allclose(y, pos, atol=1e-4)
    assert torch.allclose(y_rot, y @ rot.T + shift, atol=1e-4)


@pytest.mark.parametrize("arch", ["tensornet", "equivariant-transformer"])
def test_noise_head_needs_time_and_samples(arch):
    from torchmdnet.models.model import create_model

    from torchmdnet_ext.module import make_objective, prepare_hparams

    h = prepare_hparams(tiny_model_args(arch, "NoiseOutput", task="diffusion"))
    model = create_model(h)
    z, pos = _molecule()
    with pytest.raises(ValueError, match="denoiser"):
        model(z, pos)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    x = torchmdnet_ext.sample_positions(model, z, batch, objective=make_objective(h), steps=3,
                                        generator=torch.Generator().manual_seed(0))
    assert x.shape == (6, 3) and torch.isfinite(x).all()
    assert torch.allclose(x[:3].mean(0), torch.zeros(3), atol=1e-5)  # zero centre of mass


def test_prepare_hparams_errors():
    from torchmdnet_ext.module import prepare_hparams

    with pytest.raises(ValueError, match="NoiseOutput"):
        prepare_hparams(tiny_model_args(output_model="PositionOutput", task="diffusion"))
    with pytest.raises(ValueError, match="coefficient"):
        prepare_hparams(tiny_model_args(train_loss="energy_loss", train_loss_arg={"coefficients": "expp"}))
    with pytest.raises(ValueError, match="position targets"):
        prepare_hparams(tiny_model_args(train_loss="huber_loss"))
    h = prepare_hparams(tiny_model_args(output_model="Scalar", train_loss_arg="{coefficients: inverse}"))
    assert h["output_model"].startswith("PositionOutput") and h["train_loss_arg"] == {"coefficients": "inverse"}


def test_cli_task_resolution(tmp_path):
    from torchmdnet_ext.cli import get_args

    stock = get_args(["--dataset", "QM9", "--log-dir", str(tmp_path / "a")])
    assert stock.task == "energy" and stock.output_model == "Scalar"  # TorchMD-Net's own training, unchanged
    pos = get_args(["--dataset", "EnergyLossDB", "--log-dir", str(tmp_path / "b"), "--log-structure-metrics", "false",
                    "--train-loss", "kabsch_loss", "--dataset-arg", "{target_frame: random}"])
    assert pos.task == "structure" and pos.output_model.startswith("PositionOutput")
    assert pos.log_structure_metrics is False and pos.dataset_arg == {"target_frame": "random"}
    assert (tmp_path / "b" / "input.yaml").exists()


# --------------------------------------------------------------------------------------- datasets
def test_datasets_db_hdf5_frames_and_splits(db_path, tmp_path):
    from torch_geometric.loader import DataLoader

    from torchmdnet_ext.datasets import convert_split

    ds = torchmdnet_ext.EnergyLossDB(db_path)
    assert len(ds) >= 10
    d = ds[0]
    assert d.pos.shape == d.pos_target.shape and d.z.dtype == torch.long and d.bond_index.shape[0] == 2
    batch = next(iter(DataLoader([ds[0], ds[1]], batch_size=2)))
    n0 = ds[0].num_nodes
    assert torch.equal(batch.bond_index[:, ds[0].bond_index.shape[1]:], ds[1].bond_index + n0)  # flat indices

    rotated = torchmdnet_ext.EnergyLossDB(db_path, target_frame="random", rotation_seed=1)
    t0, t1 = d.pos_target.double(), rotated[0].pos_target.double()
    assert not torch.allclose(t0, t1, atol=1e-3)
    assert torch.allclose(torch.cdist(t0, t0), torch.cdist(t1, t1), atol=1e-4)
    assert torch.equal(rotated[0].pos, d.pos)

    h5 = torchmdnet_ext.write_position_hdf5(db_path, str(tmp_path / "pos.h5"))
    hds = torchmdnet_ext.PositionHDF5(h5)
    assert len(hds) == len(ds)
    j = int(np.nonzero(hds.rows == ds.rows[0])[0][0])
    assert torch.allclose(hds[j].pos, d.pos) and torch.allclose(hds[j].pos_target, d.pos_target)

    out = convert_split(ds, ds.split_file, str(tmp_path / "s.npz"))
    with np.load(out) as s:
        parts = [s[k] for k in ("idx_train", "idx_val", "idx_test")]
    assert sum(len(p) for p in parts) == len(ds) and len(set(np.concatenate(parts))) == len(ds)
    mols = [set(ds.mol_ids[p]) for p in parts]
    assert not (mols[0] & mols[1]) and not (mols[0] & mols[2])  # split by molecule


@pytest.mark.parametrize("data_springs", ["false", "true"])
def test_diffusion_training_in_process_et(db_path, tmp_path, data_springs):
    import lightning.pytorch as pl

    from torchmdnet_ext.cli import get_args
    from torchmdnet_ext.data import PositionDataModule
    from torchmdnet_ext.springs import COMPLETE_PAIRS, PAIRS

    args = get_args(["--dataset", "EnergyLossDB", "--dataset-root", db_path, "--task", "diffusion",
                     "--model", "equivariant-transformer", "--embedding-dimension", "16", "--num-layers", "1",
                     "--num-heads", "2", "--num-rbf", "8", "--batch-size", "8", "--num-workers", "0",
                     "--train-loss", "energy_loss", "--train-loss-arg", "{coefficients: exp, graph: complete}",
                     "--log-dir", str(tmp_path), "--sampling-steps", "2", "--data-springs", data_springs])
    pl.seed_everything(0)
    data = PositionDataModule(args)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert (PAIRS in batch and COMPLETE_PAIRS in batch) == (data_springs == "true")
    model = torchmdnet_ext.PositionLNNP(args)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    trainer.fit(model, data)
    assert torch.isfinite(trainer.callback_metrics["val_total_energy_loss"])
    out = trainer.predict(model, data.test_dataloader())
    assert out[0].shape[1] == 3 and torch.isfinite(out[0]).all()


# --------------------------------------------------------------------------- console script (slow)
CONF = """\
dataset: EnergyLossDB
dataset_arg: {{input_kinds: [thermal]}}
model: tensornet
embedding_dimension: 32
num_layers: 1
num_rbf: 16
cutoff_upper: 4.0
max_num_neighbors: 32
train_loss: {loss}
train_loss_arg: {{coefficients: exp, graph: complete}}
batch_size: {batch_size}
inference_batch_size: 8
lr: 3.0e-3
num_epochs: {epochs}
save_interval: 1
num_workers: 0
seed: 1
precision: {precision}
"""


def _train(tmp_path, db_path, name, loss="energy_loss", batch_size=2, epochs=1, precision=32, extra=()):
    conf = tmp_path / f"{name}.yaml"
    conf.write_text(CONF.format(loss=loss, batch_size=batch_size, epochs=epochs, precision=precision))
    log_dir = tmp_path / name
    cmd = [SCRIPT, "--conf", str(conf), "--dataset-root", db_path, "--log-dir", str(log_dir), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return log_dir


def _metrics(log_dir):
    with open(log_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _ckpt(log_dir, epoch):
    return glob.glob(str(log_dir / f"epoch={epoch}-*.ckpt"))[0]


@pytest.mark.slow
def test_console_script_energy_and_mse_tensornet(db_path, tmp_path):
    from torch_geometric.loader import DataLoader
    from torchmdnet.models.model import load_model

    ds = torchmdnet_ext.EnergyLossDB(db_path, input_kinds=["thermal"])
    for loss, core in (("energy_loss", "energy"), ("mse_loss", "mse")):
        log_dir = _train(tmp_path, db_path, loss, loss=loss)
        rows = _metrics(log_dir)
        assert any(r.get(f"val_total_{loss}") for r in rows) and any(r.get("test_total_l1_loss") for r in rows)
        ckpt = _ckpt(log_dir, 0)
        model = load_model(ckpt)  # TorchMD-Net's own loader, after import torchmdnet_ext
        idx = np.load(log_dir / "splits.npz")["idx_train"]
        b = next(iter(DataLoader([ds[int(i)] for i in idx], batch_size=len(idx))))
        with torch.no_grad():
            y, _ = model(b.z, b.pos, b.batch)
        assert y.shape == b.pos.shape and torch.isfinite(y).all()
        # the untrained model returns its input (Δ = 0): the loss decreased in the epoch
        before = call_loss(core, b.pos, b.pos_target, b.batch).item()
        after = call_loss(core, y, b.pos_target, b.batch).item()
        assert after < before, (loss, before, after)

    # without the import, TorchMD-Net's load_model says what to import
    code = f"from torchmdnet.models.model import load_model; load_model({ckpt!r})"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode != 0 and "import torchmdnet_ext" in res.stderr


@pytest.mark.slow
def test_ddp_two_processes_agree_with_one(db_path, tmp_path):
    """2 CPU processes with half the batch each = 1 process with the whole batch (float64)."""
    ds = torchmdnet_ext.EnergyLossDB(db_path, input_kinds=["thermal"])
    split = ds.split_file
    rows = np.load(split)["train_idx"]
    n_train = len(ds.dataset_indices(rows)) // 2 * 2
    split_even = tmp_path / "even_split.npz"  # an even train set: one step per epoch, same rows in both runs
    with np.load(split) as s:
        np.savez(split_even, train_idx=s["train_idx"][:n_train], val_idx=s["val_idx"], test_idx=s["test_idx"])
    extra = ["--splits", str(split_even)]
    one = _train(tmp_path, db_path, "one", batch_size=n_train, epochs=2, precision=64, extra=[*extra, "--ngpus", "1"])
    two = _train(
        tmp_path, db_path, "two", batch_size=n_train // 2, epochs=2, precision=64, extra=[*extra, "--ngpus", "2"]
    )
    sd1 = torch.load(_ckpt(one, 1), map_location="cpu", weights_only=True)["state_dict"]
    sd2 = torch.load(_ckpt(two, 1), map_location="cpu", weights_only=True)["state_dict"]
    assert sd1.keys() == sd2.keys()
    for key in sd1:
        assert torch.allclose(sd1[key], sd2[key], rtol=1e-7, atol=1e-9), key
    init = torch.load(_ckpt(one, 0), map_location="cpu", weights_only=True)["state_dict"]
    moved = sum(not torch.equal(init[k], sd1[k]) for k in sd1)
    assert moved > 0
    train1 = [float(r["train_total_energy_loss"]) for r in _metrics(one) if r.get("train_total_energy_loss")]
    train2 = [float(r["train_total_energy_loss"]) for r in _metrics(two) if r.get("train_total_energy_loss")]
    assert np.allclose(train1, train2, rtol=1e-6)


@pytest.mark.slow
def test_console_script_trains_on_hessian_fitted_springs(tmp_path):
    """End to end: springs fitted to MMFF94's Hessian at each target, stored in the database, and
    selected in the conf as `coefficients: hessian`; one epoch lowers the loss on those springs."""
    from torch_geometric.loader import DataLoader
    from torchmdnet.models.model import load_model

    from energyloss_plugins.ase import MMFFCalculator, add_springs_to_db
    from energyloss_plugins.data import build_dataset

    smi = tmp_path / "small.smi"
    smi.write_text("\n".join(["CCO", "CC=O", "CCN", "OCCO", "CC(=O)O", "CCC", "CNC", "COC"]) + "\n")
    db = str(tmp_path / "springs.db")
    build_dataset(str(smi), db, method="mmff", inputs=("thermal",), n_thermal=3, temperature=3000.0, seed=0,
                  progress=False)
    assert add_springs_to_db(db, MMFFCalculator, graph="complete", k_min=1e-2) > 0
    ds = torchmdnet_ext.EnergyLossDB(db, input_kinds=["thermal"])
    assert "spring_index" in ds[0] and ds[0].spring_k.shape[0] == ds[0].spring_index.shape[1]

    conf = tmp_path / "hessian.yaml"
    conf.write_text(CONF.format(loss="energy_loss", batch_size=2, epochs=1, precision=32)
                    .replace("coefficients: exp", "coefficients: hessian"))
    log_dir = tmp_path / "hessian"
    res = subprocess.run([SCRIPT, "--conf", str(conf), "--dataset-root", db, "--log-dir", str(log_dir)],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    model = load_model(_ckpt(log_dir, 0))
    idx = np.load(log_dir / "splits.npz")["idx_train"]
    b = next(iter(DataLoader([ds[int(i)] for i in idx], batch_size=len(idx))))
    with torch.no_grad():
        y, _ = model(b.z, b.pos, b.batch)
    springs = dict(edge_index=b.spring_index, coefficients=b.spring_k.float())
    before = call_loss("energy", b.pos, b.pos_target, b.batch, **springs).item()
    after = call_loss("energy", y, b.pos_target, b.batch, **springs).item()
    assert after < before, (before, after)
