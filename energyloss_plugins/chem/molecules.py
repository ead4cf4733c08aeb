"""RDKit molecules: built from SMILES, 3D geometry or a bond list, and read back as arrays.

RDKit is imported through :func:`rdkit` (a one-line error naming the ``data`` extra when it is
missing), inside the functions: importing this module needs numpy only. Positions are ``(N, 3)``
float64 arrays in Å.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from energyloss_plugins.optional import require


class ChemError(Exception):
    """A molecule the builder cannot handle; ``reason`` is a short key counted in the build report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def rdkit(module: str = "rdkit.Chem") -> ModuleType:
    """RDKit's ``module`` (``rdkit.Chem``, ``rdkit.Chem.rdDistGeom``, ...); a missing RDKit raises
    :class:`~energyloss_plugins.optional.MissingOptionalDependency` naming the ``data`` extra."""
    return require(module, "energyloss_plugins.chem (RDKit molecules, conformers, force fields)", "data")


@contextlib.contextmanager
def rdkit_quiet() -> Iterator[None]:
    """Silence RDKit's C++ logger (warnings about unparsable SMILES etc.) inside the block."""
    logger = rdkit("rdkit.RDLogger")
    logger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        logger.EnableLog("rdApp.*")


def mol_from_smiles(smiles: str) -> Any:
    """Sanitised RDKit molecule with explicit hydrogens and no conformer.

    Raises:
        ChemError: ``unparsable_smiles``.
    """
    Chem = rdkit()
    with rdkit_quiet():
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ChemError("unparsable_smiles", smiles)
    return Chem.AddHs(mol)


def mol_from_xyz(numbers: np.ndarray, positions: np.ndarray, charge: int = 0) -> Any:
    """RDKit molecule with bonds and bond orders perceived from 3D (``rdDetermineBonds``).

    Perception first allows charged fragments (zwitterions, nitro groups); if that fails, it
    retries with radicals instead (open-shell molecules such as CH3 or NO2). The atom order is that
    of ``numbers``; the conformer holds ``positions``; stereochemistry is assigned from the 3D
    geometry.

    Raises:
        ChemError: ``bond_perception_failed`` (no consistent assignment, e.g. NH or ClF3).
    """
    Chem = rdkit()
    determine = rdkit("rdkit.Chem.rdDetermineBonds")
    error = ""
    # First with charged fragments (zwitterions, nitro groups), then with radicals (open shells).
    for charged in (True, False):
        mol = bare_mol(numbers, positions)
        try:
            with rdkit_quiet():
                determine.DetermineBonds(mol, charge=int(charge), allowChargedFragments=charged)
                Chem.SanitizeMol(mol)
                Chem.AssignStereochemistryFrom3D(mol)
            return mol
        except Exception as exc:  # RDKit raises ValueError / RuntimeError / its own types
            error = error or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    raise ChemError("bond_perception_failed", error)


def mol_from_bonds(
    numbers: np.ndarray,
    positions: np.ndarray | None,
    bonds: np.ndarray,
    orders: np.ndarray | None = None,
    formal_charges: np.ndarray | None = None,
    sanitize: bool = True,
    no_implicit: bool = True,
) -> Any:
    """RDKit molecule from atomic numbers, an ``(M, 2)`` bond list and bond orders.

    Args:
        numbers: ``(N,)`` atomic numbers.
        positions: ``(N, 3)`` conformer in Å, or None for no conformer.
        bonds: ``(M, 2)`` atom index pairs.
        orders: ``(M,)`` bond orders (1, 1.5, 2, 3); None means all single.
        formal_charges: ``(N,)`` formal charges; None means all 0.
        sanitize: run ``Chem.SanitizeMol`` (raises ChemError ``sanitization_failed``).
        no_implicit: forbid implicit hydrogens (the atoms given are all there is).
    """
    Chem = rdkit()
    types = {
        1.0: Chem.BondType.SINGLE,
        1.5: Chem.BondType.AROMATIC,
        2.0: Chem.BondType.DOUBLE,
        3.0: Chem.BondType.TRIPLE,
    }
    rw = Chem.RWMol()
    for i, z in enumerate(np.asarray(numbers).tolist()):
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(no_implicit)
        if formal_charges is not None:
            atom.SetFormalCharge(int(formal_charges[i]))
        rw.AddAtom(atom)
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    orders = np.ones(len(bonds)) if orders is None else np.asarray(orders, dtype=np.float64)
    for (i, j), o in zip(bonds.tolist(), orders.tolist(), strict=True):
        if float(o) not in types:
            raise ValueError(f"Bond order {o} of bond ({i}, {j}) is not one of 1, 1.5, 2, 3.")
        rw.AddBond(int(i), int(j), types[float(o)])
    mol = rw.GetMol()
    if positions is not None:
        _set_conformer(mol, positions)
    if sanitize:
        try:
            with rdkit_quiet():
                Chem.SanitizeMol(mol)
        except Exception as exc:
            raise ChemError("sanitization_failed", str(exc)) from None
    return mol


