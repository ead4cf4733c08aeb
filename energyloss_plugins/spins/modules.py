"""``nn.Module`` wrappers of :mod:`energyloss_plugins.spins.functional` and a name registry.

All modules share ``forward(logits, spins, couplings)`` with ``logits`` ``(B, H, W)``, ``spins``
``(B, H, W)`` in {-1, +1} and ``couplings`` ``(B, 2, H, W)``, so they are drop-in replacements for
each other (``cross_entropy`` and ``margin`` ignore the couplings, ``true_energy`` the spins).
"""

from __future__ import annotations

from torch import Tensor, nn

from . import functional as Fn
from ._checks import check_finite_scalar, check_positive_scalar, check_reduction

__all__ = [
    "LocalFieldFreeEnergyLoss",
    "CrossEntropySpinLoss",
    "MarginSpinLoss",
    "TrueEnergyFreeEnergyLoss",
    "SPIN_LOSSES",
    "get_spin_loss",
]


class _SpinLoss(nn.Module):
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)


class LocalFieldFreeEnergyLoss(_SpinLoss):
    """Local-field free-energy loss; see :func:`~.functional.local_field_free_energy_loss`.

    Args:
        T: temperature > 0 (target confidence sigmoid(w_i / T)).
        h0: weight offset; keep ``h0 > 4`` (|J| <= 1) for a unique minimum at any target.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over lattices.
    """

    def __init__(
        self,
        T: float = Fn.DEFAULT_T_LOCAL_FIELD,
        h0: float = Fn.DEFAULT_H0,
        reduction: str = "mean",
        flip_invariant: bool = False,
    ):
        super().__init__(reduction)
        self.T = check_positive_scalar("T", T)
        self.h0 = check_finite_scalar("h0", h0)
        self.flip_invariant = bool(flip_invariant)

    def forward(self, logits: Tensor, spins: Tensor, couplings: Tensor) -> Tensor:
        return Fn.local_field_free_energy_loss(
            logits, spins, couplings, T=self.T, h0=self.h0, reduction=self.reduction, flip_invariant=self.flip_invariant
        )

    def extra_repr(self) -> str:
        return f"T={self.T}, h0={self.h0}, reduction={self.reduction!r}, flip_invariant={self.flip_invariant}"


class CrossEntropySpinLoss(_SpinLoss):
    """Binary cross-entropy on per-site logits, summed over sites (``flip_invariant``: min over
    the global flip of the target)."""

    def __init__(self, reduction: str = "mean", flip_invariant: bool = False) -> None:
        super().__init__(reduction)
        self.flip_invariant = bool(flip_invariant)

    def forward(self, logits: Tensor, spins: Tensor, couplings: Tensor | None = None) -> Tensor:
        return Fn.cross_entropy_spin_loss(
            logits, spins, couplings, reduction=self.reduction, flip_invariant=self.flip_invariant
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, flip_invariant={self.flip_invariant}"


class MarginSpinLoss(_SpinLoss):
    """Hinge loss ``max(0, margin - y z)`` per site, summed over sites."""

    def __init__(self, margin: float = 1.0, reduction: str = "mean", flip_invariant: bool = False) -> None:
        super().__init__(reduction)
        self.margin = check_positive_scalar("margin", margin)
        self.flip_invariant = bool(flip_invariant)

    def forward(self, logits: Tensor, spins: Tensor, couplings: Tensor | None = None) -> Tensor:
        return Fn.margin_spin_loss(
            logits, spins, couplings, margin=self.margin, reduction=self.reduction, flip_invariant=self.flip_invariant
        )

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}, flip_invariant={self.flip_invariant}"


class TrueEnergyFreeEnergyLoss(_SpinLoss):
    """Entropy-regularised Ising energy of the predicted magnetisations (ignores the targets)."""

    def __init__(self, T: float = Fn.DEFAULT_T_TRUE_ENERGY, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.T = check_positive_scalar("T", T)

    def forward(self, logits: Tensor, spins: Tensor | None, couplings: Tensor) -> Tensor:
        return Fn.true_energy_free_energy_loss(logits, spins, couplings, T=self.T, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"T={self.T}, reduction={self.reduction!r}"


SPIN_LOSSES: dict[str, type[_SpinLoss]] = {
    "local_field": LocalFieldFreeEnergyLoss,
    "cross_entropy": CrossEntropySpinLoss,
    "margin": MarginSpinLoss,
    "true_energy": TrueEnergyFreeEnergyLoss,
}


def get_spin_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate the spin loss registered under ``name``.

    Valid names: ``local_field``, ``cross_entropy``, ``margin``, ``true_energy`` (aliases ``lf``,
    ``ce``, ``bce``, ``hinge``, ``true``, ...). ``kwargs`` go to the constructor, e.g.
    ``get_spin_loss("local_field", T=2.0, h0=4.5)``; an unknown keyword raises ``TypeError``.
    """
    return SPIN_LOSSES[Fn.canonical_loss_name(name)](**kwargs)
