"""A small realistic molecule set built offline: MMFF94 minima of ETKDG conformers of RDKit's NCI SMILES."""

from __future__ import annotations

import functools
import os

import numpy as np


@functools.cache
def nci_conformers(n: int = 120, max_heavy: int = 9, seed: int = 0) -> tuple:
    """The first ``n`` neutral, one-fragment C/H/N/O/F molecules with at most ``max_heavy`` heavy atoms of
    ``rdkit/Data/NCI/first_5K.smi``, as ``ase.Atoms`` at their MMFF94 minimum (one ETKDG conformer, seeded)."""
    from ase import Atoms
    from rdkit import Chem, RDConfig
    from rdkit.Chem import AllChem

    from energyloss_plugins import chem

    out = []
    with open(os.path.join(RDConfig.RDDataDir, "NCI", "first_5K.smi")) as f:
        for line in f:
            smiles = line.split()[0]
            with chem.rdkit_quiet():
                mol = Chem.MolFromSmiles(smiles)
            if (mol is None or "." in smiles or mol.GetNumHeavyAtoms() > max_heavy or Chem.GetFormalCharge(mol)
                    or any(a.GetSymbol() not in {"C", "N", "O", "F"} or a.GetFormalCharge() for a in mol.GetAtoms())):
                continue
            mol = Chem.AddHs(mol)
            try:
                mol = chem.with_positions(mol, chem.embed(mol, seed))
            except chem.ChemError:
                continue
            with chem.rdkit_quiet():
                if AllChem.MMFFOptimizeMolecule(mol, maxIters=2000) != 0:
                    continue
            out.append(Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()],
                             positions=np.asarray(mol.GetConformer().GetPositions())))
            if len(out) == n:
                break
    return tuple(out)
