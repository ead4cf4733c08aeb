"""Geometric structure metrics (torch, batched over the flat layout): aligned RMSD, bond and angle errors.

Positions ``(N_total, 3)`` in Å, ``batch`` ``(N_total,)`` structure index (None: one structure),
``bonds`` ``(2, M)`` flat atom indices of the reference bond graph. Per-structure values are
returned as ``(B,)`` tensors; a structure without bonds (angles) has NaN bond (angle) error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.alignment import aligned_rmsd  # noqa: F401  (re-exported: metrics.aligned_rmsd)
from energyloss_plugins.graphs import complete_pairs, unique_pairs
from energyloss_plugins.layouts import checked_structure_index, segment_mean


def check_pair(
    pred: Tensor, target: Tensor, batch: Tensor | None, n_structures: int | None = None
) -> tuple[Tensor, int]:
    """Check a prediction/target pair of flat ``(N, d)`` positions; returns ``batch`` ``(N,)`` long and the
    structure count."""
    _checks.check_positions("pred", pred, 2)
    _checks.check_positions("target", target, 2)
    _checks.check_same_shape(pred, target)
    n = pred.shape[0]
    if n == 0:
        raise ValueError("pred and target hold no atoms; metrics need at least one structure with atoms.")
    return checked_structure_index(batch, n, pred.device, n_structures)


def _check_bonds(bonds: Tensor, batch: Tensor) -> Tensor:
    bonds = _checks.as_pair_index("bonds", bonds, batch.shape[0]).to(batch.device)
    if bonds.numel() and bool((batch[bonds[0]] != batch[bonds[1]]).any()):
        raise ValueError("bonds connect atoms of different structures; use flat indices within each structure.")
    # A directed list (both (i, j) and (j, i), as PyG/TorchMD-Net keep them) or a repeated bond
    # would weigh that bond twice and add zero angles (i, j, i): each bond counts once.
    return unique_pairs(bonds)


def bond_length_mae(
    pred: Tensor, target: Tensor, bonds: Tensor, batch: Tensor | None = None, n_structures: int | None = None
) -> Tensor:
    """``(B,)`` mean absolute error of bond lengths in Å per structure.

    Mean over the bonds (i, j) of a structure of ``| |p_i - p_j| - |t_i - t_j| |``.

    Invariant to rigid motions of either structure (no alignment needed).

    Args:
        pred, target: ``(N_total, 3)`` Å.
        bonds: ``(2, M)`` long flat atom indices of the reference bonds.
        batch: ``(N_total,)`` structure index, None for one structure.
    """
    batch, n_structures = check_pair(pred, target, batch, n_structures)
    bonds = _check_bonds(bonds, batch)
    dp = (pred[bonds[0]] - pred[bonds[1]]).norm(dim=-1)
    dt = (target[bonds[0]] - target[bonds[1]]).norm(dim=-1)
    return segment_mean((dp - dt).abs(), batch[bonds[0]], n_structures, empty=math.nan)


def bond_angles(bonds: Tensor, n_atoms: int) -> Tensor:
    """``(3, A)`` angle triples ``(i, j, k)`` with centre ``j`` and ``i < k``, from every pair of bonds sharing an atom.

    Args:
        bonds: ``(2, M)`` unordered bonds (each once).
        n_atoms: number of atoms N_total.
    """
    bonds = bonds.long()
    centre = torch.cat([bonds[0], bonds[1]])
    other = torch.cat([bonds[1], bonds[0]])
    # sort the directed edges by (centre, neighbour) so that each centre's edges are contiguous
    key = centre * max(n_atoms, 1) + other
    order = torch.argsort(key)
    centre, other = centre[order], other[order]
    # all pairs of edges around the same centre: the same enumeration as all pairs inside a structure
    pairs = complete_pairs(centre, n_atoms)
    return torch.stack([other[pairs[0]], centre[pairs[0]], other[pairs[1]]])


def angles_at(x: Tensor, triples: Tensor) -> Tensor:
    """``(T,)`` angles in radians, [0, π], at the middle atom of each ``(3, T)`` triple ``(i, centre, k)``
    of positions ``x`` ``(N, d)``."""
    u = x[triples[0]] - x[triples[1]]
    v = x[triples[2]] - x[triples[1]]
    if x.shape[1] == 2:
        sin = (u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]).abs()
    else:
        sin = torch.linalg.cross(u, v).norm(dim=-1)
    return torch.atan2(sin, (u * v).sum(-1))


def angle_mae(
    pred: Tensor, target: Tensor, bonds: Tensor, batch: Tensor | None = None, n_structures: int | None = None
) -> Tensor:
    """``(B,)`` mean absolute error of bond angles in degrees per structure.

    Angles are all (i, j, k) with bonds i-j and j-k of the reference graph; angle values in [0°, 180°]
    from ``atan2(|u × v|, u · v)``.
    """
    batch, n_structures = check_pair(pred, target, batch, n_structures)
    bonds = _check_bonds(bonds, batch)
    triples = bond_angles(bonds, pred.shape[0])
    err = (angles_at(pred, triples) - angles_at(target, triples)).abs() * (180.0 / math.pi)
    return segment_mean(err, batch[triples[1]], n_structures, empty=math.nan)
