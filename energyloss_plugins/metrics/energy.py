"""Excess energy of predicted structures over their targets under a reference method (MMFF94 or GFN2-xTB)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from energyloss_plugins import _checks, chem
from energyloss_plugins.metrics.chemistry import split_structures

#: Reference methods of :func:`excess_energy`.
ENERGY_METHODS = ("mmff", "xtb")


def excess_energy(
    numbers: Tensor,
    pred: Tensor,
    target: Tensor,
    batch: Tensor | None = None,
    method: str = "mmff",
    bonds: Tensor | None = None,
    bond_orders: Tensor | None = None,
    formal_charges: Tensor | None = None,
    charges: Sequence[int] | None = None,
) -> Tensor:
    """``(B,)`` energy of the prediction minus the energy of the target, in eV, per structure.

    ``E_ref(pred) - E_ref(target)``: 0 for a prediction equal to the target up to a rigid motion,
    positive for any distortion when the target is a minimum of the reference method (negative
    values mean the target is not a minimum of that method, e.g. a DFT geometry under MMFF94).

    Args:
        numbers: ``(N_total,)`` atomic numbers.
        pred, target: ``(N_total, 3)`` Å, same atom order.
        batch: ``(N_total,)`` structure index, None for one structure.
        method: ``"mmff"`` (MMFF94, RDKit; needs a bond graph with orders) or ``"xtb"`` (GFN2-xTB,
            tblite; needs only charges).
        bonds: ``(2, M)`` flat reference bonds, with ``bond_orders`` ``(M,)`` (1, 1.5, 2, 3) and
            ``formal_charges`` ``(N_total,)`` as stored by the dataset builder; None: bonds and orders
            are perceived from the target with RDKit's ``rdDetermineBonds``.
        charges: total charge per structure (default 0; from ``formal_charges`` when given).

    Returns:
        ``(B,)`` float64 tensor in eV; NaN (with a warning) where the method cannot handle a
        structure (no MMFF94 parameters, failed bond perception, SCF failure).
    """
    _checks.check_choice("energy method", method, ENERGY_METHODS)
    _checks.check_positions("pred", pred, 2)
    _checks.check_positions("target", target, 2)
    _checks.check_same_shape(pred, target)
    groups = split_structures(numbers, target, batch)
    z = numbers.detach().cpu().numpy().astype(np.int64)
    p = pred.detach().cpu().numpy().astype(np.float64)
    t = target.detach().cpu().numpy().astype(np.float64)
    if bonds is not None:
        _checks.check_edge_index(bonds, z.shape[0])
        e_all = bonds.detach().cpu().numpy().astype(np.int64)
        o_all = (
            np.ones(e_all.shape[1]) if bond_orders is None else bond_orders.detach().cpu().numpy().astype(np.float64)
        )
        if o_all.shape[0] != e_all.shape[1]:
            raise ValueError(f"bond_orders has {o_all.shape[0]} entries for {e_all.shape[1]} bonds.")
    fc = None if formal_charges is None else formal_charges.detach().cpu().numpy().astype(np.int64)
    if charges is not None and len(charges) != len(groups):
        raise ValueError(f"charges has {len(charges)} entries for {len(groups)} structures.")
    out = []
    failures: list[str] = []
    for b, idx in enumerate(groups):
        charge = int(charges[b]) if charges is not None else (int(fc[idx].sum()) if fc is not None else 0)
        try:
            if method == "xtb":
                mult = 1 + (int(z[idx].sum()) - charge) % 2
                out.append(
                    chem.xtb_energy(z[idx], p[idx], charge, mult) - chem.xtb_energy(z[idx], t[idx], charge, mult)
                )
                continue
            if bonds is None:
                mol = chem.mol_from_xyz(z[idx], t[idx], charge)
            else:
                e, sel = chem.edges_within(e_all, idx, z.shape[0])
                mol = chem.mol_from_bonds(z[idx], t[idx], e, o_all[sel], None if fc is None else fc[idx])
            ff = chem.force_field(mol, t[idx], "mmff")
            out.append(ff.energy(p[idx]) - ff.energy(t[idx]))
        except chem.ChemError as exc:
            failures.append(f"structure {b}: {exc}")
            out.append(math.nan)
    if failures:
        warnings.warn(
            f"excess_energy ({method}) is NaN for {len(failures)} structure(s): {'; '.join(failures[:3])}"
            + (" ..." if len(failures) > 3 else ""),
            stacklevel=2,
        )
    return torch.tensor(out, dtype=torch.float64)
