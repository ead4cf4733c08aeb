"""The lean pair-energy path: resolve_springs (once per reference) + pair_energy_kernel (the math),
the validate_args switch (no host synchronisation, torch.compile), structure ids, directed edge lists
and configuration errors raised at construction."""

from __future__ import annotations

import itertools

import pytest
import torch

from _molecules import random_batch  # noqa: E402
from energyloss_plugins import (
    PairEnergyLoss,
    PairSprings,
    kabsch_mse_loss,
    mae_loss,
    mse_loss,
    pair_energy_kernel,
    pair_energy_loss,
    resolve_springs,
)
from energyloss_plugins.graphs import complete_pairs
from energyloss_plugins.layouts import batch_from_counts, flat_numbers, segment_mean, structure_counts, structure_index
from energyloss_plugins.metrics import aligned_rmsd, bond_length_mae
from energyloss_plugins.tasks import StructureObjective

DTYPE = torch.float64



def value_and_grad(fn, pred):
    p = pred.clone().requires_grad_()
    loss = fn(p)
    loss.sum().backward()
    return loss.detach(), p.grad


# ------------------------------------------------------------------------ resolve + kernel = loss


@pytest.mark.parametrize("options", [
    {},
    {"coefficients": "inverse_square", "coefficient_kwargs": {"k0": 3.0}},
    {"graph": "radius", "graph_kwargs": {"cutoff": 2.5}},
    {"coefficients": "morse", "numbers": "numbers"},
    {"coefficients": "bond_aware", "bonds": "bonds"},
    {"cell": "cell"},
])
def test_resolved_springs_and_kernel_equal_the_one_call_loss(options):
    pred, target, batch = random_batch([6, 11, 2, 9], seed=1)
    numbers = torch.randint(1, 9, (batch.shape[0],), generator=torch.Generator().manual_seed(1))
    bonds = torch.tensor([[0, 1, 6, 7], [1, 2, 7, 8]])
    cell = torch.eye(3, dtype=DTYPE) * 6.0
    data = {"numbers": numbers, "bonds": bonds, "cell": cell}
    options = {k: data[v] if isinstance(v, str) and v in data else v for k, v in options.items()}
    springs = resolve_springs(target, batch, **options)
    assert springs.pairs.shape[0] == 2 and springs.springs.shape == springs.distances.shape == (springs.pairs.shape[1],)
    for reduction in ("mean", "none"):
        ref = value_and_grad(lambda p, r=reduction: pair_energy_loss(p, target, batch, reduction=r, **options), pred)
        lean = value_and_grad(lambda p, r=reduction: springs.loss(p, reduction=r), pred)
        assert torch.allclose(lean[0], ref[0], rtol=0, atol=1e-12)
        assert torch.allclose(lean[1], ref[1], rtol=0, atol=1e-12)


