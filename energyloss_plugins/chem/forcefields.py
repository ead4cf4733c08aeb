"""RDKit force fields (MMFF94/MMFF94s, UFF) in eV and Å: energies, forces, tight relaxations, Hessians."""

from __future__ import annotations

from typing import Any

import numpy as np

from energyloss_plugins.chem.molecules import ChemError, rdkit, rdkit_quiet, with_positions
from energyloss_plugins.vibrations import fd_hessian

#: 1 kcal/mol in eV (``ase.units.kcal / ase.units.mol``).
KCAL_MOL_IN_EV = 0.04336410390059322
#: A target counts as a force-field minimum when its largest atomic force is below this (eV/Å).
TARGET_FMAX = 1e-4
MMFF_VARIANTS = ("MMFF94", "MMFF94s")


class ForceField:
    """An RDKit force field together with the molecule copy it points into (kept alive).

    Energies in eV and forces in eV/Å (RDKit works in kcal/mol); the one RDKit force-field
    wrapper of the package (the data builder, metrics and :class:`~energyloss_plugins.ase.MMFFCalculator`).
    """

    def __init__(self, ff: Any, mol: Any) -> None:
        self.ff = ff
        self.mol = mol

    def energy(self, positions: np.ndarray) -> float:
        """Energy in eV at ``positions`` ``(N, 3)`` Å."""
        return float(self.ff.CalcEnergy(np.asarray(positions, dtype=np.float64).ravel().tolist())) * KCAL_MOL_IN_EV

    def energy_forces(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """Energy (eV) and ``(N, 3)`` forces (eV/Å) at ``positions``."""
        x = np.asarray(positions, dtype=np.float64).ravel().tolist()
        # RDKit's CalcGrad(pos) reuses terms cached by the last CalcEnergy call (RDKit 2026.09): an
        # energy evaluation at the same positions first makes the gradient correct.
        energy = float(self.ff.CalcEnergy(x)) * KCAL_MOL_IN_EV
        g = np.asarray(self.ff.CalcGrad(x), dtype=np.float64)
        return energy, -g.reshape(-1, 3) * KCAL_MOL_IN_EV

    def forces(self, positions: np.ndarray) -> np.ndarray:
        """``(N, 3)`` forces in eV/Å."""
        return self.energy_forces(positions)[1]


def force_field(mol: Any, positions: np.ndarray, kind: str, *, variant: str = "MMFF94",
                nonbonded_threshold: float = 100.0, ignore_interfragment: bool = False) -> ForceField:
    """RDKit force field (``"mmff"``: MMFF94 or MMFF94s by ``variant``; ``"uff"``) on a copy of ``mol``
    at ``positions``.

    ``nonbonded_threshold`` is MMFF's ``nonBondedThresh`` (Å; RDKit's default); non-bonded terms
    between disconnected fragments are kept unless ``ignore_interfragment`` (RDKit's default drops them).

    Raises:
        ChemError: ``no_mmff_params`` / ``no_uff_params``.
    """
    fh = rdkit("rdkit.Chem.rdForceFieldHelpers")
    if kind == "mmff" and variant not in MMFF_VARIANTS:
        raise ValueError(f"Unknown MMFF variant {variant!r}. Valid: {', '.join(MMFF_VARIANTS)}.")
    work = with_positions(mol, positions)
    with rdkit_quiet():
        if kind == "mmff":
            if not fh.MMFFHasAllMoleculeParams(work):
                raise ChemError("no_mmff_params")
            props = fh.MMFFGetMoleculeProperties(work, mmffVariant=variant)
            props.SetMMFFVerbosity(0)
            ff = fh.MMFFGetMoleculeForceField(work, props, nonBondedThresh=nonbonded_threshold,
                                              ignoreInterfragInteractions=ignore_interfragment)
        elif kind == "uff":
            if not fh.UFFHasAllMoleculeParams(work):
                raise ChemError("no_uff_params")
            ff = fh.UFFGetMoleculeForceField(work, ignoreInterfragInteractions=ignore_interfragment)
        else:
            raise ValueError(f"Unknown force field {kind!r}. Valid names: mmff, uff.")
    if ff is None:
        raise ChemError(f"no_{kind}_params")
    ff.Initialize()
    return ForceField(ff, work)


def ff_relax(mol: Any, positions: np.ndarray, kind: str, max_rounds: int = 50) -> tuple[np.ndarray, float, float]:
    """Relax with MMFF94 or UFF to a tight minimum.

    RDKit's BFGS is restarted until it reports convergence with a very small force tolerance, so the
    result is a minimum to numerical precision (typically max force < 1e-5 eV/Å).

    Returns:
        ``(positions (N, 3) Å, energy eV, max atomic force eV/Å)``.
    """
    ff = force_field(mol, positions, kind)
    for _ in range(max_rounds):
        if ff.ff.Minimize(maxIts=2000, forceTol=1e-8, energyTol=1e-14) == 0:
            break
    pos = np.array(ff.ff.Positions(), dtype=np.float64).reshape(-1, 3)
    return pos, ff.energy(pos), float(np.linalg.norm(ff.forces(pos), axis=1).max(initial=0.0))


def ff_hessian(mol: Any, positions: np.ndarray, kind: str, step: float = 1e-4) -> np.ndarray:
    """``(3N, 3N)`` Hessian in eV/Å² by central differences of the analytic force-field gradient."""
    ff = force_field(mol, positions, kind)
    x0 = np.asarray(positions, dtype=np.float64).ravel()
    return fd_hessian(lambda x: -ff.forces(x.reshape(-1, 3)).ravel(), x0, step)
