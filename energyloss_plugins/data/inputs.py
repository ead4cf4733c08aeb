"""One molecule of a build: its target, bond graph and input geometries (:func:`process_entry`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from energyloss_plugins import chem
from energyloss_plugins.chem import ChemError
from energyloss_plugins.data.seeds import ETKDG_STREAM, THERMAL_STREAM, seed_for
from energyloss_plugins.data.settings import BuildSettings
from energyloss_plugins.data.sources import SourceEntry
from energyloss_plugins.data.targets import make_target, thermal_hessian


@dataclass
class MoleculeResult:
    """A processed molecule: target, graph and input geometries (numpy, Å / eV)."""

    index: int
    name: str
    numbers: np.ndarray
    target: np.ndarray
    ref_energy: float
    target_fmax: float
    bonds: np.ndarray
    bond_orders: np.ndarray
    formal_charges: np.ndarray
    smiles: str
    n_heavy: int
    inputs: list[tuple[str, int, np.ndarray]]
    input_failures: dict[str, int]


def process_entry(entry: SourceEntry, s: BuildSettings) -> MoleculeResult:
    """Make the target, graph and inputs of one source entry (deterministic given ``s.seed``).

    Raises:
        ChemError: the molecule cannot be used (its ``reason`` is counted by the builder).
    """
    target, mol, energy, fmax = make_target(entry, s)
    numbers = chem.atomic_numbers(mol)
    bonds, orders = chem.bond_arrays(mol)
    charge, mult = chem.charge_and_multiplicity(mol)
    inputs: list[tuple[str, int, np.ndarray]] = []
    failures: Counter[str] = Counter()
    relaxed: dict[str, np.ndarray] = {}
    for kind in s.inputs:
        try:
            if kind in ("uff", "mmff"):
                relaxed[kind] = chem.ff_relax(mol, target, kind)[0]
                inputs.append((kind, 0, relaxed[kind]))
            elif kind == "xtb":
                inputs.append((kind, 0, chem.xtb_relax(numbers, target, charge, mult)[0]))
            elif kind == "thermal":
                hess = thermal_hessian(relaxed, mol, numbers, target, s)
                rng = np.random.default_rng(seed_for(s.seed, entry.index, THERMAL_STREAM))
                samples = chem.harmonic_samples(target, hess, s.temperature, s.n_thermal, rng)
                inputs.extend((kind, k, samples[k]) for k in range(s.n_thermal))
            elif kind == "etkdg":
                for k in range(s.n_etkdg):
                    inputs.append((kind, k, chem.embed(mol, seed_for(s.seed, entry.index, ETKDG_STREAM + k))))
        except ChemError as exc:
            failures[f"{kind}:{exc.reason}"] += 1
    if not inputs:
        raise ChemError("no_inputs", ", ".join(failures))
    smiles = entry.smiles if entry.smiles is not None else chem.canonical_smiles(mol)
    return MoleculeResult(
        index=entry.index,
        name=entry.name,
        numbers=numbers,
        target=target,
        ref_energy=float(energy),
        target_fmax=float(fmax),
        bonds=bonds,
        bond_orders=orders,
        formal_charges=chem.formal_charges(mol),
        smiles=smiles or "",
        n_heavy=int((numbers != 1).sum()),
        inputs=inputs,
        input_failures=dict(failures),
    )
