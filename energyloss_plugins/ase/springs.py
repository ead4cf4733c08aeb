"""Springs from physics: pair springs k_ij ≥ 0 fitted to a calculator's Hessian (SPEC §2, beyond the paper).

At the reference y the pair energy E = Σ_e ½ k_e (d_e(ŷ) − d_e(y))² has the Hessian

    H_springs = Σ_e k_e b_e b_eᵀ,      b_e = ∂d_e/∂y ∈ R^{3n}  (+u_e on atom j, −u_e on atom i, u_e = (y_j − y_i)/d_e)

so fitting k ≥ 0 to a calculator's Hessian H is a non-negative least-squares problem

    min_{k ≥ 0} ‖H − Σ_e k_e b_e b_eᵀ‖_F²  =  min_{k ≥ 0} kᵀ G k − 2 cᵀ k + const,
    G_ef = (b_e · b_f)²,  c_e = b_eᵀ H b_e.

It is solved exactly with ``scipy.optimize.nnls`` on a square-root factor of G for up to
``max_dense_pairs`` pairs, and with ``scipy.optimize.lsq_linear`` on the sparse design matrix
beyond. Because every b_e is orthogonal to the rigid motions, the springs only see the internal
part P H P of the Hessian (P projects out translations and rotations); the fit quality is reported
on that part, together with the lowest non-rigid harmonic frequencies of H and of the fit.

The Hessian comes from the calculator itself where it has one (a ``get_hessian(atoms)`` method,
or ``"hessian"`` among its ``implemented_properties``, like ``ase.calculators.ff.ForceField``),
otherwise from central finite differences of its forces (6n force calls).

Springs are stored per structure in an ASE database row as ``data["spring_pairs"]`` ``(E, 2)``
int64 and ``data["spring_k"]`` ``(E,)`` float64 in eV/Å² (plus ``data["spring_fit"]``, the report),
and used in the loss as ``pair_energy_loss(..., edge_index=pairs, coefficients=k)``; for batches,
:func:`collate_springs` offsets each structure's pairs to flat atom indices. In a database with
SchNetPack's metadata, :func:`add_springs_to_db` also lists both keys in ``_property_unit_dict``
(:data:`SPRING_UNITS`), so that SchNetPack's ``load_properties`` can read them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator
from torch import Tensor

from energyloss_plugins._checks import check_number
from energyloss_plugins.ase._utils import (
    as_edge_index,
    frequencies_cm,
    internal_projector,
    pair_vectors,
    pairs_for_atoms,
)
from energyloss_plugins.vibrations import fd_hessian

HESSIAN_METHODS = ("auto", "analytic", "finite_difference")
WEIGHTINGS = ("none", "mass", "relative")


# ----------------------------------------------------------------------------- Hessians


def compute_hessian(
    atoms: Atoms, calc: Calculator | None = None, *, method: str = "auto", delta: float = 5e-3
) -> np.ndarray:
    """Cartesian Hessian ``(3n, 3n)`` in eV/Å² of ``calc`` (default ``atoms.calc``) at ``atoms``.

    Args:
        method: ``analytic`` uses the calculator's own Hessian (``calc.get_hessian(atoms)`` or the
            ``"hessian"`` property); ``finite_difference`` uses central differences of the forces
            with step ``delta`` Å (6n force calls, error O(delta²)); ``auto`` prefers analytic.
    """
    return _hessian(atoms, calc, method, delta)[0]


def _has_analytic_hessian(calc: Calculator) -> bool:
    return callable(getattr(calc, "get_hessian", None)) or "hessian" in getattr(calc, "implemented_properties", ())


def _hessian(atoms: Atoms, calc: Calculator | None, method: str, delta: float) -> tuple[np.ndarray, str, int]:
    if method not in HESSIAN_METHODS:
        raise ValueError(f"Unknown Hessian method {method!r}. Valid: {', '.join(HESSIAN_METHODS)}.")
    calc = calc if calc is not None else atoms.calc
    if calc is None:
        raise ValueError("No calculator: pass calc= or attach one to atoms.calc.")
    n = len(atoms)
    work = atoms.copy()
    work.calc = calc
    if method in ("auto", "analytic") and _has_analytic_hessian(calc):
        if callable(getattr(calc, "get_hessian", None)):
            h = np.asarray(calc.get_hessian(work), dtype=float)
        else:
            h = np.asarray(calc.get_property("hessian", work), dtype=float)
        h = h.reshape(3 * n, 3 * n)
        return 0.5 * (h + h.T), "analytic", 1
    if method == "analytic":
        raise ValueError(
            f"Calculator {type(calc).__name__} has no analytic Hessian (no get_hessian method and no "
            "'hessian' property); use method='finite_difference'."
        )
    check_number("delta", delta, low=0.0)  # Å
    def gradient(x: np.ndarray) -> np.ndarray:
        work.positions = x.reshape(n, 3)
        return -np.asarray(work.get_forces(), dtype=float).ravel()

    return fd_hessian(gradient, atoms.positions.astype(float).ravel(), delta), "finite_difference", 6 * n


def spring_hessian(
    atoms: Atoms, edge_index, k, positions: np.ndarray | None = None, reference_positions: np.ndarray | None = None
) -> np.ndarray:
    """Exact Hessian ``(3n, 3n)`` in eV/Å² of the pair energy Σ ½ k_e (d_e − d_e⁰)².

    Per pair with u = v/d: the 3×3 block k [u uᵀ + (1 − d⁰/d)(I − u uᵀ)] enters +(jj), +(ii), −(ij), −(ji).
    At the reference (d = d⁰) this is Σ k_e b_e b_eᵀ.

    Args:
        atoms: the reference structure (d⁰ from its positions unless ``reference_positions``).
        edge_index: ``(2, E)`` pairs; ``k``: ``(E,)`` springs in eV/Å².
        positions: ``(n, 3)`` where to evaluate (default: the reference).
    """
    n = len(atoms)
    e = as_edge_index(edge_index, n).numpy()
    k = np.asarray(torch.as_tensor(k).detach().cpu().numpy() if isinstance(k, Tensor) else k, dtype=float)
    ref = np.asarray(atoms.positions if reference_positions is None else reference_positions, dtype=float)
    pos = ref if positions is None else np.asarray(positions, dtype=float)
    d0 = np.linalg.norm(pair_vectors(ref, e, atoms), axis=1)
    v = pair_vectors(pos, e, atoms)
    d = np.linalg.norm(v, axis=1)
    u = v / np.where(d > 0, d, 1.0)[:, None]
    uu = u[:, :, None] * u[:, None, :]
    ratio = np.where(d > 0, 1.0 - d0 / np.where(d > 0, d, 1.0), 0.0)
    blocks = k[:, None, None] * (uu + ratio[:, None, None] * (np.eye(3)[None] - uu))
    h = np.zeros((n, 3, n, 3))
    i, j = e[0][:, None, None], e[1][:, None, None]
    r, c = np.arange(3)[None, :, None], np.arange(3)[None, None, :]
    np.add.at(h, (i, r, i, c), blocks)
    np.add.at(h, (j, r, j, c), blocks)
    np.add.at(h, (i, r, j, c), -blocks)
    np.add.at(h, (j, r, i, c), -blocks)
    return h.reshape(3 * n, 3 * n)


# ----------------------------------------------------------------------------- fit


def pair_gradients(atoms: Atoms, edge_index) -> np.ndarray:
    """``(3n, E)`` matrix B whose column e is b_e = ∂d_e/∂y (unit vector ±u_e on the two atoms)."""
    n = len(atoms)
    e = as_edge_index(edge_index, n).numpy()
    v = pair_vectors(np.asarray(atoms.positions, dtype=float), e, atoms)
    d = np.linalg.norm(v, axis=1)
    if np.any(d < 1e-8):
        raise ValueError("Two atoms of a pair coincide in the reference; their distance has no gradient.")
    u = v / d[:, None]
    b = np.zeros((n, 3, e.shape[1]))
    cols = np.arange(e.shape[1])
    for c in range(3):
        b[e[1], c, cols] += u[:, c]
        b[e[0], c, cols] -= u[:, c]
    return b.reshape(3 * n, -1)


def fit_springs(
    hessian: np.ndarray,
    atoms: Atoms,
    edge_index,
    *,
    weighting: str = "none",
    ridge: float = 0.0,
    k_min: float = 0.0,
    max_dense_pairs: int = 4000,
) -> np.ndarray:
    """Non-negative springs ``(E,)`` in eV/Å² minimising ‖H − Σ_e k_e b_e b_eᵀ‖_F (optionally mass-weighted).

    Args:
        hessian: ``(3n, 3n)`` Hessian in eV/Å² at ``atoms``.
        atoms: the reference structure.
        edge_index: ``(2, E)`` or ``(E, 2)`` pairs.
        weighting: ``none`` (plain Frobenius norm, dominated by the stiffest modes), ``mass``
            (norm of M^{-1/2}(H − H_fit)M^{-1/2}) or ``relative`` (norm of W(H − H_fit)W with
            W = |PHP|^{-1/2}: each internal mode's relative curvature error counts equally, which
            keeps soft modes — bends, torsions — from being sacrificed to the stretches).
        ridge: Tikhonov term ridge·mean(diag G)·‖k‖², for ill-conditioned edge sets (0 = exact NNLS).
        k_min: lower bound on every spring in eV/Å² (default 0). NNLS zeroes many pairs; a small
            floor (e.g. 1e-2) keeps the whole edge set active, so a rigid edge set stays rigid and
            the loss built from the springs keeps its minimisers at the rigid motions of y.
        max_dense_pairs: above this many pairs the sparse bounded least-squares solver is used.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting {weighting!r}. Valid: {', '.join(WEIGHTINGS)}.")
    n = len(atoms)
    h = np.asarray(hessian, dtype=float).reshape(3 * n, 3 * n)
    if not np.all(np.isfinite(h)):
        raise ValueError("The Hessian contains NaN or Inf.")
    b = pair_gradients(atoms, edge_index)
    if b.shape[1] == 0:
        return np.zeros(0)
    b, h = _weighted(b, 0.5 * (h + h.T), atoms, weighting)
    check_number("k_min", k_min, low=0.0, low_inclusive=True)
    check_number("ridge", ridge, low=0.0, low_inclusive=True)
    if b.shape[1] <= max_dense_pairs:
        return _fit_dense(b, h, k_min, ridge)
    return _fit_sparse(b, h, as_edge_index(edge_index, n).numpy(), k_min, ridge)


