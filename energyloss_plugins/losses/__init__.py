"""Functional losses: the pair energy loss (SPEC §2) and its baselines, in every batch layout.

All losses take a prediction and a target in one of three layouts:

- flat: ``(N_total, d)`` positions plus ``batch`` ``(N_total,)`` (PyG/TorchMD-Net ``batch``,
  SchNetPack ``_idx_m``); no ``batch`` means one structure;
- padded: ``(B, N_max, d)`` plus ``mask`` ``(B, N_max)`` (EDM/JODO style);
- an explicit pair list ``edge_index`` ``(2, E)`` of flat atom indices (pair energy only).

and reduce per structure first. Defaults (the project's choice, see docs/losses.md):
``normalize=True`` divides each structure's value by its atom count (energy per atom, as the
paper's code divides every k by n), and ``reduction="mean"`` averages over structures;
``reduction="sum"`` sums, ``reduction="none"`` returns the ``(B,)`` per-structure values.
Structure ids need not be contiguous: see :func:`energyloss_plugins.layouts.structure_index`.

One module per family, re-exported here (``from energyloss_plugins.losses import X``):
:mod:`~energyloss_plugins.losses.pair_energy` (:class:`PairSprings`, :func:`resolve_springs`,
:func:`pair_energy_kernel`, :func:`pair_energy_loss`), :mod:`~energyloss_plugins.losses.baselines`
(:func:`mse_loss`, :func:`mae_loss`, :func:`kabsch_mse_loss`) and
:mod:`~energyloss_plugins.losses.registry` (:data:`LOSSES`, :func:`get_loss`, :func:`loss_options`,
:func:`call_loss`).

The pair energy comes in two steps, springs of the reference then the kernel (the lean path):
see :mod:`~energyloss_plugins.losses.pair_energy` and docs/losses.md.
"""

from energyloss_plugins.losses._common import REDUCTIONS
from energyloss_plugins.losses.baselines import kabsch_mse_loss, mae_loss, mse_loss
from energyloss_plugins.losses.pair_energy import (
    MIN_REFERENCE_DISTANCE,
    PairSprings,
    pair_energy_kernel,
    pair_energy_loss,
    resolve_springs,
)
from energyloss_plugins.losses.registry import COMMON_OPTIONS, LOSSES, call_loss, get_loss, loss_options

__all__ = [
    "COMMON_OPTIONS", "LOSSES", "MIN_REFERENCE_DISTANCE", "REDUCTIONS", "PairSprings", "call_loss", "get_loss",
    "kabsch_mse_loss", "loss_options", "mae_loss", "mse_loss", "pair_energy_kernel", "pair_energy_loss",
    "resolve_springs",
]
