"""Square-lattice Ising spin glasses: couplings, energies and local fields, batched in torch.

Layout (used throughout :mod:`energyloss_plugins.spins`):

- ``couplings`` ``(B, 2, H, W)`` float. Channel 0, ``J[:, 0, r, c]``, is the bond between site
  ``(r, c)`` and its right neighbour ``(r, (c + 1) % W)``; channel 1, ``J[:, 1, r, c]``, the bond to
  the neighbour below, ``((r + 1) % H, c)``. Every bond appears exactly once. Open boundaries are
  encoded by zero couplings on the wrapping bonds (last column of channel 0, last row of channel
  1), so every function here handles open and periodic lattices alike.
- ``spins`` ``(B, H, W)`` with values in {-1, +1} (float). Energies also accept real values in
  [-1, 1] (magnetisations m = E_q[y]).

Conventions (SPEC §4): E(y) = -Σ_<ij> J_ij y_i y_j (each bond once); local field
h_i(y) = Σ_j J_ij y_j; flipping spin i changes the energy by 2 y_i h_i(y).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from energyloss_plugins._checks import check_number

from ._checks import check_boundary, check_couplings, check_finite, check_tensor

__all__ = [
    "boundary_mask",
    "random_couplings",
    "infer_boundary",
    "local_fields",
    "ising_energy",
    "ising_excess_energy",
    "flip_costs",
    "coupling_features",
    "is_local_minimum",
]


def boundary_mask(height: int, width: int | None = None, boundary: str = "open") -> Tensor:
    """Boolean mask ``(2, H, W)`` of the bonds that exist for the given boundary condition.

    For ``"open"`` the wrapping bonds (last column of channel 0, last row of channel 1) are False.
    """
    check_boundary(boundary)
    width = height if width is None else width
    if height < 2 or width < 2:
        raise ValueError(f"The lattice must be at least 2x2, got {height}x{width}.")
    mask = torch.ones(2, height, width, dtype=torch.bool)
    if boundary == "open":
        mask[0, :, -1] = False
        mask[1, -1, :] = False
    return mask


def random_couplings(
    L: int,
    n: int,
    seed: int | None = None,
    boundary: str = "open",
    width: int | None = None,
    low: float = -1.0,
    high: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Spin-glass couplings, i.i.d. uniform in ``[low, high]`` on every existing bond.

    Args:
        L: lattice height (and width unless ``width`` is given).
        n: number of lattices B.
        seed: seed of a ``numpy.random.default_rng`` stream (reproducible across torch versions).
        boundary: ``"open"`` (wrapping bonds are zero) or ``"periodic"``.
        dtype: output dtype; values are drawn in float64 and rounded once to ``dtype``.

    Returns:
        ``(n, 2, L, width)`` couplings.
    """
    width = L if width is None else width
    n = check_number("n", n, low=0, low_inclusive=True, integer=True)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"Need finite low <= high, got low={low}, high={high}.")
    mask = boundary_mask(L, width, boundary)
    rng = np.random.default_rng(seed)
    values = rng.uniform(low, high, size=(n, 2, L, width))
    J = torch.from_numpy(values).to(dtype)
    return J * mask.to(dtype)


def infer_boundary(couplings: Tensor) -> tuple[bool, bool]:
    """Which directions wrap: ``(periodic_rows, periodic_cols)`` from non-zero wrapping bonds.

    ``periodic_cols`` is True when any bond ``(r, W-1) - (r, 0)`` is non-zero (horizontal wrap);
    ``periodic_rows`` when any bond ``(H-1, c) - (0, c)`` is non-zero (vertical wrap).
    Accepts ``(2, H, W)`` or ``(B, 2, H, W)`` (any lattice of the batch).
    """
    J = couplings if couplings.dim() == 4 else couplings.unsqueeze(0)
    check_couplings(J)
    periodic_cols = bool((J[:, 0, :, -1] != 0).any())
    periodic_rows = bool((J[:, 1, -1, :] != 0).any())
    return periodic_rows, periodic_cols


def _check_config(spins: Tensor, couplings: Tensor, name: str = "spins") -> None:
    check_couplings(couplings)
    check_tensor(name, spins)
    if spins.dim() != 3 or spins.shape[0] != couplings.shape[0] or spins.shape[1:] != couplings.shape[2:]:
        B, _, H, W = couplings.shape
        raise ValueError(
            f"{name} must have shape ({B}, {H}, {W}) to match couplings {tuple(couplings.shape)}, got "
            f"{tuple(spins.shape)}."
        )
    check_finite(name, spins)


