"""The pair energy loss against an independent dense formula, across layouts, and its invariances."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _molecules import random_batch  # noqa: E402
from energyloss_plugins import (
    PairEnergyLoss,
    kabsch_mse_loss,
    mae_loss,
    make_loss,
    mse_loss,
    pair_energy_loss,
    register_coefficients,
)
from energyloss_plugins.alignment import random_rotations
from energyloss_plugins.graphs import build_pairs

DTYPE = torch.float64



def dense_reference(pred, target, batch, k_of_distance, normalize=True):
    """SPEC §2 written independently: full distance matrices per structure, sum over i < j."""
    out = []
    for b in range(int(batch.max()) + 1):
        y, p = target[batch == b], pred[batch == b]
        n = y.shape[0]
        if n < 2:
            out.append(torch.zeros((), dtype=DTYPE))
            continue
        iu = torch.triu_indices(n, n, 1)
        # Square distance matrices, upper triangle taken before the sqrt (its diagonal has no gradient).
        dy = torch.sqrt(((y[:, None, :] - y[None, :, :]) ** 2).sum(-1)[iu[0], iu[1]])
        dp = torch.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)[iu[0], iu[1]])
        e = 0.5 * k_of_distance(dy) * (dy - dp) ** 2
        out.append(e.sum() / (n if normalize else 1))
    return torch.stack(out)


SCHEMES = {
    "constant": ({"k0": 2.0}, lambda d: torch.full_like(d, 2.0)),
    "inverse": ({"k0": 5.0}, lambda d: 5.0 / d),
    "inverse_square": ({"k0": 16.0}, lambda d: 16.0 / d**2),
    "exp": ({"k0": 42.0, "length_scale": 1.3}, lambda d: 42.0 * torch.exp(-d / 1.3)),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("seed", range(3))
def test_matches_dense_float64_reference(scheme, seed):
    sizes = torch.randint(1, 25, (7,), generator=torch.Generator().manual_seed(seed)).tolist()
    pred, target, batch = random_batch(sizes, seed=seed)
    params, k_fn = SCHEMES[scheme]
    ours = pair_energy_loss(pred, target, batch, coefficients=scheme, coefficient_kwargs=params, reduction="none")
    ref = dense_reference(pred, target, batch, k_fn)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-10)
    assert torch.allclose(pair_energy_loss(pred, target, batch, coefficients=scheme, coefficient_kwargs=params),
                          ref.mean(), rtol=0, atol=1e-10)
    assert torch.allclose(pair_energy_loss(pred, target, batch, coefficients=scheme, coefficient_kwargs=params,
                                           reduction="sum", normalize=False),
                          dense_reference(pred, target, batch, k_fn, normalize=False).sum(), rtol=0, atol=1e-10)


def test_flat_padded_and_pair_list_layouts_agree():
    sizes = [3, 11, 1, 7, 20]
    pred, target, batch = random_batch(sizes, seed=4)
    n_max = max(sizes)
    padded_p = torch.zeros(len(sizes), n_max, 3, dtype=DTYPE)
    padded_t = torch.zeros_like(padded_p)
    mask = torch.zeros(len(sizes), n_max, dtype=torch.bool)
    for b, n in enumerate(sizes):
        padded_p[b, :n], padded_t[b, :n], mask[b, :n] = pred[batch == b], target[batch == b], True
    padded_t[~mask] = 123.0  # garbage in the padding must not matter
    flat = pair_energy_loss(pred, target, batch, reduction="none")
    padded = pair_energy_loss(padded_p, padded_t, mask=mask, reduction="none")
    pairs = build_pairs("complete", target, batch, len(sizes)).materialize()
    listed = pair_energy_loss(pred, target, batch, edge_index=pairs, reduction="none")
    assert torch.allclose(flat, padded, atol=1e-12) and torch.allclose(flat, listed, atol=1e-12)

    # Gradients agree too (padded gradients land on the real atoms only).
    p1 = padded_p.clone().requires_grad_()
    pair_energy_loss(p1, padded_t, mask=mask).backward()
    p2 = pred.clone().requires_grad_()
    pair_energy_loss(p2, target, batch).backward()
    assert torch.allclose(p1.grad[mask], p2.grad, atol=1e-12)
    assert bool((p1.grad[~mask] == 0).all())


def test_unsorted_batch_equals_sorted():
    pred, target, batch = random_batch([5, 8, 6], seed=5)
    perm = torch.randperm(batch.shape[0], generator=torch.Generator().manual_seed(0))
    a = pair_energy_loss(pred, target, batch, reduction="none")
    b = pair_energy_loss(pred[perm], target[perm], batch[perm], reduction="none")
    assert torch.allclose(a, b, atol=1e-12)


def rigid_motion(x, seed, reflect):
    g = torch.Generator().manual_seed(seed)
    rot = random_rotations(1, x.shape[1], dtype=DTYPE, generator=g)[0]
    if reflect:
        rot = rot @ torch.diag(torch.tensor([-1.0] + [1.0] * (x.shape[1] - 1), dtype=DTYPE))
    return x @ rot.T + 10 * torch.randn(x.shape[1], dtype=DTYPE, generator=g)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), reflect=st.booleans(), graph=st.sampled_from(["complete", "rigid_sparse", "radius"]),
       which=st.sampled_from(["pred", "target"]), d=st.sampled_from([2, 3]))
def test_invariant_to_rigid_motions(seed, reflect, graph, which, d):
    pred, target, batch = random_batch([9, 14], d=d, seed=seed)
    kwargs = {"graph": graph, "graph_kwargs": {"cutoff": 3.0} if graph == "radius" else {"seed": 1}}
    torch.manual_seed(seed)  # the same rigid-sparse pool member on both calls
    base = pair_energy_loss(pred, target, batch, reduction="none", **kwargs)

    def move(x):
        return torch.cat([rigid_motion(x[batch == b], seed + b, reflect) for b in range(2)])

    moved_pred = move(pred) if which == "pred" else pred
    moved_target = move(target) if which == "target" else target
    torch.manual_seed(seed)
    moved = pair_energy_loss(moved_pred, moved_target, batch, reduction="none", **kwargs)
    assert torch.allclose(base, moved, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("n", [3, 5, 8])
def test_invariant_to_automorphism_permutations(n):
    """Relabelling the prediction by a symmetry of the target (a permutation preserving its distance
    matrix: here the rotations and reflections of a regular polygon) leaves E unchanged."""
    angles = 2 * math.pi * torch.arange(n, dtype=DTYPE) / n
    target = torch.stack([torch.cos(angles), torch.sin(angles)], 1) * 2.0
    g = torch.Generator().manual_seed(n)
    pred = target + 0.4 * torch.randn(n, 2, dtype=DTYPE, generator=g)
    base = pair_energy_loss(pred, target)
    for shift in range(n):
        for flip in (False, True):
            perm = (torch.arange(n) * (-1 if flip else 1) + shift) % n
            assert torch.allclose(pair_energy_loss(pred[perm], target), base, atol=1e-12)
    # Control: for a target without that symmetry, the same relabelling changes E.
    irregular = target * torch.linspace(1.0, 2.0, n, dtype=DTYPE).unsqueeze(1)
    roll = torch.roll(torch.arange(n), 1)
    assert not torch.allclose(pair_energy_loss(pred[roll], irregular), pair_energy_loss(pred, irregular))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), graph=st.sampled_from(["complete", "rigid_sparse"]))
def test_nonnegative_and_zero_exactly_on_rigid_motions(seed, graph):
    pred, target, batch = random_batch([12, 7, 30], seed=seed, noise=0.5)
    torch.manual_seed(seed)
    assert bool((pair_energy_loss(pred, target, batch, graph=graph, reduction="none") >= 0).all())
    moved = torch.cat([rigid_motion(target[batch == b], seed + b, reflect=seed % 2 == 0) for b in range(3)])
    assert float(pair_energy_loss(moved, target, batch, graph=graph, reduction="sum")) < 1e-20
    # A non-congruent prediction has positive energy on the (globally rigid) graph.
    assert bool((pair_energy_loss(pred, target, batch, graph=graph, reduction="none") > 1e-6).all())


def test_gradcheck_float64():
    pred, target, batch = random_batch([4, 9], seed=7)
    pred.requires_grad_(True)
    for graph in ("complete", "rigid_sparse"):
        torch.manual_seed(0)
        fn = lambda p, graph=graph: pair_energy_loss(p, target, batch, graph=graph, reduction="none")  # noqa: E731
        assert torch.autograd.gradcheck(lambda p, fn=fn: (torch.manual_seed(0), fn(p))[1], (pred,))
    for loss in (mse_loss, mae_loss, kabsch_mse_loss):
        assert torch.autograd.gradcheck(lambda p, loss=loss: loss(p, target, batch, reduction="none"), (pred,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finite_gradient_when_predicted_atoms_coincide(dtype):
    target = torch.tensor([[0.0, 0, 0], [1.2, 0, 0], [0, 1.1, 0], [0.3, 0.2, 1.0]], dtype=dtype)
    pred = target.clone()
    pred[1] = pred[0]  # two predicted atoms on top of each other
    pred[3] = pred[0]
    pred.requires_grad_(True)
    loss = pair_energy_loss(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(pred.grad).all())
    assert float(loss) > 0


def test_low_precision_autocast_computes_in_float32():
    pred, target, batch = random_batch([6, 10], seed=8)
    pred32, target32 = pred.float(), target.float()
    for dtype in (torch.bfloat16, torch.float16):
        p = pred32.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = pair_energy_loss(p, target32.to(dtype), batch)
        assert loss.dtype == torch.float32
        loss.backward()
        assert p.grad.dtype == dtype and bool(torch.isfinite(p.grad).all())
        ref = pair_energy_loss(pred32.to(dtype).float(), target32.to(dtype).float(), batch)
        assert torch.allclose(loss, ref, rtol=1e-5)


def test_chunked_computation_equals_one_chunk():
    pred, target, batch = random_batch([40, 33, 2], seed=9)
    grads = []
    values = []
    for chunk in (7, 100, 2**22):
        p = pred.clone().requires_grad_()
        loss = pair_energy_loss(p, target, batch, chunk_size=chunk)
        loss.backward()
        values.append(loss.detach())
        grads.append(p.grad)
    assert all(torch.allclose(v, values[0], atol=1e-12) for v in values)
    assert all(torch.allclose(g, grads[0], atol=1e-12) for g in grads)


def test_gradient_matches_autograd_of_dense_formula():
    pred, target, batch = random_batch([6, 13], seed=10)
    p1 = pred.clone().requires_grad_()
    pair_energy_loss(p1, target, batch).backward()
    p2 = pred.clone().requires_grad_()
    dense_reference(p2, target, batch, lambda d: torch.exp(-d)).mean().backward()
    assert torch.allclose(p1.grad, p2.grad, atol=1e-12)


def test_empty_batch_and_single_atoms_give_zero():
    empty = torch.zeros(0, 3, requires_grad=True)
    loss = pair_energy_loss(empty, empty.detach())
    assert float(loss) == 0.0 and not torch.isnan(loss)
    loss.backward()
    for fn in (mse_loss, kabsch_mse_loss, mae_loss):
        assert float(fn(empty, empty.detach())) == 0.0
    pred = torch.randn(3, 3, requires_grad=True)
    batch = torch.tensor([0, 1, 2])  # three one-atom structures
    loss = pair_energy_loss(pred, torch.randn(3, 3), batch)
    loss.backward()
    assert float(loss) == 0.0 and bool(torch.isfinite(pred.grad).all())
    assert not torch.isnan(kabsch_mse_loss(pred, pred.detach() + 1.0, batch))
    padded = torch.zeros(2, 4, 3)
    assert float(pair_energy_loss(padded, padded, mask=torch.zeros(2, 4, dtype=torch.bool))) == 0.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, t, b: pair_energy_loss(p[:, :2], t, b), "same shape"),
        (lambda p, t, b: pair_energy_loss(p.reshape(-1), t.reshape(-1)), "must have shape"),
        (lambda p, t, b: pair_energy_loss(p, t, b[:-1]), "batch has"),
        (lambda p, t, b: pair_energy_loss(p, t, b.float()), "integer"),
        (lambda p, t, b: pair_energy_loss(p, t, b, coefficients="expo"), "Valid names: bond_aware, constant, exp"),
        (lambda p, t, b: pair_energy_loss(p, t, b, graph="full"), "Valid names: bonds, complete, radius, rigid_sparse"),
        (lambda p, t, b: pair_energy_loss(p, t, b, reduction="avg"), "Valid names: mean, none, sum"),
        (lambda p, t, b: pair_energy_loss(p, t, b, graph="radius"), "cutoff"),
        (lambda p, t, b: pair_energy_loss(p, t, b, coefficients="bond_aware"), "bond list"),
        (lambda p, t, b: pair_energy_loss(p, t, b, mask=torch.ones(3, dtype=torch.bool)), "mask is for the padded"),
        (lambda p, t, b: pair_energy_loss(p, t, b, edge_index=torch.tensor([[0], [5]])), "different structures"),
        (lambda p, t, b: make_loss("huber"), "Valid names: energy, kabsch, mae, mse"),
    ],
)
def test_clear_errors(call, message):
    pred, target, batch = random_batch([5, 4], seed=11)
    with pytest.raises(ValueError, match=message):
        call(pred, target, batch)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_positions_are_rejected(bad):
    pred, target, batch = random_batch([5, 4], seed=12)
    pred[3, 1] = bad
    for fn in (pair_energy_loss, mse_loss, kabsch_mse_loss):
        with pytest.raises(ValueError, match="NaN or Inf"):
            fn(pred, target, batch)
    with pytest.raises(ValueError, match="NaN or Inf"):
        pair_energy_loss(target, pred, batch)


def test_module_wrapper_and_custom_callable_scheme():
    pred, target, batch = random_batch([6, 9], seed=13)

    @register_coefficients("test_double_exp")
    def double_exp(ctx, k0=1.0):
        return 2 * k0 * torch.exp(-ctx.distance)

    via_registry = PairEnergyLoss(coefficients="test_double_exp")(pred, target, batch)
    via_callable = pair_energy_loss(pred, target, batch, coefficients=lambda ctx: 2 * torch.exp(-ctx.distance))
    via_exp = pair_energy_loss(pred, target, batch, coefficient_kwargs={"k0": 2.0})
    assert torch.allclose(via_registry, via_callable) and torch.allclose(via_registry, via_exp)
    with pytest.raises(ValueError, match="negative or non-finite"):
        pair_energy_loss(pred, target, batch, coefficients=lambda ctx: -torch.ones_like(ctx.distance))
    with pytest.raises(ValueError, match="coefficient scheme 'nope'"):
        PairEnergyLoss(coefficients="nope")


def test_per_pair_coefficient_tensor_with_edge_index():
    pred, target, batch = random_batch([7], seed=14)
    pairs = build_pairs("complete", target, batch, 1).materialize()
    k = torch.exp(-(target[pairs[1]] - target[pairs[0]]).norm(dim=-1))
    per_pair = pair_energy_loss(pred, target, edge_index=pairs, coefficients=k)
    assert torch.allclose(per_pair, pair_energy_loss(pred, target))
    with pytest.raises(ValueError, match="shape"):
        pair_energy_loss(pred, target, edge_index=pairs, coefficients=k[:-1])


def test_coefficients_carry_no_gradient_to_target():
    pred, target, batch = random_batch([6], seed=15)
    target.requires_grad_(True)
    pred.requires_grad_(True)
    pair_energy_loss(pred, target).backward()
    assert target.grad is None and pred.grad is not None


def test_baselines_behave_as_documented():
    pred, target, batch = random_batch([5, 8], seed=16)
    moved = torch.cat([rigid_motion(target[batch == b], b, reflect=False) for b in range(2)])
    assert float(kabsch_mse_loss(moved, target, batch)) < 1e-20
    assert float(mse_loss(moved, target, batch)) > 1.0  # MSE is not rotation invariant
    n = target.shape[0]
    one = torch.zeros(n, dtype=torch.long)
    assert torch.allclose(mse_loss(pred, target, one), 3 * torch.nn.functional.mse_loss(pred, target))
    assert torch.allclose(mae_loss(pred, target, one), 3 * torch.nn.functional.l1_loss(pred, target))
