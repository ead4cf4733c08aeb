"""Hessian algebra: finite-difference Hessians, rigid motions, normal modes, harmonic Boltzmann samples.

The one home of this algebra for the dataset builder's thermal inputs (:mod:`energyloss_plugins.chem`)
and the ASE bridge (frequencies, spring fits, the harmonic start of Boltzmann sampling). Numpy only
(torch for one single-threaded eigendecomposition). Positions are ``(N, 3)`` float64 arrays in Å,
Hessians ``(3N, 3N)`` in eV/Å², masses ``(N,)`` in amu, temperatures in K.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Boltzmann constant in eV/K (CODATA 2018).
BOLTZMANN_EV = 8.617333262e-05

#: Smallest spring (eV/Å²) a normal mode may have when sampling thermal displacements: soft modes
#: (methyl rotors, torsions: far from harmonic) are stiffened to this, capping the RMS amplitude of
#: any mode at sqrt(k_B T / K_MIN) (0.23 Å at 300 K).
THERMAL_K_MIN = 0.5

#: An eigenvalue counts as curvature when above this fraction of the largest one (rounding noise of
#: rigid motions and of flat directions lies far below).
_CURVED = 1e-8


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


def rigid_motion_basis(positions: np.ndarray, masses: np.ndarray | None = None, rotations: bool = True) -> np.ndarray:
    """``(3N, r)`` orthonormal basis of the rigid translations and (with ``rotations``) rotations.

    ``r`` is 6 for a non-linear structure, 5 for a linear one, 3 without rotations (periodic
    boundaries), 3 for one atom. With ``masses`` ``(N,)`` the basis lives in mass-weighted
    coordinates √m·x and the rotations turn about the centre of mass; without, about the centroid.
    """
    x = np.asarray(positions, dtype=np.float64)
    n = x.shape[0]
    m = np.ones(n) if masses is None else np.asarray(masses, dtype=np.float64)
    sq = np.sqrt(m)[:, None]
    vecs = []
    for a in range(3):
        t = np.zeros((n, 3))
        t[:, a] = 1.0
        vecs.append((t * sq).ravel())
    if rotations:
        centred = x - (m[:, None] * x).sum(0) / m.sum()
        for a in range(3):
            axis = np.zeros(3)
            axis[a] = 1.0
            vecs.append((np.cross(axis, centred) * sq).ravel())
    u, s, _ = np.linalg.svd(np.stack(vecs, 1), full_matrices=False)
    return u[:, s > 1e-8 * max(s.max(), 1.0)]


def internal_basis(rigid: np.ndarray) -> np.ndarray:
    """``(3N, 3N − r)`` orthonormal basis of the internal motions: the complement of ``rigid`` ``(3N, r)``."""
    u, _, _ = np.linalg.svd(rigid, full_matrices=True)
    return u[:, rigid.shape[1] :]


def internal_projector(rigid: np.ndarray) -> np.ndarray:
    """``(3N, 3N)`` projector onto the complement of the orthonormal rigid basis ``rigid`` ``(3N, r)``."""
    return np.eye(rigid.shape[0]) - rigid @ rigid.T


def mass_weighted(hessian: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """``M^{-1/2} H M^{-1/2}`` ``(3N, 3N)`` in eV/(Å² amu), symmetrised, for ``masses`` ``(N,)`` in amu."""
    w = 1.0 / np.sqrt(np.repeat(np.asarray(masses, dtype=np.float64), 3))
    h = np.asarray(hessian, dtype=np.float64)
    return 0.5 * (h + h.T) * w[:, None] * w[None, :]


def normal_modes(hessian: np.ndarray, masses: np.ndarray, rigid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Internal normal modes: eigenvalues ``(M,)`` ascending, eV/(Å² amu), and unit displacements ``(M, N, 3)``.

    Args:
        hessian: ``(3N, 3N)`` Cartesian Hessian in eV/Å².
        masses: ``(N,)`` in amu.
        rigid: ``(3N, r)`` orthonormal rigid basis in mass-weighted coordinates
            (:func:`rigid_motion_basis` with ``masses``), projected out.

    Eigenvalue λ is ω² of the mode (negative for an imaginary one); the mode vectors are the
    mass-weighted eigenvectors turned into Cartesian displacements and normalised to unit length.
    """
    n = len(masses)
    q = internal_basis(rigid)
    lam, vec = np.linalg.eigh(q.T @ mass_weighted(hessian, masses) @ q)
    cart = (q @ vec) / np.sqrt(np.repeat(np.asarray(masses, dtype=np.float64), 3))[:, None]
    cart /= np.linalg.norm(cart, axis=0, keepdims=True)
    return lam, cart.T.reshape(-1, n, 3)


def curved(eigenvalues: np.ndarray) -> np.ndarray:
    """Bool mask of the eigenvalues that are curvature, not rounding noise of a flat direction."""
    lam = np.asarray(eigenvalues)
    return lam > _CURVED * max(float(lam.max(initial=0.0)), 1e-12)


def harmonic_samples(
    positions: np.ndarray,
    hessian: np.ndarray,
    temperature: float,
    n_samples: int,
    rng: np.random.Generator,
    k_min: float = THERMAL_K_MIN,
    rigid: np.ndarray | None = None,
) -> np.ndarray:
    """Classical Boltzmann samples of the harmonic approximation around ``positions``.

    ``p(x) ∝ exp(-½ (x - x0)ᵀ H (x - x0) / k_B T)`` restricted to the internal (non-rigid) motions:
    along each normal mode with spring λ (floored at ``k_min``) the displacement is Gaussian with
    variance ``k_B T / λ``; a mode with no curvature left (``k_min = 0`` and λ ≤ 0: a flat or
    unstable direction) is not displaced. Rigid motions are projected out, so the samples keep the
    centre of the target and have no net rotation.

    Args:
        positions: ``(N, 3)`` Å, the minimum.
        hessian: ``(3N, 3N)`` eV/Å².
        temperature: K.
        n_samples: number of samples.
        rng: numpy Generator (the only source of randomness).
        k_min: spring floor in eV/Å².
        rigid: ``(3N, r)`` orthonormal rigid basis to project out; default translations and
            rotations of ``positions`` (:func:`rigid_motion_basis`); translations only for a
            periodic structure.

    Returns:
        ``(n_samples, N, 3)`` positions in Å.
    """
    x0 = np.asarray(positions, dtype=np.float64)
    n = x0.shape[0]
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 K, got {temperature}.")
    b = internal_basis(rigid_motion_basis(x0) if rigid is None else rigid)
    h_int = b.T @ np.asarray(hessian, dtype=np.float64) @ b
    lam, vec = _eigh_single_thread(0.5 * (h_int + h_int.T))
    lam = np.maximum(lam, k_min)
    keep = curved(lam)
    sigma = np.sqrt(BOLTZMANN_EV * temperature / np.where(keep, lam, 1.0)) * keep
    z = rng.standard_normal((n_samples, lam.shape[0]))
    disp = (z * sigma) @ vec.T @ b.T
    return x0[None] + disp.reshape(n_samples, n, 3)


def _eigh_single_thread(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric eigendecomposition ``(λ ascending, vectors)`` on one thread: for these small matrices a
    multi-threaded BLAS is 10-100x slower on a busy machine than a single thread."""
    import torch

    n_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        lam, vec = torch.linalg.eigh(torch.from_numpy(np.ascontiguousarray(h, dtype=np.float64)))
    finally:
        torch.set_num_threads(n_threads)
    return lam.numpy(), vec.numpy()
