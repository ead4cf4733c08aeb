"""bf16 mixed precision (what Lightning's ``precision="bf16-mixed"`` turns on: autocast) trains through both
adapters: the loss of one training step is finite and close to the float32 one, and so are the gradients.

Tolerance: under bf16 autocast the network's matrix products round their inputs to 8 mantissa bits
(relative 2^-9 ≈ 0.2 % each); through the few layers of these models the outputs move by about 1 %, and the
losses compute in float32 (they turn autocast off), so the loss may differ by a few percent: rtol = 5 %.

TorchMD-Net runs the equivariant transformer (the shipped diffusion/generation confs' model): TensorNet's own
representation returns NaN under CPU bf16 autocast (TorchMD-Net 3.1, before any of this package's code).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("schnetpack")
pytest.importorskip("torchmdnet")

from _steps import TASKS, molecule_db, schnetpack_batch, schnetpack_task, torchmd_batch, torchmd_module  # noqa: E402

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
