"""The pair energy loss (SPEC §2) in two steps: springs of the reference, then the kernel.

1. :func:`resolve_springs`: the pairs, reference distances and springs of reference structures
   (edge set, rigid-sparse draw, symmetrisation, spring scheme) as a :class:`PairSprings`. They
   depend on the reference only: resolve once per structure and cache;
2. :func:`pair_energy_kernel`: ``(pred, distances, pairs, springs, batch) -> loss``, the only math.
   With ``validate_args=False`` it reads nothing back to the host and compiles with
   ``torch.compile(fullgraph=True)``.

:func:`pair_energy_loss` is the two in one call (resolving on every call, as the paper does).
Layouts, reductions and units: see :mod:`energyloss_plugins.losses`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.coefficients import CoefficientFn, PairContext, resolve_coefficients, scheme_function
from energyloss_plugins.graphs import PairSet, build_pairs
from energyloss_plugins.layouts import FlatBatch, segment_sum, to_flat
from energyloss_plugins.losses._common import LOW_PRECISION, REDUCTIONS, no_autocast, reduce_structures
from energyloss_plugins.periodic import MinimumImage

# On CPU at most this many pairs are processed at once, whatever chunk_size: the per-chunk
# temporaries then stay in cache and in the allocator's pool (larger chunks page-fault on every
# call and run up to 2x slower; see benchmarks/loss_cost.py). GPUs use chunk_size as given.
_CPU_MAX_CHUNK = 2**15
# Predicted distances are clamped to this (Å) in the gradient's 1/d only: far below any physical
# distance, and k·(d − d_ref)/1e-12 stays finite in float32 for any realistic spring.
_MIN_DISTANCE = 1e-12


@dataclass
class PairSprings:
    """Pairs, reference distances and springs of reference structures (flat layout): all the pair
    energy needs from the reference, resolved once (:func:`resolve_springs`) and cacheable.

    Attributes:
        pairs: ``(2, E)`` long flat atom indices; unordered pairs, each once, inside one structure.
        springs: ``(E,)`` spring constants k_ij in eV/Å² (constants: no gradient).
        distances: ``(E,)`` reference distances |y_i − y_j| in Å (minimum image for periodic input).
        batch: ``(N_total,)`` long structure index in ``[0, n_structures)``.
        n_structures: number of structures B.
        shifts: ``(E, d)`` lattice shifts S of periodic pairs (pair vector ŷ_j − ŷ_i + S), else None.
        image: periodic input only: moves each predicted atom to the image nearest its reference atom.
        dim: d of the reference positions (2 or 3), when known: a prediction of another d is refused.
    """

    pairs: Tensor
    springs: Tensor
    distances: Tensor
    batch: Tensor
    n_structures: int
    shifts: Tensor | None = None
    image: MinimumImage | None = None
    dim: int | None = None

    def loss(self, pred: Tensor, *, reduction: str = "mean", normalize: bool = True, chunk_size: int = 2**22,
             validate_args: bool = True) -> Tensor:
        """The pair energy of ``pred`` ``(N_total, d)`` (Å) on these springs: :func:`pair_energy_kernel`."""
        _checks.check_tensor("pred", pred)
        if self.dim is not None and (pred.dim() != 2 or pred.shape[-1] != self.dim):
            raise ValueError(f"pred must have shape (N_total, {self.dim}) like the reference these springs were "
                             f"resolved from, got {tuple(pred.shape)}.")
        if self.image is not None:
            pred = self.image.unwrap(pred)
        return pair_energy_kernel(pred, self.distances, self.pairs, self.springs, self.batch, self.n_structures,
                                  shifts=self.shifts, reduction=reduction, normalize=normalize,
                                  chunk_size=chunk_size, validate_args=validate_args)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PairSprings:
        """A copy on ``device`` with floating-point fields in ``dtype`` (indices stay long)."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"PairSprings.to: dtype must be floating point (springs and distances are real "
                             f"numbers), got {dtype}; indices are long already.")
        if self.image is not None:
            raise ValueError("PairSprings.to: periodic springs keep their cell on the device they were resolved on; "
                             "resolve them on the target device instead.")
        return PairSprings(self.pairs.to(device), self.springs.to(device, dtype), self.distances.to(device, dtype),
                           self.batch.to(device), self.n_structures, dim=self.dim)

    @classmethod
    def collate(cls, items: Sequence[PairSprings]) -> PairSprings:
        """One batch from springs resolved per structure (or per batch), in order: atoms and structures
        of item ``b`` follow those of items ``< b``, as in a collated flat batch. Non-periodic only."""
        if not items:
            raise ValueError("PairSprings.collate needs at least one item.")
        if any(item.image is not None for item in items):
            raise ValueError("PairSprings.collate: periodic springs carry their cells; "
                             "resolve the whole batch at once.")
        atom_offset = struct_offset = 0
        pairs, batch = [], []
        for item in items:
            pairs.append(item.pairs + atom_offset)
            batch.append(item.batch + struct_offset)
            atom_offset += item.batch.shape[0]
            struct_offset += item.n_structures
        dims = {item.dim for item in items} - {None}
        if len(dims) > 1:
            raise ValueError(f"PairSprings.collate: items of different dimensions {sorted(dims)}.")
        return cls(torch.cat(pairs, 1), torch.cat([item.springs for item in items]),
                   torch.cat([item.distances for item in items]), torch.cat(batch), struct_offset,
                   dim=dims.pop() if dims else None)


