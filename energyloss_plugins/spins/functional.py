"""Functional losses on per-site logits for spin ground-state prediction (SPEC §4).

Every loss takes the same arguments so they are interchangeable:

- ``logits`` ``(B, H, W)``: z_i, the logit of q(ŷ_i = +1) = sigmoid(z_i); m_i = E_q[ŷ_i] = tanh(z_i/2).
- ``spins`` ``(B, H, W)`` in {-1, +1}: the target (ground-state) configuration y.
- ``couplings`` ``(B, 2, H, W)``: see :mod:`energyloss_plugins.spins.lattice`.

Each loss is a sum over the sites of a lattice (an extensive quantity, like an energy);
``reduction="mean"`` averages these per-lattice values over the batch, ``"sum"`` adds them and
``"none"`` returns the ``(B,)`` per-lattice values.

Losses:

- ``local_field``: J = (1/T) Σ_i w_i q(ŷ_i ≠ y_i) - Σ_i H(q_i), with w_i = y_i h_i(y) + h0. This is
  the variational free energy of E_LF(ŷ, y) = Σ_i w_i (1 - y_i ŷ_i)/2 (paper Eq. 15-16, SPEC
  convention). Per site its minimiser is q(ŷ_i = y_i) = sigmoid(w_i / T).
- ``cross_entropy``: Σ_i -log q(ŷ_i = y_i) = Σ_i softplus(-y_i z_i).
- ``margin``: hinge loss Σ_i max(0, margin - y_i z_i) (the two-class multi-margin loss with
  z = z_+ - z_-).
- ``true_energy``: E_q[E(ŷ)] - T S(q) = -Σ_<ij> J_ij m_i m_j - T Σ_i H(q_i). Not supervised: the
  target spins are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import (
    check_couplings,
    check_lattice_match,
    check_logits,
    check_positive_scalar,
    check_reduction,
    check_spins,
)
from .lattice import ising_energy, local_fields

__all__ = [
    "binary_entropy_from_logits",
    "local_field_weights",
    "local_field_energy",
    "local_field_free_energy_loss",
    "cross_entropy_spin_loss",
    "margin_spin_loss",
    "true_energy_free_energy_loss",
    "SPIN_LOSS_FUNCTIONS",
    "get_spin_loss_function",
    "spin_loss_names",
]

DEFAULT_H0 = 4.5
"""Default offset h0: above the bound max |h_i| <= 4 of a square lattice with |J| <= 1, so the
target is the unique minimiser of E_LF for any target configuration (SPEC §4)."""

DEFAULT_T_LOCAL_FIELD = 0.25
"""Default temperature of the local-field loss. The weights are w_i in [h0, h0 + 4] (about 5-8 at
ground states with h0 = 4.5). In the benchmark's sweep on validation lattices (docs/spins.md) T = 0.25
with h0 = 4.5 is within the seed spread of the best setting, while T = 0.1 with h0 = 4.5 made the model
collapse (saturated logits, vanishing gradients)."""

DEFAULT_T_TRUE_ENERGY = 0.1
"""Default temperature of the true-energy free energy (bond energies are O(0.5)); within the seed
spread of the validation sweep's best (T = 0.3), and clearly better than T >= 1 (docs/spins.md)."""


def _reduce(per_lattice: Tensor, reduction: str) -> Tensor:
    check_reduction(reduction)
    if reduction == "mean":
        return per_lattice.mean()
    if reduction == "sum":
        return per_lattice.sum()
    return per_lattice


def _maybe_flip_min(per_lattice: Callable[[float], Tensor], flip_invariant: bool) -> Tensor:
    """``per_lattice(+1)``, or the elementwise min over the global flip y -> -y."""
    if not flip_invariant:
        return per_lattice(1.0)
    return torch.minimum(per_lattice(1.0), per_lattice(-1.0))


def _validate(
    logits: Tensor, spins: Tensor | None, couplings: Tensor | None, need_spins: bool, need_couplings: bool
) -> None:
    check_logits(logits)
    if need_spins:
        if spins is None:
            raise ValueError("This loss needs the target spins (B, H, W) in {-1, +1}; got None.")
        check_spins(spins)
        check_lattice_match(logits.shape, spins, "spins")
    if need_couplings:
        if couplings is None:
            raise ValueError("This loss needs the couplings (B, 2, H, W); got None.")
        check_couplings(couplings)
        check_lattice_match(logits.shape, couplings, "couplings")


