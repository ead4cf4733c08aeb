"""What every functional loss shares: the reductions, autocast off, per-structure reduction."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from energyloss_plugins.layouts import FlatBatch, structure_counts

REDUCTIONS = ("mean", "sum", "none")
#: Input dtypes the losses compute and return in float32.
LOW_PRECISION = (torch.float16, torch.bfloat16)


def no_autocast(x: Tensor):
    """Autocast off on ``x``'s device (the loss computes in the inputs' precision), where autocast exists."""
    if torch.amp.is_autocast_available(x.device.type):
        return torch.autocast(device_type=x.device.type, enabled=False)
    return contextlib.nullcontext()


def reduce_structures(per_structure: Tensor, flat: FlatBatch, reduction: str, normalize: bool) -> Tensor:
    """``(B,)`` per-structure values, divided by the atom counts with ``normalize``, then reduced."""
    if normalize:
        counts = structure_counts(flat.batch, flat.n_structures)
        per_structure = per_structure / counts.clamp_min(1).to(per_structure.dtype)
    if reduction == "none":
        return per_structure
    if per_structure.numel() == 0:  # empty batch: 0, still connected to the graph
        return flat.pred.sum() * 0.0
    return per_structure.mean() if reduction == "mean" else per_structure.sum()
