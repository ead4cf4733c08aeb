"""Metrics of generated molecules (EDM's protocol, SPEC §7): stability, validity, uniqueness, novelty.

Input: a list of molecules with ``numbers`` ``(N,)`` and ``positions`` ``(N, 3)`` Å (``ase.Atoms`` or
anything with those attributes). Bonds and their orders come from pair distances with EDM's tables
(:func:`~energyloss_plugins.metrics.bonds.distance_bond_orders`); the RDKit molecule built from them
(:func:`~energyloss_plugins.metrics.chemistry.to_rdkit_mols`, implicit hydrogens allowed, as EDM)
decides validity, and its largest fragment's canonical SMILES (without explicit hydrogens) identifies
the molecule for uniqueness and novelty. Training SMILES must come from the same pipeline
(:func:`edm_smiles` of the training geometries), not from the dataset's own SMILES: the distance
rule reads an aromatic ring as single bonds plus implicit hydrogens, so a dataset SMILES would count
every such sample as novel.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from energyloss_plugins._checks import MAX_ATOMS_PER_MOLECULE
from energyloss_plugins.metrics.bonds import stable_atoms
from energyloss_plugins.metrics.chemistry import to_rdkit_mols

#: Keys of :func:`generation_metrics` (fractions in [0, 1]; ``n`` a count).
GENERATION_METRICS = ("n", "atom_stability", "mol_stability", "validity", "uniqueness", "valid_unique", "novelty")


def flat_molecules(molecules: Sequence[Any], dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """``numbers`` ``(N,)`` long, ``positions`` ``(N, 3)`` Å, ``batch`` ``(N,)`` of a list of molecules.

    Raises:
        ValueError: the list is empty or a molecule has no atoms.
    """
    if len(molecules) == 0:
        raise ValueError("No molecules given; pass a non-empty list of ase.Atoms.")
    counts = [len(m.numbers) for m in molecules]
    empty = [i for i, c in enumerate(counts) if c == 0]
    if empty:
        raise ValueError(f"Molecule(s) {empty[:10]} have no atoms; remove them before evaluating.")
    numbers = torch.as_tensor(np.concatenate([np.asarray(m.numbers) for m in molecules]), dtype=torch.long)
    positions = torch.as_tensor(np.concatenate([np.asarray(m.positions, dtype=np.float64) for m in molecules]),
                                dtype=dtype)
    batch = torch.repeat_interleave(torch.arange(len(molecules)), torch.as_tensor(counts))
    return numbers, positions, batch


def largest_fragment_smiles(mol: Any) -> str:
    """Canonical SMILES (no explicit hydrogens, no stereo from 3D) of the largest fragment by atom count."""
    from rdkit import Chem

    from energyloss_plugins import chem

    fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    return chem.canonical_smiles(max(fragments, key=lambda m: m.GetNumAtoms()) if fragments else mol)


def edm_smiles(numbers: Tensor, positions: Tensor, batch: Tensor | None = None) -> list[str | None]:
    """Per structure: the largest fragment's canonical SMILES of the EDM-bond molecule, None if invalid."""
    return [None if m is None else largest_fragment_smiles(m) for m in to_rdkit_mols(numbers, positions, batch, "edm")]


def molecule_smiles_set(molecules: Iterable[Any], chunk_size: int = 500, progress: bool = False,
                        total: int | None = None) -> set[str]:
    """Set of :func:`edm_smiles` of valid molecules, e.g. the training set for novelty."""
    out: set[str] = set()
    for smiles, _ in _chunks(molecules, chunk_size, progress, total, "training SMILES", stability=False):
        out.update(s for s in smiles if s is not None)
    return out