def binary_entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy H(q_i) in nats of q(ŷ_i = +1) = sigmoid(z_i), elementwise, stable for any z.

    H = p softplus(-z) + (1 - p) softplus(z) with p = sigmoid(z); finite gradient everywhere.
    """
    p = torch.sigmoid(logits)
    return p * F.softplus(-logits) + (1.0 - p) * F.softplus(logits)


def local_field_weights(spins: Tensor, couplings: Tensor, h0: float = DEFAULT_H0) -> Tensor:
    """Per-site weights ``w_i = y_i h_i(y) + h0`` of the local-field energy, shape ``(B, H, W)``.

    ``y_i h_i(y)`` is half the energy cost of flipping spin i alone. All weights are positive (the
    target is the unique minimiser of E_LF) when ``h0 > max_i |h_i|`` (4 suffices for |J| <= 1 on
    a square lattice), or when ``h0 > 0`` and the target is a ground state.
    The weights depend on the target only and carry no gradient.
    """
    check_spins(spins)
    check_couplings(couplings)
    if not float(h0) >= 0 or not math.isfinite(float(h0)):  # negative h0 makes ground-state weights negative
        raise ValueError(f"h0 must be a finite number >= 0 (default {DEFAULT_H0}), got {h0}.")
    y = spins.to(couplings.dtype)
    with torch.no_grad():
        return y * local_fields(y, couplings.detach()) + h0


def local_field_energy(pred_spins: Tensor, spins: Tensor, couplings: Tensor, h0: float = DEFAULT_H0) -> Tensor:
    """E_LF(ŷ, y) = Σ_i w_i (1 - y_i ŷ_i) / 2 per lattice, shape ``(B,)``.

    ``pred_spins`` may be real-valued (e.g. magnetisations m); it is linear in them.
    """
    if pred_spins.shape != spins.shape:
        raise ValueError(f"pred_spins {tuple(pred_spins.shape)} and spins {tuple(spins.shape)} must match.")
    w = local_field_weights(spins, couplings, h0)
    y = spins.to(w.dtype)
    return (w * (1.0 - y * pred_spins) / 2.0).sum(dim=(-2, -1))


def local_field_free_energy_loss(
    logits: Tensor,
    spins: Tensor,
    couplings: Tensor,
    T: float = DEFAULT_T_LOCAL_FIELD,
    h0: float = DEFAULT_H0,
    reduction: str = "mean",
    flip_invariant: bool = False,
) -> Tensor:
    """Local-field free-energy loss (the paper's discrete energy loss, SPEC §4 convention).

    J = (1/T) E_q[E_LF(ŷ, y)] - S(q) = Σ_i [ (w_i/T) sigmoid(-y_i z_i) - H(q_i) ],
    w_i = y_i h_i(y) + h0. Per site the unique minimiser is y_i z_i = w_i / T, so sign(z) = y
    whenever all w_i > 0 (h0 > max |h_i|).

    Args:
        logits: ``(B, H, W)`` logits of q(ŷ_i = +1).
        spins: ``(B, H, W)`` target spins in {-1, +1}.
        couplings: ``(B, 2, H, W)``.
        T: temperature > 0; sets the target confidence sigmoid(w_i / T).
        h0: weight offset.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over lattices.
        flip_invariant: use min over the two gauges {y, -y} per lattice (beyond the paper; the
            weights w are gauge invariant). Makes the loss invariant to the global-flip
            convention of the labels.

    Returns:
        Scalar, or ``(B,)`` for ``reduction="none"``.
    """
    _validate(logits, spins, couplings, True, True)
    T = check_positive_scalar("T", T)
    w = local_field_weights(spins, couplings, h0).to(logits.dtype)
    y = spins.to(logits.dtype)
    entropy = binary_entropy_from_logits(logits).sum(dim=(-2, -1))

    def per_lattice(sign: float) -> Tensor:
        return ((w / T) * torch.sigmoid(-sign * y * logits)).sum(dim=(-2, -1)) - entropy

    return _reduce(_maybe_flip_min(per_lattice, flip_invariant), reduction)


def cross_entropy_spin_loss(
    logits: Tensor,
    spins: Tensor,
    couplings: Tensor | None = None,
    reduction: str = "mean",
    flip_invariant: bool = False,
) -> Tensor:
    """Binary cross-entropy Σ_i softplus(-y_i z_i) per lattice (``couplings`` is ignored).

    Args/Returns: as :func:`local_field_free_energy_loss`.
    """
    _validate(logits, spins, couplings, True, couplings is not None)
    y = spins.to(logits.dtype)

    def per_lattice(sign: float) -> Tensor:
        return F.softplus(-sign * y * logits).sum(dim=(-2, -1))

    return _reduce(_maybe_flip_min(per_lattice, flip_invariant), reduction)


def margin_spin_loss(
    logits: Tensor,
    spins: Tensor,
    couplings: Tensor | None = None,
    margin: float = 1.0,
    reduction: str = "mean",
    flip_invariant: bool = False,
) -> Tensor:
    """Hinge (margin) loss Σ_i max(0, margin - y_i z_i) per lattice (``couplings`` is ignored).

    Args/Returns: as :func:`local_field_free_energy_loss`; ``margin`` > 0.
    """
    _validate(logits, spins, couplings, True, couplings is not None)
    margin = check_positive_scalar("margin", margin)
    y = spins.to(logits.dtype)

    def per_lattice(sign: float) -> Tensor:
        return F.relu(margin - sign * y * logits).sum(dim=(-2, -1))

    return _reduce(_maybe_flip_min(per_lattice, flip_invariant), reduction)


def true_energy_free_energy_loss(
    logits: Tensor,
    spins: Tensor | None,
    couplings: Tensor,
    T: float = DEFAULT_T_TRUE_ENERGY,
    reduction: str = "mean",
) -> Tensor:
    """True-energy free energy E_q[E(ŷ)] - T S(q) = -Σ_<ij> J_ij m_i m_j - T Σ_i H(q_i).

    Exact for the factorised q (bonds join distinct sites). Not a supervised loss: ``spins`` is
    ignored (may be None). Its minimisers are not unique (global flip, local minima).

    Args/Returns: as :func:`local_field_free_energy_loss`.
    """
    _validate(logits, spins, couplings, False, True)
    if spins is not None:
        check_spins(spins)
        check_lattice_match(logits.shape, spins, "spins")
    T = check_positive_scalar("T", T)
    m = torch.tanh(logits / 2.0)
    energy = ising_energy(m, couplings.to(logits.dtype))
    entropy = binary_entropy_from_logits(logits).sum(dim=(-2, -1))
    return _reduce(energy - T * entropy, reduction)


SPIN_LOSS_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "local_field": local_field_free_energy_loss,
    "cross_entropy": cross_entropy_spin_loss,
    "margin": margin_spin_loss,
    "true_energy": true_energy_free_energy_loss,
}

_ALIASES = {
    "lf": "local_field",
    "local_field_free_energy": "local_field",
    "local_energy": "local_field",
    "ce": "cross_entropy",
    "bce": "cross_entropy",
    "hinge": "margin",
    "true": "true_energy",
}


def spin_loss_names() -> list[str]:
    """Canonical names of the registered spin losses."""
    return list(SPIN_LOSS_FUNCTIONS)


def canonical_loss_name(name: str) -> str:
    """Resolve an alias (``lf``, ``ce``, ``hinge``, ...) to the canonical name, or raise."""
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in SPIN_LOSS_FUNCTIONS:
        raise ValueError(
            f"Unknown spin loss {name!r}; valid names are {spin_loss_names()} " f"(aliases: {sorted(_ALIASES)})."
        )
    return key


def get_spin_loss_function(name: str) -> Callable[..., Tensor]:
    """The functional loss registered under ``name`` (or an alias)."""
    return SPIN_LOSS_FUNCTIONS[canonical_loss_name(name)]