@dataclass
class _SchemeSprings:
    """Pairs whose springs come from a scheme, evaluated chunk by chunk on the reference: what
    :func:`pair_energy_loss` uses, so that the complete graph of a huge structure is never materialised."""

    pairs: PairSet
    target: Tensor
    coeff: Callable[[PairContext], Tensor]
    numbers: Tensor | None
    bond_keys: Tensor | None
    image: MinimumImage | None
    validate: bool = True

    def springs(self, chunk: Tensor, d_ref: Tensor) -> Tensor:
        i, j = chunk[0], chunk[1]
        if self.validate:
            check_reference_distances(d_ref, chunk)
        bonded = None
        if self.bond_keys is not None:
            n = self.target.shape[0]
            bonded = torch.isin(torch.minimum(i, j) * n + torch.maximum(i, j), self.bond_keys)
        ctx = PairContext(d_ref, self.numbers[i] if self.numbers is not None else None,
                          self.numbers[j] if self.numbers is not None else None, bonded)
        # Springs too weak to be normal floats (e.g. exp at > 87 Å in float32) are zero: a denormal
        # k would only make every following operation ~10x slower.
        return torch.nn.functional.threshold(self.coeff(ctx), torch.finfo(d_ref.dtype).tiny, 0.0)

    def energy(self, pred: Tensor, chunk_size: int) -> Tensor:
        """``(B,)`` pair energies of ``pred`` (already unwrapped for periodic input)."""
        return _pair_energy(pred, self.pairs, chunk_size, target=self.target, spring_fn=self.springs, image=self.image)

    def materialize(self) -> PairSprings:
        pairs, dists, ks, shifts = [], [], [], []
        for chunk in self.pairs.chunks(2**22):
            vec = self.target[chunk[1]] - self.target[chunk[0]]
            if self.image is not None:
                shifts.append(self.image.shifts(chunk))
                vec = vec + shifts[-1]
            d_ref = vec.norm(dim=-1)
            pairs.append(chunk)
            dists.append(d_ref)
            ks.append(self.springs(chunk, d_ref))
        return PairSprings(torch.cat(pairs, 1), torch.cat(ks), torch.cat(dists), self.pairs.batch,
                           self.pairs.n_structures, torch.cat(shifts) if self.image is not None else None, self.image,
                           dim=self.target.shape[1])


