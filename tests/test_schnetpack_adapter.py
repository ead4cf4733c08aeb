"""SchNetPack adapter: loss entry, outputs, tasks, heads, rotation invariance, diffusion (in process, tiny data)."""

import math

import pytest
import torch

spk = pytest.importorskip("schnetpack")
pytest.importorskip("rdkit")

import schnetpack.properties as P  # noqa: E402

from _schnetpack_helpers import diffusion_task as _diffusion_task  # noqa: E402
from _schnetpack_helpers import (  # noqa: E402
    loader,
    small_painn,
    small_so3net,
    structure_task,
    tiny_structure_db,
)
from energyloss_plugins.alignment import random_rotations  # noqa: E402
from energyloss_plugins.data import split_file_for  # noqa: E402
from schnetpack_ext import (  # noqa: E402
    EnergyLoss,
    PositionHead,
    RotateTarget,
    StructureOutput,
    full_neighbor_list,
    predict_structures,
)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return tiny_structure_db(str(tmp_path_factory.mktemp("spk_tiny")))


@pytest.fixture(scope="module")
def batch(db):
    return next(iter(loader(db, batch_size=6)))


def _rotate_per_structure(x, idx_m, rotations):
    return torch.einsum("nij,nj->ni", rotations[idx_m], x)


def test_loss_entry_switches_with_one_key_and_validates():
    assert EnergyLoss(loss="mse").loss_name == "mse"
    assert EnergyLoss(loss="kabsch", coefficients="exp", graph="complete").objective.loss_name == "kabsch"
    with pytest.raises(ValueError, match="loss"):
        EnergyLoss(loss="energyy")
    with pytest.raises(ValueError, match="coefficient"):
        EnergyLoss(coefficients="expo")


def test_output_without_task_context_explains(batch):
    out = StructureOutput(loss_fn=EnergyLoss())
    pred = {"positions_pred": batch[P.R]}
    with pytest.raises(KeyError, match="StructureTask"):
        out.calculate_loss(pred, {"target_positions": batch["target_positions"]})


@pytest.mark.parametrize("loss", ["energy", "mse", "mae", "kabsch"])
def test_task_step_runs_and_has_gradients(batch, loss):
    torch.manual_seed(0)
    task = structure_task(loss)
    with task._context(batch):
        pred = task.predict_without_postprocessing(dict(batch))
        pred, targets = task.apply_constraints(pred, {"target_positions": batch["target_positions"]})
        value = task.loss_fn(pred, targets)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.parameters())


def test_rotating_targets_leaves_energy_loss_unchanged_inside_task(batch):
    """SPEC §2 invariance, through the task's own loss path (targets dict, _idx_m from the batch)."""
    torch.manual_seed(0)
    task = structure_task("energy")
    mse_task = structure_task("mse")
    mse_task.load_state_dict(task.state_dict())
    idx_m = batch[P.idx_m]
    n = int(batch[P.n_atoms].shape[0])
    rotations = random_rotations(n, generator=torch.Generator().manual_seed(1))
    target = batch["target_positions"]
    rotated = _rotate_per_structure(target, idx_m, rotations) + torch.randn(n, 3)[idx_m]

    def loss_of(t, tgt):
        with torch.no_grad(), t._context(batch):
            pred = t.predict_without_postprocessing(dict(batch))
            pred, targets = t.apply_constraints(pred, {"target_positions": tgt})
            return t.loss_fn(pred, targets)

    e0, e1 = loss_of(task, target), loss_of(task, rotated)
    assert torch.allclose(e0, e1, rtol=1e-4, atol=1e-7), (e0, e1)
    m0, m1 = loss_of(mse_task, target), loss_of(mse_task, rotated)
    assert m1 > 2 * m0  # the MSE baseline is not invariant


@pytest.mark.parametrize("make_rep", [small_painn, small_so3net], ids=["painn", "so3net"])
def test_position_head_is_equivariant(batch, make_rep):
    torch.manual_seed(0)
    task = structure_task("energy", representation=make_rep()).double()
    model = task.model
    inputs = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}
    rot = random_rotations(1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))[0]
    shift = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    moved = dict(inputs)
    moved[P.R] = inputs[P.R] @ rot.T + shift
    with torch.no_grad():
        out = model(dict(inputs))["positions_pred"]
        out_moved = model(moved)["positions_pred"]
    assert torch.allclose(out @ rot.T + shift, out_moved, atol=1e-8)
    assert not torch.allclose(out, inputs[P.R])  # a non-trivial displacement


def test_rotate_target_transform_is_a_fixed_rotation_per_sample():
    t = RotateTarget(seed=5)
    x = torch.randn(7, 3)
    a = t({P.idx: torch.tensor([3]), "target_positions": x.clone()})["target_positions"]
    b = t({P.idx: torch.tensor([3]), "target_positions": x.clone()})["target_positions"]
    c = t({P.idx: torch.tensor([4]), "target_positions": x.clone()})["target_positions"]
    assert torch.allclose(a, b) and not torch.allclose(a, c)
    assert torch.allclose(torch.cdist(a, a), torch.cdist(x, x), atol=1e-5)
    off = RotateTarget(enabled=False)({P.idx: torch.tensor([3]), "target_positions": x})
    assert torch.equal(off["target_positions"], x)