def _weighted(b: np.ndarray, h: np.ndarray, atoms: Atoms, weighting: str) -> tuple[np.ndarray, np.ndarray]:
    """The pair gradients ``(3n, E)`` and the symmetric Hessian ``(3n, 3n)`` in the norm of ``weighting``."""
    if weighting == "mass":
        w = 1.0 / np.sqrt(np.repeat(np.asarray(atoms.get_masses(), dtype=float), 3))
        return b * w[:, None], h * w[:, None] * w[None, :]
    if weighting == "relative":
        # W = |PHP|^{-1/2} on the internal subspace: every mode's relative curvature error counts equally.
        proj = internal_projector(atoms)
        lam, vec = np.linalg.eigh(proj @ h @ proj)
        scale = np.abs(lam)
        keep = scale > 1e-6 * scale.max()
        w_mat = (vec[:, keep] / np.sqrt(scale[keep])) @ vec[:, keep].T
        return w_mat @ b, w_mat @ h @ w_mat
    return b, h


def _fit_dense(b: np.ndarray, h: np.ndarray, k_min: float, ridge: float) -> np.ndarray:
    """Exact NNLS on a square-root factor of G = (BᵀB)∘(BᵀB), with springs ≥ ``k_min``."""
    from scipy.optimize import nnls

    n_pairs = b.shape[1]
    c = np.einsum("ae,ab,be->e", b, h, b)
    s = b.T @ b
    g = s * s
    if ridge > 0:
        g = g + ridge * np.mean(np.diag(g)) * np.eye(n_pairs)
    # k = k_min + k' with k' >= 0: the linear term shifts by G k_min 1.
    r, z = _square_root_system(g, c - g @ np.full(n_pairs, k_min))
    k, _ = nnls(r, z, maxiter=50 * n_pairs)
    return k + k_min