def resolve_springs(
    target: Tensor,
    batch: Tensor | None = None,
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
    n_structures: int | None = None,
    validate_args: bool = True,
) -> PairSprings:
    """Step 1 of the pair energy: pairs, reference distances and springs of reference structures.

    Everything here depends on the reference only (edge set, rigid-sparse draw, symmetrisation,
    spring scheme), so it can be done once per structure and cached (e.g. in a dataset transform,
    batches assembled with :meth:`PairSprings.collate`); the loss is then :meth:`PairSprings.loss`.
    The arguments are those of :func:`pair_energy_loss` (flat layout). Unlike that function, the
    complete graph is materialised (E = Σ n(n−1)/2 pairs) and a ``rigid_sparse`` graph is drawn
    once, here, not at every loss call.

    An ``edge_index`` that lists a pair more than once (both (i, j) and (j, i), as the directed edge
    lists of PyG and TorchMD-Net do, or a pair twice) is reduced to unordered pairs, each once;
    per-pair springs given with it must agree on the copies of a pair (else ValueError).
    With ``validate_args=False`` nothing is checked or reduced: the caller guarantees unique pairs.

    Args:
        target: ``(N_total, d)`` reference positions in Å.
        batch: ``(N_total,)`` structure id per atom (None: one structure).
        n_structures: B, if known (see :func:`energyloss_plugins.layouts.structure_index`).

    Returns:
        :class:`PairSprings`, on ``target``'s device and dtype.
    """
    with torch.no_grad():
        flat = to_flat(target, target, batch, None, n_structures, validate_args=validate_args)
        source = _resolve(flat, numbers, coefficients, coefficient_kwargs, graph, graph_kwargs, edge_index, bonds,
                          cell, pbc, validate_args)
        return source if isinstance(source, PairSprings) else source.materialize()