def local_fields(spins: Tensor, couplings: Tensor) -> Tensor:
    """Local fields ``h_i = Σ_j J_ij y_j`` (sum over the up to four neighbours).

    Args:
        spins: ``(B, H, W)`` spins (or magnetisations).
        couplings: ``(B, 2, H, W)``.

    Returns:
        ``(B, H, W)`` local fields, same dtype as ``spins * couplings``.
    """
    _check_config(spins, couplings)
    y = spins.to(couplings.dtype) if not spins.is_floating_point() else spins
    Jr, Jd = couplings[:, 0], couplings[:, 1]
    return (
        Jr * torch.roll(y, -1, dims=-1)  # right neighbour
        + torch.roll(Jr * y, 1, dims=-1)  # left neighbour: bond J[r, c-1] times y[r, c-1]
        + Jd * torch.roll(y, -1, dims=-2)  # neighbour below
        + torch.roll(Jd * y, 1, dims=-2)  # neighbour above
    )


def ising_energy(spins: Tensor, couplings: Tensor) -> Tensor:
    """Ising energy ``E(y) = -Σ_<ij> J_ij y_i y_j`` per lattice (each bond once).

    Differentiable; ``spins`` may be real-valued (e.g. magnetisations in [-1, 1]).

    Args:
        spins: ``(B, H, W)``.
        couplings: ``(B, 2, H, W)``.

    Returns:
        ``(B,)`` energies.
    """
    _check_config(spins, couplings)
    y = spins.to(couplings.dtype) if not spins.is_floating_point() else spins
    Jr, Jd = couplings[:, 0], couplings[:, 1]
    bonds = Jr * y * torch.roll(y, -1, dims=-1) + Jd * y * torch.roll(y, -1, dims=-2)
    return -bonds.sum(dim=(-2, -1))


def ising_excess_energy(logits: Tensor, couplings: Tensor, ground_energies: Tensor) -> Tensor:
    """Excess Ising energy of the hard prediction over the ground state, ``E(sign z) - E(y_ground)``.

    The spin-glass benchmark's metric (paper Sec. 5): >= 0 for exact ``ground_energies``, 0 when
    ``sign z`` is a ground state (either global-flip representative). Not the molecular
    :func:`energyloss_plugins.metrics.excess_energy`, which scores structures under a reference
    force field. ``sign(0)`` is taken as +1.

    Args:
        logits: ``(B, H, W)`` per-site logits (or spins; only the sign is used).
        couplings: ``(B, 2, H, W)``.
        ground_energies: ``(B,)`` exact ground-state energies.

    Returns:
        ``(B,)`` float64.
    """
    pred = torch.where(logits >= 0, 1.0, -1.0).to(torch.float64)
    return ising_energy(pred, couplings.to(torch.float64)) - ground_energies.to(torch.float64)


def flip_costs(spins: Tensor, couplings: Tensor) -> Tensor:
    """Energy change of flipping each spin alone: ``ΔE_i = 2 y_i h_i(y)``, shape ``(B, H, W)``.

    All entries are >= 0 exactly when ``spins`` is a local minimum under single-spin flips
    (in particular at a ground state).
    """
    y = spins.to(couplings.dtype) if not spins.is_floating_point() else spins
    return 2.0 * y * local_fields(y, couplings)


def is_local_minimum(spins: Tensor, couplings: Tensor, atol: float = 1e-9) -> Tensor:
    """``(B,)`` bool: no single spin flip lowers the energy by more than ``atol``."""
    return (flip_costs(spins, couplings) >= -atol).flatten(1).all(dim=1)


def coupling_features(couplings: Tensor) -> Tensor:
    """Per-site input features for a CNN: the four bonds of each site.

    Args:
        couplings: ``(B, 2, H, W)``.

    Returns:
        ``(B, 4, H, W)`` with channels (right, left, down, up) bond of each site; missing bonds
        of an open lattice are zero.
    """
    check_couplings(couplings)
    Jr, Jd = couplings[:, 0], couplings[:, 1]
    return torch.stack(
        [Jr, torch.roll(Jr, 1, dims=-1), Jd, torch.roll(Jd, 1, dims=-2)],
        dim=1,
    )
