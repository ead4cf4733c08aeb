"""The reference method of a build at one molecule: its target (a minimum, or the given geometry) and the
Hessian there that the thermal inputs are sampled from."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from energyloss_plugins import chem
from energyloss_plugins.chem import ChemError
from energyloss_plugins.data.seeds import EMBED_STREAM, seed_for
from energyloss_plugins.data.settings import BuildSettings
from energyloss_plugins.data.sources import SourceEntry


def make_target(entry: SourceEntry, s: BuildSettings) -> tuple[np.ndarray, Any, float, float]:
    """``(target positions, mol with conformer = target, ref energy eV, max force eV/Å)``."""
    if entry.smiles is not None:
        mol = chem.mol_from_smiles(entry.smiles)
        start = chem.embed(mol, seed_for(s.seed, entry.index, EMBED_STREAM))
    else:
        assert entry.numbers is not None and entry.positions is not None
        mol = chem.mol_from_xyz(entry.numbers, entry.positions, entry.charge)
        start = entry.positions
    if chem.n_fragments(mol) > 1:
        raise ChemError("multiple_fragments")
    if s.method == "as-given":
        pos, energy, fmax = np.array(start, dtype=np.float64), entry.energy, math.nan
    elif s.method == "mmff":
        pos, energy, fmax = chem.ff_relax(mol, start, "mmff")
        if fmax > chem.TARGET_FMAX:
            raise ChemError("target_not_converged", f"max force {fmax:.2e} eV/Å")
    else:  # xtb
        if entry.smiles is not None:
            try:  # pre-relax the embedding with MMFF: cheaper and a better start
                start, _, _ = chem.ff_relax(mol, start, "mmff")
            except ChemError:
                pass
        pos, energy, fmax = chem.xtb_relax(chem.atomic_numbers(mol), start, *chem.charge_and_multiplicity(mol))
        if not _same_connectivity(mol, pos):
            raise ChemError("topology_changed", "the GFN2-xTB relaxation broke or formed a bond")
    mol = chem.with_positions(mol, pos)
    chem.rdkit().AssignStereochemistryFrom3D(mol)
    return pos, mol, energy, fmax


def _same_connectivity(mol: Any, positions: np.ndarray) -> bool:
    probe = chem.bare_mol(chem.atomic_numbers(mol), positions)
    try:
        chem.rdkit("rdkit.Chem.rdDetermineBonds").DetermineConnectivity(probe)
    except Exception:
        return False
    a = {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}
    b = {tuple(sorted((x.GetBeginAtomIdx(), x.GetEndAtomIdx()))) for x in probe.GetBonds()}
    return a == b


def thermal_hessian(
    kind_cache: dict[str, np.ndarray], mol: Any, numbers: np.ndarray, target: np.ndarray, s: BuildSettings
) -> np.ndarray:
    """Hessian (eV/Å²) of the reference method at its minimum in the target's basin.

    MMFF targets: MMFF94 at the target. GFN2-xTB targets: GFN2-xTB at the target. As-given targets:
    MMFF94 (UFF if MMFF has no parameters) at the force-field relaxation from the target.
    """
    if s.method == "mmff":
        return chem.ff_hessian(mol, target, "mmff")
    if s.method == "xtb":
        return chem.xtb_hessian(numbers, target, *chem.charge_and_multiplicity(mol))
    for ff in ("mmff", "uff"):
        try:
            relaxed = kind_cache[ff] if ff in kind_cache else chem.ff_relax(mol, target, ff)[0]
            return chem.ff_hessian(mol, relaxed, ff)
        except ChemError:
            continue
    raise ChemError("no_force_field_for_hessian")