def _fit_sparse(b: np.ndarray, h: np.ndarray, pairs: np.ndarray, k_min: float, ridge: float) -> np.ndarray:
    """Bounded sparse least squares ``min ‖vec(H) − D k‖`` over k ≥ ``k_min`` (D: columns vec(b_e b_eᵀ))."""
    from scipy import sparse
    from scipy.optimize import lsq_linear

    n_pairs = b.shape[1]
    design = _sparse_design(b, pairs)
    target = h.ravel() - design @ np.full(n_pairs, k_min)
    if ridge > 0:
        scale = np.sqrt(ridge * np.mean(np.asarray(design.multiply(design).sum(0)).ravel()))
        design = sparse.vstack([design, scale * sparse.identity(n_pairs)])
        target = np.concatenate([target, np.zeros(n_pairs)])
    return lsq_linear(design, target, bounds=(0.0, np.inf), lsmr_tol="auto", max_iter=2000).x + k_min


def _sparse_design(b: np.ndarray, pairs: np.ndarray):
    """``(9n², E)`` CSR matrix whose column e is vec(b_e b_eᵀ): four 3×3 blocks on the pair's two atoms.

    Args:
        b: ``(3n, E)`` (weighted) pair gradients; pairs: ``(2, E)`` their atoms.
    """
    from scipy import sparse

    n, n_pairs = b.shape[0] // 3, b.shape[1]
    rows, cols, vals = [], [], []
    bb = b.reshape(n, 3, n_pairs)
    for col in range(n_pairs):
        atoms_e = (pairs[0, col], pairs[1, col])
        for a in atoms_e:
            for a2 in atoms_e:
                blk = np.outer(bb[a, :, col], bb[a2, :, col])
                idx = (3 * a + np.arange(3))[:, None] * (3 * n) + (3 * a2 + np.arange(3))[None, :]
                rows.append(idx.ravel())
                cols.append(np.full(9, col))
                vals.append(blk.ravel())
    return sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(9 * n * n, n_pairs)
    )


