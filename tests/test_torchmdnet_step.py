"""PositionLNNP keeps upstream LNNP.step's contract (signature, y_weight, EMA) and logs
dataset-level structure metrics (StructureMetrics) per epoch."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

pytest.importorskip("torchmdnet")
pytest.importorskip("lightning")

import torchmdnet_ext  # noqa: E402,F401  (registers the heads)
from _molecules import dataset_metrics, noisy_molecules  # noqa: E402
from _torchmdnet_args import tiny_model_args  # noqa: E402
from energyloss_plugins.losses import call_loss  # noqa: E402


def _data(n: int, seed: int = 0) -> list:
    from torch_geometric.data import Data

    return [Data(z=z, pos=noisy.float(), pos_target=target.float()) for noisy, target, z in noisy_molecules(n, seed)]


def _batch(n: int = 4, seed: int = 0):
    from torch_geometric.data import Batch

    return Batch.from_data_list(_data(n, seed))


def _module(**hparams):
    from torchmdnet_ext import PositionLNNP

    torch.manual_seed(0)
    return PositionLNNP(tiny_model_args(train_loss="energy_loss", train_loss_arg={"coefficients": "exp"}, **hparams))


def test_step_has_upstream_signature():
    from torchmdnet.module import LNNP

    from torchmdnet_ext import PositionLNNP

    assert inspect.signature(PositionLNNP.step) == inspect.signature(LNNP.step)


def test_y_weight_scales_the_returned_and_logged_total():
    module = _module()
    batch = _batch()
    pairs = [("energy_loss", module.train_loss_fn)]
    full = module.step(batch.clone(), pairs, "train")
    assert full.requires_grad and float(full.detach()) > 0
    module.hparams.y_weight = 0.25
    quarter = module.step(batch.clone(), pairs, "train")
    assert torch.allclose(quarter, 0.25 * full)
    assert torch.allclose(module.losses["train"]["total"]["energy_loss"][-1], 0.25 * full.detach())
    assert torch.allclose(module.losses["train"]["y"]["energy_loss"][-1], full.detach())  # the unweighted loss
    module.hparams.y_weight = 0.0  # as upstream: no y entry, a zero total
    n_y = len(module.losses["train"]["y"]["energy_loss"])
    assert float(module.step(batch.clone(), pairs, "train").detach()) == 0.0
    assert len(module.losses["train"]["y"]["energy_loss"]) == n_y


def test_ema_alpha_y_smooths_as_upstream():
    module = _module(ema_alpha_y=0.5)
    a, b = _batch(seed=1), _batch(seed=2)
    pairs = [("energy_loss", module.train_loss_fn)]
    raw = _module()  # same weights (same seed), no smoothing
    la = raw.step(a.clone(), pairs, "train")
    lb = raw.step(b.clone(), pairs, "train")
    assert torch.allclose(module.step(a.clone(), pairs, "train"), la)  # first value: no history
    assert torch.allclose(module.step(b.clone(), pairs, "train"), 0.5 * lb + 0.5 * la.detach())


def test_upstream_loss_pairs_get_the_core_loss_of_their_name():
    """Upstream's validation passes ("l1_loss", torchmdnet.loss.l1_loss); positions get the core's MAE."""
    from torchmdnet.loss import l1_loss

    module = _module()
    batch = _batch()
    value = module.step(batch.clone(), [("l1_loss", l1_loss)], "val")
    with torch.no_grad():
        pred, _ = module(batch.z, batch.pos, batch=batch.batch)
    assert torch.allclose(value, call_loss("mae", pred, batch.pos_target, batch.batch))
    with pytest.raises(ValueError, match="position targets"):
        module.step(batch.clone(), [("huber_loss", l1_loss)], "val")


def test_validation_logs_dataset_level_structure_metrics():
    import lightning.pytorch as pl
    from torch_geometric.loader import DataLoader

    module = _module()
    data = _data(7, seed=3)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, inference_mode=False,
                         num_sanity_val_steps=0)
    # (upstream's LNNP cannot run trainer.validate: its epoch end reads the optimiser's learning rate)
    trainer.fit(module, DataLoader(data[:2], batch_size=2), DataLoader(data, batch_size=3))  # val batches 3, 3, 1
    whole = next(iter(DataLoader(data, batch_size=len(data))))
    with torch.no_grad():
        pred, _ = module(whole.z, whole.pos, batch=whole.batch)
    # exact over the 7 molecules (molecule stability 3/7 here), not the mean of the 3 batch means
    logged = trainer.callback_metrics
    for key, value in dataset_metrics(pred, whole.pos_target, whole.batch, whole.z).items():
        assert math.isclose(float(logged[f"val_{key}"]), value, rel_tol=1e-5), key
    assert "val_total_energy_loss" in logged and "val_total_l1_loss" in logged