def pair_energy_kernel(
    pred: Tensor,
    distances: Tensor,
    pairs: Tensor,
    springs: Tensor,
    batch: Tensor | None = None,
    n_structures: int | None = None,
    *,
    shifts: Tensor | None = None,
    reduction: str = "mean",
    normalize: bool = True,
    chunk_size: int = 2**22,
    validate_args: bool = True,
) -> Tensor:
    """Step 2 of the pair energy, its only math: E_b = Σ_{(i,j)∈b} ½ k_ij (d_ij − |ŷ_j − ŷ_i + S_ij|)².

    Args:
        pred: ``(N_total, d)`` predicted positions in Å (periodic input: already unwrapped, see
            :meth:`PairSprings.loss`).
        distances: ``(E,)`` reference distances d_ij in Å.
        pairs: ``(2, E)`` flat atom indices, unordered pairs each once (see :func:`resolve_springs`).
        springs: ``(E,)`` k_ij in eV/Å², constants.
        batch: ``(N_total,)`` structure id per atom (None: one structure); ``n_structures``: B.
        shifts: ``(E, d)`` periodic image shifts S_ij, or None.
        reduction, normalize, chunk_size: as in :func:`pair_energy_loss`.
        validate_args: check values (finite positions and springs, pair indices in range, inside
            one structure and unique). Off, and with ``n_structures`` given (or no ``batch``), the
            kernel reads nothing back to the host and compiles with ``torch.compile(fullgraph=True)``.

    Returns:
        As :func:`pair_energy_loss`; the gradient w.r.t. ``pred`` is computed analytically in the
        same chunked pass, and is finite where predicted atoms coincide.
    """
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    _checks.check_tensor("pred", pred)
    chunk_size = _check_chunk_size(chunk_size)
    with no_autocast(pred):
        if pred.dtype in LOW_PRECISION:
            pred = pred.float()
        flat = to_flat(pred, pred, batch, None, n_structures, validate_args=validate_args)
        n_pairs = pairs.shape[1] if isinstance(pairs, Tensor) and pairs.dim() == 2 else -1
        if not isinstance(pairs, Tensor) or pairs.shape[0] != 2 or pairs.is_floating_point():
            raise ValueError(f"pairs must be a (2, E) integer tensor of atom pairs, got {_checks.describe(pairs)}.")
        for name, value, shape in (("distances", distances, (n_pairs,)), ("springs", springs, (n_pairs,)),
                                   ("shifts", shifts, (n_pairs, pred.shape[1]))):
            if value is not None and (not isinstance(value, Tensor) or tuple(value.shape) != shape):
                raise ValueError(f"{name} must have shape {shape}, one entry per pair, got {_checks.describe(value)}.")
        pairs = pairs.long()
        if validate_args:
            _check_pairs("pairs", pairs, flat.batch)
            _check_springs("springs", springs)
            _checks.check_finite("distances", distances)
            if _repeated_pairs(pairs, pred.shape[0]):
                raise ValueError("pairs lists some atom pairs more than once (e.g. both (i, j) and (j, i)); the kernel "
                                 "would count those springs twice. Reduce them with resolve_springs(edge_index=...).")
        energy = _pair_energy(pred, PairSet(flat.batch, flat.n_structures, pairs), chunk_size,
                              distances=distances.detach().to(pred.dtype), springs=springs.detach().to(pred.dtype),
                              shifts=None if shifts is None else shifts.to(pred.dtype))
        return reduce_structures(energy, flat, reduction, normalize)


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
    n_structures: int | None = None,
    validate_args: bool = True,
) -> Tensor:
    """Pair energy E(ŷ, y) = Σ_{(i,j)∈G} ½ k_ij(y) (|y_i − y_j| − |ŷ_i − ŷ_j|)² per structure.

    Resolves the pairs and springs (:func:`resolve_springs`, here chunk by chunk) and evaluates
    the kernel (:func:`pair_energy_kernel`) in one call; ``rigid_sparse`` graphs are redrawn at
    every call (as in the paper).

    Args:
        pred: predicted positions in Å, ``(N_total, d)`` or ``(B, N_max, d)``, d ∈ {2, 3}.
        target: reference positions, same shape. Constant for gradients, like a label.
        batch: ``(N_total,)`` structure id (flat layout). Ids need not be contiguous: the structures
            are the distinct ids, in increasing order (see :func:`~energyloss_plugins.layouts.structure_index`).
        mask: ``(B, N_max)`` bool atom mask (padded layout).
        coefficients: a scheme name (see :mod:`energyloss_plugins.coefficients`), a callable
            ``fn(PairContext, **coefficient_kwargs) -> (E,)``, or with ``edge_index`` a ``(E,)``
            tensor of per-pair springs (e.g. fitted to a Hessian). Springs in eV/Å².
        coefficient_kwargs: parameters of the scheme, e.g. ``{"k0": 1.0, "length_scale": 1.0}``.
        graph: edge set name (``complete``, ``radius``, ``bonds``, ``rigid_sparse``), ignored
            when ``edge_index`` is given.
        graph_kwargs: e.g. ``{"cutoff": 5.0}`` or ``{"seed": 0, "symmetrize": True}``.
        edge_index: explicit ``(2, E)`` pairs (flat atom indices). A directed list (both (i, j) and
            (j, i), as PyG/TorchMD-Net edge lists) or a repeated pair counts each unordered pair once;
            per-pair springs must then agree on the copies of a pair.
        numbers: atomic numbers, ``(N_total,)`` or ``(B, N_max)``; needed by element-aware schemes.
        bonds: ``(2, M)`` bonded pairs (flat indices) for ``bond_aware`` and ``graph="bonds"``.
        cell, pbc: periodic cell ``(d, d)`` or ``(B, d, d)`` and periodic directions.
        reduction: ``mean`` | ``sum`` | ``none``.
        normalize: divide each structure's energy by its atom count.
        chunk_size: pairs per chunk; bounds memory for huge structures (on CPU capped at 2^15,
            which is faster there).
        n_structures: B, if known (flat layout): ids must lie in ``[0, B)``, ids without atoms are
            empty structures, and no host synchronisation is needed to count them.
        validate_args: check values (finite positions and springs, ids and pairs in range, pairs
            inside one structure, repeated pairs). Off, with ``n_structures`` and an ``edge_index``
            (the edge sets by name are built with host synchronisation), the call reads nothing back
            to the host and compiles with ``torch.compile(fullgraph=True)``; the caller then
            guarantees valid input, an ``edge_index`` included (each unordered pair once).

    Returns:
        A scalar (or ``(B,)`` for ``reduction="none"``) in eV (eV/atom with ``normalize``).
        Gradients flow to ``pred`` only; they are finite also where two predicted atoms coincide.
        Under float16/bfloat16 autocast the loss computes and returns float32.
    """
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    _checks.check_tensor("pred", pred)
    _checks.check_tensor("target", target)
    chunk_size = _check_chunk_size(chunk_size)
    with no_autocast(pred):
        if pred.dtype in LOW_PRECISION:
            pred, target = pred.float(), target.float()
        flat = to_flat(pred, target, batch, mask, n_structures, validate_args=validate_args)
        source = _resolve(flat, numbers, coefficients, coefficient_kwargs, graph, graph_kwargs, edge_index, bonds,
                          cell, pbc, validate_args)
        pred_f = source.image.unwrap(flat.pred) if source.image is not None else flat.pred
        if isinstance(source, PairSprings):
            energy = _pair_energy(pred_f, PairSet(flat.batch, flat.n_structures, source.pairs), chunk_size,
                                  distances=source.distances, springs=source.springs, shifts=source.shifts)
        else:
            energy = source.energy(pred_f, chunk_size)
        return reduce_structures(energy, flat, reduction, normalize)


