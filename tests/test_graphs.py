"""Edge sets: rigid sparse graphs pass the rigidity tests; the other edge sets are what they say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from energyloss_plugins import pair_energy_loss
from energyloss_plugins.graphs import (
    _rigidity_matrix,
    block_regular_edges,
    build_pairs,
    rigid_sparse_graph,
    rigid_sparse_pairs,
    stress_rank_ok,
    symmetrize_pairs,
    unique_pairs,
)


def rigidity_rank_ok(edges: np.ndarray, n: int, d: int, rng: np.random.Generator) -> bool:
    """Infinitesimal rigidity at generic positions drawn from ``rng``: the rigidity matrix of ``edges``
    ``(E, 2)`` has rank ``d n − d(d+1)/2``; a simplex (n ≤ d + 1) is rigid exactly when complete."""
    if n <= d + 1:
        return len({tuple(sorted(e)) for e in edges.tolist()}) == n * (n - 1) // 2
    rank = np.linalg.matrix_rank(_rigidity_matrix(edges, rng.standard_normal((n, d))))
    return int(rank) == d * n - d * (d + 1) // 2


@pytest.mark.parametrize("d", [2, 3])
def test_rigid_sparse_graphs_pass_rigidity_and_stress_tests(d):
    rng = np.random.default_rng(123)  # fresh generic positions, independent of the generator's own check
    # Every size up to 30, then a stride to 200, with several independently seeded graphs each.
    sizes = list(range(4, 31)) + list(range(40, 201, 20))
    for n, seed in [(size, seed) for size in sizes for seed in range(3 if size <= 30 else 1)]:
        edges = rigid_sparse_graph(n, d, seed=seed).T.numpy()
        degrees = np.bincount(edges.ravel(), minlength=n)
        if n > 2 * d:
            assert (degrees == 2 * d).all(), f"n={n}: not {2 * d}-regular"
        assert len({tuple(e) for e in edges.tolist()}) == len(edges) and (edges[:, 0] < edges[:, 1]).all()
        assert rigidity_rank_ok(edges, n, d, rng), f"n={n}, d={d}: rigidity matrix rank deficient"
        assert stress_rank_ok(edges, n, d, rng), f"n={n}, d={d}: not globally rigid by the stress test"



@pytest.mark.parametrize("d", [2, 3])
def test_block_local_graphs_are_regular_local_and_globally_rigid(d):
    # The construction used above 2^14 atoms, at sizes the dense rank tests can check: blocks
    # far smaller than the 1024 used there make locality (and any rigidity failure) most severe.
    rng = np.random.default_rng(7)
    for n, block in [(4 * d, 8), (13, 8), (50, 8), (120, 8), (200, 12), (300, 16), (400, 32)]:
        for _ in range(3):
            edges = block_regular_edges(n, d, block, rng)
            assert edges.shape == (d * n, 2)
            assert (np.bincount(edges.ravel(), minlength=n) == 2 * d).all(), f"n={n}: not {2 * d}-regular"
            assert len({tuple(sorted(e)) for e in edges.tolist()}) == len(edges), f"n={n}: repeated edge"
            assert (edges[:, 0] != edges[:, 1]).all()
            if n < 50:  # tiny random regular graphs (uniform ones too) are sometimes not globally rigid
                continue
            assert rigidity_rank_ok(edges, n, d, rng), f"n={n}, block={block}: rigidity matrix rank deficient"
            assert stress_rank_ok(edges, n, d, rng), f"n={n}, block={block}: not globally rigid by the stress test"
    # Locality: away from the cyclic wrap-around, partners are within a few blocks of each other.
    edges = block_regular_edges(20_000, 3, 64, rng)
    span = np.abs(edges[:, 0] - edges[:, 1])
    assert np.mean(np.minimum(span, 20_000 - span) <= 4 * 64) > 0.999
    with pytest.raises(ValueError, match="n >= 4d"):
        block_regular_edges(4 * d - 1, d, 8, rng)


def test_rigid_sparse_graph_is_block_local_above_the_threshold():
    n = 2**14 + 1
    edges = rigid_sparse_graph(n, 3, seed=1).T.numpy()
    assert (np.bincount(edges.ravel(), minlength=n) == 6).all()
    span = np.abs(edges[:, 0] - edges[:, 1])
    assert np.median(np.minimum(span, n - span)) < 1024  # a uniform random graph's median is ~n/4

def test_rigidity_checks_reject_flexible_graphs():
    rng = np.random.default_rng(0)
    cycle = np.array([[i, (i + 1) % 10] for i in range(10)])
    assert not rigidity_rank_ok(cycle, 10, 3, rng)  # a ring is floppy in 3D
    k4_minus_edge = np.array([[0, 1], [0, 2], [1, 2], [1, 3], [2, 3]])
    assert rigidity_rank_ok(k4_minus_edge, 4, 2, rng)  # rigid in the plane ...
    assert not stress_rank_ok(k4_minus_edge, 4, 2, rng)  # ... but it can fold: not globally rigid


def test_rigid_sparse_pairs_stay_inside_structures_and_are_linear():
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor([3, 20, 50, 1]))
    torch.manual_seed(0)
    pairs = rigid_sparse_pairs(batch, 4, 3, seed=0)
    assert bool((batch[pairs[0]] == batch[pairs[1]]).all())
    counts = torch.bincount(batch[pairs[0]], minlength=4)
    assert counts.tolist() == [3, 20 * 3, 50 * 3, 0]  # complete for n=3; n·2d/2 edges otherwise


def test_complete_radius_and_bonds_edge_sets():
    g = torch.Generator().manual_seed(0)
    target = 3 * torch.randn(30, 3, generator=g, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(2), torch.tensor([12, 18]))
    complete = build_pairs("complete", target, batch, 2).materialize()
    assert complete.shape[1] == 12 * 11 // 2 + 18 * 17 // 2
    radius = build_pairs("radius", target, batch, 2, cutoff=4.0).materialize()
    d_all = (target[complete[1]] - target[complete[0]]).norm(dim=-1)
    assert radius.shape[1] == int((d_all < 4.0).sum())
    assert bool(((target[radius[1]] - target[radius[0]]).norm(dim=-1) < 4.0).all())
    bonds = torch.tensor([[1, 0, 14, 13], [0, 1, 13, 14]])  # duplicates and both orders
    assert unique_pairs(bonds).tolist() == [[0, 13], [1, 14]]
    assert build_pairs("bonds", target, batch, 2, bonds=bonds).materialize().shape[1] == 2
    with pytest.raises(ValueError, match="different structures"):
        build_pairs("bonds", target, batch, 2, bonds=torch.tensor([[0], [20]]))


def test_symmetrized_sparse_graph_gives_symmetric_atoms_symmetric_gradients():
    # A regular hexagon with a central atom: every rotation of the ring is an automorphism.
    angles = torch.arange(6, dtype=torch.float64) * torch.pi / 3
    ring = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(6, dtype=torch.float64)], 1) * 1.4
    target = torch.cat([torch.zeros(1, 3, dtype=torch.float64), ring, ring * 2.0 + torch.tensor([0, 0, 0.5])])
    n = target.shape[0]
    batch = torch.zeros(n, dtype=torch.long)
    numbers = torch.tensor([6] + [6] * 6 + [1] * 6)
    torch.manual_seed(3)
    sparse = rigid_sparse_pairs(batch, 1, 3, seed=0)
    sym = symmetrize_pairs(sparse, target, batch, numbers)
    assert sym.shape[1] >= sparse.shape[1]
    keys = {tuple(p) for p in sym.T.tolist()}
    # Closed under the 6-fold rotation of the two rings.
    rot = torch.tensor([0] + [1 + (i + 1) % 6 for i in range(6)] + [7 + (i + 1) % 6 for i in range(6)])
    assert all(tuple(sorted((int(rot[a]), int(rot[b])))) in keys for a, b in keys)
    # Uniform shrink: the symmetric ring atoms get gradients of equal magnitude.
    pred = (target * 0.9).requires_grad_(True)
    pair_energy_loss(pred, target, edge_index=sym).backward()
    norms = pred.grad[1:7].norm(dim=1)
    assert torch.allclose(norms, norms[0].expand(6), rtol=1e-9)


def _mirror_flip(edges: np.ndarray, pos: np.ndarray, tol: float = 1e-3):
    """An atom whose partners are coplanar (and not all other atoms), mirrored through their plane; or None."""
    n = pos.shape[0]
    for i in range(n):
        p = np.unique(np.concatenate([edges[edges[:, 0] == i, 1], edges[edges[:, 1] == i, 0]]))
        c = pos[p] - pos[p].mean(0)
        normal = np.linalg.svd(c)[2][-1]
        h = (pos - pos[p].mean(0)) @ normal
        if np.abs(c @ normal).max() < tol and abs(h[i]) > tol:
            flipped = pos.copy()
            flipped[i] -= 2 * h[i] * normal
            return flipped
    return None


def test_rigidity_rank_at_the_reference_matches_a_dense_svd():
    from ase.collections import g2

    from energyloss_plugins.graphs import rigidity_rank_at

    for name in ("C6H6", "CH3CH2OCH3", "C3H6_D3h", "H2O", "SiH4", "isobutene"):
        pos = g2[name].positions
        n = len(pos)
        for member in range(3):
            edges = rigid_sparse_graph(n, 3, 0, member).T.numpy()
            s = np.linalg.svd(_rigidity_matrix(edges, pos), compute_uv=False)
            assert rigidity_rank_at(edges, pos) == int((s > s.max() * 1e-8).sum()), name


def test_as_rigid_as_complete_catches_flips_and_flexes_that_generic_tests_miss():
    from ase.collections import g2

    from energyloss_plugins.graphs import as_rigid_as_complete

    # Every rejected graph of a real molecule really has a second zero-energy geometry or a flex,
    # and every graph of a flat molecule is judged against what distances can fix there at all.
    rejected = 0
    for atoms in g2:
        n, pos = len(atoms), atoms.positions
        if n <= 6:
            continue
        complete = torch.triu_indices(n, n, offset=1).T.numpy()
        assert as_rigid_as_complete(complete, pos)
        for member in range(8):
            edges = rigid_sparse_graph(n, 3, 0, member).T.numpy()
            if as_rigid_as_complete(edges, pos):
                continue
            rejected += 1
            flipped = _mirror_flip(edges, pos)
            if flipped is None:  # a first-order flex instead: the rank falls short of the complete graph's
                from energyloss_plugins.graphs import rigidity_rank_at

                assert rigidity_rank_at(edges, pos) < rigidity_rank_at(complete, pos)
                continue
            t = torch.tensor(pos)
            e = torch.tensor(edges.T.copy())
            sparse = pair_energy_loss(torch.tensor(flipped), t, coefficients="constant", edge_index=e)
            full = pair_energy_loss(torch.tensor(flipped), t, coefficients="constant")
            assert float(sparse) < 1e-12 < 1e-4 < float(full), atoms.get_chemical_formula()
    assert rejected > 0  # g2 has such references (propene, isobutene, 2-butyne, ...): the check is exercised


def test_calculator_graphs_are_redrawn_until_rigid_at_the_reference():
    from ase.collections import g2

    from energyloss_plugins.ase._utils import pairs_for_atoms
    from energyloss_plugins.graphs import as_rigid_as_complete

    for name in ("CH3CH2OCH3", "isobutene", "methylenecyclopropane", "2-butyne", "C3H6_Cs"):
        atoms = g2[name]
        for seed in range(8):
            pairs = pairs_for_atoms(atoms, "rigid_sparse", seed=seed)
            assert pairs.shape[1] == 3 * len(atoms)
            assert as_rigid_as_complete(pairs.T.numpy(), atoms.positions)
