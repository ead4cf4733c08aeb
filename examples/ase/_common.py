"""Shared set-up of the ASE examples: a reference molecule relaxed on a "true" calculator."""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from ase import Atoms
from ase.build import molecule
from ase.optimize import BFGS

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "output")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--molecule", default="CH3CH2OH", help="ASE g2 molecule name (default: ethanol)")
    p.add_argument(
        "--calc",
        default="xtb",
        choices=["xtb", "mmff"],
        help="true calculator: GFN2-xTB (tblite) or MMFF94 (RDKit); xtb falls back to mmff",
    )
    p.add_argument("--graph", default="complete", help="edge set of the springs")
    p.add_argument("--out", default=OUT, help="output directory for PNG and structure files")
    return p


def true_calculator(kind: str, atoms: Atoms):
    """(calculator, label). GFN2-xTB needs tblite; MMFF needs RDKit."""
    if kind == "xtb":
        try:
            from tblite.ase import TBLite

            return TBLite(method="GFN2-xTB", verbosity=0), "GFN2-xTB"
        except ImportError:
            print("tblite not installed: using MMFF94")
    from energyloss_plugins.ase import MMFFCalculator

    return MMFFCalculator(atoms), "MMFF94"


def relaxed_reference(name: str, kind: str, fmax: float = 1e-4) -> tuple[Atoms, object, str]:
    """The g2 molecule ``name`` relaxed on the true calculator to max force ``fmax`` eV/Å."""
    torch.set_num_threads(1)
    atoms = molecule(name)
    calc, label = true_calculator(kind, atoms)
    if label == "MMFF94":
        from energyloss_plugins.ase import mmff_relax

        atoms = mmff_relax(atoms, fmax=fmax)
        calc = atoms.calc
    else:
        atoms.calc = calc
        BFGS(atoms, logfile=None).run(fmax=fmax, steps=500)
    print(f"{name} relaxed on {label}: max |F| = {np.abs(atoms.get_forces()).max():.1e} eV/Å")
    return atoms, calc, label
