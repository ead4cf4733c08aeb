"""Input validation shared by every loss: clear errors that name the problem and the fix."""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor


def check_finite(name: str, x: Tensor) -> None:
    """Raise if ``x`` holds NaN or Inf (a diverged model or a corrupt structure)."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (a shape without values), which cannot be validated; pass "
                         "validate_args=False to trace shapes, or real tensors.")
    if x.numel() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {n_bad} NaN or Inf value(s). Check the data (corrupt or missing "
            f"coordinates) or the model (a diverged step); the loss is only defined for finite positions."
        )


def check_tensor(name: str, x: object) -> None:
    """Raise a TypeError naming ``name`` unless ``x`` is a tensor (call before touching ``x.device``)."""
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(x).__name__}; "
            f"convert it with torch.as_tensor({name}, dtype=torch.float64)."
        )


def check_positions(name: str, x: Tensor, ndim: int) -> None:
    """Check a positions tensor: floating point, ``ndim`` dimensions, last dimension 2 or 3."""
    check_tensor(name, x)
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
        raise ValueError(
            f"batch must be a 1-D integer tensor with one structure index per atom, got {describe(batch)}."
        )
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
        raise ValueError(
            f"mask must be a (B, N_max) tensor matching the positions, expected {shape}, got {describe(mask)}."
        )


def check_edge_index(edge_index: Tensor, n_atoms: int, name: str = "edge_index") -> None:
    """Check a ``(2, E)`` list of atom pairs; ``name`` is the argument named in the messages."""
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{name} must be a (2, E) integer tensor of atom pairs, got {describe(edge_index)}.")
    if edge_index.is_floating_point() or edge_index.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer atom indices, got dtype {edge_index.dtype}.")
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= n_atoms:
            raise ValueError(f"{name} refers to atoms {lo}..{hi} but there are only {n_atoms} atoms (0-based).")
        if bool((edge_index[0] == edge_index[1]).any()):
            raise ValueError(f"{name} contains self-pairs (i, i); a pair needs two distinct atoms.")


def as_pair_index(name: str, pairs: object, n_atoms: int) -> Tensor:
    """``(2, M)`` long pairs from a tensor, array or list in the ``(2, M)`` or ``(M, 2)`` layout.

    ``(M, 2)`` is the layout databases store (``row.data["bonds"]``) and is transposed; a ``(2, 2)``
    input is read as ``(2, M)``. Then checked like :func:`check_edge_index`, naming ``name``.
    """
    if not isinstance(pairs, Tensor):
        try:
            pairs = torch.as_tensor(pairs)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"{name} must be (2, M) or (M, 2) integer atom pairs, got {type(pairs).__name__}."
            ) from None
    if pairs.dim() == 2 and pairs.shape[1] == 2 and pairs.shape[0] != 2:
        pairs = pairs.t()
    if pairs.dim() == 2 and pairs.shape[1] == 0 and pairs.shape[0] == 0:
        pairs = pairs.reshape(2, 0)
    check_edge_index(pairs, n_atoms, name)
    return pairs.long()


def check_number(name: str, value: object, *, low: float | None = None, high: float | None = None,
                 low_inclusive: bool = False, high_inclusive: bool = True, integer: bool = False,
                 allow_inf: bool = False) -> float:
    """Check a numeric option lies in its valid range; returns it as float (or int).

    Raises ``ValueError`` naming ``name``, the valid range and the value (NaN is never valid, +-Inf
    only with ``allow_inf`` and inside the range).
    """
    lo_b = "[" if low_inclusive else "("
    hi_b = "]" if high_inclusive and high is not None else ")"
    rng = f"{lo_b}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi_b}"
    kind = "an integer" if integer else "a number"
    value = as_python_number(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        integer and (value != value or abs(value) == float("inf") or not float(value).is_integer())
    ):
        raise ValueError(f"{name} must be {kind} in {rng}, got {value!r}.")
    v = float(value)
    ok = v == v and (allow_inf or abs(v) != float("inf"))
    if ok and low is not None:
        ok = v >= low if low_inclusive else v > low
    if ok and high is not None:
        ok = v <= high if high_inclusive else v < high
    if not ok:
        raise ValueError(f"{name} must be {kind} in {rng}, got {value!r}.")
    return int(v) if integer else v


def as_python_number(value: object) -> object:
    """A Python int/float for numpy scalars (``np.float32``, ``np.int64``), 0-d arrays and one-element tensors.

    Anything else is returned unchanged (booleans stay booleans, so checks can refuse them).
    """
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    elif isinstance(value, Tensor) and value.numel() == 1 and value.device.type != "meta":
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def check_integers(name: str, values: object, *, low: int | None = None, high: int | None = None) -> Tensor:
    """A 1-D long tensor of ``values`` (list, array or tensor), refusing non-integers instead of truncating them.

    Raises ``ValueError`` naming ``name`` for non-numbers, fractional values (``6.7``), NaN, or values
    outside ``[low, high]``.
    """
    try:
        t = values if isinstance(values, Tensor) else torch.as_tensor(np.asarray(values))
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name} must be a list of integers, got {values!r}.") from None
    t = t.reshape(-1)
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32,
                                                                              torch.int64, torch.uint8)):
        raise ValueError(f"{name} must be integers, got dtype {t.dtype}.")
    if t.is_floating_point():
        bad = ~torch.isfinite(t) | (t != t.round())
        if bool(bad.any()):
            raise ValueError(f"{name} must be whole numbers, got {t[bad][:5].tolist()}; they are not rounded "
                             "or truncated for you.")
    t = t.long()
    if t.numel() and low is not None and int(t.min()) < low:
        raise ValueError(f"{name} must be >= {low}, got {int(t.min())}.")
    if t.numel() and high is not None and int(t.max()) > high:
        raise ValueError(f"{name} must be <= {high}, got {int(t.max())}.")
    return t


#: Heaviest element (oganesson); atomic numbers above it are refused before any lookup table is sized by them.
MAX_ATOMIC_NUMBER = 118
#: Largest atom count per molecule accepted by generation histograms (a table of this size is allocated).
MAX_ATOMS_PER_MOLECULE = 10_000


def check_choice(kind: str, name: str, valid: Iterable[str]) -> None:
    valid = sorted(valid)
    if name not in valid:
        raise ValueError(f"Unknown {kind} {name!r}. Valid names: {', '.join(valid)}.")


def describe(x: object) -> str:
    """Shape and dtype of a tensor, else the type name (for error messages)."""
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__
