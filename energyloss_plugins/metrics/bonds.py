"""Bonds from geometry (torch, batched, framework-free) and EDM-style atom and molecule stability.

Layout: flat positions ``(N_total, 3)`` in Å, ``numbers`` ``(N_total,)`` atomic numbers, ``batch``
``(N_total,)`` structure index (None: one structure). Pairs are only formed inside a structure.

Stability follows the definition of Hoogeboom et al. (EDM, 2022): every pair of atoms gets an integer
bond order from its distance (order k if the distance is below the typical length of a k-fold bond
of that element pair plus a margin, taking the highest such k); an atom is stable when the sum of
its bond orders is an allowed valence of its element; a molecule is stable when all its atoms are.
The tables and code here are this project's own (typical bond lengths from standard tables of
experimental values), not EDM's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.elements import COVALENT_RADII
from energyloss_plugins.graphs import complete_pairs
from energyloss_plugins.layouts import structure_counts, structure_index

MAX_Z = len(COVALENT_RADII)

_SYMBOLS = {"H": 1, "B": 5, "C": 6, "N": 7, "O": 8, "F": 9, "Si": 14, "P": 15, "S": 16, "Cl": 17, "Br": 35, "I": 53}

# Typical bond lengths in Å (standard tables of experimental averages), per bond order.
_SINGLE = {
    ("H", "H"): 0.74, ("H", "B"): 1.19, ("H", "C"): 1.09, ("H", "N"): 1.01, ("H", "O"): 0.96, ("H", "F"): 0.92,
    ("H", "Si"): 1.48, ("H", "P"): 1.42, ("H", "S"): 1.34, ("H", "Cl"): 1.27, ("H", "Br"): 1.41, ("H", "I"): 1.61,
    ("B", "B"): 1.70, ("B", "C"): 1.56, ("B", "N"): 1.58, ("B", "O"): 1.36, ("B", "F"): 1.31, ("B", "Cl"): 1.75,
    ("C", "C"): 1.54, ("C", "N"): 1.47, ("C", "O"): 1.43, ("C", "F"): 1.35, ("C", "Si"): 1.85, ("C", "P"): 1.84,
    ("C", "S"): 1.82, ("C", "Cl"): 1.77, ("C", "Br"): 1.94, ("C", "I"): 2.14,
    ("N", "N"): 1.45, ("N", "O"): 1.40, ("N", "F"): 1.36, ("N", "Si"): 1.74, ("N", "P"): 1.77, ("N", "S"): 1.68,
    ("N", "Cl"): 1.75, ("N", "Br"): 1.85, ("N", "I"): 2.10,
    ("O", "O"): 1.48, ("O", "F"): 1.42, ("O", "Si"): 1.63, ("O", "P"): 1.63, ("O", "S"): 1.58, ("O", "Cl"): 1.64,
    ("O", "Br"): 1.83, ("O", "I"): 2.03,
    ("F", "F"): 1.42, ("F", "Si"): 1.56, ("F", "P"): 1.56, ("F", "S"): 1.58, ("F", "Cl"): 1.66,
    ("Si", "Si"): 2.33, ("Si", "Cl"): 2.02, ("P", "P"): 2.21, ("P", "S"): 2.10, ("P", "Cl"): 2.04,
    ("S", "S"): 2.05, ("S", "Cl"): 2.07, ("Cl", "Cl"): 1.99, ("Br", "Br"): 2.28, ("I", "I"): 2.67,
}  # fmt: skip
_DOUBLE = {
    ("C", "C"): 1.34, ("C", "N"): 1.29, ("C", "O"): 1.20, ("C", "S"): 1.61, ("C", "P"): 1.67, ("C", "Si"): 1.71,
    ("N", "N"): 1.25, ("N", "O"): 1.21, ("N", "P"): 1.58, ("N", "S"): 1.52,
    ("O", "O"): 1.21, ("O", "P"): 1.50, ("O", "S"): 1.43, ("O", "Si"): 1.52, ("S", "S"): 1.89, ("P", "S"): 1.93,
}  # fmt: skip
_TRIPLE = {("C", "C"): 1.20, ("C", "N"): 1.16, ("C", "O"): 1.13, ("N", "N"): 1.10, ("C", "P"): 1.54, ("N", "P"): 1.49}

#: Margins in Å added to the typical length of a single, double and triple bond (EDM's convention).
BOND_MARGINS = (0.10, 0.05, 0.03)

#: Allowed valences (sum of integer bond orders) per element.
ALLOWED_VALENCES = {
    "H": (1,), "B": (3,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "Si": (4,), "P": (3, 5), "S": (2, 4, 6),
    "Cl": (1,), "Br": (1,), "I": (1,),
}  # fmt: skip

#: Default tolerance factor of :func:`covalent_bonds`: bonded if d < tolerance * (r_i + r_j).
COVALENT_TOLERANCE = 1.2


def _threshold_table() -> Tensor:
    """``(MAX_Z + 1, MAX_Z + 1, 3)`` distance thresholds (Å) for bond orders 1, 2, 3; -inf = impossible.

    Pairs with no tabulated single-bond length fall back to the sum of covalent radii.
    """
    t = torch.full((MAX_Z + 1, MAX_Z + 1, 3), -math.inf, dtype=torch.float64)
    radii = torch.tensor((0.0, *COVALENT_RADII), dtype=torch.float64)
    t[1:, 1:, 0] = radii[1:, None] + radii[None, 1:] + BOND_MARGINS[0]
    for order, table in enumerate((_SINGLE, _DOUBLE, _TRIPLE)):
        for (a, b), length in table.items():
            za, zb = _SYMBOLS[a], _SYMBOLS[b]
            t[za, zb, order] = t[zb, za, order] = length + BOND_MARGINS[order]
    return t


def _valence_table(max_valence: int = 8) -> Tensor:
    """``(MAX_Z + 1, max_valence + 1)`` bool: allowed[Z, v]; rows of elements without a rule are all False."""
    t = torch.zeros(MAX_Z + 1, max_valence + 1, dtype=torch.bool)
    for sym, vals in ALLOWED_VALENCES.items():
        for v in vals:
            t[_SYMBOLS[sym], v] = True
    return t


_THRESHOLDS = _threshold_table()
_VALENCES = _valence_table()
#: ``(MAX_Z + 1,)`` bool: elements with allowed valences, i.e. whose atoms the stability rule can judge.
HAS_RULE = _VALENCES.any(1)


def prepare_inputs(numbers: Tensor, positions: Tensor, batch: Tensor | None) -> tuple[Tensor, Tensor, int]:
    """Checked molecule inputs: ``numbers`` ``(N,)`` long, ``batch`` ``(N,)`` long (zeros if None), number of structures.

    Raises:
        ValueError: positions not ``(N, 3)``, numbers not one integer in 1..MAX_Z per atom, or a bad batch.
    """
    _checks.check_positions("positions", positions, 2)
    if positions.shape[1] != 3:
        raise ValueError(f"positions must be (N_total, 3) for molecules, got {tuple(positions.shape)}.")
    if not isinstance(numbers, Tensor) or numbers.dim() != 1 or numbers.shape[0] != positions.shape[0]:
        raise ValueError(
            f"numbers must be a 1-D tensor with one atomic number per atom ({positions.shape[0]}), got "
            f"{_checks.describe(numbers)}."
        )
    if numbers.is_floating_point():
        raise ValueError(f"numbers must hold integer atomic numbers, got dtype {numbers.dtype}.")
    if numbers.numel() and (int(numbers.min()) < 1 or int(numbers.max()) > MAX_Z):
        raise ValueError(f"atomic numbers must be in 1..{MAX_Z}, got {int(numbers.min())}..{int(numbers.max())}.")
    n = positions.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=positions.device)
    else:
        _checks.check_batch(batch, n)
        batch = batch.long()
    batch, n_structures = structure_index(batch)  # distinct ids: no gaps, nothing allocated by the largest id
    return numbers.long(), batch, n_structures


def _all_pairs(positions: Tensor, batch: Tensor, n_structures: int) -> tuple[Tensor, Tensor]:
    pairs = complete_pairs(batch, n_structures)
    d = (positions[pairs[0]] - positions[pairs[1]]).norm(dim=-1)
    return pairs, d


def covalent_bonds(
    numbers: Tensor, positions: Tensor, batch: Tensor | None = None, tolerance: float = COVALENT_TOLERANCE
) -> Tensor:
    """Covalent bonds from geometry: ``d_ij < tolerance · (r_i + r_j)`` with Cordero covalent radii.

    For datasets without a bond list. O(n²) per structure (fine for molecules).

    Args:
        numbers: ``(N_total,)`` atomic numbers.
        positions: ``(N_total, 3)`` Å.
        batch: ``(N_total,)`` structure index, None for one structure.
        tolerance: factor on the sum of covalent radii (1.2 by default).

    Returns:
        ``(2, M)`` long flat atom indices, i < j, both atoms in the same structure.
    """
    numbers, batch, n_structures = prepare_inputs(numbers, positions, batch)
    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}.")
    pairs, d = _all_pairs(positions, batch, n_structures)
    radii = torch.tensor((0.0, *COVALENT_RADII), dtype=positions.dtype, device=positions.device)
    cutoff = tolerance * (radii[numbers[pairs[0]]] + radii[numbers[pairs[1]]])
    keep = d < cutoff
    return pairs[:, keep]


def distance_bond_orders(numbers: Tensor, positions: Tensor, batch: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """EDM-style integer bond orders from distances.

    Returns:
        ``(edge_index (2, M) long, order (M,) long)`` for the pairs with order >= 1.
    """
    numbers, batch, n_structures = prepare_inputs(numbers, positions, batch)
    pairs, d = _all_pairs(positions, batch, n_structures)
    t = _THRESHOLDS.to(positions.device)[numbers[pairs[0]], numbers[pairs[1]]].to(d.dtype)
    below = d.unsqueeze(1) < t
    order = below[:, 0].long() * (1 + below[:, 1].long() * (1 + below[:, 2].long()))
    keep = order > 0
    return pairs[:, keep], order[keep]


def atom_valences(numbers: Tensor, positions: Tensor, batch: Tensor | None = None) -> Tensor:
    """``(N_total,)`` long sum of EDM-style bond orders of each atom."""
    numbers_l, batch_l, _ = prepare_inputs(numbers, positions, batch)
    edges, order = distance_bond_orders(numbers_l, positions, batch_l)
    val = torch.zeros(numbers_l.shape[0], dtype=torch.long, device=positions.device)
    val.index_add_(0, edges[0], order)
    val.index_add_(0, edges[1], order)
    return val


def stable_atoms(numbers: Tensor, positions: Tensor, batch: Tensor | None = None) -> Tensor:
    """``(N_total,)`` bool: the atom's valence (sum of bond orders) is allowed for its element.

    Raises:
        ValueError: an element has no valence rule (supported: H, B, C, N, O, F, Si, P, S, Cl, Br, I).
    """
    numbers_l, batch_l, _ = prepare_inputs(numbers, positions, batch)
    has_rule = HAS_RULE.to(numbers_l.device)[numbers_l]
    if not bool(has_rule.all()):
        missing = sorted({int(z) for z in numbers_l[~has_rule].tolist()})
        raise ValueError(
            f"No valence rule for atomic number(s) {missing}; stability is defined for "
            f"{', '.join(ALLOWED_VALENCES)}."
        )
    val = atom_valences(numbers_l, positions, batch_l)
    table = _VALENCES.to(numbers_l.device)
    ok = val < table.shape[1]
    return ok & table[numbers_l, val.clamp_max(table.shape[1] - 1)]


def atom_stability(numbers: Tensor, positions: Tensor, batch: Tensor | None = None) -> Tensor:
    """``(B,)`` fraction of stable atoms per structure (EDM definition; see :func:`stable_atoms`).

    The dataset-level figure EDM reports is the fraction over all atoms:
    ``stable_atoms(...).float().mean()``.
    """
    numbers_l, batch_l, n_structures = prepare_inputs(numbers, positions, batch)
    stable = stable_atoms(numbers_l, positions, batch_l).to(positions.dtype)
    counts = structure_counts(batch_l, n_structures)  # >= 1: structures are the distinct ids of batch
    return positions.new_zeros(n_structures).index_add_(0, batch_l, stable) / counts.to(positions.dtype)


def molecule_stability(numbers: Tensor, positions: Tensor, batch: Tensor | None = None) -> Tensor:
    """``(B,)`` bool: every atom of the structure is stable (EDM's molecule stability)."""
    return atom_stability(numbers, positions, batch) == 1.0
