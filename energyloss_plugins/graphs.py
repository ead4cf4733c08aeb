"""Edge sets G of the pair energy, selected by name (SPEC §2).

A :class:`PairSet` holds the unordered atom pairs (i < j, each once) of a flat batch. The complete
graph is generated lazily in chunks, so one structure of 30,000 atoms (4.5·10^8 pairs) never
materialises its pair list; the other edge sets are explicit ``(2, E)`` index tensors.

Names: ``complete``, ``radius`` (cutoff on the reference), ``bonds`` (a given bond list) and
``rigid_sparse`` (a random 2d-regular graph per structure, globally rigid; complete graph for
n ≤ 2d, where no 2d-regular graph exists and the complete graph is as cheap).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.layouts import first_atoms, structure_counts

GRAPH_NAMES = ("complete", "radius", "bonds", "rigid_sparse")


@dataclass
class PairSet:
    """Unordered pairs of atoms of a flat batch.

    Either ``index`` is an explicit ``(2, E)`` tensor, or it is None and the set is the complete
    graph of each structure of ``batch``, generated on demand.
    """

    batch: Tensor
    n_structures: int
    index: Tensor | None = None

    def chunks(self, max_pairs: int) -> Iterator[Tensor]:
        """Yield ``(2, E_c)`` pair chunks with ``E_c ≤ max_pairs`` (one whole row of a structure may exceed it)."""
        if self.index is not None:
            for start in range(0, self.index.shape[1], max_pairs):
                yield self.index[:, start : start + max_pairs]
            return
        yield from _complete_chunks(self.batch, self.n_structures, max_pairs)

    def count(self) -> int:
        """Number of pairs E."""
        if self.index is not None:
            return int(self.index.shape[1])
        counts = structure_counts(self.batch, self.n_structures)
        return int((counts * (counts - 1) // 2).sum())

    def materialize(self) -> Tensor:
        """The whole ``(2, E)`` pair list (use only when E fits in memory)."""
        if self.index is not None:
            return self.index
        chunks = list(self.chunks(2**62))
        return torch.cat(chunks, dim=1) if chunks else torch.zeros(2, 0, dtype=torch.long, device=self.batch.device)


#: Structures of up to this many atoms get their complete graph from cached per-size templates
#: (three passes over the pairs per chunk instead of ~10); larger ones are generated row by row.
TEMPLATE_MAX_ATOMS = 256


@functools.lru_cache(maxsize=512)
def complete_template(n: int, device: str) -> Tensor:
    """``(2, n(n-1)/2)`` int32 local pairs (a, a + o) of one n-atom structure, ordered by offset o."""
    offsets = torch.repeat_interleave(torch.arange(1, n), torch.arange(n - 1, 0, -1))
    first = torch.cumsum(torch.arange(n - 1, 0, -1), 0) - torch.arange(n - 1, 0, -1)
    i = torch.arange(offsets.shape[0]) - torch.repeat_interleave(first, torch.arange(n - 1, 0, -1))
    return torch.stack([i, i + offsets]).to(dtype=torch.int32, device=device)


def _complete_chunks(batch: Tensor, n_structures: int, max_pairs: int) -> Iterator[Tensor]:
    """All pairs i < j inside each structure, in chunks of at most ``max_pairs`` pairs.

    Pairs are ordered by offset j - i inside each structure (diagonals of the pair matrix), so
    consecutive pairs never share an atom and the loss's scatter-adds onto either atom do not
    serialise on one address. Small structures (``TEMPLATE_MAX_ATOMS``) come from cached per-size
    templates, several whole structures per chunk; larger ones in chunks of consecutive first
    atoms (one atom's row may exceed ``max_pairs``), without a Python loop over structures.
    """
    n_atoms = batch.shape[0]
    device = batch.device
    if n_atoms == 0:
        return
    order = None
    if n_atoms > 1 and bool((batch[1:] < batch[:-1]).any()):
        order = torch.argsort(batch, stable=True)
        batch = batch[order]
    counts = structure_counts(batch, n_structures)
    starts = first_atoms(counts)
    n_pairs = counts * (counts - 1) // 2
    small = (counts >= 2) & (counts <= TEMPLATE_MAX_ATOMS) & (n_pairs <= max_pairs)
    large = (counts >= 2) & ~small
    yielded = False

    # Small structures: cached per-size templates, concatenated and shifted to each structure's start.
    if bool(small.any()):
        which = torch.nonzero(small).squeeze(1)
        sizes, first_atom, n_small = counts[which].tolist(), starts[which], n_pairs[which]
        ends = torch.cumsum(n_small, 0)
        total, lo = int(ends[-1]), 0
        while (base := int(ends[lo - 1]) if lo else 0) < total:
            hi = int(torch.searchsorted(ends, base + max_pairs, right=True))  # > lo: n_pairs <= max_pairs
            local = torch.cat([complete_template(n, str(device)) for n in sizes[lo:hi]], dim=1)
            shift = torch.repeat_interleave(first_atom[lo:hi], n_small[lo:hi], output_size=local.shape[1])
            chunk = local + shift  # int32 + int64 -> int64
            yield chunk if order is None else order[chunk]
            yielded, lo = True, hi

    # Large structures: rows of consecutive first atoms (atoms of small structures get no partners).
    if bool(large.any()):
        local = torch.arange(n_atoms, device=device) - starts[batch]
        n_partners = torch.where(large[batch], counts[batch] - 1 - local, 0)
        ends = torch.cumsum(n_partners, 0)
        total = int(ends[-1])
        lo = int(torch.searchsorted(ends, 0, right=True))  # first atom with partners
        while (base := int(ends[lo - 1]) if lo else 0) < total:
            # Largest atom range [lo, hi) whose pairs fit in max_pairs (at least one atom).
            hi = int(torch.searchsorted(ends, base + max_pairs, right=True))
            hi = min(max(hi, lo + 1), n_atoms)
            reps = n_partners[lo:hi]
            max_offset = int(reps.max())
            if max_offset > 0:
                atoms = torch.argsort(reps, descending=True, stable=True)  # local atoms with ≥ o partners come first
                n_with = torch.bincount(reps, minlength=max_offset + 1).flip(0).cumsum(0).flip(0)[1:]
                offsets = torch.repeat_interleave(torch.arange(1, max_offset + 1, device=device), n_with)
                first = torch.cumsum(n_with, 0) - n_with
                rank = torch.arange(offsets.shape[0], device=device) - torch.repeat_interleave(first, n_with)
                i = atoms.index_select(0, rank) + lo
                pairs = torch.stack([i, i + offsets])
                yield pairs if order is None else order[pairs]
                yielded = True
            lo = hi
    if not yielded:
        yield torch.zeros(2, 0, dtype=torch.long, device=device)


def complete_pairs(batch: Tensor, n_structures: int) -> Tensor:
    """``(2, E)`` all unordered pairs ``i < j`` inside each structure (the complete graph, materialised)."""
    return PairSet(batch, n_structures).materialize()


def complete_directed_pairs(batch: Tensor, n_structures: int) -> Tensor:
    """``(2, 2E)`` all ordered pairs ``(i, j)``, ``i ≠ j``, inside each structure: :func:`complete_pairs`
    followed by the same pairs reversed (the neighbour-list convention of SchNetPack and PyG)."""
    pairs = complete_pairs(batch, n_structures)
    return torch.cat([pairs, pairs.flip(0)], dim=1)


def build_pairs(
    graph: str,
    target: Tensor,
    batch: Tensor,
    n_structures: int,
    *,
    cutoff: float | None = None,
    bonds: Tensor | None = None,
    seed: int = 0,
    pool_size: int = 8,
    symmetrize: bool = False,
    numbers: Tensor | None = None,
    distance_fn=None,
    **unknown,
) -> PairSet:
    """Build the edge set ``graph`` over a flat batch.

    Args:
        graph: one of ``complete``, ``radius``, ``bonds``, ``rigid_sparse``.
        target: ``(N_total, d)`` reference positions (Å): the radius cutoff and the automorphisms
            for symmetrisation are taken on the reference, never on the prediction.
        batch: ``(N_total,)`` structure index; ``n_structures``: B.
        cutoff: ``radius`` only, Å.
        bonds: ``bonds`` only, ``(2, M)`` flat atom indices.
        seed, pool_size: ``rigid_sparse`` only: graphs are drawn from a cached pool of
            ``pool_size`` verified graphs per atom count generated from ``seed``; which pool member
            a structure gets is drawn from torch's global RNG at each call (as in the paper).
        symmetrize: ``rigid_sparse`` only: close the edge set under the automorphisms of the
            reference distance matrix (and ``numbers``) so symmetric atoms get symmetric gradients.
        distance_fn: ``(2, E) -> (E,)`` reference distances (minimum image for periodic input).
    """
    _checks.check_choice("graph", graph, GRAPH_NAMES)
    if unknown:
        raise ValueError(
            f"Unknown graph_kwargs {sorted(unknown)}. "
            "Valid: cutoff (radius), seed, pool_size, symmetrize (rigid_sparse)."
        )
    if graph == "rigid_sparse":
        _checks.check_number("graph_kwargs['pool_size']", pool_size, low=1, low_inclusive=True, integer=True)
        _checks.check_number("graph_kwargs['seed']", seed, low=0, low_inclusive=True, integer=True)
    if distance_fn is None:
        distance_fn = lambda p: (target[p[1]] - target[p[0]]).norm(dim=-1)  # noqa: E731
    if graph == "complete":
        return PairSet(batch, n_structures)
    if graph == "radius":
        if cutoff is None:
            raise ValueError("graph='radius' needs a positive cutoff= in Å (graph_kwargs={'cutoff': 5.0}).")
        _checks.check_number("graph_kwargs['cutoff']", cutoff, low=0.0, allow_inf=True)
        kept = [p[:, distance_fn(p) < cutoff] for p in _complete_chunks(batch, n_structures, 2**24)]
        index = torch.cat(kept, 1) if kept else torch.zeros(2, 0, dtype=torch.long, device=batch.device)
        return PairSet(batch, n_structures, index)
    if graph == "bonds":
        if bonds is None:
            raise ValueError("graph='bonds' needs bonds= as a (2, M) tensor of bonded atom pairs (flat indices).")
        bonds = _checks.as_pair_index("bonds", bonds, batch.shape[0]).to(batch.device)
        if bool((batch[bonds[0]] != batch[bonds[1]]).any()):
            raise ValueError("bonds connect atoms of different structures; bond indices must be flat atom indices.")
        return PairSet(batch, n_structures, unique_pairs(bonds))
    index = rigid_sparse_pairs(batch, n_structures, target.shape[1], seed=seed, pool_size=pool_size)
    if symmetrize:
        index = symmetrize_pairs(index, target, batch, numbers)
    return PairSet(batch, n_structures, index)


def unique_pairs(edge_index: Tensor) -> Tensor:
    """Unordered unique pairs (i < j) from a directed or duplicated ``(2, E)`` list (e.g. a neighbour list)."""
    lo = torch.minimum(edge_index[0], edge_index[1])
    hi = torch.maximum(edge_index[0], edge_index[1])
    pairs = torch.unique(torch.stack([lo, hi]), dim=1)
    return pairs[:, pairs[0] != pairs[1]]


def edges_within(edges: np.ndarray, atoms: np.ndarray, n_total: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges among a subset of atoms, renumbered locally.

    Args:
        edges: ``(2, E)`` flat atom indices of a batch of ``n_total`` atoms.
        atoms: ``(n,)`` flat indices of the subset (one structure, or its heavy atoms), in local order.

    Returns:
        ``(M, 2)`` local indices ``0..n-1`` of the edges with both ends in ``atoms``, and the ``(E,)``
        bool mask of those edges (to select per-edge values such as bond orders).
    """
    local = np.full(int(n_total), -1, dtype=np.int64)
    local[atoms] = np.arange(len(atoms))
    edges = np.asarray(edges, dtype=np.int64).reshape(2, -1)
    inside = (local[edges[0]] >= 0) & (local[edges[1]] >= 0)
    return np.stack([local[edges[0][inside]], local[edges[1][inside]]], 1), inside


# ----------------------------------------------------------------------------- rigid sparse graphs


def rigidity_rank_at(edges: np.ndarray, positions: np.ndarray) -> int:
    """Rank of the rigidity matrix of ``edges`` ``(E, 2)`` at the actual ``positions`` ``(n, d)``.

    The generic tests above say a graph is rigid for almost all positions; a given reference can
    be special (an atom whose partners are coplanar can move out of their plane at no first-order
    cost). Computed as the rank of RᵀR (dn × dn) with unit-length rows, so a complete graph of a
    few hundred atoms costs one small eigendecomposition.
    """
    n, d = positions.shape
    if n < 2 or len(edges) == 0:
        return 0
    diff = positions[edges[:, 0]] - positions[edges[:, 1]]
    unit = diff / np.linalg.norm(diff, axis=1, keepdims=True).clip(min=1e-12)
    cols = np.concatenate([edges[:, :1] * d + np.arange(d), edges[:, 1:] * d + np.arange(d)], axis=1)  # (E, 2d)
    vals = np.concatenate([unit, -unit], axis=1)
    gram = np.zeros((n * d, n * d))
    np.add.at(gram, (cols[:, :, None], cols[:, None, :]), vals[:, :, None] * vals[:, None, :])
    lam = np.linalg.eigvalsh(gram)
    return int((lam > max(lam.max(), 1e-300) * n * d * 1e-12).sum())


def as_rigid_as_complete(edges: np.ndarray, positions: np.ndarray, tol: float = 1e-3) -> bool:
    """True if the pairs ``edges`` ``(E, 2)`` pin ``positions`` ``(n, d)`` down as well as all pairs do.

    Two checks at the actual positions, each against what the complete graph achieves there (so
    planar or collinear references, whose out-of-plane motions no distance fixes, are judged fairly):
    the first-order rank (:func:`rigidity_rank_at`), and that no atom can be mirrored on its own
    through the plane (line, in 2D) of its partners, which keeps all its distances: a second
    zero-energy geometry that first-order rigidity does not see. ``tol`` (Å): how far from that
    plane partners may lie and still count as in it.
    """
    n, d = positions.shape
    complete = torch.triu_indices(n, n, offset=1).T.numpy()
    if rigidity_rank_at(edges, positions) != rigidity_rank_at(complete, positions):
        return False
    if _affine_normal(positions, tol) is not None:  # the whole structure is flat: every atom is in the plane
        return True
    partners = [[] for _ in range(n)]
    for a, b in edges.tolist():
        partners[a].append(b)
        partners[b].append(a)
    for i, p in enumerate(partners):
        normal = _affine_normal(positions[p], tol) if len(p) >= 1 else None
        if normal is None:
            continue
        height = (positions - positions[p].mean(0)) @ normal
        others = np.ones(n, dtype=bool)
        others[[i, *p]] = False
        # Mirroring i alone changes its distance to an atom off the plane that it has no pair with;
        # if there is none, the mirror image is the whole structure reflected (congruent, fine).
        if abs(float(height[i])) > tol and bool((np.abs(height[others]) > tol).any()):
            return False
    return True


def _affine_normal(points: np.ndarray, tol: float) -> np.ndarray | None:
    """A unit normal of the hyperplane containing ``points`` ``(m, d)`` to within ``tol``, or None if they span."""
    centred = points - points.mean(0)
    normal = np.linalg.svd(centred, full_matrices=True)[2][-1]  # (d, d) right factor even for m < d
    return normal if float(np.abs(centred @ normal).max()) <= tol else None


def stress_rank_ok(edges: np.ndarray, n: int, d: int, rng: np.random.Generator) -> bool:
    """Global rigidity test (Connelly; Gortler–Healy–Thurston): at generic positions a random
    equilibrium stress has a stress matrix of rank ``n - d - 1`` (requires rigidity)."""
    return _rigidity_tests(edges, n, d, rng, stress=True)


def _rigidity_tests(edges: np.ndarray, n: int, d: int, rng: np.random.Generator, stress: bool) -> bool:
    """Rigidity rank test, then (with ``stress``) the stress-matrix rank test, from one SVD."""
    if n <= d + 1:  # a simplex: rigid and globally rigid exactly when complete
        return len({tuple(sorted(e)) for e in edges.tolist()}) == n * (n - 1) // 2
    r = _rigidity_matrix(edges, rng.standard_normal((n, d)))
    u, s, _ = np.linalg.svd(r, full_matrices=True)
    rank = int((s > s.max() * max(r.shape) * np.finfo(float).eps).sum())
    if rank != d * n - d * (d + 1) // 2:
        return False
    if not stress:
        return True
    stresses = u[:, rank:]  # equilibrium stresses ω span the left null space of R (ωᵀ R = 0)
    if stresses.shape[1] == 0:
        return False
    omega = stresses @ rng.standard_normal(stresses.shape[1])
    mat = np.zeros((n, n))
    i, j = edges[:, 0], edges[:, 1]
    np.add.at(mat, (i, j), -omega)
    np.add.at(mat, (j, i), -omega)
    mat[np.arange(n), np.arange(n)] = -mat.sum(1)
    return int(np.linalg.matrix_rank(mat)) == n - d - 1


def _rigidity_matrix(edges: np.ndarray, pos: np.ndarray) -> np.ndarray:
    n, d = pos.shape
    r = np.zeros((len(edges), n * d))
    diff = pos[edges[:, 0]] - pos[edges[:, 1]]
    rows = np.arange(len(edges))
    for c in range(d):
        r[rows, edges[:, 0] * d + c] = diff[:, c]
        r[rows, edges[:, 1] * d + c] = -diff[:, c]
    return r


# Structures above this many atoms get a block-local graph: below it the per-atom arrays of the
# loss (~44 bytes per atom) fit the CPU's L2 cache, so scattered partners cost nothing extra.
_LOCAL_MIN_ATOMS = 2**14
_LOCAL_BLOCK = 1024  # atoms per block of a block-local graph


@functools.lru_cache(maxsize=4096)
def rigid_sparse_graph(n: int, d: int, seed: int = 0, member: int = 0, verify_max_n: int = 300) -> Tensor:
    """``(2, E)`` local pairs of a random 2d-regular graph on ``n`` vertices, cached.

    Complete graph for ``n ≤ 2d`` (no simple 2d-regular graph exists there). Up to
    ``_LOCAL_MIN_ATOMS`` atoms a uniformly random regular graph (networkx, as in the paper);
    above, a block-local one (:func:`block_regular_edges`), whose partners lie within about a
    thousand atom indices, so the loss reads and writes memory in cache-sized blocks and its time
    stays linear in n up to 10^6 atoms and beyond (benchmarks/loss_cost.py). Graphs with
    ``n ≤ verify_max_n`` are verified rigid and globally rigid by the rank tests at generic
    positions and redrawn if they fail; larger ones are globally rigid with high probability
    (paper, App. A.5; tests/test_graphs.py checks the block-local construction with small blocks)
    and are not checked, since the dense rank tests cost O(n³).
    """
    if n <= 2 * d:
        return torch.triu_indices(n, n, offset=1)
    rng = np.random.default_rng([seed, n, d, member])
    for _ in range(100):
        if n > _LOCAL_MIN_ATOMS:
            edges = block_regular_edges(n, d, _LOCAL_BLOCK, rng)
        else:
            import networkx as nx

            g = nx.random_regular_graph(2 * d, n, seed=int(rng.integers(2**31)))
            edges = np.array(g.edges(), dtype=np.int64).reshape(-1, 2)
        if n > verify_max_n or stress_rank_ok(edges, n, d, rng):
            edges.sort(axis=1)
            edges = edges[np.lexsort((edges[:, 1], edges[:, 0]))]
            return torch.from_numpy(edges.T.copy())
    raise RuntimeError(f"No globally rigid {2 * d}-regular graph on {n} vertices found in 100 draws.")


def block_regular_edges(n: int, d: int, block: int, rng: np.random.Generator) -> np.ndarray:
    """``(d n, 2)`` edges of a random 2d-regular graph whose partners are close in atom index.

    The union of d Hamiltonian cycles, each visiting the atoms block by block in a random order
    inside every block of ``block`` atoms; cycle r shifts the block boundaries by r·block/d, so
    every index cut is crossed by Θ(block) edges. Edges that two cycles share are replaced by
    degree-preserving double-edge swaps with nearby edges, leaving a simple graph. Needs
    ``n ≥ 4d`` (closer to the complete graph the swaps may find no way out). At generic positions
    it passes the rigidity and stress tests like a uniformly random regular graph, down to blocks
    of 8 atoms (tests/test_graphs.py).
    """
    if n < 4 * d:
        raise ValueError(f"block_regular_edges needs n >= 4d = {4 * d} vertices, got n={n}; "
                         "rigid_sparse_graph uses networkx's generator for small structures.")
    block = min(block, n)
    cycles = []
    for r in range(d):
        offset = (r * block) // d
        segment = (np.arange(n) + block - offset) // block  # [0, offset) is segment 0 (or part of 1)
        order = np.lexsort((rng.random(n), segment))  # atoms shuffled inside their segment
        cycles.append(np.stack([order, np.roll(order, -1)], 1))
    edges = np.concatenate(cycles)
    edges.sort(axis=1)
    _swap_out_duplicates(edges, n, block, rng)
    return edges


def _swap_out_duplicates(edges: np.ndarray, n: int, reach: int, rng: np.random.Generator) -> None:
    """Make ``edges`` ``(E, 2)`` (rows sorted) simple in place by double-edge swaps.

    Each repeated edge {u, v} is swapped with a random edge {x, y} at most ``reach`` rows away into
    {u, x}, {v, y} (or {u, y}, {v, x}) when neither exists yet; degrees are unchanged.
    """
    keys = edges[:, 0] * n + edges[:, 1]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    repeated = order[1:][sorted_keys[1:] == sorted_keys[:-1]]
    if repeated.size == 0:
        return
    changes: dict[int, int] = {}  # key -> multiplicity change since sorted_keys was taken

    def multiplicity(key: int) -> int:
        base = np.searchsorted(sorted_keys, key, side="right") - np.searchsorted(sorted_keys, key)
        return int(base) + changes.get(key, 0)

    n_edges = edges.shape[0]
    for e in repeated.tolist():
        if multiplicity(int(keys[e])) < 2:  # already swapped away as the partner of an earlier repeat
            continue
        for _ in range(1000):
            f = int(e + rng.integers(-reach, reach + 1)) % n_edges
            (u, v), (x, y) = edges[e].tolist(), edges[f].tolist()
            if rng.random() < 0.5:
                x, y = y, x
            if len({u, v, x, y}) < 4:
                continue
            new = [(min(u, x), max(u, x)), (min(v, y), max(v, y))]
            new_keys = [a * n + b for a, b in new]
            if any(multiplicity(k) for k in new_keys):
                continue
            for old in (int(keys[e]), int(keys[f])):
                changes[old] = changes.get(old, 0) - 1
            for k in new_keys:
                changes[k] = changes.get(k, 0) + 1
            edges[e], edges[f] = new
            keys[e], keys[f] = new_keys
            break
        else:
            raise RuntimeError(f"Could not remove a repeated edge from a {n}-vertex graph by swaps.")


def rigid_sparse_pairs(batch: Tensor, n_structures: int, d: int, seed: int = 0, pool_size: int = 8) -> Tensor:
    """``(2, E)`` flat pairs: one random rigid 2d-regular graph per structure, drawn from a cached pool."""
    device = batch.device
    counts = structure_counts(batch, n_structures)
    # Atom positions in batch-sorted order; None when the batch is already sorted (the usual case).
    order = torch.argsort(batch, stable=True) if bool((batch[1:] < batch[:-1]).any()) else None
    starts = first_atoms(counts)
    out = []
    for n in torch.unique(counts).tolist():
        if n < 2:
            continue
        structs = torch.nonzero(counts == n).squeeze(1)
        members = torch.randint(pool_size, (structs.numel(),), device=device)
        for member in torch.unique(members).tolist():  # only the pool members in use are generated
            local = rigid_sparse_graph(n, d, seed, member).to(device)
            sel = structs[members == member]
            if sel.numel() == 1 and int(starts[sel]) == 0:  # one structure (e.g. 10^6 atoms): the cached graph as is
                sorted_pos = local
            else:
                # (2, S·E_n), batch-sorted order
                sorted_pos = (local.unsqueeze(1) + starts[sel].view(1, -1, 1)).view(2, -1)
            out.append(sorted_pos if order is None else order.index_select(0, sorted_pos.view(-1)).view(2, -1))
    if not out:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def symmetrize_pairs(index: Tensor, target: Tensor, batch: Tensor, numbers: Tensor | None = None,
                     tol: float = 1e-3, max_automorphisms: int = 1000) -> Tensor:
    """Close an edge set under the automorphisms of each structure's reference distance matrix.

    An automorphism is an atom permutation g preserving all reference distances (to ``tol`` Å)
    and the elements; the result is ∪_g g(E) (paper, App. A.5, Eq. 57). Uses networkx's VF2.
    """
    import networkx as nx
    from networkx.algorithms.isomorphism import GraphMatcher

    out = [index]
    for s in torch.unique(batch).tolist():
        atoms = torch.nonzero(batch == s).squeeze(1)
        n = atoms.numel()
        if n < 3:
            continue
        pos = target[atoms].detach().double().cpu()
        dist = torch.cdist(pos, pos)
        bins = torch.round(dist / tol).long().numpy()
        g = nx.complete_graph(n)
        z = numbers[atoms].tolist() if numbers is not None else [0] * n
        nx.set_node_attributes(g, dict(enumerate(z)), "z")
        nx.set_edge_attributes(g, {(a, b): int(bins[a, b]) for a, b in g.edges()}, "d")
        matcher = GraphMatcher(
            g, g, node_match=lambda x, y: x["z"] == y["z"], edge_match=lambda x, y: abs(x["d"] - y["d"]) <= 1
        )
        local_of = torch.full((batch.shape[0],), -1, dtype=torch.long)
        local_of[atoms.cpu()] = torch.arange(n)
        mine = index[:, batch[index[0]] == s].cpu()
        local_edges = local_of[mine]
        for count, perm in enumerate(matcher.isomorphisms_iter()):
            if count >= max_automorphisms:
                break
            p = torch.tensor([perm[a] for a in range(n)])
            out.append(atoms[p[local_edges]].to(index.device))
    return unique_pairs(torch.cat(out, dim=1))
