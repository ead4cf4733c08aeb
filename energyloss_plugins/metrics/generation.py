"""Metrics of generated molecules: EDM's protocol (SPEC §7), connectivity, geometry and FCD against a reference.

Input: a list of molecules with ``numbers`` ``(N,)`` and ``positions`` ``(N, 3)`` Å (``ase.Atoms`` or
anything with those attributes). Bonds and their orders come from pair distances with EDM's tables
(:func:`~energyloss_plugins.metrics.bonds.distance_bond_orders`); the RDKit molecule built from them
(:func:`~energyloss_plugins.metrics.chemistry.to_rdkit_mols`, implicit hydrogens allowed, as EDM)
decides validity, and its largest fragment's canonical SMILES (without explicit hydrogens) identifies
the molecule for uniqueness and novelty. Training SMILES must come from the same pipeline
(:func:`edm_smiles` of the training geometries), not from the dataset's own SMILES: the distance
rule reads an aromatic ring as single bonds plus implicit hydrogens, so a dataset SMILES would count
every such sample as novel.

Because validity judges the largest fragment only, a cloud of small pieces can score as valid;
``connected`` (one fragment under EDM's bonds), ``valid_and_connected`` and ``mean_fragments`` say
whether the samples are molecules at all. Against a reference set (usually the training molecules)
the samples' distributions of bond lengths, bond angles, dihedrals and radii of gyration are compared
by Wasserstein-1 distances (:mod:`~energyloss_plugins.metrics.distributions`; Å and degrees), and
their valid molecules' SMILES by the Fréchet ChemNet distance (:mod:`~energyloss_plugins.metrics.frechet`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from energyloss_plugins._checks import MAX_ATOMS_PER_MOLECULE
from energyloss_plugins.layouts import flat_molecules, structure_counts
from energyloss_plugins.metrics.bonds import fragment_counts, stable_atoms
from energyloss_plugins.metrics.chemistry import edm_smiles
from energyloss_plugins.metrics.distributions import GEOMETRY_DISTANCES, SetProfile, distribution_distances, profile
from energyloss_plugins.optional import MissingOptionalDependency

#: Keys of :func:`generation_metrics` (EDM's: fractions in [0, 1]; ``n`` a count).
GENERATION_METRICS = ("n", "atom_stability", "mol_stability", "validity", "uniqueness", "valid_unique", "novelty")
#: Keys added beside EDM's: connectivity (fractions; mean count) and distances to a reference set
#: (Wasserstein-1 in Å or degrees; FCD unitless); None where not computable (``notes`` says why).
REFERENCE_METRICS = ("connected", "valid_and_connected", "mean_fragments", *GEOMETRY_DISTANCES, "rg_distance",
                     "fcd")


def molecule_smiles_set(molecules: Iterable[Any], chunk_size: int = 500, progress: bool = False,
                        total: int | None = None) -> set[str]:
    """Set of :func:`edm_smiles` of valid molecules, e.g. the training set for novelty."""
    out: set[str] = set()
    for smiles, _ in _chunks(molecules, chunk_size, progress, total, "training SMILES", stability=False):
        out.update(s for s in smiles if s is not None)
    return out


def _chunks(molecules: Iterable[Any], chunk_size: int, progress: bool, total: int | None, desc: str, stability: bool,
            geometry: SetProfile | None = None):
    """Yield ``(smiles, (stable_atoms, batch, fragments) or None)`` per chunk of molecules, with a progress bar.

    ``geometry``: a profile that each chunk's geometry and SMILES are added to.
    """
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
                yield _evaluate_chunk(chunk, stability, geometry)
                if bar is not None:
                    bar.update(len(chunk))
                chunk = []
        if chunk:
            yield _evaluate_chunk(chunk, stability, geometry)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def _evaluate_chunk(chunk: list[Any], stability: bool, geometry: SetProfile | None
                    ) -> tuple[list[str | None], tuple[Tensor, Tensor, Tensor] | None]:
    numbers, positions, batch = flat_molecules(chunk)
    smiles = edm_smiles(numbers, positions, batch)
    if geometry is not None:
        geometry.extend(numbers, positions, batch, smiles)
    if not stability:
        return smiles, None
    return smiles, (stable_atoms(numbers, positions, batch), batch, fragment_counts(numbers, positions, batch))


def generation_metrics(atoms_list: Sequence[Any], train_smiles: set[str] | None = None, *,
                       reference: Sequence[Any] | SetProfile | None = None, fcd: bool = True, chunk_size: int = 500,
                       progress: bool = False) -> dict[str, Any]:
    """EDM's metrics of a set of generated molecules (or of a dataset's own geometries), connectivity,
    and distances to a reference set.

    Args:
        atoms_list: molecules (``ase.Atoms`` or objects with ``numbers`` and ``positions`` in Å).
        train_smiles: SMILES of the training molecules made by the same pipeline
            (:func:`molecule_smiles_set` of the training geometries); None: novelty is None.
        reference: the molecules to compare distributions with (usually the training molecules), or
            their :func:`~energyloss_plugins.metrics.distributions.profile` (made once, reused for
            several sample sets); None: the distances and ``fcd`` are None.
        fcd: compute the Fréchet ChemNet distance (needs the ``fcd`` package, ``[metrics]`` extra; ChemNet
            takes about 3 ms of CPU per SMILES).
        chunk_size: molecules evaluated together (memory of the all-pairs distances).
        progress: show a progress bar.

    Returns:
        dict with EDM's ``n`` (molecules), ``atom_stability`` (fraction of all atoms whose bond-order
        sum is an allowed valence), ``mol_stability`` (fraction of molecules with all atoms stable),
        ``validity`` (fraction whose RDKit molecule sanitises; it judges the largest fragment only),
        ``uniqueness`` (distinct SMILES among the valid; NaN if none is valid), ``valid_unique``
        (distinct valid SMILES / n, EDM's "valid and unique"), ``novelty`` (fraction of the distinct
        valid SMILES not in ``train_smiles``; None without a training set or with an empty one, NaN if none
        is valid),
        ``non_finite`` (molecules with NaN/Inf positions, counted as unstable, invalid and as
        fragmented as they have atoms);
        ``connected`` (fraction of molecules that are one fragment under EDM's bonds), ``valid_and_connected``
        (valid and one fragment), ``mean_fragments`` (mean number of fragments; an isolated atom is
        one); with a reference, Wasserstein-1 distances of the samples' distributions to the
        reference's: ``bond_length_distance`` (Å, mean over bond types weighted by the reference's
        bond-type frequencies), ``bond_angle_distance`` (degrees, likewise over angle types),
        ``dihedral_distance`` (degrees, absolute dihedrals, over dihedral types), with
        ``*_per_type`` dicts (reference type -> distance, None where the samples lack the type),
        ``rg_distance`` (Å, radii of gyration), and ``fcd`` (Fréchet ChemNet distance between the
        valid samples' and the valid reference molecules' largest-fragment SMILES); each None where
        not computable, and ``notes`` (key -> reason, or which reference types the samples lack).

    Raises:
        ValueError: empty input, a molecule without atoms or with more than 10,000, a periodic
            structure (a crystal: bonds across the cell are not molecular bonds), or an element
            without a valence rule.
    """
    _check_molecules(atoms_list)
    n = len(atoms_list)
    # A diverged sampler leaves NaN/Inf positions: such a molecule has no bonds to judge, so all its
    # atoms count as unstable and it is neither stable nor valid (``non_finite`` says how many).
    finite = [m for m in atoms_list if np.isfinite(np.asarray(m.positions, dtype=float)).all()]
    n_atoms = sum(len(m.numbers) for m in atoms_list)
    n_stable_atoms = n_stable_mols = n_connected = n_valid_connected = 0
    n_fragments = n_atoms - sum(len(m.numbers) for m in finite)  # a non-finite molecule: all atoms apart
    valid: list[str] = []
    samples = SetProfile() if reference is not None else None
    chunks = _chunks(finite, chunk_size, progress, len(finite), "evaluating", stability=True, geometry=samples)
    for smiles, (stable, batch, fragments) in chunks:
        n_stable_atoms += int(stable.sum())
        n_stable_mols += int((structure_counts(batch[~stable], len(smiles)) == 0).sum())
        valid.extend(s for s in smiles if s is not None)
        one = (fragments == 1).tolist()
        n_connected += sum(one)
        n_valid_connected += sum(c and s is not None for c, s in zip(one, smiles, strict=True))
        n_fragments += int(fragments.sum())
    unique = set(valid)
    out: dict[str, Any] = {
        "n": n,
        "atom_stability": n_stable_atoms / n_atoms,
        "mol_stability": n_stable_mols / n,
        "validity": len(valid) / n,
        "uniqueness": len(unique) / len(valid) if valid else math.nan,
        "valid_unique": len(unique) / n,
        "novelty": _novelty(unique, train_smiles),
        "non_finite": n - len(finite),
        "connected": n_connected / n,
        "valid_and_connected": n_valid_connected / n,
        "mean_fragments": n_fragments / n,
    }
    out.update(_reference_metrics(samples, reference, fcd, chunk_size, progress))
    return out


def _check_molecules(atoms_list: Sequence[Any]) -> None:
    """Some molecules, none periodic, none larger than the metrics take (see :func:`generation_metrics`)."""
    if len(atoms_list) == 0:
        raise ValueError("No molecules given; pass a non-empty list of ase.Atoms.")
    for index, m in enumerate(atoms_list):
        if np.any(getattr(m, "pbc", False)):
            raise ValueError(f"structure {index} is periodic (pbc={np.asarray(m.pbc).tolist()}): the generation "
                             "metrics judge isolated molecules, not crystals; evaluate molecules only.")
        if len(m.numbers) > MAX_ATOMS_PER_MOLECULE:
            raise ValueError(f"structure {index} has {len(m.numbers)} atoms; the metrics take molecules of at most "
                             f"{MAX_ATOMS_PER_MOLECULE} atoms.")


def _novelty(unique: set[str], train_smiles: set[str] | None) -> float | None:
    """Fraction of the distinct valid SMILES not in the training set; None without one (an empty training
    set gives no novelty, not 100 %), NaN when nothing is valid."""
    if not train_smiles:
        return None
    return len(unique - set(train_smiles)) / len(unique) if unique else math.nan


def _reference_metrics(samples: SetProfile | None, reference: Sequence[Any] | SetProfile | None, fcd: bool,
                       chunk_size: int, progress: bool) -> dict[str, Any]:
    """Geometry distances, FCD and ``notes`` (None values with the reason when there is no reference)."""
    if samples is None or reference is None:
        values: dict[str, Any] = {key: None for key in REFERENCE_METRICS[3:]}
        values.update({key + "_per_type": None for key in GEOMETRY_DISTANCES})
        return {**values, "notes": {"reference": "no reference set: distances and FCD not computed"}}
    if not isinstance(reference, SetProfile):
        reference = profile(reference, chunk_size=chunk_size, progress=progress)
    values, notes = distribution_distances(samples, reference)
    values["fcd"] = None
    if not fcd:
        notes["fcd"] = "not computed (fcd=False, --no-fcd)"
    elif len(samples.smiles) < 2 or len(reference.smiles) < 2:
        notes["fcd"] = (f"needs at least two valid molecules per set (samples {len(samples.smiles)}, "
                        f"reference {len(reference.smiles)})")
    else:
        from energyloss_plugins.metrics.frechet import activation_statistics, frechet_distance

        try:
            values["fcd"] = frechet_distance(*activation_statistics(samples.smiles), *reference.chemnet_statistics())
        except MissingOptionalDependency as exc:
            notes["fcd"] = str(exc)
    return {**values, "notes": notes}
