"""Periodic structures: minimum-image shifts taken from the reference (SPEC §2, beyond the paper).

Each predicted atom is first moved to the periodic image nearest its reference atom (so a wrapped
prediction equals the unwrapped one), then every pair uses the image shift of the reference's
minimum-image displacement for both structures. Shifts are integer lattice vectors: constants.
"""

from __future__ import annotations

import torch
from torch import Tensor


class MinimumImage:
    """Minimum-image convention of a flat batch.

    Args:
        target: ``(N_total, d)`` reference positions (Å).
        batch: ``(N_total,)`` structure index.
        n_structures: B.
        cell: ``(d, d)`` (one cell for all) or ``(B, d, d)``; rows are the lattice vectors (ASE convention).
        pbc: bool, ``(d,)`` or ``(B, d)`` bool: periodic directions. Default all periodic.
    """

    def __init__(self, target: Tensor, batch: Tensor, n_structures: int, cell: Tensor, pbc: Tensor | bool | None = None):
        d = target.shape[1]
        cell = torch.as_tensor(cell, dtype=target.dtype, device=target.device)
        if cell.shape == (d, d):
            cell = cell.expand(n_structures, d, d)
        if cell.shape != (n_structures, d, d):
            raise ValueError(f"cell must have shape ({d}, {d}) or (B, {d}, {d}) = ({n_structures}, {d}, {d}), got {tuple(cell.shape)}.")
        if pbc is None:
            pbc = True
        pbc = torch.as_tensor(pbc, dtype=torch.bool, device=target.device).expand(n_structures, d)
        periodic = pbc.any(dim=0)
        if bool((torch.linalg.det(cell[:, periodic][:, :, periodic]).abs() < 1e-12).any()) if periodic.any() else False:
            raise ValueError("cell is singular along a periodic direction; give three independent lattice vectors.")
        self.cell, self.pbc, self.batch, self.target = cell, pbc, batch, target
        # Non-periodic directions get a unit placeholder so the inverse exists; their shifts are masked to 0.
        safe = torch.where(pbc.unsqueeze(2) | pbc.unsqueeze(1), cell, torch.eye(d, dtype=cell.dtype, device=cell.device))
        self.inv_cell = torch.linalg.inv(safe)

    def _lattice_round(self, vec: Tensor, struct: Tensor) -> Tensor:
        """Integer lattice vector nearest to ``vec`` (periodic directions only), ``(E, d)``."""
        frac = torch.einsum("ed,edk->ek", vec, self.inv_cell[struct])
        n = torch.round(frac) * self.pbc[struct]
        return torch.einsum("ek,ekd->ed", n, self.cell[struct])

    def unwrap(self, pred: Tensor) -> Tensor:
        """Move each predicted atom to the image nearest its reference atom (gradient passes unchanged)."""
        with torch.no_grad():
            shift = self._lattice_round(pred - self.target, self.batch)
        return pred - shift

    def shifts(self, pairs: Tensor) -> Tensor:
        """``(E, d)`` shifts S with ``y_j - y_i + S`` the reference's minimum-image displacement."""
        vec = self.target[pairs[1]] - self.target[pairs[0]]
        return -self._lattice_round(vec, self.batch[pairs[0]])
