"""RDKit-based metrics: validity, connectivity, uniqueness and symmetry-aware RMSD.

These run per structure on the CPU (RDKit), so use them at evaluation time rather than every step.
Inputs are the flat layout: ``numbers`` ``(N_total,)``, positions ``(N_total, 3)`` Å, ``batch``
``(N_total,)`` (None: one structure); outputs are ``(B,)`` tensors or Python floats.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from energyloss_plugins import _checks, chem
from energyloss_plugins.layouts import structure_counts
from energyloss_plugins.metrics.bonds import distance_bond_orders, prepare_inputs
from energyloss_plugins.optional import require

#: Ways to get bonds for the RDKit molecules.
BOND_METHODS = ("edm", "determine")


def split_structures(numbers: Tensor, positions: Tensor, batch: Tensor | None = None) -> list[np.ndarray]:
    """Flat atom indices of each structure (the distinct ids of ``batch``, in increasing order)."""
    _, batch_l, n_structures = prepare_inputs(numbers, positions, batch)
    if n_structures == 0:
        raise ValueError("No atoms given; metrics need at least one structure with atoms.")
    order = np.argsort(batch_l.cpu().numpy(), kind="stable")
    return np.split(order, np.cumsum(structure_counts(batch_l, n_structures).cpu().numpy())[:-1])


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def to_rdkit_mols(
    numbers: Tensor, positions: Tensor, batch: Tensor | None = None, bonds: str = "edm", charge: int = 0
) -> list[Any | None]:
    """One sanitised RDKit molecule per structure, or None where it cannot be built.

    Args:
        bonds: ``"edm"``: integer bond orders from distances (:func:`distance_bond_orders`), atoms
            may take implicit hydrogens as in EDM's evaluation; ``"determine"``: RDKit's
            ``rdDetermineBonds`` (connectivity and bond orders with total charge ``charge``; stricter).
    """
    _checks.check_choice("bond method", bonds, BOND_METHODS)
    groups = split_structures(numbers, positions, batch)
    z = _np(numbers).astype(np.int64)
    x = _np(positions).astype(np.float64)
    if bonds == "edm":
        edges, order = distance_bond_orders(numbers, positions, batch)
        edges, order = _np(edges), _np(order)
    mols: list[Any | None] = []
    for idx in groups:
        try:
            if bonds == "edm":
                e, sel = chem.edges_within(edges, idx, z.shape[0])
                mols.append(chem.mol_from_bonds(z[idx], x[idx], e, order[sel].astype(np.float64), no_implicit=False))
            else:
                mols.append(chem.mol_from_xyz(z[idx], x[idx], charge))
        except chem.ChemError:
            mols.append(None)
    return mols


def validity(numbers: Tensor, positions: Tensor, batch: Tensor | None = None, bonds: str = "edm") -> Tensor:
    """``(B,)`` bool: RDKit can build and sanitise the molecule (see :func:`to_rdkit_mols`)."""
    return torch.tensor([m is not None for m in to_rdkit_mols(numbers, positions, batch, bonds)], dtype=torch.bool)


def connectivity(numbers: Tensor, positions: Tensor, batch: Tensor | None = None, bonds: str = "edm") -> Tensor:
    """``(B,)`` bool: valid and a single connected fragment."""
    mols = to_rdkit_mols(numbers, positions, batch, bonds)
    return torch.tensor([m is not None and chem.n_fragments(m) == 1 for m in mols], dtype=torch.bool)


def molecule_smiles(
    numbers: Tensor, positions: Tensor, batch: Tensor | None = None, bonds: str = "edm"
) -> list[str | None]:
    """Canonical SMILES per structure (None where invalid)."""
    return [None if m is None else chem.canonical_smiles(m) for m in to_rdkit_mols(numbers, positions, batch, bonds)]


def uniqueness(numbers: Tensor, positions: Tensor, batch: Tensor | None = None, bonds: str = "edm") -> float:
    """Fraction of distinct canonical SMILES among the valid structures (NaN if none is valid)."""
    smiles = [s for s in molecule_smiles(numbers, positions, batch, bonds) if s is not None]
    return len(set(smiles)) / len(smiles) if smiles else math.nan


def symmetric_rmsd(
    pred: Tensor,
    target: Tensor,
    numbers: Tensor,
    batch: Tensor | None = None,
    bonds: Tensor | None = None,
    heavy_only: bool = False,
    max_matches: int = 100_000,
) -> Tensor:
    """``(B,)`` symmetry-aware aligned RMSD in Å (RDKit ``rdMolAlign.GetBestRMS``).

    The minimum over rigid motions *and* over the permutations of atoms that are equivalent in the
    reference bond graph (methyl hydrogens, the two oxygens of a carboxylate, ...). Use it for inputs
    whose equivalent atoms may come out in another order (fresh conformers).

    Args:
        pred, target: ``(N_total, 3)`` Å.
        numbers: ``(N_total,)`` atomic numbers.
        batch: ``(N_total,)`` structure index.
        bonds: ``(2, M)`` flat reference bonds; None: connectivity perceived from the target with
            RDKit (``DetermineConnectivity``).
        heavy_only: RMSD over non-hydrogen atoms only (NaN for a structure without any).
        max_matches: cap on the symmetry-equivalent atom maps RDKit enumerates.
    """
    feature = "symmetry-aware RMSD (RDKit)"
    Chem = require("rdkit.Chem", feature, "data")
    rdDetermineBonds = require("rdkit.Chem.rdDetermineBonds", feature, "data")
    rdMolAlign = require("rdkit.Chem.rdMolAlign", feature, "data")

    _checks.check_positions("pred", pred, 2)
    _checks.check_same_shape(pred, target)
    groups = split_structures(numbers, target, batch)
    z = _np(numbers).astype(np.int64)
    p, t = _np(pred).astype(np.float64), _np(target).astype(np.float64)
    if bonds is not None:
        _checks.check_edge_index(bonds, z.shape[0])
        e_all = _np(bonds.long())
    out = []
    for idx in groups:
        keep = idx[z[idx] != 1] if heavy_only else idx
        if keep.size == 0:  # heavy_only and no heavy atom (H2): undefined
            out.append(math.nan)
            continue
        if bonds is not None:
            e, _ = chem.edges_within(e_all, keep, z.shape[0])
        else:
            ref = chem.bare_mol(z[idx], t[idx])
            with chem.rdkit_quiet():
                rdDetermineBonds.DetermineConnectivity(ref)
            pairs = np.array(
                [[b.GetBeginAtomIdx(), b.GetEndAtomIdx()] for b in ref.GetBonds()], dtype=np.int64
            ).reshape(-1, 2)
            e, _ = chem.edges_within(idx[pairs].T, keep, z.shape[0])
        ref_mol = chem.mol_from_bonds(z[keep], t[keep], e, None, sanitize=False)
        prb_mol = chem.mol_from_bonds(z[keep], p[keep], e, None, sanitize=False)
        for m in (ref_mol, prb_mol):
            m.UpdatePropertyCache(strict=False)
            Chem.FastFindRings(m)
        out.append(rdMolAlign.GetBestRMS(prb_mol, ref_mol, maxMatches=int(max_matches)))
    return torch.tensor(out, dtype=torch.float64)


def largest_fragment_smiles(mol: Any) -> str:
    """Canonical SMILES (no explicit hydrogens, no stereo from 3D) of the largest fragment by atom count."""
    fragments = chem.rdkit().GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    return chem.canonical_smiles(max(fragments, key=lambda m: m.GetNumAtoms()) if fragments else mol)


def edm_smiles(numbers: Tensor, positions: Tensor, batch: Tensor | None = None) -> list[str | None]:
    """Per structure: the largest fragment's canonical SMILES of the EDM-bond molecule, None if invalid."""
    return [None if m is None else largest_fragment_smiles(m) for m in to_rdkit_mols(numbers, positions, batch, "edm")]
