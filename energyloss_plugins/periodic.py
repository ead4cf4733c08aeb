"""Periodic structures: minimum-image shifts taken from the reference (SPEC §2, beyond the paper).

Each predicted atom is first moved to the periodic image nearest its reference atom (so a wrapped
prediction equals the unwrapped one), then every pair uses the image shift of the reference's
minimum-image displacement for both structures. Shifts are integer lattice vectors: constants.

The shortest image is found with vesin's neighbour list (exact for any cell, however skewed;
rounding fractional coordinates is not): for the requested pairs, the rounded-fraction image in the
Minkowski-reduced cell gives an upper bound on the shortest distance, a neighbour list with that
cutoff holds every image at least as short, and the shortest one listed is kept. The ASE bridge
uses the same function.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from energyloss_plugins._checks import check_finite
from energyloss_plugins.graphs import edges_within


def _vesin():
    try:
        import vesin
    except ImportError:  # pragma: no cover - vesin is a dependency; a clear message if it is missing
        raise ImportError(
            "Periodic structures (a cell) need the vesin neighbour list: pip install vesin "
            "(a dependency of energyloss-plugins)."
        ) from None
    return vesin


#: Smallest lattice-plane spacing (Å) accepted along a periodic direction. Real crystals have spacings
#: of Ångströms; a thinner cell (a typo, a 2-D slab given pbc=True along its vacuum axis with a
#: zero height) would make the neighbour search enumerate millions of images.
MIN_CELL_HEIGHT = 0.1


def check_cell_heights(cell: np.ndarray, pbc: np.ndarray, name: str = "cell") -> None:
    """Raise ``ValueError`` naming ``name`` unless every periodic lattice-plane spacing is >= :data:`MIN_CELL_HEIGHT`.

    ``cell``: ``(d, d)`` rows = lattice vectors (Å); ``pbc``: ``(d,)`` bool. Run before any image search.
    """
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any():
        return
    periodic = cell[pbc]
    if not np.isfinite(periodic).all():
        raise ValueError(f"{name} contains NaN or Inf lattice vectors.")
    # spacing of the planes spanned by the other periodic vectors: |a_k ⊥ span(others)|
    heights = []
    for k in range(len(periodic)):
        others = np.delete(periodic, k, axis=0)
        a = periodic[k]
        if len(others):
            q = np.linalg.qr(others.T)[0]
            a = a - q @ (q.T @ a)
        heights.append(float(np.linalg.norm(a)))
    if min(heights) < MIN_CELL_HEIGHT:
        raise ValueError(f"{name}: a periodic direction has a lattice-plane spacing of {min(heights):.3g} Å "
                         f"(< {MIN_CELL_HEIGHT} Å; heights {[round(h, 4) for h in heights]}). Give the real cell in Å, "
                         "or pbc=False along a direction without periodicity.")


def minimum_image_shifts(points: np.ndarray, cell: np.ndarray, pbc: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Integer image shifts ``n`` with ``points[j] − points[i] + n @ cell`` the shortest image of each pair.

    Args:
        points: ``(n, d)`` positions (Å), d in (2, 3).
        cell: ``(d, d)`` lattice vectors as rows (Å).
        pbc: ``(d,)`` bool, periodic directions (shifts along the others are 0).
        pairs: ``(2, E)`` atom indices ``(i, j)``.

    Returns:
        ``(E, d)`` int64 shifts. A pair at distance 0 keeps the rounded-fraction shift (nothing is shorter).

    The cell is first Minkowski-reduced (``ase.geometry.minkowski_reduce`` when ASE is installed),
    which makes the rounded images short. Pairs whose rounded image is shorter than half the
    smallest lattice-plane spacing are then exact without a neighbour list (the usual case for short
    cutoffs); the others get one over the structure with their longest rounded length as cutoff,
    whose cost grows with the square of the atom count for complete graphs of large cells.
    """
    points = np.asarray(points, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    i, j = np.asarray(pairs, dtype=np.int64)
    d = points.shape[1]
    if not len(i) or not pbc.any():
        return np.zeros((len(i), d), dtype=np.int64)
    check_cell_heights(cell, pbc)
    if d == 2:  # vesin and the reduction are 3-D: a non-periodic third direction
        points = np.concatenate([points, np.zeros((len(points), 1))], axis=1)
        cell = np.block([[cell, np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
        pbc = np.append(pbc, False)
    cell, op = _reduce(cell, pbc)
    vec = points[j] - points[i]
    # Non-periodic rows: an orthonormal basis of the complement of the periodic rows, so fractional
    # coordinates along periodic directions are those of the projection onto the periodic span.
    safe = cell.copy()
    if not pbc.all():
        q = np.linalg.qr(cell[pbc].T, mode="complete")[0]
        safe[~pbc] = q[:, int(pbc.sum()):].T
    inv = np.linalg.inv(safe)
    out = (-np.round(vec @ inv) * pbc).astype(np.int64)
    length = np.linalg.norm(vec + out @ safe, axis=1)
    # Every lattice vector L = Σ n_k a_k != 0 (periodic k) has L · b_k = n_k for the columns b_k of inv,
    # so |L| >= h = 1 / max_k |b_k|: an image of length <= h/2 is the shortest.
    h = 1.0 / float(np.linalg.norm(inv[:, pbc], axis=0).max())
    todo = np.flatnonzero(length > h / 2)
    if len(todo):
        # every image at least as short as the rounded one lies within the bound (vesin refuses
        # tiny cutoffs; 0.01 Å only adds pairs)
        cutoff = max(float(length[todo].max()), 1e-2) * (1 + 1e-9) + 1e-9
        ni, nj, ns, nd = _vesin().NeighborList(cutoff=cutoff, full_list=True).compute(
            points, safe, pbc, quantities="ijSd"
        )
        n = len(points)
        keys = ni.astype(np.int64) * n + nj
        order = np.lexsort((nd, keys))  # by pair, shortest first
        keys, ns = keys[order], ns[order]
        first = np.concatenate([[True], keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, dtype=bool)
        keys, ns = keys[first], ns[first]
        want = i[todo] * n + j[todo]
        pos = np.searchsorted(keys, want)
        found = pos < len(keys)
        found[found] = keys[pos[found]] == want[found]
        out[todo[found]] = ns[pos[found]]
    return (out @ op)[:, :d]


def _reduce(cell: np.ndarray, pbc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minkowski-reduced cell and the integer ``op`` with ``reduced = op @ cell`` (identity without ASE)."""
    try:
        from ase.geometry import minkowski_reduce
    except ImportError:  # exact anyway, only slower for strongly skewed cells
        return cell, np.eye(3, dtype=np.int64)
    reduced, op = minkowski_reduce(cell, pbc)
    return np.asarray(reduced, dtype=np.float64), np.asarray(op, dtype=np.int64)


class MinimumImage:
    """Minimum-image convention of a flat batch.

    Args:
        target: ``(N_total, d)`` reference positions (Å).
        batch: ``(N_total,)`` structure index.
        n_structures: B.
        cell: ``(d, d)`` (one cell for all) or ``(B, d, d)``; rows are the lattice vectors (ASE convention).
        pbc: bool, ``(d,)`` or ``(B, d)`` bool: periodic directions. Default all periodic.
    """

    def __init__(
        self, target: Tensor, batch: Tensor, n_structures: int, cell: Tensor, pbc: Tensor | bool | None = None
    ):
        d = target.shape[1]
        if not isinstance(cell, Tensor):
            try:
                cell = torch.as_tensor(np.asarray(cell, dtype=np.float64))
            except (TypeError, ValueError):
                raise ValueError(
                    f"cell must be a ({d}, {d}) or (B, {d}, {d}) array of lattice vectors (Å), got {cell!r}."
                ) from None
        cell = cell.to(dtype=target.dtype, device=target.device)
        if cell.shape == (d, d):
            cell = cell.expand(n_structures, d, d)
        if cell.shape != (n_structures, d, d):
            raise ValueError(
                f"cell must have shape ({d}, {d}) or (B, {d}, {d}) = ({n_structures}, {d}, {d}), "
                f"got {tuple(cell.shape)}."
            )
        check_finite("cell", cell)
        if pbc is None:
            pbc = True
        if isinstance(pbc, str) or (isinstance(pbc, (list, tuple)) and any(isinstance(p, str) for p in pbc)):
            raise ValueError(f"pbc must be a bool, ({d},) or (B, {d}) booleans (e.g. [True, True, False]), "
                             f"got the string {pbc!r}.")
        try:
            pbc = torch.as_tensor(pbc, dtype=torch.bool, device=target.device).expand(n_structures, d)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(
                f"pbc must be a bool, ({d},) or (B, {d}) = ({n_structures}, {d}) booleans, got {pbc!r}."
            ) from None
        for b in range(n_structures):
            per = pbc[b]
            if per.any() and bool(torch.linalg.matrix_rank(cell[b][per].double()) < int(per.sum())):
                raise ValueError(
                    f"cell of structure {b} is singular along a periodic direction; give independent lattice "
                    "vectors for every periodic direction (or pbc=False there)."
                )
            check_cell_heights(cell[b].detach().cpu().double().numpy(), per.cpu().numpy(),
                               "cell" if n_structures == 1 else f"cell of structure {b}")
        self.cell, self.pbc, self.batch, self.target = cell, pbc, batch, target

    def _shifts(self, points: Tensor, pairs: Tensor, struct: Tensor) -> Tensor:
        """``(E, d)`` Cartesian shifts making each pair's vector its shortest image (per structure)."""
        out = torch.zeros(pairs.shape[1], points.shape[1], dtype=points.dtype, device=points.device)
        pts = points.detach().cpu().double().numpy()
        pr = pairs.cpu().numpy()
        st = struct.cpu().numpy()
        for b in np.unique(st).tolist():
            sel = np.flatnonzero(st == b)
            cell = self.cell[b].detach().cpu().double().numpy()
            atoms = np.unique(pr[:, sel])
            local = edges_within(pr[:, sel], atoms, len(pts))[0].T  # every pair lies inside structure b
            n = minimum_image_shifts(pts[atoms], cell, self.pbc[b].cpu().numpy(), local)
            shifts = torch.as_tensor(n, dtype=points.dtype, device=out.device)
            out[torch.as_tensor(sel, device=out.device)] = shifts @ self.cell[b].detach()
        return out

    def unwrap(self, pred: Tensor) -> Tensor:
        """Move each predicted atom to the image nearest its reference atom (gradient passes unchanged)."""
        n = pred.shape[0]
        idx = torch.arange(n, device=pred.device)
        with torch.no_grad():
            points = torch.cat([self.target, pred.detach()])
            shift = self._shifts(points, torch.stack([idx, idx + n]), self.batch)
        return pred + shift

    def shifts(self, pairs: Tensor) -> Tensor:
        """``(E, d)`` shifts S with ``y_j - y_i + S`` the reference's minimum-image displacement."""
        return self._shifts(self.target, pairs, self.batch[pairs[0]])
