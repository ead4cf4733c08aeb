"""Input validation shared by every loss: clear errors that name the problem and the fix."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def check_finite(name: str, x: Tensor) -> None:
    """Raise if ``x`` holds NaN or Inf (a diverged model or a corrupt structure)."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN or Inf value(s). Check the data (corrupt or missing "
            f"coordinates) or the model (a diverged step); the loss is only defined for finite positions."
        )


def check_positions(name: str, x: Tensor, ndim: int) -> None:
    """Check a positions tensor: floating point, ``ndim`` dimensions, last dimension 2 or 3."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; use .float() or .double().")
    if x.dim() != ndim or x.shape[-1] not in (2, 3):
        layout = "(N_total, d)" if ndim == 2 else "(B, N_max, d)"
        raise ValueError(f"{name} must have shape {layout} with d in (2, 3), got {tuple(x.shape)}.")
    check_finite(name, x)


def check_same_shape(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}: "
            f"they must describe the same atoms in the same order."
        )


def check_batch(batch: Tensor, n_atoms: int) -> None:
    """Check a flat-layout structure index (PyG ``batch``, SchNetPack ``_idx_m``)."""
    if not isinstance(batch, Tensor) or batch.dim() != 1:
        raise ValueError(f"batch must be a 1-D integer tensor with one structure index per atom, got {describe(batch)}.")
    if batch.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise ValueError(f"batch must hold integer structure indices, got dtype {batch.dtype}; use batch.long().")
    if batch.shape[0] != n_atoms:
        raise ValueError(
            f"batch has {batch.shape[0]} entries but positions have {n_atoms} atoms: pass one structure "
            f"index per atom (e.g. SchNetPack's inputs['_idx_m'] or PyG's data.batch)."
        )
    if n_atoms and int(batch.min()) < 0:
        raise ValueError("batch holds negative structure indices; indices must be 0, 1, 2, ...")


def check_mask(mask: Tensor, shape: Iterable[int]) -> None:
    shape = tuple(shape)
    if not isinstance(mask, Tensor) or tuple(mask.shape) != shape:
        raise ValueError(f"mask must be a (B, N_max) tensor matching the positions, expected {shape}, got {describe(mask)}.")


def check_edge_index(edge_index: Tensor, n_atoms: int) -> None:
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must be a (2, E) integer tensor of atom pairs, got {describe(edge_index)}.")
    if edge_index.is_floating_point():
        raise ValueError(f"edge_index must hold integer atom indices, got dtype {edge_index.dtype}.")
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= n_atoms:
            raise ValueError(f"edge_index refers to atoms {lo}..{hi} but there are only {n_atoms} atoms.")
        if bool((edge_index[0] == edge_index[1]).any()):
            raise ValueError("edge_index contains self-pairs (i, i); a pair energy needs two distinct atoms.")


def check_choice(kind: str, name: str, valid: Iterable[str]) -> None:
    valid = sorted(valid)
    if name not in valid:
        raise ValueError(f"Unknown {kind} {name!r}. Valid names: {', '.join(valid)}.")


def describe(x: object) -> str:
    """Shape and dtype of a tensor, else the type name (for error messages)."""
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__
