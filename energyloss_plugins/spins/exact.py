"""Exact ground states of square-lattice Ising spin glasses, with no external solver.

:func:`ground_state` runs a transfer-matrix dynamic programme with a column-by-column
("broken row") sweep. Sites are added in raster order; the DP state is the frontier of the last
``W`` sites added, i.e. spins ``(r, 0..c-1)`` of the current row and ``(r-1, c..W-1)`` of the
previous one (``2^W`` states). Adding site ``(r, c)`` with spin ``s`` replaces frontier bit ``c``
(the neighbour above, which leaves the frontier) and only couples to that bit and to bit ``c-1``
(the left neighbour), so one step costs ``O(2^W)`` and a lattice ``O(H·W·2^W)`` -- not the
``O(H·4^W)`` of a full row-to-row transfer matrix. Backtracking through the stored arg-min bits
recovers the configuration.

Boundary conditions are read from the couplings (zero wrapping bonds = open):

- open: ``O(L²·2^L)``; L = 16 takes well under a second (about 0.1 s on one core).
- periodic in one direction: free (the lattice is transposed so the wrap is horizontal, where the
  first spin of the row is still in the frontier).
- periodic in both directions (torus): the first row is enumerated as an extra "anchor" index, so
  the cost is ``O(L²·4^L)``; allowed up to ``max_states`` (default ``2^20``, i.e. L <= 10).

Ground states are returned in a canonical gauge: the spin at site (0, 0) is +1 (the energy is
invariant under a global flip).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from energyloss_plugins._checks import check_number

from ._checks import check_couplings
from .lattice import ising_energy

__all__ = [
    "ground_state",
    "ground_states",
    "brute_force_ground_state",
    "greedy_descent",
    "single_flip_descent",
    "canonicalize",
]


def canonicalize(spins: Tensor, gauge: str = "corner") -> Tensor:
    """Fix the global-flip gauge of each lattice of a ``(B, H, W)`` configuration.

    The Ising energy without a field is invariant under y -> -y, so a ground state is only
    defined up to this flip; a dataset must pick one representative. ``"corner"``: spin (0, 0) is
    +1. ``"center"``: spin (H // 2, W // 2) is +1 -- the anchor is then at most about L/2 sites from
    any site, within reach of a CNN's receptive field (see docs/spins.md).
    """
    anchors = {"corner": (0, 0), "center": (spins.shape[-2] // 2, spins.shape[-1] // 2)}
    if gauge not in anchors:
        raise ValueError(f"Unknown gauge {gauge!r}; valid gauges are {list(anchors)}.")
    r, c = anchors[gauge]
    sign = torch.where(spins[:, r : r + 1, c : c + 1] < 0, -1.0, 1.0).to(spins.dtype)
    return spins * sign


def _as_numpy_lattice(couplings: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(couplings, Tensor):
        J = couplings.detach().to("cpu", torch.float64)
        if J.dim() == 3:
            J = J.unsqueeze(0)
        check_couplings(J)
        if J.shape[0] != 1:
            raise ValueError(
                f"ground_state takes one lattice (2, H, W) or (1, 2, H, W), got {tuple(J.shape)}; use "
                f"ground_states for a batch."
            )
        return J[0].numpy()
    J = np.asarray(couplings, dtype=np.float64)
    if J.ndim == 4 and J.shape[0] == 1:
        J = J[0]
    check_couplings(torch.from_numpy(J).unsqueeze(0))
    return J


def _dp(Jr: np.ndarray, Jd: np.ndarray, periodic_rows: bool) -> tuple[float, np.ndarray]:
    """Broken-row DP on an ``R x C`` lattice; horizontal wrap (Jr[:, -1]) is always handled.

    Returns the minimum energy and the ``(R, C)`` configuration in {-1, +1}.
    """
    R, C = Jr.shape
    S = 1 << C
    A = S if periodic_rows else 1  # anchor: enumerated configuration of row 0 (torus only)
    F = np.zeros((A, S), dtype=np.float64)
    new = np.empty_like(F)
    choices = np.empty((R * C, A, S), dtype=bool)

    # spin value (+-1) of each bit of an index
    def bit_spins(n_bits: int, bit: int) -> np.ndarray:
        return (((np.arange(1 << n_bits) >> bit) & 1) * 2 - 1).astype(np.float64)

    if periodic_rows:
        anchor_bits = [bit_spins(C, c).reshape(A, 1, 1) for c in range(C)]
    tmp0 = np.empty((A, S >> 1), dtype=np.float64)
    tmp1 = np.empty_like(tmp0)

    step = 0
    for r in range(R):
        for c in range(C):
            hi, lo = S >> (c + 1), 1 << c
            F4 = F.reshape(A, hi, 2, lo)
            N4 = new.reshape(A, hi, 2, lo)
            ch = choices[step].reshape(A, hi, 2, lo)
            F0, F1 = F4[:, :, 0, :], F4[:, :, 1, :]  # frontier bit c = spin above: -1 / +1
            ju = Jd[r - 1, c] if r > 0 else 0.0
            # local term per new spin s = +1, as a function of the low bits (row r, columns < c)
            loc = np.zeros(lo, dtype=np.float64)
            if c > 0:
                loc -= Jr[r, c - 1] * bit_spins(c, c - 1)
            if c == C - 1 and C > 1 and Jr[r, C - 1] != 0.0:
                loc -= Jr[r, C - 1] * bit_spins(c, 0)  # horizontal wrap to (r, 0)
            extra = None  # (A, 1, 1) term per anchor, for s = +1
            if periodic_rows and r == R - 1:
                extra = -Jd[R - 1, c] * anchor_bits[c]  # vertical wrap to (0, c) = anchor bit c
            for sb, s in ((1, 1.0), (0, -1.0)):
                # energy of bond to the spin above: -ju * s * u, u = -1 (bit 0) or +1 (bit 1)
                t0 = tmp0.reshape(A, hi, lo)
                t1 = tmp1.reshape(A, hi, lo)
                np.add(F0, ju * s, out=t0)
                np.subtract(F1, ju * s, out=t1)
                np.less(t1, t0, out=ch[:, :, sb, :])
                out = N4[:, :, sb, :]
                np.minimum(t0, t1, out=out)
                out += s * loc
                if extra is not None:
                    out += s * extra
                if periodic_rows and r == 0:
                    # row 0 must equal the anchor: forbid s != anchor bit c
                    out += np.where(anchor_bits[c] == s, 0.0, np.inf)
            F, new = new, F
            step += 1

    flat = int(np.argmin(F))
    a, state = divmod(flat, S)
    energy = float(F[a, state])
    spins = np.empty((R, C), dtype=np.float64)
    for step in range(R * C - 1, -1, -1):
        r, c = divmod(step, C)
        spins[r, c] = 1.0 if (state >> c) & 1 else -1.0
        b = int(choices[step, a, state])
        state = (state & ~(1 << c)) | (b << c)
    return energy, spins


def ground_state(
    couplings: Tensor | np.ndarray, max_states: int = 1 << 20, canonical: bool = True
) -> tuple[Tensor, float]:
    """Exact ground state of one lattice by the broken-row transfer-matrix DP.

    Args:
        couplings: ``(2, H, W)`` (or ``(1, 2, H, W)``) couplings, torch or numpy; boundary
            conditions are inferred from the wrapping bonds (all zero = open).
        max_states: refuse lattices whose DP would hold more states than this (torus lattices need
            ``4^min(H, W)``, open ones ``2^min(H, W)``).
        canonical: return the gauge with spin (0, 0) = +1.

    Returns:
        ``(spins, energy)``: ``(H, W)`` float64 tensor in {-1, +1} and its energy (float).
    """
    J = _as_numpy_lattice(couplings)
    Jr, Jd = J[0], J[1]
    H, W = Jr.shape
    periodic_cols = bool(np.any(Jr[:, -1] != 0))
    periodic_rows = bool(np.any(Jd[-1, :] != 0))
    # cost of each orientation: states per step (transposing swaps the roles of rows and columns)
    cost_as_is = (1 << W) * ((1 << W) if periodic_rows else 1)
    cost_t = (1 << H) * ((1 << H) if periodic_cols else 1)
    transpose = cost_t < cost_as_is
    if min(cost_as_is, cost_t) > max_states:
        raise ValueError(
            f"The DP for this {H}x{W} lattice (periodic rows={periodic_rows}, columns={periodic_cols}) "
            f"needs {min(cost_as_is, cost_t)} states > max_states={max_states}; use open boundaries "
            f"(cost 2^L) or a smaller lattice, or raise max_states."
        )
    if transpose:
        # transposed lattice: its right bonds are our down bonds and vice versa
        energy, s = _dp(np.ascontiguousarray(Jd.T), np.ascontiguousarray(Jr.T), periodic_cols)
        s = s.T
    else:
        energy, s = _dp(Jr, Jd, periodic_rows)
    spins = torch.from_numpy(np.ascontiguousarray(s))
    if canonical and spins[0, 0] < 0:
        spins = -spins
    return spins, energy


def ground_states(
    couplings: Tensor, progress: bool = False, desc: str = "ground states", **kwargs
) -> tuple[Tensor, Tensor]:
    """Exact ground states of a batch of lattices (one DP per lattice).

    Args:
        couplings: ``(B, 2, H, W)``.
        progress: show a tqdm progress bar.
        **kwargs: passed to :func:`ground_state`.

    Returns:
        ``(spins, energies)``: ``(B, H, W)`` float32 in {-1, +1} and ``(B,)`` float64.
    """
    check_couplings(couplings)
    from tqdm.auto import tqdm

    B, _, H, W = couplings.shape
    spins = torch.empty(B, H, W, dtype=torch.float32)
    energies = torch.empty(B, dtype=torch.float64)
    J64 = couplings.detach().to("cpu", torch.float64).numpy()
    for b in tqdm(range(B), desc=desc, disable=not progress, leave=False):
        s, e = ground_state(J64[b], **kwargs)
        spins[b] = s.float()
        energies[b] = e
    return spins, energies


def brute_force_ground_state(couplings: Tensor, max_sites: int = 20, chunk: int = 1 << 16) -> tuple[Tensor, float]:
    """Ground state of one small lattice by enumerating all ``2^(H·W)`` configurations.

    Args:
        couplings: ``(2, H, W)`` or ``(1, 2, H, W)``.
        max_sites: refuse lattices with more sites (the cost is exponential).

    Returns:
        ``(spins, energy)`` like :func:`ground_state` (canonical gauge, spin (0, 0) = +1).
    """
    J = couplings.detach().to("cpu", torch.float64)
    if J.dim() == 3:
        J = J.unsqueeze(0)
    check_couplings(J)
    _, _, H, W = J.shape
    N = H * W
    if N > max_sites:
        raise ValueError(f"Brute force on {N} sites is too expensive (max_sites={max_sites}).")
    best_e, best_idx = float("inf"), -1
    bits = torch.arange(N, dtype=torch.int64)
    for start in range(0, 1 << N, chunk):
        idx = torch.arange(start, min(start + chunk, 1 << N), dtype=torch.int64)
        conf = (((idx[:, None] >> bits) & 1) * 2 - 1).to(torch.float64).view(-1, H, W)
        e = ising_energy(conf, J.expand(len(idx), -1, -1, -1))
        k = int(torch.argmin(e))
        if float(e[k]) < best_e:
            best_e, best_idx = float(e[k]), int(idx[k])
    spins = (((torch.tensor(best_idx) >> bits) & 1) * 2 - 1).to(torch.float64).view(H, W)
    if spins[0, 0] < 0:
        spins = -spins
    return spins, best_e


def single_flip_descent(spins: Tensor, couplings: Tensor, max_iter: int | None = None) -> Tensor:
    """Steepest single-spin-flip descent of a batch of configurations to local minima.

    Each configuration repeatedly flips the spin with the most negative flip cost until no
    single flip lowers the energy.

    Args:
        spins: ``(B, H, W)`` initial configurations in {-1, +1}.
        couplings: ``(B, 2, H, W)``.

    Returns:
        ``(B, H, W)`` float64 local minima.
    """
    from .lattice import flip_costs

    J = couplings.detach().to("cpu", torch.float64)
    check_couplings(J)
    y = spins.detach().to("cpu", torch.float64).clone()
    B, H, W = y.shape
    max_iter = 20 * H * W if max_iter is None else max_iter
    rows = torch.arange(B)
    for _ in range(max_iter):
        val, site = flip_costs(y, J).view(B, -1).min(dim=1)
        active = val < -1e-12
        if not bool(active.any()):
            break
        flat = y.view(B, -1)
        flat[rows[active], site[active]] *= -1
    return y


def greedy_descent(couplings: Tensor, n_starts: int = 1000, seed: int | None = None) -> tuple[Tensor, Tensor]:
    """Steepest single-spin-flip descent of one lattice from ``n_starts`` random starts.

    A baseline and a check of the exact solver (whose energy can never be higher).

    Args:
        couplings: ``(2, H, W)`` (or ``(1, 2, H, W)``) one lattice.
        n_starts: number of random initial configurations.
        seed: torch generator seed.

    Returns:
        ``(spins, energies)``: ``(n_starts, H, W)`` local minima and ``(n_starts,)`` float64 energies.
    """
    n_starts = check_number("n_starts", n_starts, low=1, low_inclusive=True, integer=True)
    J = couplings.detach().to("cpu", torch.float64)
    if J.dim() == 4 and J.shape[0] == 1:
        J = J[0]
    check_couplings(J.unsqueeze(0))
    _, H, W = J.shape
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    y0 = (torch.randint(0, 2, (n_starts, H, W), generator=g) * 2 - 1).to(torch.float64)
    Jb = J.unsqueeze(0).expand(n_starts, -1, -1, -1)
    y = single_flip_descent(y0, Jb)
    return y, ising_energy(y, Jb)