def test_kernel_agrees_with_an_independent_formula():
    pred, target, batch = random_batch([7, 4], seed=2)
    pairs = complete_pairs(batch, 2)
    dist = (target[pairs[1]] - target[pairs[0]]).norm(dim=-1)
    k = torch.rand(pairs.shape[1], dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    loss, grad = value_and_grad(lambda p: pair_energy_kernel(p, dist, pairs, k, batch, reduction="sum",
                                                             normalize=False), pred)

    def direct(p):  # autograd through the textbook expression
        return (0.5 * k * ((p[pairs[1]] - p[pairs[0]]).norm(dim=-1) - dist) ** 2).sum()

    ref, ref_grad = value_and_grad(direct, pred)
    assert torch.allclose(loss, ref, rtol=1e-12) and torch.allclose(grad, ref_grad, atol=1e-12)


def test_collated_per_structure_springs_equal_the_batch():
    """Springs resolved once per structure (e.g. in a dataset) and collated give the batch's loss."""
    sizes = [5, 12, 8]
    pred, target, batch = random_batch(sizes, seed=3)
    starts = [0, 5, 17, 25]
    items = [resolve_springs(target[a:b]) for a, b in itertools.pairwise(starts)]
    collated = PairSprings.collate(items)
    assert collated.n_structures == 3 and torch.equal(collated.batch, batch)
    for reduction in ("mean", "none"):
        ref = value_and_grad(lambda p, r=reduction: pair_energy_loss(p, target, batch, reduction=r), pred)
        lean = value_and_grad(lambda p, r=reduction: collated.loss(p, reduction=r), pred)
        assert torch.allclose(lean[0], ref[0], atol=1e-12) and torch.allclose(lean[1], ref[1], atol=1e-12)
    # The module takes resolved springs too.
    assert torch.allclose(PairEnergyLoss()(pred, springs=collated), pair_energy_loss(pred, target, batch), atol=1e-12)


def test_resolved_rigid_sparse_graph_is_drawn_once():
    pred, target, batch = random_batch([14, 20], seed=4)
    springs = resolve_springs(target, batch, graph="rigid_sparse")
    torch.manual_seed(0)
    first = springs.loss(pred)
    torch.manual_seed(1)  # another draw would change the pairs; the resolved graph does not
    assert torch.equal(springs.loss(pred), first)
    assert springs.pairs.shape[1] == 3 * (14 + 20)  # 6-regular: 3 pairs per atom


# ------------------------------------------------------------------- validate_args=False: no sync


def _to_meta(*tensors):
    return [t.to("meta") for t in tensors]


def test_unvalidated_path_reads_nothing_back_to_the_host():
    """On the meta device every read-back (.item(), bool(), .tolist()) raises: the unvalidated
    kernel, the one-call loss with an edge list, and the baselines run there end to end."""
    pred, target, batch = random_batch([5, 9, 12], seed=5)
    s = resolve_springs(target, batch)
    p, t, b, dist, pairs, k = _to_meta(pred, target, batch, s.distances, s.pairs, s.springs)
    p.requires_grad_()
    losses = [
        pair_energy_kernel(p, dist, pairs, k, b, 3, validate_args=False),
        pair_energy_loss(p, t, b, edge_index=pairs, n_structures=3, validate_args=False),
        pair_energy_loss(p, t, b, edge_index=pairs, coefficients=k, n_structures=3, validate_args=False),
        PairEnergyLoss(validate_args=False)(p, springs=PairSprings(pairs, k, dist, b, 3)),
        mse_loss(p, t, b, n_structures=3, validate_args=False),
        mae_loss(p, t, b, n_structures=3, validate_args=False),
    ]
    for loss in losses:
        loss.backward()
        assert loss.device.type == "meta" and p.grad.shape == p.shape
    # the validated path reads values back, so on the meta device it refuses with the fix named
    with pytest.raises(ValueError, match="meta tensor .* validate_args=False"):
        pair_energy_kernel(p, dist, pairs, k, b, 3)


def test_kernel_compiles_fullgraph_and_agrees_to_float64_precision():
    pred, target, batch = random_batch([5, 9, 12], seed=6)
    s = resolve_springs(target, batch)

    def lean(p):
        return pair_energy_kernel(p, s.distances, s.pairs, s.springs, s.batch, s.n_structures, validate_args=False)

    compiled = torch.compile(lean, fullgraph=True)
    ref = value_and_grad(lambda p: pair_energy_loss(p, target, batch), pred)
    for _ in range(2):  # the second call runs the cached graph
        got = value_and_grad(compiled, pred)
        assert torch.allclose(got[0], ref[0], rtol=1e-13, atol=1e-15)
        assert torch.allclose(got[1], ref[1], rtol=1e-13, atol=1e-15)


def test_unvalidated_path_equals_validated_path():
    pred, target, batch = random_batch([4, 10, 7], seed=7)
    pairs = complete_pairs(batch, 3)
    for options in ({}, {"coefficients": "inverse"}):
        fast = value_and_grad(lambda p, o=options: pair_energy_loss(p, target, batch, edge_index=pairs, n_structures=3,
                                                                    validate_args=False, **o), pred)
        slow = value_and_grad(lambda p, o=options: pair_energy_loss(p, target, batch, **o), pred)
        assert torch.allclose(fast[0], slow[0], atol=1e-12) and torch.allclose(fast[1], slow[1], atol=1e-12)


def test_kernel_validation_names_the_argument():
    pred, target, batch = random_batch([5, 4], seed=8)
    s = resolve_springs(target, batch)
    with pytest.raises(ValueError, match="springs"):
        pair_energy_kernel(pred, s.distances, s.pairs, -s.springs, batch)
    with pytest.raises(ValueError, match="springs must have shape"):
        pair_energy_kernel(pred, s.distances, s.pairs, s.springs[:-1], batch)
    with pytest.raises(ValueError, match="pairs"):
        pair_energy_kernel(pred, s.distances, s.pairs.float(), s.springs, batch)
    doubled = torch.cat([s.pairs, s.pairs.flip(0)], 1)
    with pytest.raises(ValueError, match="more than once"):
        pair_energy_kernel(pred, s.distances.repeat(2), doubled, s.springs.repeat(2), batch)


# ------------------------------------------------------------------------------ structure ids


LOSS_FNS = {"energy": pair_energy_loss, "mse": mse_loss, "mae": mae_loss, "kabsch": kabsch_mse_loss}


@pytest.mark.parametrize("name", sorted(LOSS_FNS))
def test_ids_with_gaps_count_distinct_structures(name):
    fn = LOSS_FNS[name]
    pred, target, batch = random_batch([3, 2], seed=9)
    gapped = torch.tensor([0, 0, 0, 3, 3])
    contiguous = fn(pred, target, batch, reduction="none")
    assert contiguous.shape == (2,)
    assert torch.allclose(fn(pred, target, gapped, reduction="none"), contiguous)
    assert torch.allclose(fn(pred, target, gapped), contiguous.mean())  # no empty structures diluting the mean
    huge = torch.tensor([10**9, 10**9, 10**9, 7, 7])  # ids in increasing order: structure 7 first
    assert torch.allclose(fn(pred, target, huge, reduction="none"), contiguous.flip(0))
    # With n_structures the caller declares the structures: an id without atoms is an empty one.
    declared = fn(pred, target, gapped, reduction="none", n_structures=4)
    assert declared.shape == (4,) and torch.allclose(declared[[0, 3]], contiguous)
    assert float(declared[1:3].abs().sum()) == 0
    with pytest.raises(ValueError, match="n_structures"):
        fn(pred, target, gapped, n_structures=3)


def test_structure_index_renumbers_without_allocating_by_the_largest_id():
    batch, n = structure_index(torch.tensor([2**62, 5, 5, 2**62]))
    assert n == 2 and batch.tolist() == [1, 0, 0, 1]
    batch = torch.tensor([0, 0, 1])
    same, n = structure_index(batch)
    assert n == 2 and same is batch  # contiguous ids: no copy


def test_metrics_use_distinct_ids_and_one_segment_mean():
    pred, target, batch = random_batch([4, 5], seed=10)
    gapped = torch.where(batch == 0, 10**9, 3)  # structure 3 first, then 10**9
    assert torch.allclose(aligned_rmsd(pred, target, gapped), aligned_rmsd(pred, target, batch).flip(0))
    bonds = torch.tensor([[0, 4], [1, 5]])
    assert torch.allclose(bond_length_mae(pred, target, bonds, gapped),
                          bond_length_mae(pred, target, bonds, batch).flip(0))
    from energyloss_plugins.metrics import atom_stability

    numbers = torch.tensor([6, 1, 1, 1, 1, 8, 1, 1, 6])
    assert torch.equal(atom_stability(numbers, target, gapped), atom_stability(numbers, target, batch).flip(0))
    # segment_mean: 0 or NaN (metrics) for a structure that owns nothing
    x = torch.tensor([1.0, 3.0, 5.0])
    owner = torch.tensor([0, 0, 2])
    assert segment_mean(x, owner, 3).tolist() == [2.0, 0.0, 5.0]
    assert torch.isnan(segment_mean(x, owner, 3, empty=float("nan"))[1])


def test_counts_and_flat_batches_invert_each_other():
    counts = torch.tensor([3, 1, 4, 2])
    batch = batch_from_counts(counts)
    assert batch.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 3, 3]
    assert torch.equal(structure_counts(batch, 4), counts)
    numbers, flat, n = flat_numbers([[6, 1, 1], [8], torch.tensor([6, 6, 1, 1]), (7, 1)])
    assert torch.equal(flat, batch) and torch.equal(n, counts) and numbers.tolist()[:4] == [6, 1, 1, 8]
    with pytest.raises(ValueError, match=r"\[1\] have no atoms"):
        flat_numbers([[6], []])


