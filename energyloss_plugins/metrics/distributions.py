"""Geometry of a set of molecules against a reference set: bond lengths, angles, dihedrals, size.

A :class:`SetProfile` collects, over a whole set of molecules, the values each distribution needs:
bond lengths (Å) per bond type, bond angles (degrees) per angle type, dihedral angles (degrees) per
dihedral type, each molecule's radius of gyration (Å), and the largest-fragment SMILES of its valid
molecules (for FCD). :func:`distribution_distances` compares two profiles.

Distance: the Wasserstein-1 (earth mover's) distance between the two 1-D empirical distributions
(``scipy.stats.wasserstein_distance``), in the unit of the quantity: Å for bond lengths and radii of
gyration, degrees for angles and dihedrals. It is the mean shift needed to turn one distribution
into the other (0 for equal distributions; a set whose bonds are all 0.15 Å too long is 0.15 Å away).
JODO reports Gaussian-kernel MMD instead, a unitless number that depends on the kernel width, so the
figures here are not comparable with JODO's Table 3 numerically, only in ranking.

Types: elements in Hill order (C, H, then alphabetical) for bonds (``C-H``, ``C-O``, ``H-O``), the
centre atom in the middle for angles (``C-C-H``, ends in Hill order) and the two centre atoms in the
middle for dihedrals (the direction whose element sequence comes first in Hill order). A distance is
the mean of the per-type distances weighted by the reference's frequency of each type, over the
types both sets hold; types only the samples hold get no weight. Per-type values and the types the
samples lack are reported beside.

Bonds for these distributions: covalent radii (:func:`~energyloss_plugins.metrics.bonds.covalent_bonds`,
``d < 1.2 (r_i + r_j)``), which is looser than EDM's bond orders (C-H 1.28 Å against 1.19 Å). A bond
that is too long for EDM's tables is then still measured, so the distance shows how far off it is
rather than dropping it (EDM's orders decide stability, validity and connectivity).
Dihedrals: every i-j-k-l path of bonds (i ≠ l); absolute values in [0°, 180°], because a mirror image
flips every sign and the line has no wrap-around at ±180°; paths with a bond angle above 177°
(sin < 0.05, e.g. nitriles) have no defined dihedral and are left out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from energyloss_plugins.layouts import flat_molecules, segment_mean
from energyloss_plugins.metrics.bonds import covalent_bonds
from energyloss_plugins.metrics.chemistry import edm_smiles
from energyloss_plugins.metrics.geometry import angles_at, bond_angles
from energyloss_plugins.optional import require

#: Geometry distances of :func:`distribution_distances` (profile attribute, unit).
GEOMETRY_DISTANCES = {
    "bond_length_distance": ("bond_lengths", "Å"),
    "bond_angle_distance": ("bond_angles", "°"),
    "dihedral_distance": ("dihedrals", "°"),
}

#: Below this sine of a bond angle (angle above ~177°) a dihedral through it is undefined.
MIN_SINE = 0.05


def hill_key(symbol: str) -> tuple[int, str]:
    """Sort key of the Hill order: C first, H second, then alphabetical."""
    return ({"C": 0, "H": 1}.get(symbol, 2), symbol)


@dataclass
class SetProfile:
    """Values over a set of molecules that the distribution distances compare.

    Attributes:
        n: molecules profiled (finite positions only).
        bond_lengths: bond type (``"C-H"``) -> lengths in Å.
        bond_angles: angle type (``"C-C-H"``, centre in the middle) -> angles in degrees, [0, 180].
        dihedrals: dihedral type (``"H-C-C-O"``) -> absolute dihedral angles in degrees, [0, 180].
        rg: ``(n,)`` radius of gyration of each molecule in Å (unweighted, all atoms).
        smiles: largest-fragment canonical SMILES of each valid molecule (repeats kept; for FCD).
    """

    n: int = 0
    bond_lengths: dict[str, np.ndarray] = field(default_factory=dict)
    bond_angles: dict[str, np.ndarray] = field(default_factory=dict)
    dihedrals: dict[str, np.ndarray] = field(default_factory=dict)
    rg: np.ndarray = field(default_factory=lambda: np.zeros(0))
    smiles: list[str] = field(default_factory=list)
    _chemnet: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def extend(self, numbers: Tensor, positions: Tensor, batch: Tensor, smiles: Iterable[str | None]) -> None:
        """Add a chunk of molecules (flat layout, finite positions in Å) and their SMILES (None: invalid)."""
        lengths, angles, dihedrals, rg = chunk_geometry(numbers, positions, batch)
        for mine, new in ((self.bond_lengths, lengths), (self.bond_angles, angles), (self.dihedrals, dihedrals)):
            for key, values in new.items():
                mine[key] = np.concatenate([mine[key], values]) if key in mine else values
        self.rg = np.concatenate([self.rg, rg])
        self.n += rg.shape[0]
        self.smiles.extend(s for s in smiles if s is not None)
        self._chemnet = None

    def chemnet_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the ChemNet activations of :attr:`smiles` (computed once; for FCD)."""
        if self._chemnet is None:
            from energyloss_plugins.metrics.frechet import activation_statistics

            self._chemnet = activation_statistics(self.smiles)
        return self._chemnet


