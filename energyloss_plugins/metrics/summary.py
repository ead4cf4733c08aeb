"""Cheap per-epoch structure metrics in one call (torch only, no RDKit)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from energyloss_plugins.layouts import segment_mean
from energyloss_plugins.metrics.bonds import HAS_RULE, MAX_Z, covalent_bonds, stable_atoms
from energyloss_plugins.metrics.geometry import aligned_rmsd, angle_mae, bond_length_mae, check_pair


@torch.no_grad()
def structure_metrics(
    pred: Tensor,
    target: Tensor,
    batch: Tensor | None = None,
    numbers: Tensor | None = None,
    bonds: Tensor | None = None,
    per_structure: bool = False,
) -> dict[str, Tensor]:
    """Aligned RMSD, bond-length and angle MAE, atom and molecule stability for logging.

    Args:
        pred, target: ``(N_total, 3)`` Å.
        batch: ``(N_total,)`` structure index (None: one structure).
        numbers: ``(N_total,)`` atomic numbers; needed for stability and, without ``bonds``, for the
            bond graph.
        bonds: ``(2, M)`` flat reference bonds; None: :func:`covalent_bonds` of the target.
        per_structure: return ``(B,)`` tensors instead of batch means.

    Returns:
        ``rmsd`` (Å, Kabsch-aligned), ``bond_mae`` (Å), ``angle_mae`` (degrees) — means over
        structures (structures without bonds/angles are left out) — and, when ``numbers`` is given,
        ``atom_stability`` (fraction of all atoms, EDM's dataset-level definition; per structure:
        fraction of its atoms) and ``molecule_stability`` (fraction of structures). Stability is NaN
        when an element has no valence rule. Values are detached 0-d tensors (or ``(B,)``).
    """
    batch, n_structures = check_pair(pred, target, batch)
    pred, target = pred.detach(), target.detach()
    out: dict[str, Tensor] = {"rmsd": aligned_rmsd(pred, target, batch, n_structures)}
    if bonds is None and numbers is not None:
        bonds = covalent_bonds(numbers, target, batch)
    if bonds is not None:
        out["bond_mae"] = bond_length_mae(pred, target, bonds, batch, n_structures)
        out["angle_mae"] = angle_mae(pred, target, bonds, batch, n_structures)
    if numbers is not None:
        nums = numbers.long()
        if nums.numel() and 1 <= int(nums.min()) and int(nums.max()) <= MAX_Z and bool(HAS_RULE[nums.cpu()].all()):
            stable = stable_atoms(nums, pred, batch).to(pred.dtype)
            frac = segment_mean(stable, batch, n_structures)
            if per_structure:
                out["atom_stability"] = frac
            else:
                out["atom_stability"] = stable.mean()
            out["molecule_stability"] = (frac == 1.0).to(pred.dtype)
        else:
            nan = pred.new_full((n_structures,), math.nan)
            out["atom_stability"] = nan
            out["molecule_stability"] = nan
            if not per_structure:
                out["atom_stability"] = nan.mean()
    if per_structure:
        return out
    reduced = {}
    for k, v in out.items():
        if v.dim() == 0:
            reduced[k] = v
        else:
            finite = v[~torch.isnan(v)]
            reduced[k] = finite.mean() if finite.numel() else v.new_tensor(math.nan)
    return reduced
