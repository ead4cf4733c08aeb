"""Batch layouts: flat (PyG/TorchMD-Net ``batch``, SchNetPack ``_idx_m``), padded (EDM/JODO) and pair lists.

Every loss works internally on the flat layout: positions ``(N_total, d)`` and a structure index
``batch`` ``(N_total,)``. Padded inputs ``(B, N_max, d)`` with an atom mask ``(B, N_max)`` are
flattened first; structure ``b`` of the padded batch keeps index ``b`` (also when it has no atoms).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from energyloss_plugins import _checks


@dataclass
class FlatBatch:
    """Prediction and target in the flat layout.

    Attributes:
        pred, target: ``(N_total, d)`` positions in Å.
        batch: ``(N_total,)`` long structure index per atom.
        n_structures: number of structures B (structures may have zero atoms).
        flat_index: for padded input, ``(N_total,)`` index of each atom in ``pred.reshape(-1, d)``; else None.
    """

    pred: Tensor
    target: Tensor
    batch: Tensor
    n_structures: int
    flat_index: Tensor | None = None

    @property
    def counts(self) -> Tensor:
        """``(B,)`` number of atoms per structure."""
        return structure_counts(self.batch, self.n_structures)


def structure_counts(batch: Tensor, n_structures: int) -> Tensor:
    """``(B,)`` atom count per structure from a flat structure index."""
    return torch.bincount(batch, minlength=n_structures)[:n_structures]


def padded_to_flat(x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten padded positions.

    Args:
        x: ``(B, N_max, d)``.
        mask: ``(B, N_max)`` bool, True for real atoms; None means every slot is an atom.

    Returns:
        ``(x_flat (N_total, d), batch (N_total,), flat_index (N_total,))``.
    """
    B, n_max, d = x.shape
    if mask is None:
        mask = torch.ones(B, n_max, dtype=torch.bool, device=x.device)
    flat_index = torch.nonzero(mask.reshape(-1), as_tuple=False).squeeze(1)
    batch = torch.div(flat_index, max(n_max, 1), rounding_mode="floor")
    return x.reshape(-1, d)[flat_index], batch, flat_index


def to_flat(pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None) -> FlatBatch:
    """Validate a prediction/target pair in any layout and return it in the flat layout.

    Args:
        pred, target: ``(N_total, d)`` (flat; ``batch`` optional, default one structure) or
            ``(B, N_max, d)`` (padded; ``mask`` optional, default no padding).
        batch: ``(N_total,)`` structure index, flat layout only.
        mask: ``(B, N_max)`` atom mask, padded layout only.
    """
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise TypeError("pred and target must be torch.Tensors of positions.")
    _checks.check_same_shape(pred, target)
    if pred.dim() == 3:
        if batch is not None:
            raise ValueError("batch is for the flat (N_total, d) layout; padded (B, N_max, d) input takes mask=.")
        if mask is not None:
            _checks.check_mask(mask, pred.shape[:2])
            mask = mask.bool()
        _checks.check_positions("pred", pred if mask is None else pred[mask], pred.dim() if mask is None else 2)
        _checks.check_positions("target", target if mask is None else target[mask], target.dim() if mask is None else 2)
        p, b, idx = padded_to_flat(pred, mask)
        t, _, _ = padded_to_flat(target, mask)
        return FlatBatch(p, t, b, pred.shape[0], idx)
    if mask is not None:
        raise ValueError("mask is for the padded (B, N_max, d) layout; flat (N_total, d) input takes batch=.")
    _checks.check_positions("pred", pred, 2)
    _checks.check_positions("target", target, 2)
    n = pred.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=pred.device)
        n_structures = 1 if n else 0
    else:
        _checks.check_batch(batch, n)
        batch = batch.long()
        n_structures = int(batch.max()) + 1 if n else 0
    return FlatBatch(pred, target, batch, n_structures)


def segment_mean(x: Tensor, batch: Tensor, n_structures: int) -> Tensor:
    """``(B, *x.shape[1:])`` mean of ``x`` over the atoms of each structure (0 for empty structures)."""
    out = x.new_zeros((n_structures, *x.shape[1:])).index_add_(0, batch, x)
    counts = structure_counts(batch, n_structures).clamp_min(1).to(x.dtype)
    return out / counts.view(-1, *([1] * (x.dim() - 1)))



def flat_numbers(numbers_list, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Flat batch of molecules given by their atomic numbers (one sequence, array or tensor per molecule).

    Returns:
        ``numbers`` ``(N_total,)`` long, ``batch`` ``(N_total,)`` long structure index, ``counts`` ``(B,)`` atoms per molecule.

    Raises:
        ValueError: no molecules, or a molecule without atoms.
    """
    parts = [torch.as_tensor(z, dtype=torch.long).reshape(-1) for z in numbers_list]
    if not parts:
        raise ValueError("No molecules given: pass at least one sequence of atomic numbers.")
    counts = torch.tensor([len(z) for z in parts], dtype=torch.long)
    if bool((counts == 0).any()):
        raise ValueError(f"Molecule(s) {torch.nonzero(counts == 0).flatten().tolist()} have no atoms.")
    batch = torch.repeat_interleave(torch.arange(len(parts)), counts)
    return torch.cat(parts).to(device), batch.to(device), counts.to(device)
