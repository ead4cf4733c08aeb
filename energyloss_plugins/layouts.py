"""Batch layouts: flat (PyG/TorchMD-Net ``batch``, SchNetPack ``_idx_m``), padded (EDM/JODO) and pair lists.

Every loss works internally on the flat layout: positions ``(N_total, d)`` and a structure index
``batch`` ``(N_total,)``. Padded inputs ``(B, N_max, d)`` with an atom mask ``(B, N_max)`` are
flattened first; structure ``b`` of the padded batch keeps index ``b`` (also when it has no atoms).

Structure ids of a flat ``batch`` (:func:`structure_index`): without ``n_structures`` the structures
are the *distinct* ids, in increasing order (``[0, 0, 0, 3, 3]`` is two structures, not four: ids need
not be contiguous, and nothing is allocated in proportion to the largest id). With ``n_structures``
the ids must lie in ``[0, n_structures)`` and an id without atoms is an empty structure (value 0);
that path reads nothing back to the host, the one a compiled training step takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from energyloss_plugins import _checks


@dataclass
class FlatBatch:
    """Prediction and target in the flat layout.

    Attributes:
        pred, target: ``(N_total, d)`` positions in Å.
        batch: ``(N_total,)`` long structure index per atom, in ``[0, n_structures)``.
        n_structures: number of structures B (structures may have zero atoms).
        flat_index: for padded input, ``(N_total,)`` index of each atom in ``pred.reshape(-1, d)``; else None.
    """

    pred: Tensor
    target: Tensor
    batch: Tensor
    n_structures: int
    flat_index: Tensor | None = None


def structure_counts(batch: Tensor, n_structures: int) -> Tensor:
    """``(B,)`` atom count per structure from a structure index in ``[0, B)`` (no host synchronisation)."""
    return torch.zeros(n_structures, dtype=torch.long, device=batch.device).index_add_(
        0, batch, torch.ones_like(batch, dtype=torch.long))


def batch_from_counts(counts: Tensor) -> Tensor:
    """``(N_total,)`` long structure index of consecutive structures with ``counts`` ``(B,)`` atoms each
    (on ``counts``' device; the inverse of :func:`structure_counts` for a sorted batch)."""
    return torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)


def first_atoms(counts: Tensor) -> Tensor:
    """``(B,)`` flat index of each structure's first atom in a sorted batch with ``counts`` ``(B,)`` atoms each
    (no host synchronisation)."""
    return torch.cumsum(counts, 0) - counts


def structure_index(batch: Tensor, n_structures: int | None = None, *,
                    validate_args: bool = True) -> tuple[Tensor, int]:
    """A flat structure index as ``(batch (N,) long in [0, B), B)``.

    Args:
        batch: ``(N,)`` integer structure id per atom (any order).
        n_structures: B, if known. Then ids must lie in ``[0, B)`` (checked with ``validate_args``;
            the only check that reads back to the host), ids without atoms are empty structures, and
            ``batch`` is returned as is. If None, the structures are the distinct ids in increasing
            order, renumbered ``0..B-1`` (one ``torch.unique``: O(N), whatever the ids' values).
        validate_args: check the range when ``n_structures`` is given.
    """
    batch = batch.long()
    if n_structures is not None:
        if validate_args and batch.numel():
            lo, hi = batch.aminmax()
            if int(lo) < 0 or int(hi) >= n_structures:
                raise ValueError(f"batch holds structure ids {int(lo)}..{int(hi)}, outside [0, n_structures) = "
                                 f"[0, {n_structures}); pass the right n_structures or none to count the distinct ids.")
        return batch, int(n_structures)
    if batch.numel() == 0:
        return batch, 0
    lo, hi = (int(v) for v in batch.aminmax())
    if lo >= 0 and hi < batch.shape[0]:  # ids 0..hi may all be present (N atoms hold at most N ids): check, O(N)
        present = torch.zeros(hi + 1, dtype=torch.bool, device=batch.device).index_fill_(0, batch, True)
        if bool(present.all()):  # already 0..B-1: keep the caller's tensor (the usual case; 2x faster than unique)
            return batch, hi + 1
    ids, inverse = torch.unique(batch, return_inverse=True)
    return inverse, ids.shape[0]


def checked_structure_index(batch: Tensor | None, n_atoms: int, device: torch.device,
                            n_structures: int | None = None) -> tuple[Tensor, int]:
    """A caller's optional ``batch`` checked (one integer id per atom) and passed to :func:`structure_index`.

    None puts all ``n_atoms`` atoms (on ``device``) in one structure. Evaluation-side (metrics): the
    check and, without ``n_structures``, the distinct ids read back to the host.
    """
    if batch is None:
        batch = torch.zeros(n_atoms, dtype=torch.long, device=device)
    else:
        _checks.check_batch(batch, n_atoms)
    return structure_index(batch, n_structures)


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
        batch = torch.arange(B, device=x.device).repeat_interleave(n_max)
        return x.reshape(-1, d), batch, torch.arange(B * n_max, device=x.device)
    flat_index = torch.nonzero(mask.reshape(-1), as_tuple=False).squeeze(1)
    batch = torch.div(flat_index, max(n_max, 1), rounding_mode="floor")
    return x.reshape(-1, d)[flat_index], batch, flat_index


