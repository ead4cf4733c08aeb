"""MMFFCalculator: RDKit's MMFF94(s) force field as an ASE calculator (energy in eV, forces in eV/Å).

RDKit evaluates MMFF in kcal/mol and kcal/(mol·Å); the wrapped force field converts to eV.
The molecule's topology (bonds, MMFF atom types, charges) is fixed at construction, from an RDKit
``Mol`` or perceived from an ``Atoms`` object with ``rdkit.Chem.rdDetermineBonds``.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from energyloss_plugins.optional import require


def mol_from_atoms(atoms: Atoms, charge: int = 0):
    """RDKit ``Mol`` (explicit hydrogens, one conformer) with bonds perceived from ``atoms``' geometry.

    The data builder's perception (:func:`energyloss_plugins.chem.mol_from_xyz`: charged
    fragments first, then radicals). Raises ``ValueError`` if RDKit finds no valid bond orders.
    """
    from energyloss_plugins.chem import ChemError, mol_from_xyz

    try:
        return mol_from_xyz(atoms.numbers, atoms.positions, charge)
    except ChemError as err:
        raise ValueError(
            f"RDKit could not perceive bonds of {atoms.get_chemical_formula()} with charge {charge}: {err}"
        ) from err


class MMFFCalculator(Calculator):
    """MMFF94 / MMFF94s energies and forces of one molecule through RDKit.

    Args:
        molecule: an ``ase.Atoms`` (bonds perceived with :func:`mol_from_atoms`) or an RDKit ``Mol``
            with explicit hydrogens; atom order must match the Atoms evaluated later.
        charge: total charge, for bond perception from Atoms.
        variant: ``MMFF94`` or ``MMFF94s``.
        nonbonded_threshold: RDKit's ``nonBondedThresh`` in Å (default 100: all non-bonded pairs).
        ignore_interfragment: drop non-bonded terms between disconnected fragments (RDKit default True;
            here False so complexes keep their interactions).

    Implemented properties: ``energy``, ``free_energy`` (eV) and ``forces`` (eV/Å). The
    RDKit molecule is available as ``.mol``. The force field itself is the data builder's
    :func:`energyloss_plugins.chem.force_field`.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    name = "mmff"

    def __init__(
        self,
        molecule,
        charge: int = 0,
        variant: str = "MMFF94",
        nonbonded_threshold: float = 100.0,
        ignore_interfragment: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        Chem = require("rdkit.Chem", "MMFFCalculator (MMFF94 through RDKit)", "ase")

        from energyloss_plugins.chem import MMFF_VARIANTS, ChemError, force_field, positions_of

        if variant not in MMFF_VARIANTS:
            raise ValueError(f"Unknown MMFF variant {variant!r}. Valid: {', '.join(MMFF_VARIANTS)}.")
        if isinstance(molecule, Atoms):
            mol = mol_from_atoms(molecule, charge)
        elif isinstance(molecule, Chem.Mol):
            mol = Chem.Mol(molecule)
            if mol.GetNumConformers() == 0:
                raise ValueError("The RDKit Mol has no conformer; embed one (AllChem.EmbedMolecule) first.")
        else:
            raise ValueError(f"molecule must be ase.Atoms or rdkit.Chem.Mol, got {type(molecule).__name__}.")
        try:
            self._ff = force_field(mol, positions_of(mol), "mmff", variant=variant,
                                   nonbonded_threshold=nonbonded_threshold,
                                   ignore_interfragment=ignore_interfragment)
        except ChemError as err:
            smiles = Chem.MolToSmiles(Chem.RemoveHs(mol))
            raise ValueError(f"MMFF has no parameters for this molecule ({smiles}).") from err
        self.mol = mol
        self.numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        self.parameters.update(variant=variant, charge=charge)

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if not np.array_equal(self.atoms.numbers, self.numbers):
            raise ValueError(
                "The atoms' elements (in order) differ from the molecule this MMFFCalculator was built for."
            )
        energy, forces = self._ff.energy_forces(self.atoms.positions)
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = forces


def mmff_relax(
    atoms: Atoms, charge: int = 0, variant: str = "MMFF94", max_iters: int = 2000, fmax: float = 1e-4
) -> Atoms:
    """Copy of ``atoms`` relaxed on MMFF (RDKit's optimiser, then ASE BFGS to max force ``fmax`` eV/Å).

    The result carries an :class:`MMFFCalculator`; a tight ``fmax`` makes it a proper reference for
    Hessian-fitted springs (a spring surrogate has its minimum exactly at the reference).
    """
    from ase.optimize import BFGS

    AllChem = require("rdkit.Chem.AllChem", "mmff_relax (MMFF94 through RDKit)", "ase")
    calc = MMFFCalculator(atoms, charge=charge, variant=variant)
    mol = calc.mol
    conf = mol.GetConformer()
    for i, p in enumerate(atoms.positions):
        conf.SetAtomPosition(i, [float(x) for x in p])
    AllChem.MMFFOptimizeMolecule(
        mol, mmffVariant=variant, maxIters=max_iters, nonBondedThresh=100.0, ignoreInterfragInteractions=False
    )
    out = atoms.copy()
    out.positions = np.array(mol.GetConformer().GetPositions())
    out.calc = MMFFCalculator(mol, variant=variant)
    if fmax is not None:
        BFGS(out, logfile=None).run(fmax=fmax, steps=1000)
    return out