def test_predict_structures_returns_atoms(db, tmp_path):
    from ase.db import connect

    torch.manual_seed(0)
    task = structure_task("energy")
    with connect(db) as conn:
        atoms = [row.toatoms() for row in conn.select(limit=3)]
    path = tmp_path / "best_model"
    torch.save(task.model, path)
    out = predict_structures(str(path), atoms, trusted=True)  # a whole pickled model: the opt-in
    assert len(out) == 3 and all(len(a) == len(b) for a, b in zip(out, atoms, strict=True))
    assert all(math.isfinite(float(abs(a.positions).sum())) for a in out)


def test_full_neighbor_list_pairs_stay_inside_structures():
    idx_m = torch.tensor([0, 0, 0, 1, 1])
    nl = full_neighbor_list(idx_m)
    assert nl[P.idx_i].shape[0] == 3 * 2 + 2 * 1
    assert torch.equal(idx_m[nl[P.idx_i]], idx_m[nl[P.idx_j]])


@pytest.mark.parametrize("loss,parameterization", [("energy", "eps"), ("mse", "eps"), ("energy", "velocity")])
def test_diffusion_task_trains_and_samples_atoms(db, loss, parameterization):
    from ase import Atoms

    torch.manual_seed(0)
    task = _diffusion_task(loss, parameterization)
    data = loader(db, batch_size=6, load_properties=())
    batch = next(iter(data))
    opt = torch.optim.Adam(task.parameters(), lr=1e-3)
    for _ in range(2):
        new, extra = task._prepare(batch, 0, "train")
        with task._context(new, extra):
            pred = task.predict_without_postprocessing(new)
            pred, targets = task.apply_constraints(pred, {"diffusion_target": new["diffusion_target"]})
            value = task.loss_fn(pred, targets)
        assert torch.isfinite(value)
        opt.zero_grad()
        value.backward()
        opt.step()
    # centre-of-mass-free noise and outputs
    new, _ = task._prepare(batch, 0, "train")
    n = int(batch[P.n_atoms].shape[0])
    com = torch.zeros(n, 3).index_add_(0, batch[P.idx_m], new["diffusion_target"])
    assert com.abs().max() < 1e-4
    samples = task.sample([[6, 1, 1, 1, 1], [8, 1, 1]], steps=5, seed=0)
    assert len(samples) == 2 and all(isinstance(a, Atoms) for a in samples)
    assert [len(a) for a in samples] == [5, 3]
    assert all(abs(a.positions.mean(0)).max() < 1e-4 for a in samples)


def test_search_path_plugin_acts_only_on_schnetpack_apps():
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.config_search_path import ConfigSearchPath

    from hydra_plugins.energyloss_plugins_searchpath.energyloss_searchpath import EnergyLossSearchPathPlugin

    spk_path = ConfigSearchPathImpl()
    spk_path.append("main", "pkg://schnetpack.configs")
    EnergyLossSearchPathPlugin().manipulate_search_path(spk_path)
    assert any(e.path == "pkg://schnetpack_ext.configs" for e in spk_path.get_path())
    other = ConfigSearchPathImpl()
    other.append("main", "pkg://someapp.conf")
    EnergyLossSearchPathPlugin().manipulate_search_path(other)
    assert not any(e.path == "pkg://schnetpack_ext.configs" for e in other.get_path())
    assert isinstance(spk_path, ConfigSearchPath)


def test_shipped_experiments_compose_with_schnetpack_defaults(db):
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="schnetpack.configs", version_base="1.2"):
        for name, loss in [("energyloss_structure", "mse"), ("energyloss_diffusion", "energy")]:
            cfg = compose("train", overrides=[f"experiment={name}", f"data.datapath={db}", f"globals.loss={loss}"])
            assert cfg.task.outputs[0].loss_fn.loss == loss
            assert cfg.data.split_file == split_file_for(db) and cfg.data.num_train is None
            model = instantiate(cfg.model)
            assert isinstance(model.output_modules[0], PositionHead)


def test_structure_task_logs_dataset_level_metrics(db):
    """val_rmsd, val_molecule_stability, ... are exact over the validation set, whatever its batching."""
    import pytorch_lightning as pl

    from _molecules import dataset_metrics

    torch.manual_seed(0)
    task = structure_task("energy")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, inference_mode=False)
    trainer.validate(task, loader(db, batch_size=5), verbose=False)
    whole = next(iter(loader(db, batch_size=10**6)))
    with torch.no_grad():
        pred = task.predict_without_postprocessing(dict(whole))["positions_pred"]
    expected = dataset_metrics(pred, whole["target_positions"], whole[P.idx_m], whole[P.Z])
    for key, value in expected.items():
        assert math.isclose(float(trainer.callback_metrics[f"val_{key}"]), value, rel_tol=1e-5), key