def to_flat(pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None,
            n_structures: int | None = None, *, validate_args: bool = True) -> FlatBatch:
    """Validate a prediction/target pair in any layout and return it in the flat layout.

    Args:
        pred, target: ``(N_total, d)`` (flat; ``batch`` optional, default one structure) or
            ``(B, N_max, d)`` (padded; ``mask`` optional, default no padding).
        batch: ``(N_total,)`` structure id per atom, flat layout only (see :func:`structure_index`).
        mask: ``(B, N_max)`` atom mask, padded layout only.
        n_structures: B for the flat layout, if known (see :func:`structure_index`).
        validate_args: check values (finite positions, id range); the shapes are always checked.
            Off, the flat layout with ``n_structures`` (or without ``batch``) makes no host
            synchronisation; a padded ``mask`` always does (``nonzero``).
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
        if validate_args:
            for name, x in (("pred", pred), ("target", target)):
                _checks.check_positions(name, x if mask is None else x[mask], x.dim() if mask is None else 2)
        else:
            _check_shape(pred, 3)
        p, b, idx = padded_to_flat(pred, mask)
        t, _, _ = padded_to_flat(target, mask)
        return FlatBatch(p, t, b, pred.shape[0], idx)
    if mask is not None:
        raise ValueError("mask is for the padded (B, N_max, d) layout; flat (N_total, d) input takes batch=.")
    if validate_args:
        _checks.check_positions("pred", pred, 2)
        _checks.check_positions("target", target, 2)
    else:
        _check_shape(pred, 2)
    n = pred.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=pred.device)
        n_structures = (1 if n else 0) if n_structures is None else n_structures
        return FlatBatch(pred, target, batch, n_structures)
    if validate_args:
        _checks.check_batch(batch, n)
    elif not isinstance(batch, Tensor) or batch.shape != (n,) or batch.is_floating_point():
        raise ValueError(f"batch must be an integer tensor of shape ({n},), got {_checks.describe(batch)}.")
    batch, n_structures = structure_index(batch, n_structures, validate_args=validate_args)
    return FlatBatch(pred, target, batch, n_structures)


def _check_shape(x: Tensor, ndim: int) -> None:
    """Shape and dtype only (no value checks, no host synchronisation)."""
    if not x.is_floating_point() or x.dim() != ndim or x.shape[-1] not in (2, 3):
        layout = "(N_total, d)" if ndim == 2 else "(B, N_max, d)"
        raise ValueError(f"pred and target must be floating-point {layout} with d in (2, 3), "
                         f"got {_checks.describe(x)}.")


def segment_sum(x: Tensor, batch: Tensor, n_structures: int) -> Tensor:
    """``(B, *x.shape[1:])`` sum of ``x`` ``(M, ...)`` over the rows each structure owns (``batch`` ``(M,)`` in
    ``[0, B)``; no host synchronisation)."""
    return x.new_zeros((n_structures, *x.shape[1:])).index_add_(0, batch, x)


def segment_mean(x: Tensor, batch: Tensor, n_structures: int, empty: float = 0.0) -> Tensor:
    """``(B, *x.shape[1:])`` mean of ``x`` over the atoms (or pairs, angles, ...) of each structure.

    Args:
        x: ``(M, ...)`` values; ``batch``: ``(M,)`` owning structure in ``[0, B)``.
        empty: the value of a structure that owns nothing (0 for centring, NaN for metrics).
    """
    total = segment_sum(x, batch, n_structures)
    counts = structure_counts(batch, n_structures).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    mean = total / counts.clamp_min(1)
    return mean if empty == 0.0 else torch.where(counts > 0, mean, torch.full_like(mean, empty))


def flat_numbers(numbers_list, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Flat batch of molecules given by their atomic numbers (one sequence, array or tensor per molecule).

    Returns:
        ``numbers`` ``(N_total,)`` long, ``batch`` ``(N_total,)`` long structure index,
        ``counts`` ``(B,)`` atoms per molecule.

    Raises:
        ValueError: no molecules, or a molecule without atoms.
    """
    parts = [torch.as_tensor(z, dtype=torch.long).reshape(-1) for z in numbers_list]
    if not parts:
        raise ValueError("No molecules given: pass at least one sequence of atomic numbers.")
    counts = torch.tensor([len(z) for z in parts], dtype=torch.long)
    if bool((counts == 0).any()):
        raise ValueError(f"Molecule(s) {torch.nonzero(counts == 0).flatten().tolist()} have no atoms.")
    return torch.cat(parts).to(device), batch_from_counts(counts).to(device), counts.to(device)


def flat_molecules(molecules: Sequence[Any], dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
    """``numbers`` ``(N,)`` long, ``positions`` ``(N, 3)`` Å, ``batch`` ``(N,)`` of a list of molecules
    (``ase.Atoms`` or anything with ``numbers`` and ``positions``).

    Raises:
        ValueError: the list is empty or a molecule has no atoms.
    """
    numbers, batch, _ = flat_numbers([np.asarray(m.numbers) for m in molecules])
    positions = torch.as_tensor(np.concatenate([np.asarray(m.positions, dtype=np.float64) for m in molecules]),
                                dtype=dtype)
    return numbers, positions, batch