def bare_mol(numbers: np.ndarray, positions: np.ndarray) -> Any:
    """RDKit molecule of the atoms ``numbers`` ``(N,)`` at ``positions`` ``(N, 3)`` Å, with no bonds (unsanitised)."""
    Chem = rdkit()
    rw = Chem.RWMol()
    for z in np.asarray(numbers).tolist():
        rw.AddAtom(Chem.Atom(int(z)))
    mol = rw.GetMol()
    _set_conformer(mol, positions)
    return mol


def _set_conformer(mol: Any, positions: np.ndarray) -> None:
    Chem = rdkit()
    point = rdkit("rdkit.Geometry").Point3D
    pos = np.asarray(positions, dtype=np.float64)
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, (x, y, z) in enumerate(pos.tolist()):
        conf.SetAtomPosition(i, point(x, y, z))
    conf.Set3D(True)
    mol.RemoveAllConformers()
    mol.AddConformer(conf, assignId=True)


def with_positions(mol: Any, positions: np.ndarray) -> Any:
    """Copy of ``mol`` whose only conformer holds ``positions`` ``(N, 3)`` Å."""
    out = rdkit().Mol(mol)
    _set_conformer(out, positions)
    return out


def without_conformers(mol: Any) -> Any:
    """Copy of ``mol`` with no conformer."""
    out = rdkit().Mol(mol)
    out.RemoveAllConformers()
    return out


def positions_of(mol: Any, conf_id: int = -1) -> np.ndarray:
    """``(N, 3)`` float64 positions of a conformer."""
    return np.array(mol.GetConformer(conf_id).GetPositions(), dtype=np.float64)


def atomic_numbers(mol: Any) -> np.ndarray:
    """``(N,)`` int64 atomic numbers in atom order."""
    return np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)


def bond_arrays(mol: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bond list ``(M, 2)`` int64 with i < j (sorted) and Kekulé bond orders ``(M,)`` float64 (1, 2, 3)."""
    Chem = rdkit()
    kek = Chem.Mol(mol)
    try:
        Chem.Kekulize(kek, clearAromaticFlags=True)
    except Exception:  # keep aromatic orders (1.5) when no Kekulé structure exists
        kek = mol
    rows = []
    for b in kek.GetBonds():
        i, j = sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
        rows.append((i, j, b.GetBondTypeAsDouble()))
    rows.sort()
    bonds = np.array([[i, j] for i, j, _ in rows], dtype=np.int64).reshape(-1, 2)
    orders = np.array([o for _, _, o in rows], dtype=np.float64)
    return bonds, orders


def formal_charges(mol: Any) -> np.ndarray:
    """``(N,)`` int64 formal charges."""
    return np.array([a.GetFormalCharge() for a in mol.GetAtoms()], dtype=np.int64)


def n_radical_electrons(mol: Any) -> int:
    return int(sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms()))


def charge_and_multiplicity(mol: Any) -> tuple[int, int]:
    """Total formal charge and spin multiplicity (unpaired radical electrons + 1) of ``mol``."""
    return int(rdkit().GetFormalCharge(mol)), n_radical_electrons(mol) + 1


def canonical_smiles(mol: Any) -> str:
    """Canonical isomeric SMILES without explicit hydrogens ("" if RDKit cannot write one)."""
    Chem = rdkit()
    try:
        with rdkit_quiet():
            return Chem.MolToSmiles(Chem.RemoveHs(mol))
    except Exception:
        return ""


def n_fragments(mol: Any) -> int:
    return len(rdkit().GetMolFrags(mol))
