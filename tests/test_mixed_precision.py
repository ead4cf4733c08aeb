"""bf16 mixed precision trains through both adapters: a Lightning ``Trainer(precision="bf16-mixed")`` fit on the
CPU gives finite losses close to those of the same fit in float32 on the same batches, and under the autocast it
turns on, one step's loss and gradients are close to the float32 ones.

Tolerance: under bf16 autocast the network's matrix products round their inputs to 8 mantissa bits
(relative 2^-9 ≈ 0.2 % each); through the few layers of these models the outputs move by about 1 %, and the
losses compute in float32 (they turn autocast off), so the loss may differ by a few percent: rtol = 5 %.

TorchMD-Net runs the equivariant transformer (the shipped diffusion/generation confs' model): TensorNet's own
representation returns NaN under CPU bf16 autocast (TorchMD-Net 3.1, before any of this package's code).
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("schnetpack")
pytest.importorskip("torchmdnet")

from _steps import (  # noqa: E402
    N_MOLECULES,
    TASKS,
    molecule_db,
    schnetpack_batch,
    schnetpack_task,
    schnetpack_transforms,
    torchmd_batch,
    torchmd_data,
    torchmd_module,
)

RTOL = 0.05


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return molecule_db(str(tmp_path_factory.mktemp("bf16_db")))


def _step(module, batch, bf16: bool):
    module.zero_grad()
    module.train()
    torch.manual_seed(1)  # the same noise in both precisions
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = module.training_step(batch if isinstance(batch, dict) else batch.clone(), 0)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
    return loss.detach(), grads


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("adapter", ["schnetpack", "torchmdnet"])
def test_bf16_autocast_step_is_finite_and_close_to_float32(db, adapter, task):
    if adapter == "schnetpack":
        module, batch = schnetpack_task(task, "energy"), schnetpack_batch(db, task, "energy")
    else:
        module, batch = torchmd_module(task, "energy", model="equivariant-transformer"), torchmd_batch(task, "energy")
    full, full_grads = _step(module, batch, bf16=False)
    mixed, mixed_grads = _step(module, batch, bf16=True)
    assert mixed.dtype == torch.float32  # the loss computes in float32 under autocast
    assert torch.isfinite(mixed) and torch.isfinite(mixed_grads).all()
    torch.testing.assert_close(mixed, full, rtol=RTOL, atol=0.0)
    # the gradient direction survives bf16 (cosine similarity)
    cosine = torch.nn.functional.cosine_similarity(mixed_grads, full_grads, dim=0)
    assert cosine > 0.95, f"gradient cosine similarity {float(cosine):.3f}"


def _schnetpack_fit(db, task: str, precision: str) -> torch.Tensor:
    import pytorch_lightning as pl
    import schnetpack as spk

    module = schnetpack_task(task, "energy")
    load = ["target_positions"] if task == "structure" else []
    dataset = spk.data.ASEAtomsData(db, load_properties=load, transforms=schnetpack_transforms(task, "energy"))
    loader = spk.data.AtomsLoader(dataset, batch_size=N_MOLECULES, shuffle=False)  # one batch per epoch
    return _fit(pl, module, loader, precision)


def _torchmd_fit(task: str, precision: str) -> torch.Tensor:
    import lightning.pytorch as pl
    from torch_geometric.loader import DataLoader

    module = torchmd_module(task, "energy", model="equivariant-transformer")
    # The heads' last layers start at zero (an untrained model returns its input), which would hide bf16 from the
    # first loss: the same small seeded weights in both precisions.
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.dim() > 1 and not parameter.any():
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    loader = DataLoader(torchmd_data(task, "energy"), batch_size=N_MOLECULES)
    # a validation loader: PositionLNNP's scheduler (ReduceLROnPlateau) monitors val_total_energy_loss
    return _fit(pl, module, loader, precision, val=loader)


def _fit(pl, module, loader, precision: str, steps: int = 2, val=None) -> torch.Tensor:
    """Losses of ``steps`` optimiser steps of ``Trainer(precision=precision)`` on the CPU (one batch, seeded noise)."""
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(loss.detach())

    trainer = pl.Trainer(precision=precision, accelerator="cpu", devices=1, max_steps=steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, inference_mode=False, callbacks=[Record()])
    torch.manual_seed(1)  # the same noise (diffusion, generation) in both precisions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader, val)
    assert len(losses) == steps
    return torch.stack(losses)


@pytest.mark.parametrize("adapter", ["schnetpack", "torchmdnet"])
def test_trainer_bf16_mixed_fit_is_finite_and_close_to_float32(db, adapter):
    """Structure prediction, 2 optimiser steps: SchNetPack's PaiNN task and TorchMD-Net's PositionLNNP (ET)."""
    fit = (lambda precision: _schnetpack_fit(db, "structure", precision)) if adapter == "schnetpack" else (
        lambda precision: _torchmd_fit("structure", precision))
    full, mixed = fit("32-true"), fit("bf16-mixed")
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    assert mixed[0] != full[0]  # the network did run in bf16 (same parameters and batch in the first step)
    torch.testing.assert_close(mixed, full, rtol=RTOL, atol=0.0)