def _type_names(numbers: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``(K,)`` type names of ``(k, K)`` atom tuples, canonical up to reversal (Hill order)."""
    table = require("rdkit.Chem", "geometry distances (element symbols)", "data").GetPeriodicTable()
    symbols = np.array(["", *(table.GetElementSymbol(z) for z in range(1, int(numbers.max(initial=1)) + 1))],
                       dtype=object)
    names = []
    for row in symbols[numbers[index]].T:
        forward, backward = list(row), list(row[::-1])
        key = min(forward, backward, key=lambda seq: [hill_key(s) for s in seq])
        names.append("-".join(key))
    return np.array(names, dtype=object)


def _by_type(names: np.ndarray, values: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, list] = defaultdict(list)
    for name, value in zip(names.tolist(), values.tolist(), strict=True):
        out[name].append(value)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _dihedral_paths(bonds: np.ndarray, n_atoms: int) -> np.ndarray:
    """``(4, D)`` paths i-j-k-l of three bonds with i ≠ l, each once (central bond j-k with j < k)."""
    neighbours: list[list[int]] = [[] for _ in range(n_atoms)]
    for a, b in bonds.T.tolist():
        neighbours[a].append(b)
        neighbours[b].append(a)
    paths = [(i, j, k, m) for j, k in bonds.T.tolist() for i in neighbours[j] if i != k
             for m in neighbours[k] if m != j and m != i]
    return np.array(paths, dtype=np.int64).reshape(-1, 4).T


def _dihedral_angles(x: np.ndarray, paths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute dihedral angles (degrees) of ``(4, D)`` paths, and the mask of defined ones."""
    b1 = x[paths[1]] - x[paths[0]]
    b2 = x[paths[2]] - x[paths[1]]
    b3 = x[paths[3]] - x[paths[2]]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    norm = np.linalg.norm
    defined = (norm(n1, axis=1) > MIN_SINE * norm(b1, axis=1) * norm(b2, axis=1)) & (
        norm(n2, axis=1) > MIN_SINE * norm(b2, axis=1) * norm(b3, axis=1))
    m1 = np.cross(n1, b2 / np.maximum(norm(b2, axis=1, keepdims=True), 1e-12))
    phi = np.degrees(np.arctan2((m1 * n2).sum(1), (n1 * n2).sum(1)))
    return np.abs(phi), defined


def chunk_geometry(numbers: Tensor, positions: Tensor, batch: Tensor) -> tuple[dict, dict, dict, np.ndarray]:
    """Bond lengths (Å), bond angles (°), absolute dihedrals (°) by type and ``(B,)`` radii of gyration (Å).

    Args:
        numbers: ``(N,)`` atomic numbers. positions: ``(N, 3)`` Å, finite. batch: ``(N,)`` structure
            index 0..B-1 (every structure has atoms).
    """
    bonds = covalent_bonds(numbers, positions, batch)
    z = numbers.cpu().numpy()
    x = positions.detach().cpu().double().numpy()
    b = bonds.cpu().numpy()
    lengths = _by_type(_type_names(z, b), np.linalg.norm(x[b[0]] - x[b[1]], axis=1))
    triples = bond_angles(bonds, z.shape[0])
    angle_values = angles_at(positions.detach().cpu().double(), triples).numpy() * (180.0 / math.pi)
    angles = _by_type(_type_names(z, triples.numpy()), angle_values)
    paths = _dihedral_paths(b, z.shape[0])
    phi, defined = _dihedral_angles(x, paths)
    dihedrals = _by_type(_type_names(z, paths[:, defined]), phi[defined])
    pos, owner = positions.detach().cpu().double(), batch.cpu().long()
    n_structures = int(owner.max()) + 1
    centre = segment_mean(pos, owner, n_structures)
    radii = segment_mean(((pos - centre[owner]) ** 2).sum(1), owner, n_structures).sqrt()
    return lengths, angles, dihedrals, radii.numpy()


def typed_distance(samples: dict[str, np.ndarray], reference: dict[str, np.ndarray]
                   ) -> tuple[float | None, dict[str, float | None], list[str]]:
    """Wasserstein-1 distance per type and their mean weighted by the reference's type frequencies.

    Returns:
        ``(mean over the types both hold, or None if none; per reference type: distance or None where
        the samples lack it; reference types the samples lack)``.
    """
    from scipy.stats import wasserstein_distance

    per_type: dict[str, float | None] = {}
    total = weight = 0.0
    for key in sorted(reference, key=lambda k: -len(reference[k])):
        if key in samples and len(samples[key]):
            d = float(wasserstein_distance(samples[key], reference[key]))
            per_type[key] = d
            total += d * len(reference[key])
            weight += len(reference[key])
        else:
            per_type[key] = None
    missing = [k for k, v in per_type.items() if v is None]
    return (total / weight if weight else None), per_type, missing


def distribution_distances(samples: SetProfile, reference: SetProfile) -> tuple[dict, dict[str, str]]:
    """Wasserstein-1 distances of the samples' geometry distributions to the reference's.

    Returns:
        ``(values, notes)``: values has ``bond_length_distance`` (Å), ``bond_angle_distance`` (°),
        ``dihedral_distance`` (°) — reference-frequency-weighted means over types — with their
        ``*_per_type`` dicts, and ``rg_distance`` (Å) between the radii of gyration; None where nothing
        can be compared. ``notes`` says why a value is None, or which reference types the samples lack.
    """
    from scipy.stats import wasserstein_distance

    values: dict = {}
    notes: dict[str, str] = {}
    for key, (attr, _unit) in GEOMETRY_DISTANCES.items():
        mean, per_type, missing = typed_distance(getattr(samples, attr), getattr(reference, attr))
        values[key] = mean
        values[key + "_per_type"] = per_type
        what = attr.replace("_", " ")
        if not getattr(reference, attr):
            notes[key] = f"the reference holds no {what}"
        elif mean is None:
            notes[key] = f"the samples hold no {what} of the reference's types (worse than any value)"
        elif missing:
            counts = getattr(reference, attr)
            share = sum(len(counts[k]) for k in missing) / sum(len(v) for v in counts.values())
            notes[key] = (f"samples lack {len(missing)} of the reference's {len(counts)} types "
                          f"({100 * share:.1f} % of its {what}; left out of the mean): {', '.join(missing[:6])}"
                          + (", ..." if len(missing) > 6 else ""))
    if len(samples.rg) and len(reference.rg):
        values["rg_distance"] = float(wasserstein_distance(samples.rg, reference.rg))
    else:
        values["rg_distance"] = None
        notes["rg_distance"] = "no molecules with finite positions"
    return values, notes


def profile(molecules: Sequence, chunk_size: int = 500, progress: bool = False) -> SetProfile:
    """:class:`SetProfile` of a list of molecules (``ase.Atoms``), e.g. the reference set.

    Molecules with non-finite positions are left out.
    """
    finite = [m for m in molecules if np.isfinite(np.asarray(m.positions, dtype=float)).all()]
    out = SetProfile()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(finite), desc="reference", unit="mol")
    for start in range(0, len(finite), chunk_size):
        chunk = finite[start:start + chunk_size]
        numbers, positions, batch = flat_molecules(chunk)
        out.extend(numbers, positions, batch, edm_smiles(numbers, positions, batch))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out

