"""Functional losses: the pair energy loss (SPEC §2) and its baselines, in every batch layout.

All losses take a prediction and a target in one of three layouts:

- flat: ``(N_total, d)`` positions plus ``batch`` ``(N_total,)`` (PyG/TorchMD-Net ``batch``,
  SchNetPack ``_idx_m``); no ``batch`` means one structure;
- padded: ``(B, N_max, d)`` plus ``mask`` ``(B, N_max)`` (EDM/JODO style);
- an explicit pair list ``edge_index`` ``(2, E)`` of flat atom indices (pair energy only).

and reduce per structure first. Defaults (the project's choice, see docs/losses.md):
``normalize=True`` divides each structure's value by its atom count (energy per atom, as the
paper's code divides every k by n), and ``reduction="mean"`` averages over structures;
``reduction="sum"`` sums, ``reduction="none"`` returns the ``(B,)`` per-structure values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.alignment import kabsch_align
from energyloss_plugins.coefficients import CoefficientFn, PairContext, resolve_coefficients
from energyloss_plugins.graphs import PairSet, build_pairs
from energyloss_plugins.layouts import FlatBatch, structure_counts, to_flat
from energyloss_plugins.periodic import MinimumImage

REDUCTIONS = ("mean", "sum", "none")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# On CPU at most this many pairs are processed at once, whatever chunk_size: the per-chunk
# temporaries then stay in cache and in the allocator's pool (larger chunks page-fault on every
# call and run up to 2x slower; see benchmarks/loss_cost.py). GPUs use chunk_size as given.
_CPU_MAX_CHUNK = 2**15
# Predicted distances are clamped to this (Å) in the gradient's 1/d only: far below any physical
# distance, and k·(d − d_ref)/1e-12 stays finite in float32 for any realistic spring.
_MIN_DISTANCE = 1e-12


def pair_energy_loss(
    pred: Tensor,
    target: Tensor,
    batch: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    coefficients: str | CoefficientFn | Tensor = "exp",
    coefficient_kwargs: Mapping | None = None,
    graph: str = "complete",
    graph_kwargs: Mapping | None = None,
    edge_index: Tensor | None = None,
    numbers: Tensor | None = None,
    bonds: Tensor | None = None,
    cell: Tensor | None = None,
    pbc: Tensor | bool | None = None,
    reduction: str = "mean",
    normalize: bool = True,
    chunk_size: int = 2**22,
) -> Tensor:
    """Pair energy E(ŷ, y) = Σ_{(i,j)∈G} ½ k_ij(y) (|y_i − y_j| − |ŷ_i − ŷ_j|)² per structure.

    Args:
        pred: predicted positions in Å, ``(N_total, d)`` or ``(B, N_max, d)``, d ∈ {2, 3}.
        target: reference positions, same shape. Constant for gradients, like a label.
        batch: ``(N_total,)`` structure index (flat layout).
        mask: ``(B, N_max)`` bool atom mask (padded layout).
        coefficients: a scheme name (see :mod:`energyloss_plugins.coefficients`), a callable
            ``fn(PairContext, **coefficient_kwargs) -> (E,)``, or with ``edge_index`` a ``(E,)``
            tensor of per-pair springs (e.g. fitted to a Hessian). Springs in eV/Å².
        coefficient_kwargs: parameters of the scheme, e.g. ``{"k0": 1.0, "length_scale": 1.0}``.
        graph: edge set name (``complete``, ``radius``, ``bonds``, ``rigid_sparse``), ignored
            when ``edge_index`` is given.
        graph_kwargs: e.g. ``{"cutoff": 5.0}`` or ``{"seed": 0, "symmetrize": True}``.
        edge_index: explicit ``(2, E)`` unordered pairs (flat atom indices, each pair once).
        numbers: atomic numbers, ``(N_total,)`` or ``(B, N_max)``; needed by element-aware schemes.
        bonds: ``(2, M)`` bonded pairs (flat indices) for ``bond_aware`` and ``graph="bonds"``.
        cell, pbc: periodic cell ``(d, d)`` or ``(B, d, d)`` and periodic directions.
        reduction: ``mean`` | ``sum`` | ``none``.
        normalize: divide each structure's energy by its atom count.
        chunk_size: pairs per chunk; bounds memory for huge structures (on CPU capped at 2^15,
            which is faster there).

    Returns:
        A scalar (or ``(B,)`` for ``reduction="none"``) in eV (eV/atom with ``normalize``).
        Gradients flow to ``pred`` only; they are finite also where two predicted atoms coincide.
        Under float16/bfloat16 autocast the loss computes and returns float32.
    """
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        if pred.dtype in _LOW_PRECISION:
            pred, target = pred.float(), target.float()
        flat = to_flat(pred, target, batch, mask)
        numbers = _flat_atoms_attr(numbers, flat, "numbers")
        mic = MinimumImage(flat.target, flat.batch, flat.n_structures, cell, pbc) if cell is not None else None
        pred_f = mic.unwrap(flat.pred) if mic is not None else flat.pred
        distance_fn = None
        if mic is not None:
            distance_fn = lambda p: (flat.target[p[1]] - flat.target[p[0]] + mic.shifts(p)).norm(dim=-1)  # noqa: E731
        explicit_k = None
        if edge_index is not None:
            _checks.check_edge_index(edge_index, flat.pred.shape[0])
            edge_index = edge_index.long()
            if bool((flat.batch[edge_index[0]] != flat.batch[edge_index[1]]).any()):
                raise ValueError("edge_index pairs atoms of different structures; pairs must lie inside one structure.")
            pairs = PairSet(flat.batch, flat.n_structures, edge_index)
            if isinstance(coefficients, Tensor):
                if coefficients.shape != (edge_index.shape[1],):
                    raise ValueError(f"Per-pair coefficients must have shape (E,) = ({edge_index.shape[1]},), got {tuple(coefficients.shape)}.")
                _checks.check_finite("coefficients", coefficients)
                if bool((coefficients < 0).any()):
                    raise ValueError("Per-pair coefficients must be >= 0 (springs).")
                explicit_k = coefficients.detach().to(flat.pred.dtype)
        else:
            if isinstance(coefficients, Tensor):
                raise ValueError("A tensor of per-pair coefficients needs the matching edge_index= pair list.")
            pairs = build_pairs(graph, flat.target, flat.batch, flat.n_structures, bonds=bonds, numbers=numbers,
                                distance_fn=distance_fn, **dict(graph_kwargs or {}))
        coeff = None if explicit_k is not None else resolve_coefficients(coefficients, coefficient_kwargs)
        energy = _pair_energy(pred_f, flat, pairs, coeff, explicit_k, numbers, bonds, mic, chunk_size)
        return _reduce(energy, flat, reduction, normalize)


def _flat_atoms_attr(values: Tensor | None, flat: FlatBatch, name: str) -> Tensor | None:
    if values is None:
        return None
    values = torch.as_tensor(values, device=flat.pred.device)
    if flat.flat_index is not None and values.dim() == 2:
        values = values.reshape(-1)[flat.flat_index]
    if values.shape != (flat.pred.shape[0],):
        raise ValueError(f"{name} must have one entry per atom ({flat.pred.shape[0]}), got shape {tuple(values.shape)}.")
    return values.long()


def _pair_energy(pred: Tensor, flat: FlatBatch, pairs: PairSet, coeff: Callable[[PairContext], Tensor] | None,
                 explicit_k: Tensor | None, numbers: Tensor | None, bonds: Tensor | None,
                 mic: MinimumImage | None, chunk_size: int) -> Tensor:
    """``(B,)`` pair energies, with the gradient w.r.t. ``pred`` computed in the same chunked pass.

    Computing the gradient analytically while the chunk is in memory keeps peak memory O(N + chunk)
    instead of O(E) for autograd's saved tensors: this is what lets the complete graph of one
    30,000-atom structure (4.5·10^8 pairs) run in a few GB.
    """
    target, batch = flat.target, flat.batch
    need_grad = torch.is_grad_enabled() and pred.requires_grad
    bond_keys = None
    n_atoms = pred.shape[0]
    if bonds is not None:
        _checks.check_edge_index(bonds, n_atoms)
        lo, hi = torch.minimum(bonds[0], bonds[1]), torch.maximum(bonds[0], bonds[1])
        bond_keys = torch.unique(lo * n_atoms + hi)
    with torch.no_grad():
        # Coordinates as rows, (d, N): gathers, norms and scatter-adds along long contiguous rows
        # are several times faster on CPU than on (E, d) rows of 2-3 numbers.
        p_t = pred.detach().t()
        d = p_t.shape[0]
        # Target and prediction stacked, (2d, N): one gather per pair side serves both.
        tp = torch.cat([target.detach().t().to(p_t.dtype), p_t])
        # Pair energies are scattered onto the first atom of the pair and summed per structure at
        # the end: scattering straight onto the few structure slots serialises on repeated indices.
        e_atom = p_t.new_zeros(n_atoms)
        grad_t = torch.zeros(p_t.shape, dtype=p_t.dtype, device=p_t.device) if need_grad else None
        offset = 0
        if pred.device.type == "cpu":
            chunk_size = min(chunk_size, _CPU_MAX_CHUNK)
        # Gather buffers reused by every chunk (fresh large allocations page-fault on CPU).
        work = tp.new_empty(2, tp.shape[0] * min(chunk_size, pairs.count()))
        for chunk in pairs.chunks(chunk_size):
            i, j = chunk[0], chunk[1]
            n_c = i.shape[0]
            if tp.shape[0] * n_c > work.shape[1]:  # one atom's row of pairs may exceed chunk_size
                work = tp.new_empty(2, tp.shape[0] * n_c)
            both = torch.index_select(tp, 1, j, out=work[0, : tp.shape[0] * n_c].view(tp.shape[0], n_c))
            both.sub_(torch.index_select(tp, 1, i, out=work[1, : tp.shape[0] * n_c].view(tp.shape[0], n_c)))
            ref_vec, vec = both[:d], both[d:]
            if mic is not None:
                shift = mic.shifts(chunk).t()
                ref_vec += shift
                vec += shift
            norms = (both * both).view(2, d, n_c).sum(1).sqrt_()
            d_ref, dist = norms[0], norms[1]
            if explicit_k is not None:
                k = explicit_k[offset : offset + i.shape[0]]
            else:
                bonded = None
                if bond_keys is not None:
                    bonded = torch.isin(torch.minimum(i, j) * n_atoms + torch.maximum(i, j), bond_keys)
                ctx = PairContext(d_ref, numbers[i] if numbers is not None else None,
                                  numbers[j] if numbers is not None else None, bonded)
                # Springs too weak to be normal floats (e.g. exp at > 87 Å in float32) are zero: a
                # denormal k would only make every following operation ~10x slower.
                k = torch.nn.functional.threshold(coeff(ctx), torch.finfo(d_ref.dtype).tiny, 0.0)
            offset += i.shape[0]
            diff = dist - d_ref
            kdiff = k * diff
            e_atom.index_add_(0, i, kdiff * diff, alpha=0.5)
            if grad_t is not None:
                # dE/dŷ_j = k (d − d_ref) (ŷ_j − ŷ_i)/d. Coincident atoms (d = 0) have ŷ_j − ŷ_i = 0:
                # with d clamped the quotient stays finite and their gradient is the subgradient 0
                # (one pass, where nan_to_num took three).
                vec *= kdiff.div_(dist.clamp_min_(_MIN_DISTANCE))
                grad_t.index_add_(1, j, vec)
                grad_t.index_add_(1, i, vec.neg_())  # not alpha=-1: a much slower path for 2-D
        energy = e_atom.new_zeros(flat.n_structures).index_add_(0, batch, e_atom)
    if grad_t is None:
        return energy
    return _AttachGradient.apply(pred, energy, grad_t.t(), batch)


class _AttachGradient(torch.autograd.Function):
    """Returns precomputed per-structure energies; backward scales the precomputed gradient.

    Each atom belongs to one structure b, so dL/dŷ_a = (dL/dE_b) · (dE_b/dŷ_a).
    """

    @staticmethod
    def forward(ctx, pred: Tensor, energy: Tensor, grad: Tensor, batch: Tensor) -> Tensor:
        ctx.save_for_backward(grad, batch)
        return energy.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_energy: Tensor):
        grad, batch = ctx.saved_tensors
        return grad * grad_energy[batch].unsqueeze(1), None, None, None


def _reduce(per_structure: Tensor, flat: FlatBatch, reduction: str, normalize: bool) -> Tensor:
    if normalize:
        per_structure = per_structure / structure_counts(flat.batch, flat.n_structures).clamp_min(1).to(per_structure.dtype)
    if reduction == "none":
        return per_structure
    if per_structure.numel() == 0:  # empty batch: 0, still connected to the graph
        return flat.pred.sum() * 0.0
    return per_structure.mean() if reduction == "mean" else per_structure.sum()


def _per_atom_loss(pred: Tensor, target: Tensor, batch: Tensor | None, mask: Tensor | None,
                   reduction: str, normalize: bool, per_atom: Callable[[Tensor, Tensor], Tensor],
                   align: bool = False) -> Tensor:
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    with torch.autocast(device_type=pred.device.type, enabled=False):
        if pred.dtype in _LOW_PRECISION:
            pred, target = pred.float(), target.float()
        flat = to_flat(pred, target, batch, mask)
        p = kabsch_align(flat.pred, flat.target, flat.batch, flat.n_structures) if align else flat.pred
        values = per_atom(p, flat.target.detach())
        per_structure = values.new_zeros(flat.n_structures).index_add_(0, flat.batch, values)
        return _reduce(per_structure, flat, reduction, normalize)


def mse_loss(pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None, *,
             reduction: str = "mean", normalize: bool = True) -> Tensor:
    """Squared displacement Σ_i |ŷ_i − y_i|² per structure (Å²; per atom with ``normalize``).

    Equals ``d`` times the element-wise ``torch.nn.functional.mse_loss`` of a single structure.
    Not invariant to rotations or translations: the baseline the energy loss replaces.
    """
    return _per_atom_loss(pred, target, batch, mask, reduction, normalize, lambda p, t: ((p - t) ** 2).sum(-1))


def mae_loss(pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None, *,
             reduction: str = "mean", normalize: bool = True) -> Tensor:
    """Absolute error Σ_i Σ_c |ŷ_ic − y_ic| per structure (Å; per atom with ``normalize``)."""
    return _per_atom_loss(pred, target, batch, mask, reduction, normalize, lambda p, t: (p - t).abs().sum(-1))


def kabsch_mse_loss(pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None, *,
                    reduction: str = "mean", normalize: bool = True) -> Tensor:
    """MSE after moving each predicted structure onto its target by the optimal proper rigid motion.

    The rotation is computed without gradient (as in the paper); the centring keeps its gradient.
    """
    return _per_atom_loss(pred, target, batch, mask, reduction, normalize,
                          lambda p, t: ((p - t) ** 2).sum(-1), align=True)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "energy": pair_energy_loss,
    "mse": mse_loss,
    "mae": mae_loss,
    "kabsch": kabsch_mse_loss,
}


#: Options every loss takes; the rest (coefficients, graph, numbers, bonds, ...) are the energy's own.
COMMON_OPTIONS = ("reduction", "normalize")


def get_loss(name: str) -> Callable[..., Tensor]:
    """The functional loss called ``name`` (``energy``, ``mse``, ``mae``, ``kabsch``)."""
    _checks.check_choice("loss", name, LOSSES)
    return LOSSES[name]


def loss_options(name: str, options: Mapping) -> dict:
    """``options`` restricted to what loss ``name`` takes, so that one config switches losses with one key."""
    _checks.check_choice("loss", name, LOSSES)
    if name == "energy":
        return dict(options)
    return {key: value for key, value in options.items() if key in COMMON_OPTIONS}


def call_loss(name: str, pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None,
              **options) -> Tensor:
    """Evaluate loss ``name``; energy-only options (numbers, bonds, coefficients, ...) are dropped for baselines."""
    return get_loss(name)(pred, target, batch, mask, **loss_options(name, options))