# ------------------------------------------------------------------------- directed edge lists


def test_directed_and_repeated_edge_lists_count_each_pair_once():
    pred, target, batch = random_batch([6, 5], seed=11)
    pairs = complete_pairs(batch, 2)
    once = pair_energy_loss(pred, target, batch, edge_index=pairs, reduction="none")
    directed = torch.cat([pairs, pairs.flip(0)], 1)  # PyG/TorchMD-Net style: (i, j) and (j, i)
    repeated = torch.cat([pairs, pairs[:, :3]], 1)
    for edges in (directed, repeated):
        assert torch.allclose(pair_energy_loss(pred, target, batch, edge_index=edges, reduction="none"), once)
        assert resolve_springs(target, batch, edge_index=edges).pairs.shape == pairs.shape
    # Bond lists too (graph="bonds" and the bond_aware scheme).
    bonds = torch.tensor([[0, 1, 2, 6, 7], [1, 2, 3, 7, 8]])
    for opts in ({"graph": "bonds"}, {"coefficients": "bond_aware"}):
        assert torch.allclose(pair_energy_loss(pred, target, batch, bonds=torch.cat([bonds, bonds.flip(0)], 1), **opts),
                              pair_energy_loss(pred, target, batch, bonds=bonds, **opts))
    # Per-pair springs on a directed list: the same spring on both copies is one spring ...
    k = torch.rand(pairs.shape[1], dtype=DTYPE, generator=torch.Generator().manual_seed(11))
    ref = pair_energy_loss(pred, target, batch, edge_index=pairs, coefficients=k)
    assert torch.allclose(pair_energy_loss(pred, target, batch, edge_index=directed, coefficients=k.repeat(2)), ref)
    # ... different springs on the copies of a pair are ambiguous.
    with pytest.raises(ValueError, match="coefficients: edge_index lists some pairs more than once"):
        pair_energy_loss(pred, target, batch, edge_index=directed, coefficients=torch.cat([k, 2 * k]))