def _resolve(flat: FlatBatch, numbers: Tensor | None, coefficients, coefficient_kwargs: Mapping | None, graph: str,
             graph_kwargs: Mapping | None, edge_index: Tensor | None, bonds: Tensor | None, cell, pbc,
             validate_args: bool) -> PairSprings | _SchemeSprings:
    """Pairs and springs of ``flat.target``: explicit springs resolved, scheme springs left to the chunks."""
    target = flat.target
    numbers = _flat_atoms_attr(numbers, flat, "numbers")
    if bonds is not None:  # (2, M), or (M, 2) as databases store them
        bonds = _checks.as_pair_index("bonds", bonds, target.shape[0]).to(target.device)
    image = MinimumImage(target, flat.batch, flat.n_structures, cell, pbc) if cell is not None else None
    if isinstance(coefficients, (list, tuple)) or type(coefficients).__module__ == "numpy":
        raise ValueError(f"coefficients: per-pair springs must be a torch.Tensor of shape (E,) (one per edge_index "
                         f"pair), got a {type(coefficients).__name__}; use torch.as_tensor(...).")
    if edge_index is not None:
        pairs = _given_pairs(flat, edge_index, coefficients, image, validate_args)
        if isinstance(pairs, PairSprings):
            return pairs
    else:
        if isinstance(coefficients, Tensor):
            raise ValueError("coefficients: a tensor of per-pair springs needs the matching edge_index= pair list.")
        distance_fn = None
        if image is not None:
            def distance_fn(p: Tensor) -> Tensor:
                return (target[p[1]] - target[p[0]] + image.shifts(p)).norm(dim=-1)
        pairs = build_pairs(graph, target, flat.batch, flat.n_structures, bonds=bonds, numbers=numbers,
                            distance_fn=distance_fn, **dict(graph_kwargs or {}))
    bond_keys = None
    if bonds is not None:
        lo, hi = torch.minimum(bonds[0], bonds[1]), torch.maximum(bonds[0], bonds[1])
        bond_keys = torch.unique(lo * target.shape[0] + hi)
    coeff = _coefficient_function(coefficients, coefficient_kwargs, validate_args)
    return _SchemeSprings(pairs, target, coeff, numbers, bond_keys, image, validate_args)


