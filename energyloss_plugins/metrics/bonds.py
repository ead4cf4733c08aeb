"""Bonds from geometry (torch, batched, framework-free) and EDM-style atom and molecule stability.

Layout: flat positions ``(N_total, 3)`` in Å, ``numbers`` ``(N_total,)`` atomic numbers, ``batch``
``(N_total,)`` structure index (None: one structure). Pairs are only formed inside a structure.

Stability follows the definition of Hoogeboom et al. (EDM, 2022) with EDM's numbers, so figures
compare with published ones: every pair of atoms gets an integer bond order from its distance (order
k if the distance is below the typical length of a k-fold bond of that element pair plus a margin,
taking the highest such k; pairs without a tabulated length never bond); an atom is stable when the
sum of its bond orders is an allowed valence of its element; a molecule is stable when all its atoms
are. The lengths, margins and valences are the values of EDM's evaluation (``qm9/bond_analyze.py`` of
ehoogeboom/e3_diffusion_for_molecules); the code is this project's. ``docs/metrics.md`` compares them
with the tables this project used before.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.elements import COVALENT_RADII
from energyloss_plugins.graphs import complete_pairs
from energyloss_plugins.layouts import checked_structure_index, segment_mean, structure_counts

MAX_Z = len(COVALENT_RADII)

_SYMBOLS = {
    "H": 1, "B": 5, "C": 6, "N": 7, "O": 8, "F": 9, "Al": 13, "Si": 14, "P": 15, "S": 16, "Cl": 17, "As": 33,
    "Br": 35, "I": 53, "Hg": 80, "Bi": 83,
}  # fmt: skip

#: Typical bond lengths in pm (EDM's unit) per element pair, for bond orders (1,), (1, 2) or (1, 2, 3):
#: EDM's tables (standard tables of experimental averages). A pair that is absent never bonds.
BOND_LENGTHS_PM: dict[tuple[str, str], tuple[int, ...]] = {
    ("H", "H"): (74,), ("H", "B"): (119,), ("H", "C"): (109,), ("H", "N"): (101,), ("H", "O"): (96,),
    ("H", "F"): (92,), ("H", "Si"): (148,), ("H", "P"): (144,), ("H", "S"): (134,), ("H", "Cl"): (127,),
    ("H", "As"): (152,), ("H", "Br"): (141,), ("H", "I"): (161,),
    ("B", "Cl"): (175,),
    ("C", "C"): (154, 134, 120), ("C", "N"): (147, 129, 116), ("C", "O"): (143, 120, 113), ("C", "F"): (135,),
    ("C", "Si"): (185,), ("C", "P"): (184,), ("C", "S"): (182, 160), ("C", "Cl"): (177,), ("C", "Br"): (194,),
    ("C", "I"): (214,),
    ("N", "N"): (145, 125, 110), ("N", "O"): (140, 121), ("N", "F"): (136,), ("N", "P"): (177,), ("N", "S"): (168,),
    ("N", "Cl"): (175,), ("N", "Br"): (214,), ("N", "I"): (222,),
    ("O", "O"): (148, 121), ("O", "F"): (142,), ("O", "Si"): (163,), ("O", "P"): (163, 150), ("O", "S"): (151,),
    ("O", "Cl"): (164,), ("O", "Br"): (172,), ("O", "I"): (194,),
    ("F", "F"): (142,), ("F", "Si"): (160,), ("F", "P"): (156,), ("F", "S"): (158,), ("F", "Cl"): (166,),
    ("F", "Br"): (178,), ("F", "I"): (187,),
    ("Si", "Si"): (233,), ("Si", "S"): (200,), ("Si", "Cl"): (202,), ("Si", "Br"): (215,), ("Si", "I"): (243,),
    ("P", "P"): (221,), ("P", "S"): (210, 186), ("P", "Cl"): (203,), ("P", "Br"): (222,),
    ("S", "S"): (204,), ("S", "Cl"): (207,), ("S", "Br"): (225,), ("S", "I"): (234,),
    ("Cl", "Cl"): (199,), ("Cl", "Br"): (214,), ("Br", "Br"): (228,), ("I", "I"): (266,),
}  # fmt: skip

#: Margins in Å added to the typical length of a single, double and triple bond (EDM's 10, 5, 3 pm).
BOND_MARGINS = (0.10, 0.05, 0.03)

#: Allowed valences (sum of integer bond orders) per element (EDM's; S only 4).
ALLOWED_VALENCES = {
    "H": (1,), "B": (3,), "C": (4,), "N": (3,), "O": (2,), "F": (1,), "Al": (3,), "Si": (4,), "P": (3, 5),
    "S": (4,), "Cl": (1,), "As": (3,), "Br": (1,), "I": (1,), "Hg": (1, 2), "Bi": (3, 5),
}  # fmt: skip

#: Default tolerance factor of :func:`covalent_bonds`: bonded if d < tolerance * (r_i + r_j).
COVALENT_TOLERANCE = 1.2


def _threshold_table() -> Tensor:
    """``(MAX_Z + 1, MAX_Z + 1, 3)`` distance thresholds (Å) for bond orders 1, 2, 3; -inf = impossible."""
    t = torch.full((MAX_Z + 1, MAX_Z + 1, 3), -math.inf, dtype=torch.float64)
    for (a, b), lengths in BOND_LENGTHS_PM.items():
        za, zb = _SYMBOLS[a], _SYMBOLS[b]
        for order, (length, margin) in enumerate(zip(lengths, BOND_MARGINS, strict=False)):
            t[za, zb, order] = t[zb, za, order] = length / 100.0 + margin
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
    """Checked molecule inputs: ``numbers`` ``(N,)`` long, ``batch`` ``(N,)`` long, number of structures.

    A ``batch`` of None puts every atom in one structure (zeros).

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
    # distinct ids: no gaps, nothing allocated by the largest id
    batch, n_structures = checked_structure_index(batch, positions.shape[0], positions.device)
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
    tolerance = _checks.check_number("tolerance", tolerance, low=0.0)
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
        ValueError: an element has no valence rule (see ``ALLOWED_VALENCES``).
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
    return segment_mean(stable, batch_l, n_structures)  # every structure has atoms: the distinct ids of batch


def molecule_stability(numbers: Tensor, positions: Tensor, batch: Tensor | None = None) -> Tensor:
    """``(B,)`` bool: every atom of the structure is stable (EDM's molecule stability)."""
    return atom_stability(numbers, positions, batch) == 1.0


def fragment_counts(numbers: Tensor, positions: Tensor, batch: Tensor | None = None) -> Tensor:
    """``(B,)`` long number of connected fragments per structure under EDM's bonds.

    The graph has every atom as a node and an edge for every pair with an EDM bond order >= 1
    (:func:`distance_bond_orders`); its connected components (networkx) are the fragments, so an
    isolated atom is a fragment of its own and a structure is one molecule when its count is 1.
    """
    import networkx as nx

    numbers_l, batch_l, n_structures = prepare_inputs(numbers, positions, batch)
    edges, _ = distance_bond_orders(numbers_l, positions, batch_l)
    graph = nx.Graph()
    graph.add_nodes_from(range(numbers_l.shape[0]))
    graph.add_edges_from(edges.t().tolist())
    first_atoms = [min(component) for component in nx.connected_components(graph)]
    owner = batch_l.cpu()[torch.tensor(first_atoms, dtype=torch.long)]
    return structure_counts(owner, n_structures)
