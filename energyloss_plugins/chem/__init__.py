"""The chemistry toolbox of the dataset builder (``data``), the metrics and the ASE bridge.

- :mod:`~energyloss_plugins.chem.molecules`: RDKit molecules from SMILES, 3D geometry or bond lists,
  and their bonds, charges and SMILES as arrays (:class:`ChemError` for molecules that cannot be used);
- :mod:`~energyloss_plugins.chem.conformers`: seeded ETKDGv3 embeddings;
- :mod:`~energyloss_plugins.chem.forcefields`: RDKit MMFF94(s)/UFF in eV and Å, relaxations, Hessians;
- :mod:`~energyloss_plugins.chem.xtb`: GFN2-xTB (tblite) energies, relaxations, Hessians.

Hessian algebra and harmonic sampling live in :mod:`energyloss_plugins.vibrations` (re-exported here
for the builder's thermal inputs). RDKit, ASE and tblite are imported inside the functions, through
:func:`~energyloss_plugins.optional.require`: importing this package needs numpy only. Positions are
``(N, 3)`` float64 arrays in Å, energies in eV, forces in eV/Å, Hessians in eV/Å².
"""

from energyloss_plugins.chem.conformers import embed
from energyloss_plugins.chem.forcefields import (
    KCAL_MOL_IN_EV,
    MMFF_VARIANTS,
    TARGET_FMAX,
    ForceField,
    ff_hessian,
    ff_relax,
    force_field,
)
from energyloss_plugins.chem.molecules import (
    ChemError,
    atomic_numbers,
    bare_mol,
    bond_arrays,
    canonical_smiles,
    charge_and_multiplicity,
    formal_charges,
    mol_from_bonds,
    mol_from_smiles,
    mol_from_xyz,
    n_fragments,
    n_radical_electrons,
    positions_of,
    rdkit,
    rdkit_quiet,
    with_positions,
)
from energyloss_plugins.chem.xtb import XTB_FMAX, xtb_energy, xtb_hessian, xtb_relax
from energyloss_plugins.graphs import edges_within
from energyloss_plugins.vibrations import BOLTZMANN_EV, THERMAL_K_MIN, fd_hessian, harmonic_samples

__all__ = [
    "BOLTZMANN_EV",
    "KCAL_MOL_IN_EV",
    "MMFF_VARIANTS",
    "TARGET_FMAX",
    "THERMAL_K_MIN",
    "XTB_FMAX",
    "ChemError",
    "ForceField",
    "atomic_numbers",
    "bare_mol",
    "bond_arrays",
    "canonical_smiles",
    "charge_and_multiplicity",
    "edges_within",
    "embed",
    "fd_hessian",
    "ff_hessian",
    "ff_relax",
    "force_field",
    "formal_charges",
    "harmonic_samples",
    "mol_from_bonds",
    "mol_from_smiles",
    "mol_from_xyz",
    "n_fragments",
    "n_radical_electrons",
    "positions_of",
    "rdkit",
    "rdkit_quiet",
    "with_positions",
    "xtb_energy",
    "xtb_hessian",
    "xtb_relax",
]
