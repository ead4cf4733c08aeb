"""Shared helpers of the ASE bridge: tensors from Atoms, edge sets, and Atoms -> the rigid motions and
normal modes of :mod:`energyloss_plugins.vibrations`.

Units: positions in Å, energies in eV, Hessians and springs in eV/Å², masses in amu,
frequencies in cm⁻¹ (imaginary frequencies are reported as negative numbers, as ASE does).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from ase import Atoms, units
from torch import Tensor

from energyloss_plugins import _checks, vibrations
from energyloss_plugins.graphs import GRAPH_NAMES, as_rigid_as_complete, build_pairs, unique_pairs
from energyloss_plugins.periodic import MinimumImage, minimum_image_shifts

#: ħ ω in eV for a mass-weighted Hessian eigenvalue λ in eV/(Å² amu): ħω = _HBAR_SQRT · sqrt(λ) (as in ase.vibrations).
_HBAR_SQRT = units._hbar * 1e10 / np.sqrt(units._e * units._amu)


def is_periodic(atoms: Atoms) -> bool:
    """True if any direction of ``atoms`` is periodic."""
    return bool(np.any(atoms.pbc))


def reference_tensors(atoms: Atoms, dtype: torch.dtype = torch.float64, name: str = "reference") -> dict:
    """Positions ``(n, 3)``, numbers ``(n,)`` and (if periodic) cell ``(3, 3)``, pbc ``(3,)`` of ``atoms``.

    Raises:
        ValueError: NaN or Inf in the positions or the cell (named ``<name>.positions``/``<name>.cell``).
    """
    _checks.check_finite(f"{name}.positions", torch.as_tensor(np.asarray(atoms.positions, dtype=float)))
    if is_periodic(atoms):
        _checks.check_finite(f"{name}.cell", torch.as_tensor(np.asarray(atoms.cell[:], dtype=float)))
    out = {
        "positions": torch.tensor(np.asarray(atoms.positions), dtype=dtype),
        "numbers": torch.tensor(np.asarray(atoms.numbers), dtype=torch.long),
        "cell": None,
        "pbc": None,
    }
    if is_periodic(atoms):
        out["cell"] = torch.tensor(np.asarray(atoms.cell[:]), dtype=dtype)
        out["pbc"] = torch.tensor(np.asarray(atoms.pbc), dtype=torch.bool)
    return out


def bonds_from_atoms(atoms: Atoms, mult: float = 1.2) -> Tensor:
    """``(2, M)`` covalent bonds (i < j) from ASE's neighbour analysis with natural (covalent-radius) cutoffs.

    Two atoms are bonded when their distance is below ``mult`` times the sum of their
    covalent radii (``ase.neighborlist.natural_cutoffs``; C–H: 1.28 Å, C–C: 1.82 Å with the
    default 1.2); periodic images count.
    """
    from ase.neighborlist import NeighborList, natural_cutoffs

    cutoffs = natural_cutoffs(atoms, mult=mult)
    nl = NeighborList(cutoffs, self_interaction=False, bothways=False, skin=0.0)
    nl.update(atoms)
    pairs = []
    for i in range(len(atoms)):
        neighbours, _ = nl.get_neighbors(i)
        pairs.extend((i, int(j)) for j in neighbours if int(j) != i)
    if not pairs:
        return torch.zeros(2, 0, dtype=torch.long)
    return unique_pairs(torch.tensor(pairs, dtype=torch.long).T)


def as_edge_index(edge_index, n_atoms: int | None, name: str = "edge_index") -> Tensor:
    """Validate a pair list given as ``(2, E)`` or ``(E, 2)`` integers; returns ``(2, E)`` long (order kept).

    ``n_atoms`` bounds the indices (None: no bound check); ``name`` is the argument named in errors.
    """
    if isinstance(edge_index, Tensor):
        edge_index = edge_index.detach().cpu()
    bound = n_atoms if n_atoms is not None else torch.iinfo(torch.long).max
    return _checks.as_pair_index(name, edge_index, bound).contiguous()


# rigid_sparse graphs of a fixed reference (calculators, fitted springs) up to this many atoms are
# checked at the reference itself (one small eigendecomposition) and redrawn, up to this many times.
_REFERENCE_CHECK_MAX_ATOMS = 300
_REFERENCE_CHECK_DRAWS = 20


def pairs_for_atoms(
    atoms: Atoms,
    graph: str = "complete",
    graph_kwargs: Mapping | None = None,
    bonds: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """The ``(2, E)`` edge set ``graph`` of one structure, built by the core on its positions (deterministic).

    Args:
        atoms: reference structure (minimum-image distances if periodic).
        graph: ``complete``, ``radius`` (``graph_kwargs={"cutoff": Å}``), ``bonds`` (``bonds`` or
            ASE's covalent-radius neighbour analysis) or ``rigid_sparse`` (drawn with ``seed``; for
            molecules of up to 300 atoms redrawn with seed + 1, + 2, ... until it fixes the reference
            to first order as well as the complete graph, see :func:`~energyloss_plugins.graphs.as_rigid_as_complete`).
        bonds: ``(2, M)`` bonded pairs for ``graph="bonds"``.
    """
    if graph not in GRAPH_NAMES:
        raise ValueError(f"Unknown graph {graph!r}. Valid names: {', '.join(GRAPH_NAMES)}.")
    ref = reference_tensors(atoms)
    pos = ref["positions"]
    n = pos.shape[0]
    batch = torch.zeros(n, dtype=torch.long)
    distance_fn = None
    if ref["cell"] is not None:
        mic = MinimumImage(pos, batch, 1, ref["cell"], ref["pbc"])
        distance_fn = lambda p: (pos[p[1]] - pos[p[0]] + mic.shifts(p)).norm(dim=-1)  # noqa: E731
    kwargs = dict(graph_kwargs or {})
    if graph == "bonds" and bonds is None:
        bonds = bonds_from_atoms(atoms)
    if graph == "rigid_sparse":
        kwargs.setdefault("numbers", ref["numbers"])
    first_seed = int(kwargs.pop("seed", seed))
    check = graph == "rigid_sparse" and ref["cell"] is None and n <= _REFERENCE_CHECK_MAX_ATOMS
    for attempt in range(_REFERENCE_CHECK_DRAWS if check else 1):
        with torch.random.fork_rng(devices=[]):  # rigid_sparse draws its pool member from torch's global RNG
            torch.manual_seed(first_seed + attempt)
            pairs = build_pairs(graph, pos, batch, 1, bonds=bonds, distance_fn=distance_fn,
                                seed=first_seed + attempt, **kwargs).materialize().long()
        # A random graph is rigid at generic positions; this reference may be special (e.g. an atom
        # whose partners are coplanar could flip through their plane at no cost): draw again.
        if not check or as_rigid_as_complete(pairs.T.numpy(), pos.double().numpy()):
            return pairs
    raise ValueError(
        f"No rigid_sparse graph among {_REFERENCE_CHECK_DRAWS} draws fixes this {n}-atom reference as well as "
        "the complete graph does; use graph='complete' (or rigid_sparse with symmetrize=True)."
    )


def pair_vectors(positions: np.ndarray, edge_index: np.ndarray, atoms: Atoms | None = None) -> np.ndarray:
    """``(E, 3)`` vectors ``y_j − y_i`` of the pairs, minimum-image if ``atoms`` is periodic."""
    i, j = edge_index
    vec = positions[j] - positions[i]
    if atoms is not None and is_periodic(atoms):
        cell = np.asarray(atoms.cell[:])
        vec = vec + minimum_image_shifts(positions, cell, np.asarray(atoms.pbc), np.asarray(edge_index)) @ cell
    return vec


def rigid_basis(atoms: Atoms, mass_weighted: bool = False) -> np.ndarray:
    """Orthonormal ``(3n, r)`` basis of rigid motions: translations, plus rotations if not periodic.

    ``r`` is 6 for a non-linear molecule, 5 for a linear one, 3 with periodic boundaries. With
    ``mass_weighted`` the basis lives in mass-weighted coordinates √m·x.
    """
    masses = np.asarray(atoms.get_masses(), dtype=float) if mass_weighted else None
    return vibrations.rigid_motion_basis(atoms.positions, masses, rotations=not is_periodic(atoms))


def n_rigid_modes(atoms: Atoms) -> int:
    """Number of zero-energy rigid motions: 6 (non-linear molecule), 5 (linear), 3 (periodic), 3n for n = 1."""
    return rigid_basis(atoms).shape[1]


def internal_projector(atoms: Atoms, mass_weighted: bool = False) -> np.ndarray:
    """``(3n, 3n)`` projector onto the complement of the rigid motions (Cartesian or mass-weighted)."""
    return vibrations.internal_projector(rigid_basis(atoms, mass_weighted))


def normal_modes(hessian: np.ndarray, atoms: Atoms) -> tuple[np.ndarray, np.ndarray]:
    """Non-rigid normal modes of a Hessian: frequencies ``(M,)`` in cm⁻¹ and Cartesian unit displacements ``(M, n, 3)``.

    Mode vectors are the mass-weighted eigenvectors converted back to Cartesian displacements
    and normalised to unit length (Å per unit amplitude); see :func:`energyloss_plugins.vibrations.normal_modes`.
    """
    masses = np.asarray(atoms.get_masses(), dtype=float)
    lam, modes = vibrations.normal_modes(hessian, masses, rigid_basis(atoms, mass_weighted=True))
    return _HBAR_SQRT * np.sign(lam) * np.sqrt(np.abs(lam)) / units.invcm, modes


def frequencies_cm(hessian: np.ndarray, atoms: Atoms) -> np.ndarray:
    """Harmonic frequencies in cm⁻¹ of the non-rigid modes, ascending; imaginary ones as negative numbers.

    Args:
        hessian: ``(3n, 3n)`` Cartesian Hessian in eV/Å².
        atoms: supplies masses (amu) and the rigid motions, which are projected out.
    """
    return normal_modes(hessian, atoms)[0]


def thermalize_momenta(atoms, temperature_K: float, rng: np.random.Generator | None = None) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_K`` (ASE's ``thermalize_momenta``, 3.29+; its
    deprecated predecessor ``MaxwellBoltzmannDistribution`` on older ASE)."""
    try:
        from ase.md.velocitydistribution import thermalize_momenta as thermalize
    except ImportError:  # ASE < 3.29
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize
    thermalize(atoms, temperature_K=temperature_K, rng=rng)
