"""The chemistry toolbox: RDKit, force fields, tblite and finite-difference Hessians, used by the
dataset builder (``data``), the metrics and the ASE bridge.

Everything here imports RDKit (and tblite, ASE) lazily, inside the functions: importing this module
needs numpy only. Positions are ``(N, 3)`` float64 numpy arrays in Å, energies in eV, forces in
eV/Å, Hessians in eV/Å².
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from energyloss_plugins.optional import require

#: 1 kcal/mol in eV (``ase.units.kcal / ase.units.mol``).
KCAL_MOL_IN_EV = 0.04336410390059322
#: Boltzmann constant in eV/K (CODATA 2018).
BOLTZMANN_EV = 8.617333262e-05

#: A target counts as a force-field minimum when its largest atomic force is below this (eV/Å).
TARGET_FMAX = 1e-4
#: Convergence threshold of the GFN2-xTB relaxations (eV/Å; tblite's SCF noise is ~1e-5 eV/Å).
XTB_FMAX = 1e-3


class ChemError(Exception):
    """A molecule the builder cannot handle; ``reason`` is a short key counted in the build report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@contextlib.contextmanager
def rdkit_quiet() -> Iterator[None]:
    """Silence RDKit's C++ logger (warnings about unparsable SMILES etc.) inside the block."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        RDLogger.EnableLog("rdApp.*")


# --------------------------------------------------------------------------------------------
# Building molecules
# --------------------------------------------------------------------------------------------


def mol_from_smiles(smiles: str) -> Any:
    """Sanitised RDKit molecule with explicit hydrogens and no conformer.

    Raises:
        ChemError: ``unparsable_smiles``.
    """
    from rdkit import Chem

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
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    error = ""
    # First with charged fragments (zwitterions, nitro groups), then with radicals (open shells).
    for charged in (True, False):
        mol = bare_mol(numbers, positions)
        try:
            with rdkit_quiet():
                rdDetermineBonds.DetermineBonds(mol, charge=int(charge), allowChargedFragments=charged)
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
    from rdkit import Chem

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
    from rdkit import Chem

    rw = Chem.RWMol()
    for z in np.asarray(numbers).tolist():
        rw.AddAtom(Chem.Atom(int(z)))
    mol = rw.GetMol()
    _set_conformer(mol, positions)
    return mol


def _set_conformer(mol: Any, positions: np.ndarray) -> None:
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    pos = np.asarray(positions, dtype=np.float64)
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, (x, y, z) in enumerate(pos.tolist()):
        conf.SetAtomPosition(i, Point3D(x, y, z))
    conf.Set3D(True)
    mol.RemoveAllConformers()
    mol.AddConformer(conf, assignId=True)


def with_positions(mol: Any, positions: np.ndarray) -> Any:
    """Copy of ``mol`` whose only conformer holds ``positions`` ``(N, 3)`` Å."""
    from rdkit import Chem

    out = Chem.Mol(mol)
    _set_conformer(out, positions)
    return out


def positions_of(mol: Any, conf_id: int = -1) -> np.ndarray:
    """``(N, 3)`` float64 positions of a conformer."""
    return np.array(mol.GetConformer(conf_id).GetPositions(), dtype=np.float64)


def bond_arrays(mol: Any) -> tuple[np.ndarray, np.ndarray]:
    """Bond list ``(M, 2)`` int64 with i < j (sorted) and Kekulé bond orders ``(M,)`` float64 (1, 2, 3)."""
    from rdkit import Chem

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


def canonical_smiles(mol: Any) -> str:
    """Canonical isomeric SMILES without explicit hydrogens ("" if RDKit cannot write one)."""
    from rdkit import Chem

    try:
        with rdkit_quiet():
            return Chem.MolToSmiles(Chem.RemoveHs(mol))
    except Exception:
        return ""


def n_fragments(mol: Any) -> int:
    from rdkit import Chem

    return len(Chem.GetMolFrags(mol))


# --------------------------------------------------------------------------------------------
# Geometry generation and force fields
# --------------------------------------------------------------------------------------------


def embed(mol: Any, seed: int, max_attempts: int = 3) -> np.ndarray:
    """One ETKDGv3 embedding ``(N, 3)`` Å with a fixed random seed (single thread, deterministic).

    Stereo tags on ``mol`` are enforced (assign them from a 3D target first to get a new conformer
    of the same stereoisomer).

    Raises:
        ChemError: ``embedding_failed``.
    """
    from rdkit.Chem import rdDistGeom

    params = rdDistGeom.ETKDGv3()
    params.randomSeed = int(seed) & 0x7FFFFFFF
    params.numThreads = 1
    work = _no_conformers(mol)
    for attempt in range(max_attempts):
        if attempt:
            params.useRandomCoords = True
            params.randomSeed = (int(seed) + 7919 * attempt) & 0x7FFFFFFF
        with rdkit_quiet():
            cid = rdDistGeom.EmbedMolecule(work, params)
        if cid >= 0:
            return positions_of(work, cid)
    raise ChemError("embedding_failed")


def _no_conformers(mol: Any) -> Any:
    from rdkit import Chem

    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    return out


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


MMFF_VARIANTS = ("MMFF94", "MMFF94s")


def force_field(mol: Any, positions: np.ndarray, kind: str, *, variant: str = "MMFF94",
                nonbonded_threshold: float = 100.0, ignore_interfragment: bool = False) -> ForceField:
    """RDKit force field (``"mmff"``: MMFF94 or MMFF94s by ``variant``; ``"uff"``) on a copy of ``mol``
    at ``positions``.

    ``nonbonded_threshold`` is MMFF's ``nonBondedThresh`` (Å; RDKit's default); non-bonded terms
    between disconnected fragments are kept unless ``ignore_interfragment`` (RDKit's default drops them).

    Raises:
        ChemError: ``no_mmff_params`` / ``no_uff_params``.
    """
    from rdkit.Chem import rdForceFieldHelpers as fh

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


def fd_hessian(grad: Callable[[np.ndarray], np.ndarray], x0: np.ndarray, step: float) -> np.ndarray:
    """``(n, n)`` symmetrised Hessian by central differences of ``grad`` ``(n,) -> (n,)`` around ``x0`` (2n calls)."""
    n = x0.size
    h = np.empty((n, n))
    for k in range(n):
        xp, xm = x0.copy(), x0.copy()
        xp[k] += step
        xm[k] -= step
        h[k] = (grad(xp) - grad(xm)) / (2 * step)
    return 0.5 * (h + h.T)


# --------------------------------------------------------------------------------------------
# GFN2-xTB (tblite)
# --------------------------------------------------------------------------------------------


def xtb_available() -> bool:
    """True when tblite's ASE calculator can be imported."""
    try:
        import tblite.ase  # noqa: F401
    except Exception:
        return False
    return True


def _xtb_atoms(numbers: np.ndarray, positions: np.ndarray, charge: int, multiplicity: int) -> Any:
    from ase import Atoms

    TBLite = require("tblite.ase", "GFN2-xTB (tblite)", "xtb").TBLite
    atoms = Atoms(numbers=np.asarray(numbers), positions=np.asarray(positions, dtype=np.float64))
    atoms.calc = TBLite(method="GFN2-xTB", charge=float(charge), multiplicity=int(multiplicity), verbosity=0)
    return atoms


def xtb_energy(numbers: np.ndarray, positions: np.ndarray, charge: int = 0, multiplicity: int = 1) -> float:
    """GFN2-xTB total energy in eV."""
    try:
        return float(_xtb_atoms(numbers, positions, charge, multiplicity).get_potential_energy())
    except ImportError:
        raise
    except Exception as exc:
        raise ChemError("xtb_failed", str(exc)) from None


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

    try:
        atoms = _xtb_atoms(numbers, positions, charge, multiplicity)
        for opt_cls in (BFGS, FIRE):
            opt = opt_cls(atoms, logfile=None)
            if opt.run(fmax=fmax, steps=steps):
                break
        f = float(np.linalg.norm(atoms.get_forces(), axis=1).max(initial=0.0))
        e = float(atoms.get_potential_energy())
    except ImportError:
        raise
    except Exception as exc:
        raise ChemError("xtb_failed", str(exc)) from None
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


# --------------------------------------------------------------------------------------------
# Thermal sampling in the harmonic approximation
# --------------------------------------------------------------------------------------------

#: Smallest spring (eV/Å²) a normal mode may have when sampling thermal displacements: soft modes
#: (methyl rotors, torsions: far from harmonic) are stiffened to this, capping the RMS amplitude of
#: any mode at sqrt(k_B T / K_MIN) (0.23 Å at 300 K).
THERMAL_K_MIN = 0.5


def rigid_motion_basis(positions: np.ndarray) -> np.ndarray:
    """``(3N, r)`` orthonormal basis of rigid translations and rotations (r = 6, or 5 if linear)."""
    x = np.asarray(positions, dtype=np.float64)
    n = x.shape[0]
    c = x - x.mean(0)
    vecs = []
    for a in range(3):
        t = np.zeros((n, 3))
        t[:, a] = 1.0
        vecs.append(t.ravel())
    for a in range(3):
        axis = np.zeros(3)
        axis[a] = 1.0
        vecs.append(np.cross(axis, c).ravel())
    m = np.stack(vecs, 1)
    u, s, _ = np.linalg.svd(m, full_matrices=False)
    return u[:, s > 1e-8 * max(s.max(), 1.0)]


def harmonic_samples(
    positions: np.ndarray,
    hessian: np.ndarray,
    temperature: float,
    n_samples: int,
    rng: np.random.Generator,
    k_min: float = THERMAL_K_MIN,
) -> np.ndarray:
    """Classical Boltzmann samples of the harmonic approximation around ``positions``.

    ``p(x) ∝ exp(-½ (x - x0)ᵀ H (x - x0) / k_B T)`` restricted to the internal (non-rigid) motions:
    along each normal mode with spring λ (floored at ``k_min``) the displacement is Gaussian with
    variance ``k_B T / λ``. Rigid translations and rotations are projected out, so the samples keep
    the centre of the target and have no net rotation.

    Args:
        positions: ``(N, 3)`` Å, the minimum.
        hessian: ``(3N, 3N)`` eV/Å².
        temperature: K.
        n_samples: number of samples.
        rng: numpy Generator (the only source of randomness).
        k_min: spring floor in eV/Å².

    Returns:
        ``(n_samples, N, 3)`` positions in Å.
    """
    x0 = np.asarray(positions, dtype=np.float64)
    n = x0.shape[0]
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 K, got {temperature}.")
    q = rigid_motion_basis(x0)
    # orthonormal basis of the internal coordinates: complement of the rigid motions
    u, _, _ = np.linalg.svd(q, full_matrices=True)
    b = u[:, q.shape[1] :]
    h_int = b.T @ np.asarray(hessian, dtype=np.float64) @ b
    lam, vec = _eigh_single_thread(0.5 * (h_int + h_int.T))
    lam = np.maximum(lam, k_min)
    sigma = np.sqrt(BOLTZMANN_EV * temperature / lam)
    z = rng.standard_normal((n_samples, lam.shape[0]))
    disp = (z * sigma) @ vec.T @ b.T
    return x0[None] + disp.reshape(n_samples, n, 3)


def _eigh_single_thread(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric eigendecomposition on one thread: for these small matrices a multi-threaded
    BLAS is 10-100x slower on a busy machine than a single thread."""
    import torch

    n_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        lam, vec = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(h, dtype=np.float64)))
    finally:
        torch.set_num_threads(n_threads)
    return lam.numpy(), vec.numpy()


def seed_for(seed: int, index: int, stream: int = 0) -> int:
    """Deterministic 31-bit seed for structure ``index`` (and sub-stream) from the global seed."""
    return int(np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(1)[0]) & 0x7FFFFFFF


def edges_within(edges: np.ndarray, atoms: np.ndarray, n_total: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges among a subset of atoms, renumbered locally.

    Args:
        edges: ``(2, E)`` flat atom indices of a batch of ``n_total`` atoms.
        atoms: ``(n,)`` flat indices of the subset (one structure, or its heavy atoms), in local order.

    Returns:
        ``(M, 2)`` local indices ``0..n-1`` of the edges with both ends in ``atoms``, and the ``(E,)``
        bool mask of those edges (to select per-edge values such as bond orders).
    """
    local = np.full(int(n_total), -1, dtype=np.int64)
    local[atoms] = np.arange(len(atoms))
    edges = np.asarray(edges, dtype=np.int64).reshape(2, -1)
    inside = (local[edges[0]] >= 0) & (local[edges[1]] >= 0)
    return np.stack([local[edges[0][inside]], local[edges[1][inside]]], 1), inside
