"""Structure metrics for predicted molecules against equilibrium targets (see ``docs/metrics.md``).

Cheap, batched torch metrics for every epoch (flat layout: positions ``(N_total, 3)`` Å, ``batch``
``(N_total,)``, ``numbers`` ``(N_total,)``, ``bonds`` ``(2, M)``):
:func:`aligned_rmsd`, :func:`bond_length_mae`, :func:`angle_mae`, :func:`covalent_bonds`,
:func:`atom_stability`, :func:`molecule_stability`, :func:`structure_metrics`.

RDKit / force-field metrics for evaluation: :func:`symmetric_rmsd`, :func:`validity`,
:func:`connectivity`, :func:`uniqueness`, :func:`excess_energy`.

Generated molecules (EDM's protocol): :func:`generation_metrics` (atom and molecule stability,
validity, uniqueness, novelty of a list of ``ase.Atoms``; connectivity, :func:`fragment_counts`; with a
reference set, Wasserstein-1 distances of bond lengths, angles, dihedrals and radii of gyration,
:func:`profile`, and the Fréchet ChemNet distance, :func:`fcd_score`); console script ``energyloss-evaluate``.

Importing this package needs torch and numpy only.
"""

from energyloss_plugins.layouts import flat_molecules
from energyloss_plugins.metrics.bonds import (
    ALLOWED_VALENCES,
    BOND_LENGTHS_PM,
    BOND_MARGINS,
    COVALENT_RADII,
    COVALENT_TOLERANCE,
    atom_stability,
    atom_valences,
    covalent_bonds,
    distance_bond_orders,
    fragment_counts,
    molecule_stability,
    stable_atoms,
)
from energyloss_plugins.metrics.chemistry import (
    BOND_METHODS,
    connectivity,
    edm_smiles,
    molecule_smiles,
    split_structures,
    symmetric_rmsd,
    to_rdkit_mols,
    uniqueness,
    validity,
)
from energyloss_plugins.metrics.distributions import GEOMETRY_DISTANCES, SetProfile, profile
from energyloss_plugins.metrics.energy import ENERGY_METHODS, excess_energy
from energyloss_plugins.metrics.frechet import fcd_score
from energyloss_plugins.metrics.generation import (
    GENERATION_METRICS,
    REFERENCE_METRICS,
    generation_metrics,
    molecule_smiles_set,
)
from energyloss_plugins.metrics.geometry import aligned_rmsd, angle_mae, bond_angles, bond_length_mae
from energyloss_plugins.metrics.summary import structure_metrics

__all__ = [
    "ALLOWED_VALENCES",
    "BOND_MARGINS",
    "BOND_LENGTHS_PM",
    "BOND_METHODS",
    "COVALENT_RADII",
    "COVALENT_TOLERANCE",
    "ENERGY_METHODS",
    "GENERATION_METRICS",
    "GEOMETRY_DISTANCES",
    "REFERENCE_METRICS",
    "SetProfile",
    "aligned_rmsd",
    "angle_mae",
    "atom_stability",
    "atom_valences",
    "bond_angles",
    "bond_length_mae",
    "connectivity",
    "covalent_bonds",
    "distance_bond_orders",
    "edm_smiles",
    "excess_energy",
    "fcd_score",
    "flat_molecules",
    "fragment_counts",
    "generation_metrics",
    "molecule_smiles",
    "molecule_smiles_set",
    "molecule_stability",
    "profile",
    "split_structures",
    "stable_atoms",
    "structure_metrics",
    "symmetric_rmsd",
    "to_rdkit_mols",
    "uniqueness",
    "validity",
]