def test_metrics_count_each_bond_of_a_directed_list_once():
    from energyloss_plugins.metrics import angle_mae

    pred, target, _ = random_batch([6], seed=14)
    bonds = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    directed = torch.cat([bonds, bonds.flip(0), bonds[:, :1]], 1)
    for metric in (bond_length_mae, angle_mae):
        assert torch.allclose(metric(pred, target, directed), metric(pred, target, bonds))


def test_per_pair_springs_errors_name_the_argument():
    pred, target, batch = random_batch([5], seed=12)
    pairs = complete_pairs(batch, 1)
    k = torch.ones(pairs.shape[1], dtype=DTYPE)
    for bad, message in ((k.tolist(), "coefficients: per-pair springs must be a torch.Tensor"),
                         (k[:-1], "coefficients: per-pair springs must have shape"),
                         (-k, "coefficients"), (k * float("nan"), "coefficients")):
        with pytest.raises(ValueError, match=message):
            pair_energy_loss(pred, target, edge_index=pairs, coefficients=bad)


# ------------------------------------------------------------------- configuration at construction


@pytest.mark.parametrize("kwargs, message", [
    ({"coefficients": "hessian"}, "coefficients='hessian'"),
    ({"coefficients": torch.ones(3)}, "coefficients must be a scheme name or a callable"),
    ({"coefficient_kwargs": {"lenght_scale": 2.0}}, "coefficient_kwargs of scheme 'exp': unknown parameter"),
    ({"coefficients": "constant", "coefficient_kwargs": {"length_scale": 2.0}}, "Valid: k0"),
    ({"graph": "radius"}, "cutoff"),
    ({"graph": "radius", "graph_kwargs": {"cutoff": -1.0}}, "cutoff"),
    ({"graph_kwargs": {"cuttoff": 5.0}}, "graph_kwargs: unknown option"),
    ({"reduction": "avg"}, "reduction"),
])
def test_module_rejects_unusable_configuration_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PairEnergyLoss(**kwargs)


def test_data_springs_route_through_the_task_objective_still_works():
    pred, target, batch = random_batch([5, 6], seed=13)
    pairs = complete_pairs(batch, 2)
    k = torch.exp(-(target[pairs[1]] - target[pairs[0]]).norm(dim=-1))
    objective = StructureObjective("energy", {"coefficients": "hessian"})  # accepted: the batch supplies springs
    got = objective.loss(pred, target, batch, springs=(pairs, k))
    assert torch.allclose(got, pair_energy_loss(pred, target, batch))
    with pytest.raises(ValueError, match="graph_kwargs: unknown option"):
        StructureObjective("energy", {"graph_kwargs": {"cuttoff": 5.0}})


@pytest.mark.parametrize("scheme", [("exp", {"k0": 2.0, "length_scale": 0.7}), ("inverse_square", {}),
                                    ("morse", {})])
def test_structure_springs_of_a_molecule_equal_resolve_springs(scheme):
    """The data pipeline's per-molecule path (LossConfig.structure_springs, complete graph) gives the pairs, in
    the same order, springs and distances of resolve_springs, and keeps its checks."""
    from energyloss_plugins.config import LossConfig

    name, kwargs = scheme
    config = LossConfig(coefficients=name, coefficient_kwargs=kwargs)
    _, target, _ = random_batch([11], seed=5)
    numbers = torch.randint(1, 10, (11,), generator=torch.Generator().manual_seed(1))
    fast = config.structure_springs(target, numbers=numbers)
    ref = resolve_springs(target, numbers=numbers, coefficients=name, coefficient_kwargs=kwargs)
    assert torch.equal(fast.pairs, ref.pairs) and torch.equal(fast.batch, ref.batch)
    torch.testing.assert_close(fast.springs, ref.springs, rtol=0, atol=0)
    torch.testing.assert_close(fast.distances, ref.distances, rtol=0, atol=0)
    duplicated = torch.cat([target, target[:1]])
    with pytest.raises(ValueError, match="coincide"):
        config.structure_springs(duplicated, numbers=torch.cat([numbers, numbers[:1]]))
    with pytest.raises(ValueError, match="target"):
        config.structure_springs(target.masked_fill(torch.eye(11, 3, dtype=torch.bool), float("nan")), numbers=numbers)