def _given_pairs(flat: FlatBatch, edge_index: Tensor, coefficients, image: MinimumImage | None,
                 validate_args: bool) -> PairSprings | PairSet:
    """The caller's ``edge_index`` ``(2, E)``: with per-pair springs ``coefficients`` ``(E,)`` (eV/Å²) the
    resolved :class:`PairSprings`, else the pairs that a coefficient scheme will weigh."""
    target, batch, n_structures = flat.target, flat.batch, flat.n_structures
    if validate_args:
        _check_pairs("edge_index", edge_index, batch)
    elif not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must be a (2, E) integer tensor of atom pairs, "
                         f"got {_checks.describe(edge_index)}.")
    edge_index = edge_index.long()
    k = None
    if isinstance(coefficients, Tensor):
        if coefficients.shape != (edge_index.shape[1],):
            raise ValueError(f"coefficients: per-pair springs must have shape (E,) = ({edge_index.shape[1]},), "
                             f"one per edge_index pair, got {tuple(coefficients.shape)}.")
        if validate_args:
            _check_springs("coefficients", coefficients)
        k = coefficients.detach().to(target.dtype)
    if validate_args:
        edge_index, k = _unordered_once(edge_index, k, target.shape[0])
    if k is None:
        return PairSet(batch, n_structures, edge_index)
    shifts = image.shifts(edge_index) if image is not None else None
    vec = target[edge_index[1]] - target[edge_index[0]]
    distances = (vec if shifts is None else vec + shifts).norm(dim=-1)
    if validate_args:
        check_reference_distances(distances, edge_index)
    return PairSprings(edge_index, k, distances, batch, n_structures, shifts, image, dim=target.shape[1])


def _coefficient_function(coefficients, coefficient_kwargs: Mapping | None,
                          validate_args: bool) -> Callable[[PairContext], Tensor]:
    """``ctx -> (E,)`` springs of a coefficient scheme; checked once with ``validate_args`` (else no checks)."""
    if validate_args:
        return resolve_coefficients(coefficients, coefficient_kwargs)
    fn, params = scheme_function(coefficients), dict(coefficient_kwargs or {})

    def coeff(ctx: PairContext) -> Tensor:
        return fn(ctx, **params)

    return coeff


#: Reference atoms closer than this (Å) are taken for a duplicated atom: springs such as 1/r² would be
#: astronomically large (1e6 to 1e88) and the loss meaningless.
MIN_REFERENCE_DISTANCE = 1e-3


def check_reference_distances(d_ref: Tensor, pairs: Tensor) -> None:
    """ValueError naming the first pair of coincident reference atoms (``d_ref`` ``(E,)`` Å of ``pairs`` ``(2, E)``)."""
    close = d_ref < MIN_REFERENCE_DISTANCE
    if d_ref.numel() and bool(close.any()):
        first = int(close.to(torch.uint8).argmax())
        i, j = int(pairs[0, first]), int(pairs[1, first])
        raise ValueError(f"target: reference atoms {i} and {j} coincide (distance {float(d_ref[first]):.2e} Å < "
                         f"{MIN_REFERENCE_DISTANCE} Å); the springs between them would be meaningless. Remove the "
                         "duplicated atom from the reference structure.")


def _check_chunk_size(chunk_size: object) -> int:
    return _checks.check_number("chunk_size", chunk_size, low=1, low_inclusive=True, integer=True)


