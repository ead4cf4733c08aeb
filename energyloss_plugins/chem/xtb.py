"""GFN2-xTB through tblite's ASE calculator: energies, relaxations and finite-difference Hessians (eV, Å)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from energyloss_plugins.chem.molecules import ChemError
from energyloss_plugins.optional import require
from energyloss_plugins.vibrations import fd_hessian

#: Convergence threshold of the GFN2-xTB relaxations (eV/Å; tblite's SCF noise is ~1e-5 eV/Å).
XTB_FMAX = 1e-3


def _xtb_atoms(numbers: np.ndarray, positions: np.ndarray, charge: int, multiplicity: int) -> Any:
    from ase import Atoms

    TBLite = require("tblite.ase", "GFN2-xTB (tblite)", "xtb").TBLite
    atoms = Atoms(numbers=np.asarray(numbers), positions=np.asarray(positions, dtype=np.float64))
    atoms.calc = TBLite(method="GFN2-xTB", charge=float(charge), multiplicity=int(multiplicity), verbosity=0)
    return atoms


@contextlib.contextmanager
def _xtb_failures() -> Iterator[None]:
    """Turn a tblite failure (SCF not converged, ...) inside the block into ``ChemError("xtb_failed")``;
    a missing tblite stays the one-line ImportError."""
    try:
        yield
    except ImportError:
        raise
    except Exception as exc:
        raise ChemError("xtb_failed", str(exc)) from None


def xtb_energy(numbers: np.ndarray, positions: np.ndarray, charge: int = 0, multiplicity: int = 1) -> float:
    """GFN2-xTB total energy in eV."""
    with _xtb_failures():
        return float(_xtb_atoms(numbers, positions, charge, multiplicity).get_potential_energy())


def xtb_relax(
    numbers: np.ndarray,
    positions: np.ndarray,
    charge: int = 0,
    multiplicity: int = 1,
    fmax: float = XTB_FMAX,
    steps: int = 2000,
) -> tuple[np.ndarray, float, float]:
    """Relax with GFN2-xTB (ASE BFGS, then FIRE if BFGS stalls) to max force ``fmax`` eV/Å.

    Returns:
        ``(positions (N, 3) Å, energy eV, max atomic force eV/Å)``.

    Raises:
        ChemError: ``xtb_failed`` (SCF failure) or ``xtb_not_converged``.
    """
    from ase.optimize import BFGS, FIRE

    with _xtb_failures():
        atoms = _xtb_atoms(numbers, positions, charge, multiplicity)
        for opt_cls in (BFGS, FIRE):
            opt = opt_cls(atoms, logfile=None)
            if opt.run(fmax=fmax, steps=steps):
                break
        f = float(np.linalg.norm(atoms.get_forces(), axis=1).max(initial=0.0))
        e = float(atoms.get_potential_energy())
    if f > fmax:
        raise ChemError("xtb_not_converged", f"max force {f:.2e} eV/Å")
    return np.array(atoms.get_positions(), dtype=np.float64), e, f


def xtb_hessian(
    numbers: np.ndarray, positions: np.ndarray, charge: int = 0, multiplicity: int = 1, step: float = 1e-3
) -> np.ndarray:
    """``(3N, 3N)`` GFN2-xTB Hessian in eV/Å² by central differences of the forces."""
    atoms = _xtb_atoms(numbers, positions, charge, multiplicity)

    def grad(x: np.ndarray) -> np.ndarray:
        atoms.set_positions(x.reshape(-1, 3))
        return -atoms.get_forces().ravel()

    return fd_hessian(grad, np.asarray(positions, dtype=np.float64).ravel(), step)
