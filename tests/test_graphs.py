"""Edge sets: rigid sparse graphs pass the rigidity tests; the other edge sets are what they say."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from energyloss_plugins import pair_energy_loss
from energyloss_plugins.graphs import (
    block_regular_edges,
    build_pairs,
    rigid_sparse_graph,
    rigid_sparse_pairs,
    rigidity_rank_ok,
    stress_rank_ok,
    symmetrize_pairs,
    unique_pairs,
)


@pytest.mark.parametrize("d", [2, 3])
def test_rigid_sparse_graphs_pass_rigidity_and_stress_tests(d):
    rng = np.random.default_rng(123)  # fresh generic positions, independent of the generator's own check
    # Every size up to 30, then a stride to 200, with several independently seeded graphs each.
    sizes = list(range(4, 31)) + list(range(40, 201, 20))
    for n, seed in [(n, seed) for n in sizes for seed in range(3 if n <= 30 else 1)]:
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