def _square_root_system(g: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(R, z)`` with RᵀR = G and Rᵀz = c (on the range of G), so ‖Rk − z‖² = kᵀGk − 2cᵀk + const.

    Cholesky when G is well conditioned (the usual case), eigen-decomposition otherwise
    (linearly dependent b_e b_eᵀ, e.g. duplicated pairs).
    """
    import scipy.linalg

    try:
        chol = scipy.linalg.cholesky(g, lower=False, check_finite=False)  # G = UᵀU
        if np.min(np.abs(np.diag(chol))) > 1e-6 * np.sqrt(np.max(np.diag(g))):
            return chol, scipy.linalg.solve_triangular(chol, c, trans="T", check_finite=False)
    except np.linalg.LinAlgError:
        pass
    lam, vec = np.linalg.eigh(g)
    keep = lam > lam.max() * g.shape[0] * np.finfo(float).eps
    return np.sqrt(lam[keep])[:, None] * vec[:, keep].T, (vec[:, keep].T @ c) / np.sqrt(lam[keep])


@dataclass
class SpringFitReport:
    """How well pair springs reproduce a calculator's Hessian at the reference.

    Attributes:
        rel_frobenius_error: ‖PHP − H_fit‖_F / ‖PHP‖_F with P the projector removing rigid motions
            (the part springs can represent; for a stationary reference PHP = H).
        frequencies_true, frequencies_fit: ``(3n − r,)`` non-rigid harmonic frequencies in cm⁻¹,
            ascending (imaginary as negative), of the calculator's Hessian and of the springs.
        n_atoms, n_pairs, n_active: atoms, pairs of the edge set, pairs with k > 0.
        k_min, k_max, k_mean: statistics of the springs in eV/Å².
        max_force: largest atomic force of the calculator at the reference in eV/Å (should be ≈ 0:
            a spring surrogate always has its minimum at the reference); NaN if not computed.
        n_negative_modes: imaginary modes of the calculator's Hessian (springs cannot represent them).
        n_floppy_modes: non-rigid modes with zero curvature in the fitted springs: the active springs
            (k > 0) do not hold the structure rigid (zeroed pairs, a bond-only graph, or out-of-plane
            flexes of a planar reference). A loss with such springs has extra minimisers.
        hessian_method: ``analytic``, ``finite_difference`` or ``given``; n_calls: calculator calls.
        graph, weighting: fit settings; seconds: wall time of the fit including the Hessian.
    """

    rel_frobenius_error: float
    frequencies_true: np.ndarray
    frequencies_fit: np.ndarray
    n_atoms: int
    n_pairs: int
    n_active: int
    k_min: float
    k_max: float
    k_mean: float
    max_force: float
    n_negative_modes: int
    n_floppy_modes: int
    hessian_method: str
    n_calls: int
    graph: str
    weighting: str
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def lowest_modes(self, n: int = 6) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` lowest non-rigid frequencies (cm⁻¹) of the calculator and of the springs."""
        return self.frequencies_true[:n], self.frequencies_fit[:n]

    def mode_errors(self, n: int | None = None) -> np.ndarray:
        """Relative frequency errors (fit − true)/|true| of the ``n`` lowest modes (all by default)."""
        t, f = self.frequencies_true[:n], self.frequencies_fit[:n]
        return (f - t) / np.maximum(np.abs(t), 1e-12)

    def summary(self, n_modes: int = 6) -> str:
        t, f = self.lowest_modes(n_modes)
        lines = [
            f"spring fit ({self.graph}, {self.n_pairs} pairs, {self.n_active} active, Hessian: {self.hessian_method}, "
            f"{self.n_calls} calls, {self.seconds:.2f} s)",
            f"  relative Frobenius error of the internal Hessian: {self.rel_frobenius_error:.4f}",
            f"  k in eV/Å²: min {self.k_min:.3g}, mean {self.k_mean:.3g}, max {self.k_max:.3g};"
            f" max |F| at reference {self.max_force:.2e} eV/Å",
            "  lowest modes (cm⁻¹) true: " + " ".join(f"{x:8.1f}" for x in t),
            "                      fit:  " + " ".join(f"{x:8.1f}" for x in f),
        ]
        if self.n_negative_modes:
            lines.append(f"  warning: {self.n_negative_modes} imaginary mode(s): the reference is not a minimum")
        if self.n_floppy_modes:
            lines.append(
                f"  warning: {self.n_floppy_modes} floppy mode(s) in the springs (not rigid; consider k_min > 0)"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict:
        """JSON-able dict (arrays as lists), e.g. for an ASE db row's data."""
        out = asdict(self)
        out["frequencies_true"] = [float(x) for x in self.frequencies_true]
        out["frequencies_fit"] = [float(x) for x in self.frequencies_fit]
        return out


def coefficients_from_calculator(
    atoms: Atoms,
    calc: Calculator | None = None,
    *,
    graph: str = "complete",
    graph_kwargs: Mapping | None = None,
    edge_index=None,
    bonds=None,
    hessian: np.ndarray | None = None,
    method: str = "auto",
    delta: float = 5e-3,
    weighting: str = "none",
    ridge: float = 0.0,
    k_min: float = 0.0,
    seed: int = 0,
    max_dense_pairs: int = 4000,
) -> tuple[Tensor, Tensor, SpringFitReport]:
    """Fit non-negative pair springs to a calculator's Hessian at the reference ``atoms``.

    Args:
        atoms: the reference structure (ideally a minimum of ``calc``: check ``report.max_force``).
        calc: any ASE calculator (default ``atoms.calc``): EMT, LennardJones, :class:`MMFFCalculator`,
            ``tblite.ase.TBLite`` (GFN2-xTB), SchNetPack's ``SpkCalculator``, :class:`TorchMDNetCalculator`, ...
        graph: edge set of the springs (``complete``, ``radius``, ``bonds``, ``rigid_sparse``), built
            by the core on the reference; ``graph_kwargs`` e.g. ``{"cutoff": 4.0}``.
        edge_index: explicit ``(2, E)`` or ``(E, 2)`` pairs instead of ``graph``.
        bonds: ``(2, M)`` bonds for ``graph="bonds"`` (default: ASE covalent-radius neighbour analysis).
        hessian: a precomputed ``(3n, 3n)`` Hessian in eV/Å² (then ``calc`` is only used for the forces, if given).
        method, delta: Hessian source, see :func:`compute_hessian`.
        weighting, ridge, k_min, max_dense_pairs: see :func:`fit_springs`.
        seed: seed of the ``rigid_sparse`` graph.

    Returns:
        ``edge_index`` ``(2, E)`` int64 (i < j), ``k`` ``(E,)`` float64 in eV/Å², and a
        :class:`SpringFitReport`. Use them as ``pair_energy_loss(pred, target, edge_index=edge_index,
        coefficients=k, normalize=False, reduction="sum")`` (energy in eV), or in
        :class:`EnergyLossCalculator` with ``edge_index=edge_index, coefficients=k``.
    """
    start = time.perf_counter()
    n = len(atoms)
    if n < 2:
        raise ValueError("A spring fit needs at least two atoms.")
    if edge_index is not None:
        pairs, graph_name = as_edge_index(edge_index, n), "explicit"
    else:
        pairs, graph_name = pairs_for_atoms(atoms, graph, graph_kwargs, bonds, seed), graph
    calc = calc if calc is not None else atoms.calc
    if hessian is not None:
        h, h_method, n_calls = np.asarray(hessian, dtype=float).reshape(3 * n, 3 * n), "given", 0
    else:
        h, h_method, n_calls = _hessian(atoms, calc, method, delta)
    max_force = float("nan")
    if calc is not None:
        work = atoms.copy()
        work.calc = calc
        max_force = float(np.abs(work.get_forces()).max())
        n_calls += 1
    k = fit_springs(h, atoms, pairs, weighting=weighting, ridge=ridge, k_min=k_min, max_dense_pairs=max_dense_pairs)
    report = _fit_report(atoms, h, pairs, k, max_force=max_force, hessian_method=h_method, n_calls=n_calls,
                         graph=graph_name, weighting=weighting)
    report.seconds = time.perf_counter() - start
    return pairs, torch.as_tensor(k, dtype=torch.float64), report


def _fit_report(atoms: Atoms, h: np.ndarray, pairs: Tensor, k: np.ndarray, **settings) -> SpringFitReport:
    """How well springs ``k`` ``(E,)`` on ``pairs`` ``(2, E)`` reproduce the Hessian ``h`` ``(3n, 3n)``;
    ``settings``: the report's remaining fields (max_force, hessian_method, n_calls, graph, weighting)."""
    h_fit = spring_hessian(atoms, pairs, k)
    proj = internal_projector(atoms)
    h_int = proj @ h @ proj
    denom = np.linalg.norm(h_int)
    f_true = frequencies_cm(h, atoms)
    f_fit = frequencies_cm(h_fit, atoms)
    scale = max(np.abs(f_true).max(initial=0.0), 1.0)
    return SpringFitReport(
        rel_frobenius_error=float(np.linalg.norm(h_int - h_fit) / denom) if denom > 0 else float("nan"),
        frequencies_true=f_true,
        frequencies_fit=f_fit,
        n_atoms=len(atoms),
        n_pairs=int(pairs.shape[1]),
        n_active=int((k > 0).sum()),
        k_min=float(k.min()) if k.size else 0.0,
        k_max=float(k.max()) if k.size else 0.0,
        k_mean=float(k.mean()) if k.size else 0.0,
        n_negative_modes=int((f_true < -1e-6 * scale).sum()),
        n_floppy_modes=int((np.abs(f_fit) < 1e-3 * scale).sum()),
        **settings,
    )


# ----------------------------------------------------------------------------- storage and batching


def springs_to_data(edge_index, k, report: SpringFitReport | None = None) -> dict:
    """An ASE db ``data`` dict: ``spring_pairs`` ``(E, 2)`` int64, ``spring_k`` ``(E,)`` float64 eV/Å²,
    ``spring_fit`` (report)."""
    k_arr = np.asarray(k.detach().cpu().numpy() if isinstance(k, Tensor) else k, dtype=np.float64).ravel()
    pairs = as_edge_index(edge_index, None)
    if pairs.shape[1] != k_arr.shape[0]:
        raise ValueError(f"{pairs.shape[1]} pairs but {k_arr.shape[0]} springs.")
    if np.any(k_arr < 0) or not np.all(np.isfinite(k_arr)):
        raise ValueError("Springs must be finite and >= 0.")
    data = {"spring_pairs": pairs.T.numpy().astype(np.int64), "spring_k": k_arr}
    if report is not None:
        data["spring_fit"] = report.to_dict()
    return data


def springs_from_data(data: Mapping, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """``(edge_index (2, E) long, k (E,))`` from a row's ``data`` (see :func:`springs_to_data`)."""
    if "spring_pairs" not in data or "spring_k" not in data:
        raise ValueError(
            "This row has no fitted springs (data['spring_pairs'], data['spring_k']); "
            "run energyloss_plugins.ase.add_springs_to_db first."
        )
    pairs = torch.tensor(np.array(data["spring_pairs"]), dtype=torch.long).reshape(-1, 2).T.contiguous()
    k = torch.tensor(np.array(data["spring_k"]), dtype=dtype).reshape(-1)
    if pairs.shape[1] != k.shape[0]:
        raise ValueError(f"Stored springs are inconsistent: {pairs.shape[1]} pairs but {k.shape[0]} springs.")
    return pairs, k


#: ``_property_unit_dict`` entries of the stored springs (pairs are atom indices: no unit).
SPRING_UNITS = {"spring_pairs": None, "spring_k": "eV/Ang/Ang"}


def register_spring_units(con) -> None:
    """List the stored springs in a SchNetPack database's ``_property_unit_dict`` (no-op for other databases).

    SchNetPack's ``ASEAtomsData`` loads only the row-data keys its metadata names (``data.load_properties``).
    """
    metadata = dict(con.metadata)
    units = metadata.get("_property_unit_dict")
    if isinstance(units, dict) and any(units.get(key, "?") != unit for key, unit in SPRING_UNITS.items()):
        metadata["_property_unit_dict"] = {**units, **SPRING_UNITS}
        con.metadata = metadata


def store_springs(db, row_id: int, edge_index, k, report: SpringFitReport | None = None) -> None:
    """Write fitted springs into row ``row_id`` of an ASE database (connection or path), merged into its ``data``."""
    import ase.db

    con = ase.db.connect(db) if isinstance(db, str) else db
    n_atoms = con.get(id=row_id).natoms
    pairs = as_edge_index(edge_index, n_atoms)
    con.update(row_id, data=springs_to_data(pairs, k, report))


def add_springs_to_db(
    db,
    calculator: Calculator | Callable[[Atoms], Calculator],
    *,
    selection=None,
    overwrite: bool = False,
    verbose: bool = False,
    **fit_kwargs,
) -> int:
    """Fit and store springs for every selected row of an ASE database.

    Args:
        db: ASE db connection or path.
        calculator: one calculator for all rows, or a factory ``atoms -> calculator`` (e.g.
            ``MMFFCalculator`` needs one per molecule).
        selection: ASE db selection string or None for all rows.
        overwrite: refit rows that already have springs.
        fit_kwargs: passed to :func:`coefficients_from_calculator` (graph, method, weighting, ...).

    A database with SchNetPack's metadata gets both keys in its ``_property_unit_dict``
    (:func:`register_spring_units`): ``data.load_properties: [..., spring_pairs, spring_k]`` loads them.

    Returns:
        The number of rows fitted.
    """
    import ase.db

    con = ase.db.connect(db) if isinstance(db, str) else db
    count = 0
    for row in list(con.select(selection)):
        if not overwrite and "spring_k" in (row.data or {}):
            continue
        atoms = row.toatoms()
        if "target_positions" in (row.data or {}):  # builder databases: springs belong to the equilibrium target
            atoms.positions = np.asarray(row.data["target_positions"], dtype=float)
        calc = calculator if isinstance(calculator, Calculator) else calculator(atoms)
        pairs, k, report = coefficients_from_calculator(atoms, calc, **fit_kwargs)
        con.update(row.id, data=springs_to_data(pairs, k, report))
        if verbose:
            print(f"row {row.id} ({row.formula}): {report.summary()}")
        count += 1
    register_spring_units(con)
    return count


def collate_springs(springs: Sequence[tuple[Tensor, Tensor]], n_atoms: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Concatenate per-structure springs into one flat-batch pair list.

    Args:
        springs: per structure ``(edge_index (2, E_b), k (E_b,))`` with local atom indices.
        n_atoms: atoms per structure, in the order the structures appear in the flat batch
            (contiguous blocks, as PyG/SchNetPack batches are).

    Returns:
        ``edge_index`` ``(2, ΣE_b)`` of flat atom indices and ``k`` ``(ΣE_b,)``, ready for
        ``pair_energy_loss(pred, target, batch, edge_index=edge_index, coefficients=k)``.
    """
    if len(springs) != len(n_atoms):
        raise ValueError(f"{len(springs)} spring sets for {len(n_atoms)} structures.")
    offset = 0
    pairs, ks = [], []
    for (e, k), n in zip(springs, n_atoms, strict=True):
        e = torch.as_tensor(e, dtype=torch.long)
        if e.numel() and int(e.max()) >= n:
            raise ValueError(f"A spring pair refers to atom {int(e.max())} of a structure with {n} atoms.")
        pairs.append(e + offset)
        ks.append(torch.as_tensor(k))
        offset += int(n)
    if not pairs:
        return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    return torch.cat(pairs, dim=1), torch.cat(ks)
