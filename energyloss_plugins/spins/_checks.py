"""Input validation for the spin sub-package: its tensor layouts, on top of the core's checks.

Numbers, tensors and finiteness go through :mod:`energyloss_plugins._checks` (one number check for
the whole package: numpy scalars accepted, strings and NaN refused).
"""

from __future__ import annotations

import torch
from torch import Tensor

from energyloss_plugins._checks import check_finite, check_number, check_tensor

BOUNDARIES = ("open", "periodic")


def check_boundary(boundary: str) -> str:
    """Return ``boundary`` if it is a known boundary condition, else raise listing the valid ones."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"Unknown boundary {boundary!r}; valid boundaries are {list(BOUNDARIES)}.")
    return boundary


def check_couplings(couplings: Tensor, name: str = "couplings") -> None:
    """Couplings must be a finite float tensor of shape ``(B, 2, H, W)`` with ``H, W >= 2``."""
    check_tensor(name, couplings)
    if not couplings.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {couplings.dtype}; use .float().")
    if couplings.dim() != 4 or couplings.shape[1] != 2:
        raise ValueError(
            f"{name} must have shape (B, 2, H, W) (channel 0: bond to the right neighbour, channel 1: bond "
            f"to the neighbour below), got {tuple(couplings.shape)}; add a batch dimension with "
            f".unsqueeze(0) for a single lattice."
        )
    if couplings.shape[2] < 2 or couplings.shape[3] < 2:
        raise ValueError(f"{name}: the lattice must be at least 2x2, got {tuple(couplings.shape[2:])}.")
    check_finite(name, couplings)


def check_spins(spins: Tensor, name: str = "spins") -> None:
    """Spins must be a ``(B, H, W)`` tensor with values in {-1, +1}."""
    check_tensor(name, spins)
    if spins.dim() != 3:
        raise ValueError(
            f"{name} must have shape (B, H, W), got {tuple(spins.shape)}; add a batch dimension with "
            f".unsqueeze(0) for a single lattice."
        )
    if spins.numel() and not bool(((spins == 1) | (spins == -1)).all()):
        raise ValueError(
            f"{name} must hold only -1 and +1 (got other values, e.g. NaN or {{0, 1}} labels); convert "
            f"0/1 labels with 2 * y - 1."
        )


def check_logits(logits: Tensor, name: str = "logits") -> None:
    """Logits must be a finite float ``(B, H, W)`` tensor: logit of P(spin = +1) per site."""
    check_tensor(name, logits)
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}.")
    if logits.dim() != 3:
        raise ValueError(
            f"{name} must have shape (B, H, W) (one logit per site for P(spin = +1)), got "
            f"{tuple(logits.shape)}; squeeze a channel dimension of size 1 with .squeeze(1)."
        )
    check_finite(name, logits)


def check_lattice_match(logits_shape: torch.Size, other: Tensor, other_name: str) -> None:
    """``other`` must share batch and lattice sizes with the logits."""
    b, h, w = logits_shape
    if other_name == "couplings":
        ok = other.shape[0] == b and tuple(other.shape[2:]) == (h, w)
        expected = f"({b}, 2, {h}, {w})"
    else:
        ok = tuple(other.shape) == (b, h, w)
        expected = f"({b}, {h}, {w})"
    if not ok:
        raise ValueError(f"{other_name} must have shape {expected} to match the logits, got {tuple(other.shape)}.")


def check_positive_scalar(name: str, value: float) -> float:
    return check_number(name, value, low=0.0)


def check_finite_scalar(name: str, value: float) -> float:
    return check_number(name, value)


def check_reduction(reduction: str) -> str:
    valid = ("mean", "sum", "none")
    if reduction not in valid:
        raise ValueError(f"Unknown reduction {reduction!r}; valid reductions are {list(valid)}.")
    return reduction