def _check_pairs(name: str, pairs: Tensor, batch: Tensor) -> None:
    """Pair indices in range, no self-pairs, both atoms in one structure (reads back to the host)."""
    _checks.check_edge_index(pairs, batch.shape[0], name)
    pairs = pairs.long()
    if pairs.numel() and bool((batch[pairs[0]] != batch[pairs[1]]).any()):
        raise ValueError(f"{name} pairs atoms of different structures; pairs must lie inside one structure.")


def _check_springs(name: str, k: Tensor) -> None:
    _checks.check_finite(name, k)
    if k.numel() and bool((k < 0).any()):
        raise ValueError(f"{name}: per-pair springs must be >= 0 (eV/Å²), got a minimum of {float(k.min()):.3g}.")


def _repeated_pairs(pairs: Tensor, n_atoms: int) -> bool:
    key = torch.minimum(pairs[0], pairs[1]) * n_atoms + torch.maximum(pairs[0], pairs[1])
    return bool(torch.unique(key).numel() < key.numel())


def _unordered_once(edge_index: Tensor, k: Tensor | None, n_atoms: int) -> tuple[Tensor, Tensor | None]:
    """``edge_index`` with each unordered pair once (the input itself when it already is).

    A directed list (both (i, j) and (j, i)) or a repeated pair would count a spring twice; the copies
    are merged, and per-pair springs ``k`` must agree on them (a directed list of one undirected
    spring set), else it is unclear which spring was meant.
    """
    key = torch.minimum(edge_index[0], edge_index[1]) * n_atoms + torch.maximum(edge_index[0], edge_index[1])
    unique, inverse = torch.unique(key, return_inverse=True)
    if unique.numel() == key.numel():
        return edge_index, k
    pairs = torch.stack([torch.div(unique, n_atoms, rounding_mode="floor"), unique % n_atoms])
    if k is None:
        return pairs, None
    k_max = k.new_full(unique.shape, -torch.inf).scatter_reduce_(0, inverse, k, "amax")
    k_min = k.new_full(unique.shape, torch.inf).scatter_reduce_(0, inverse, k, "amin")
    if not torch.allclose(k_min, k_max, rtol=1e-6, atol=0.0):
        raise ValueError("coefficients: edge_index lists some pairs more than once (both (i, j) and (j, i), "
                         "as directed PyG/TorchMD-Net edge lists do, or a pair twice) with different springs; "
                         "each unordered pair "
                         "has one spring. Give each pair once, or the same spring on every copy.")
    return pairs, k_max




def _flat_atoms_attr(values: Tensor | None, flat: FlatBatch, name: str) -> Tensor | None:
    if values is None:
        return None
    values = torch.as_tensor(values, device=flat.pred.device)
    if flat.flat_index is not None and values.dim() == 2:
        values = values.reshape(-1)[flat.flat_index]
    if values.shape != (flat.pred.shape[0],):
        raise ValueError(f"{name} must have one entry per atom ({flat.pred.shape[0]}), "
                         f"got shape {tuple(values.shape)}.")
    if values.is_floating_point() or values.dtype == torch.bool:  # 6.7 is not carbon: refuse, never truncate
        return _checks.check_integers(name, values, low=1, high=_checks.MAX_ATOMIC_NUMBER)
    return values.long()