def _chunks(molecules: Iterable[Any], chunk_size: int, progress: bool, total: int | None, desc: str, stability: bool):
    """Yield ``(smiles, (stable_atoms, batch) or None)`` per chunk of molecules, with a progress bar."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="mol")
    try:
        chunk: list[Any] = []
        for m in molecules:
            chunk.append(m)
            if len(chunk) == chunk_size:
                yield _evaluate_chunk(chunk, stability)
                if bar is not None:
                    bar.update(len(chunk))
                chunk = []
        if chunk:
            yield _evaluate_chunk(chunk, stability)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def _evaluate_chunk(chunk: list[Any], stability: bool) -> tuple[list[str | None], tuple[Tensor, Tensor] | None]:
    numbers, positions, batch = flat_molecules(chunk)
    smiles = edm_smiles(numbers, positions, batch)
    return smiles, ((stable_atoms(numbers, positions, batch), batch) if stability else None)


def generation_metrics(atoms_list: Sequence[Any], train_smiles: set[str] | None = None, *, chunk_size: int = 500,
                       progress: bool = False) -> dict[str, float | int | None]:
    """EDM's metrics of a set of generated molecules (or of a dataset's own geometries).

    Args:
        atoms_list: molecules (``ase.Atoms`` or objects with ``numbers`` and ``positions`` in Å).
        train_smiles: SMILES of the training molecules made by the same pipeline
            (:func:`molecule_smiles_set` of the training geometries); None: novelty is None.
        chunk_size: molecules evaluated together (memory of the all-pairs distances).
        progress: show a progress bar.

    Returns:
        dict with ``n`` (molecules), ``atom_stability`` (fraction of all atoms whose bond-order sum
        is an allowed valence), ``mol_stability`` (fraction of molecules with all atoms stable),
        ``validity`` (fraction whose RDKit molecule sanitises), ``uniqueness`` (distinct SMILES
        among the valid; NaN if none is valid), ``valid_unique`` (distinct valid SMILES / n, EDM's
        "valid and unique"), ``novelty`` (fraction of the distinct valid SMILES not in
        ``train_smiles``; None without a training set or with an empty one, NaN if none is valid), ``non_finite``
        (molecules with NaN/Inf positions, counted as unstable and invalid).

    Raises:
        ValueError: empty input, a molecule without atoms or with more than 10,000, a periodic
            structure (a crystal: bonds across the cell are not molecular bonds), or an element
            without a valence rule.
    """
    n = len(atoms_list)
    if n == 0:
        raise ValueError("No molecules given; pass a non-empty list of ase.Atoms.")
    for index, m in enumerate(atoms_list):
        if np.any(getattr(m, "pbc", False)):
            raise ValueError(f"structure {index} is periodic (pbc={np.asarray(m.pbc).tolist()}): the generation "
                             "metrics judge isolated molecules, not crystals; evaluate molecules only.")
        if len(m.numbers) > MAX_ATOMS_PER_MOLECULE:
            raise ValueError(f"structure {index} has {len(m.numbers)} atoms; the metrics take molecules of at most "
                             f"{MAX_ATOMS_PER_MOLECULE} atoms.")
    # A diverged sampler leaves NaN/Inf positions: such a molecule has no bonds to judge, so all its
    # atoms count as unstable and it is neither stable nor valid (``non_finite`` says how many).
    finite = [m for m in atoms_list if np.isfinite(np.asarray(m.positions, dtype=float)).all()]
    n_atoms = sum(len(m.numbers) for m in atoms_list)
    n_stable_atoms = n_stable_mols = 0
    valid: list[str] = []
    for smiles, (stable, batch) in _chunks(finite, chunk_size, progress, len(finite), "evaluating", stability=True):
        n_stable_atoms += int(stable.sum())
        unstable_per_mol = torch.zeros(len(smiles), dtype=torch.long).index_add_(0, batch, (~stable).long())
        n_stable_mols += int((unstable_per_mol == 0).sum())
        valid.extend(s for s in smiles if s is not None)
    unique = set(valid)
    novelty = None
    if train_smiles:  # an empty training set gives no novelty (not 100 %)
        novelty = len(unique - set(train_smiles)) / len(unique) if unique else math.nan
    return {
        "n": n,
        "atom_stability": n_stable_atoms / n_atoms,
        "mol_stability": n_stable_mols / n,
        "validity": len(valid) / n,
        "uniqueness": len(unique) / len(valid) if valid else math.nan,
        "valid_unique": len(unique) / n,
        "novelty": novelty,
        "non_finite": n - len(finite),
    }
