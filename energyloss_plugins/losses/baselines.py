"""The baselines the energy loss replaces: per-atom MSE, MAE and MSE after Kabsch alignment.

Layouts, reductions and units: see :mod:`energyloss_plugins.losses`.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.alignment import kabsch_align
from energyloss_plugins.layouts import segment_sum, to_flat
from energyloss_plugins.losses._common import LOW_PRECISION, REDUCTIONS, no_autocast, reduce_structures


def _per_atom_loss(pred: Tensor, target: Tensor, batch: Tensor | None, mask: Tensor | None,
                   reduction: str, normalize: bool, per_atom: Callable[[Tensor, Tensor], Tensor],
                   align: bool = False, n_structures: int | None = None, validate_args: bool = True) -> Tensor:
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    _checks.check_tensor("pred", pred)
    _checks.check_tensor("target", target)
    with no_autocast(pred):
        if pred.dtype in LOW_PRECISION:
            pred, target = pred.float(), target.float()
        flat = to_flat(pred, target, batch, mask, n_structures, validate_args=validate_args)
        p = kabsch_align(flat.pred, flat.target, flat.batch, flat.n_structures) if align else flat.pred
        values = per_atom(p, flat.target.detach())
        per_structure = segment_sum(values, flat.batch, flat.n_structures)
        return reduce_structures(per_structure, flat, reduction, normalize)


def mse_loss(pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None, *,
             reduction: str = "mean", normalize: bool = True, n_structures: int | None = None,
             validate_args: bool = True) -> Tensor:
    """Squared displacement Σ_i |ŷ_i − y_i|² per structure (Å²; per atom with ``normalize``).

    Equals ``d`` times the element-wise ``torch.nn.functional.mse_loss`` of a single structure.
    Not invariant to rotations or translations: the baseline the energy loss replaces.
    ``batch``, ``n_structures`` and ``validate_args`` as in :func:`pair_energy_loss`.
    """
    return _per_atom_loss(pred, target, batch, mask, reduction, normalize, lambda p, t: ((p - t) ** 2).sum(-1),
                          n_structures=n_structures, validate_args=validate_args)


def mae_loss(pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None, *,
             reduction: str = "mean", normalize: bool = True, n_structures: int | None = None,
             validate_args: bool = True) -> Tensor:
    """Absolute error Σ_i Σ_c |ŷ_ic − y_ic| per structure (Å; per atom with ``normalize``)."""
    return _per_atom_loss(pred, target, batch, mask, reduction, normalize, lambda p, t: (p - t).abs().sum(-1),
                          n_structures=n_structures, validate_args=validate_args)


def kabsch_mse_loss(pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None, *,
                    reduction: str = "mean", normalize: bool = True, n_structures: int | None = None,
                    validate_args: bool = True) -> Tensor:
    """MSE after moving each predicted structure onto its target by the optimal proper rigid motion.

    The rotation is computed without gradient (as in the paper); the centring keeps its gradient.
    """
    return _per_atom_loss(pred, target, batch, mask, reduction, normalize,
                          lambda p, t: ((p - t) ** 2).sum(-1), align=True, n_structures=n_structures,
                          validate_args=validate_args)