def _pair_energy(pred: Tensor, pairs: PairSet, chunk_size: int, *, target: Tensor | None = None,
                 distances: Tensor | None = None, springs: Tensor | None = None,
                 spring_fn: Callable[[Tensor, Tensor], Tensor] | None = None, shifts: Tensor | None = None,
                 image: MinimumImage | None = None) -> Tensor:
    """``(B,)`` pair energies, with the gradient w.r.t. ``pred`` computed in the same chunked pass.

    Reference distances come from ``distances`` ``(E,)`` or, per chunk, from ``target``; springs
    from ``springs`` ``(E,)`` or ``spring_fn(chunk, d_ref)``; periodic shifts from ``shifts``
    ``(E, d)`` or ``image``. Computing the gradient analytically while the chunk is in memory
    keeps peak memory O(N + chunk) instead of O(E) for autograd's saved tensors: this is what lets
    the complete graph of one 30,000-atom structure (4.5·10^8 pairs) run in a few GB.
    """
    batch = pairs.batch
    need_grad = torch.is_grad_enabled() and pred.requires_grad
    n_atoms = pred.shape[0]
    with torch.no_grad():
        # Coordinates as rows, (d, N): gathers, norms and scatter-adds along long contiguous rows
        # are several times faster on CPU than on (E, d) rows of 2-3 numbers.
        p_t = pred.detach().t()
        d = p_t.shape[0]
        # With the target, target and prediction stacked, (2d, N): one gather per pair side serves both.
        rows = p_t if target is None else torch.cat([target.detach().t().to(p_t.dtype), p_t])
        n_rows = rows.shape[0]
        # Pair energies are scattered onto the first atom of the pair and summed per structure at
        # the end: scattering straight onto the few structure slots serialises on repeated indices.
        e_atom = p_t.new_zeros(n_atoms)
        grad_t = torch.zeros(p_t.shape, dtype=p_t.dtype, device=p_t.device) if need_grad else None
        offset = 0
        if pred.device.type == "cpu":
            chunk_size = min(chunk_size, _CPU_MAX_CHUNK)
        # Gather buffers reused by every chunk (fresh large allocations page-fault on CPU).
        work = rows.new_empty(2, n_rows * min(chunk_size, pairs.count()))
        for chunk in pairs.chunks(chunk_size):
            i, j = chunk[0], chunk[1]
            n_c = i.shape[0]
            size = n_rows * n_c
            if size > work.shape[1]:  # one atom's row of pairs may exceed chunk_size
                work = rows.new_empty(2, size)
            both = torch.index_select(rows, 1, j, out=work[0, :size].view(n_rows, n_c))
            both.sub_(torch.index_select(rows, 1, i, out=work[1, :size].view(n_rows, n_c)))
            if shifts is not None or image is not None:
                shift = shifts[offset : offset + n_c] if shifts is not None else image.shifts(chunk)
                both.view(n_rows // d, d, n_c).add_(shift.t().to(both.dtype))
            norms = (both * both).view(n_rows // d, d, n_c).sum(1).sqrt_()
            dist = norms[-1]
            d_ref = norms[0] if target is not None else distances[offset : offset + n_c]
            k = springs[offset : offset + n_c] if springs is not None else spring_fn(chunk, d_ref)
            offset += n_c
            diff = dist - d_ref
            kdiff = k * diff
            e_atom.index_add_(0, i, kdiff * diff, alpha=0.5)
            if grad_t is not None:
                # dE/dŷ_j = k (d − d_ref) (ŷ_j − ŷ_i)/d. Coincident atoms (d = 0) have ŷ_j − ŷ_i = 0:
                # with d clamped the quotient stays finite and their gradient is the subgradient 0
                # (one pass, where nan_to_num took three).
                vec = both[n_rows - d :]
                vec *= kdiff.div_(dist.clamp_min_(_MIN_DISTANCE))
                grad_t.index_add_(1, j, vec)
                grad_t.index_add_(1, i, vec.neg_())  # not alpha=-1: a much slower path for 2-D
        energy = segment_sum(e_atom, batch, pairs.n_structures)
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
    def backward(ctx, grad_energy: Tensor):
        if torch.is_grad_enabled():  # create_graph=True: the precomputed gradient has no graph of its own
            raise NotImplementedError(
                "The pair energy loss computes its gradient analytically and has no second derivative through "
                "autograd (create_graph=True, torch.autograd.functional.hessian): it would be silently zero. "
                "For a Hessian of the surrogate energy use energyloss_plugins.ase.EnergyLossCalculator.get_hessian().")
        grad, batch = ctx.saved_tensors
        return grad * grad_energy[batch].unsqueeze(1), None, None, None
