"""Tests of energyloss_plugins.spins (lattice energies, losses, exact ground states, dataset cache) and of the
training loop of examples/spins."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from energyloss_plugins.spins import (
    SpinResNet,
    brute_force_ground_state,
    cross_entropy_spin_loss,
    flip_costs,
    get_spin_loss,
    get_spin_loss_function,
    greedy_descent,
    ground_state,
    infer_boundary,
    is_local_minimum,
    ising_energy,
    ising_excess_energy,
    local_field_energy,
    local_field_free_energy_loss,
    local_field_weights,
    local_fields,
    make_spin_glass_dataset,
    margin_spin_loss,
    random_couplings,
    spin_loss_names,
    true_energy_free_energy_loss,
)
from energyloss_plugins.spins.data import cache_path

_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "spins" / "spin_training.py"
_spec = importlib.util.spec_from_file_location("spin_training", _EXAMPLE)
spin_training = importlib.util.module_from_spec(_spec)
sys.modules["spin_training"] = spin_training  # dataclasses look their module up there
_spec.loader.exec_module(spin_training)

torch.set_num_threads(1)


def random_spins(B: int, H: int, W: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (B, H, W), generator=g) * 2 - 1).double()


def explicit_bonds(H: int, W: int, boundary: str) -> list[tuple[int, int, int, int, int]]:
    """(channel, r, c, r2, c2) for every bond, written out independently of the roll trick."""
    bonds = []
    for r in range(H):
        for c in range(W):
            if c + 1 < W or boundary == "periodic":
                bonds.append((0, r, c, r, (c + 1) % W))
            if r + 1 < H or boundary == "periodic":
                bonds.append((1, r, c, (r + 1) % H, c))
    return bonds


# --------------------------------------------------------------------------- lattice


@pytest.mark.parametrize("boundary", ["open", "periodic"])
@pytest.mark.parametrize("shape", [(3, 3), (3, 5), (4, 2)])
def test_energy_and_fields_match_explicit_bond_sums(boundary, shape):
    H, W = shape
    J = random_couplings(H, 4, seed=1, boundary=boundary, width=W).double()
    y = random_spins(4, H, W, seed=2)
    E = torch.zeros(4, dtype=torch.float64)
    h = torch.zeros(4, H, W, dtype=torch.float64)
    for ch, r, c, r2, c2 in explicit_bonds(H, W, boundary):
        Jb = J[:, ch, r, c]
        E -= Jb * y[:, r, c] * y[:, r2, c2]
        h[:, r, c] += Jb * y[:, r2, c2]
        h[:, r2, c2] += Jb * y[:, r, c]
    torch.testing.assert_close(ising_energy(y, J), E)
    torch.testing.assert_close(local_fields(y, J), h)
    # E = -1/2 Σ y_i h_i, and |h| <= 4 for |J| <= 1
    torch.testing.assert_close(ising_energy(y, J), -0.5 * (y * local_fields(y, J)).sum((1, 2)))
    assert float(local_fields(y, J).abs().max()) <= 4.0


@pytest.mark.parametrize("boundary", ["open", "periodic"])
def test_flip_cost_equals_energy_difference(boundary):
    J = random_couplings(5, 2, seed=3, boundary=boundary).double()
    y = random_spins(2, 5, 5, seed=4)
    dE = flip_costs(y, J)
    for r, c in itertools.product(range(5), range(5)):
        y2 = y.clone()
        y2[:, r, c] *= -1
        torch.testing.assert_close(ising_energy(y2, J) - ising_energy(y, J), dE[:, r, c])


def test_open_couplings_have_zero_wrapping_bonds_and_boundary_inference():
    J = random_couplings(6, 3, seed=0, boundary="open")
    assert torch.all(J[:, 0, :, -1] == 0) and torch.all(J[:, 1, -1, :] == 0)
    assert float(J.abs().max()) <= 1.0 and float(J[:, 0, :, :-1].abs().min()) > 0
    assert infer_boundary(J) == (False, False)
    assert infer_boundary(random_couplings(6, 1, seed=0, boundary="periodic")) == (True, True)
    # same seed -> same couplings; different seed -> different
    assert torch.equal(J, random_couplings(6, 3, seed=0))
    assert not torch.equal(J, random_couplings(6, 3, seed=1))


# --------------------------------------------------------------------------- losses


@pytest.mark.parametrize("boundary", ["open", "periodic"])
def test_local_field_energy_unique_minimum_at_data_when_h0_above_max_field(boundary):
    """Any target y (not only ground states): with h0 > max|h| every other ŷ costs more."""
    H = W = 3
    J = random_couplings(H, 3, seed=5, boundary=boundary).double()
    y = random_spins(3, H, W, seed=6)
    h0 = float(local_fields(y, J).abs().max()) + 0.05
    assert float(local_field_weights(y, J, h0).min()) > 0
    allconf = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=H * W)), dtype=torch.float64)
    allconf = allconf.view(-1, H, W)
    for b in range(3):
        e = local_field_energy(allconf, y[b].expand_as(allconf), J[b].expand(len(allconf), -1, -1, -1), h0)
        best = int(torch.argmin(e))
        assert torch.equal(allconf[best], y[b])
        assert float(e[best]) == 0.0
        assert float(torch.sort(e).values[1]) > 0  # unique
    # with h0 too small (still > 0) a non-ground-state target stops being the minimiser: some w_i < 0
    h0_small = 0.05
    w = local_field_weights(y, J, h0_small)
    if bool((w < 0).any()):
        flipped = torch.where(w < 0, -y, y)
        assert bool((local_field_energy(flipped, y, J, h0_small) < local_field_energy(y, y, J, h0_small)).all())
    with pytest.raises(ValueError, match="h0"):  # the wrong sign is refused
        local_field_weights(y, J, -0.5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.floats(0.5, 20.0), extra=st.floats(0.01, 3.0))
def test_local_field_free_energy_minimised_at_analytic_logits(seed, T, extra):
    """Per site the minimiser is y_i z_i = w_i / T: decoding sign(z*) returns the data spins, and
    the loss is larger at every perturbation of z*. (T ≥ 0.5 keeps |z*| ≤ ~22: at colder T the
    sigmoid saturates and a perturbation changes the loss by less than float64 resolution.)"""
    J = random_couplings(4, 2, seed=seed).double()
    y = random_spins(2, 4, 4, seed=seed + 1)
    h0 = float(local_fields(y, J).abs().max()) + extra
    w = local_field_weights(y, J, h0)
    z_star = (y * w / T).requires_grad_(True)
    loss = local_field_free_energy_loss(z_star, y, J, T=T, h0=h0, reduction="sum")
    (g,) = torch.autograd.grad(loss, z_star)
    loss = loss.detach()
    assert float(g.abs().max()) < 1e-8
    assert torch.equal(torch.sign(z_star.detach()), y)
    g2 = torch.Generator().manual_seed(seed)
    for _ in range(5):
        dz = torch.randn(z_star.shape, generator=g2, dtype=torch.float64) * 0.5
        assert float(local_field_free_energy_loss(z_star.detach() + dz, y, J, T=T, h0=h0, reduction="sum")) > float(
            loss
        )


def test_local_field_gradient_descent_recovers_data_spins():
    """Optimising free logits from a random start converges to sign(z) = y (the unique minimum)."""
    J = random_couplings(6, 4, seed=11).double()
    y = random_spins(4, 6, 6, seed=12)
    z = torch.randn(4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).mul(3).requires_grad_()
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(400):
        loss = local_field_free_energy_loss(z, y, J, T=1.0, h0=4.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.equal(torch.sign(z.detach()), y)


@pytest.mark.parametrize("name", spin_loss_names())
def test_losses_have_finite_gradients_for_extreme_logits(name):
    J = random_couplings(5, 3, seed=7)
    y = random_spins(3, 5, 5, seed=8).float()
    z = torch.tensor([-1e4, -50.0, -1e-6, 0.0, 1e-6, 50.0, 1e4]).repeat(11)[:75].view(3, 5, 5)
    z = z.clone().requires_grad_(True)
    loss = get_spin_loss(name)(z, y, J)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    # functional and module agree
    fn = get_spin_loss_function(name)
    torch.testing.assert_close(fn(z.detach(), y, J), loss.detach())


def test_loss_values_against_direct_formulas():
    J = random_couplings(4, 2, seed=9).double()
    y = random_spins(2, 4, 4, seed=10)
    z = torch.randn(2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    q = torch.sigmoid(z)  # q(+1)
    m = 2 * q - 1
    H = -(q * q.log() + (1 - q) * (1 - q).log())
    q_true = torch.where(y > 0, q, 1 - q)
    torch.testing.assert_close(cross_entropy_spin_loss(z, y, reduction="none"), -q_true.log().sum((1, 2)))
    torch.testing.assert_close(margin_spin_loss(z, y, margin=1.0, reduction="sum"), (1 - y * z).clamp(min=0).sum())
    T, h0 = 0.7, 4.5
    e_lf = local_field_energy(m, y, J, h0)  # linear in ŷ -> E_q[E_LF] = E_LF(m)
    torch.testing.assert_close(
        local_field_free_energy_loss(z, y, J, T=T, h0=h0, reduction="none"), e_lf / T - H.sum((1, 2))
    )
    torch.testing.assert_close(
        true_energy_free_energy_loss(z, None, J, T=0.3, reduction="none"), ising_energy(m, J) - 0.3 * H.sum((1, 2))
    )
    # E_q[E(ŷ)] of the factorised q by enumeration on a 2x2 lattice
    J2, z2 = J[:1, :, :2, :2].clone(), z[:1, :2, :2]
    J2[:, 0, :, -1] = 0
    J2[:, 1, -1, :] = 0
    conf = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)), dtype=torch.float64).view(16, 2, 2)
    p = torch.where(conf > 0, torch.sigmoid(z2), torch.sigmoid(-z2)).flatten(1).prod(1)
    expected = (p * ising_energy(conf, J2.expand(16, -1, -1, -1))).sum()
    m2 = torch.tanh(z2 / 2)
    torch.testing.assert_close(ising_energy(m2, J2)[0], expected)


def test_bad_inputs_raise_clear_errors():
    J = random_couplings(4, 2, seed=0)
    y = random_spins(2, 4, 4).float()
    z = torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="valid names"):
        get_spin_loss("cross_entropyy")
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        local_field_free_energy_loss(z[0], y, J)
    with pytest.raises(ValueError, match="NaN"):
        local_field_free_energy_loss(torch.full_like(z, float("nan")), y, J)
    with pytest.raises(ValueError, match="-1 and \\+1"):
        cross_entropy_spin_loss(z, (y + 1) / 2)
    with pytest.raises(ValueError, match="match"):
        local_field_free_energy_loss(z, y, J[:1])
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        true_energy_free_energy_loss(z, None, J[:, :1])
    with pytest.raises(ValueError, match="T must be"):
        get_spin_loss("local_field", T=0.0)
    with pytest.raises(ValueError, match="reduction"):
        get_spin_loss("margin", reduction="avg")
    with pytest.raises(ValueError, match="boundary"):
        random_couplings(4, 1, boundary="twisted")
    assert get_spin_loss("CE").__class__ is get_spin_loss("cross_entropy").__class__


@pytest.mark.parametrize("name", ["local_field", "cross_entropy", "margin"])
def test_flip_invariant_losses(name):
    J = random_couplings(5, 4, seed=13).double()
    y = random_spins(4, 5, 5, seed=14)
    z = torch.randn(4, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 2
    fn = get_spin_loss_function(name)
    inv = fn(z, y, J, flip_invariant=True, reduction="none")
    torch.testing.assert_close(inv, fn(z, -y, J, flip_invariant=True, reduction="none"))
    plain, flipped = fn(z, y, J, reduction="none"), fn(z, -y, J, reduction="none")
    torch.testing.assert_close(inv, torch.minimum(plain, flipped))
    # the invariant loss is unchanged by a global flip of the prediction as well
    torch.testing.assert_close(inv, fn(-z, y, J, flip_invariant=True, reduction="none"))
    # and its gradient is finite and flows
    zz = z.clone().requires_grad_(True)
    get_spin_loss(name, flip_invariant=True)(zz, y, J).backward()
    assert torch.isfinite(zz.grad).all() and float(zz.grad.abs().sum()) > 0


def test_local_field_weights_gauge_invariant_and_positive_at_ground_states():
    from energyloss_plugins.spins import canonicalize

    ds = make_spin_glass_dataset(5, 4, seed=2, cache_dir=False, progress=False)
    w = local_field_weights(ds.spins, ds.couplings, h0=0.0)
    torch.testing.assert_close(w, local_field_weights(-ds.spins, ds.couplings, h0=0.0))
    assert float(w.min()) >= -1e-6  # y_i h_i >= 0 at a ground state: h0 > 0 suffices there
    c = canonicalize(ds.spins, "center")
    assert torch.all(c[:, 2, 2] == 1) and torch.all(
        (c == ds.spins).flatten(1).all(1) | (c == -ds.spins).flatten(1).all(1)
    )
    with pytest.raises(ValueError, match="valid gauges"):
        canonicalize(ds.spins, "middle")


# --------------------------------------------------------------------------- exact ground states


@pytest.mark.parametrize("boundary", ["open", "periodic"])
@pytest.mark.parametrize("shape", [(2, 2), (2, 3), (3, 3), (3, 4), (4, 2), (4, 4)])
def test_exact_solver_equals_brute_force(boundary, shape):
    H, W = shape
    J = random_couplings(H, 4, seed=100 * H + W, boundary=boundary, width=W).double()
    for b in range(4):
        s, e = ground_state(J[b])
        s_bf, e_bf = brute_force_ground_state(J[b])
        assert math.isclose(e, e_bf, abs_tol=1e-9)
        assert torch.equal(s, s_bf)  # continuous couplings: unique up to the global flip
        assert math.isclose(float(ising_energy(s[None], J[b : b + 1])), e, abs_tol=1e-9)


def test_exact_solver_on_discrete_couplings_with_degeneracy():
    """±J couplings have degenerate ground states: the energy must still match brute force."""
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        J = (torch.randint(0, 2, (1, 2, 4, 4), generator=g) * 2 - 1).double()
        J[:, 0, :, -1] = 0
        J[:, 1, -1, :] = 0
        s, e = ground_state(J)
        assert math.isclose(e, brute_force_ground_state(J)[1], abs_tol=1e-9)
        assert math.isclose(float(ising_energy(s[None], J)), e, abs_tol=1e-9)


def test_exact_solver_beats_greedy_descent_at_L8():
    J = random_couplings(8, 3, seed=21).double()
    for b in range(3):
        s, e = ground_state(J[b])
        assert s[0, 0] == 1 and bool(is_local_minimum(s[None], J[b : b + 1]))
        assert math.isclose(float(ising_energy(s[None], J[b : b + 1])), e, abs_tol=1e-9)
        ys, eg = greedy_descent(J[b], n_starts=1000, seed=b)
        assert bool(is_local_minimum(ys, J[b].expand(1000, -1, -1, -1)).all())  # descent really finished
        assert e <= float(eg.min()) + 1e-9


def test_exact_solver_periodic_L8_and_speed_L16():
    import time

    Jp = random_couplings(8, 1, seed=5, boundary="periodic").double()
    s, e = ground_state(Jp[0])
    assert bool(is_local_minimum(s[None], Jp))
    assert e <= float(greedy_descent(Jp[0], 300, seed=0)[1].min()) + 1e-9
    J = random_couplings(16, 2, seed=6)
    t0 = time.perf_counter()
    for b in range(2):
        s, e = ground_state(J[b])
        assert bool(is_local_minimum(s[None], J[b : b + 1].double()))
    per_lattice = (time.perf_counter() - t0) / 2
    assert per_lattice < 1.0, f"L=16 DP took {per_lattice:.2f} s per lattice"
    with pytest.raises(ValueError, match="max_states"):
        ground_state(random_couplings(12, 1, seed=0, boundary="periodic")[0])


# --------------------------------------------------------------------------- dataset, model, training


def test_dataset_cache_roundtrip_and_keys(tmp_path):
    ds = make_spin_glass_dataset(5, 6, seed=3, cache_dir=tmp_path, progress=False)
    path = cache_path(tmp_path, 5, 6, 3, "open")
    assert path.exists() and not list(tmp_path.glob("*.partial"))
    assert ds.couplings.shape == (6, 2, 5, 5) and ds.spins.shape == (6, 5, 5)
    assert torch.all(ds.spins[:, 0, 0] == 1)
    torch.testing.assert_close(ising_energy(ds.spins.double(), ds.couplings.double()), ds.energies)
    assert bool(is_local_minimum(ds.spins, ds.couplings.double()).all())
    mtime = os.stat(path).st_mtime_ns
    again = make_spin_glass_dataset(5, 6, seed=3, cache_dir=tmp_path, progress=False)
    assert os.stat(path).st_mtime_ns == mtime  # loaded, not rebuilt
    assert torch.equal(again.couplings, ds.couplings) and torch.equal(again.spins, ds.spins)
    other = make_spin_glass_dataset(5, 6, seed=4, cache_dir=tmp_path, progress=False)
    assert not torch.equal(other.couplings, ds.couplings)
    per = make_spin_glass_dataset(4, 3, seed=3, boundary="periodic", cache_dir=tmp_path, progress=False)
    assert cache_path(tmp_path, 4, 3, 3, "periodic").exists() and infer_boundary(per.couplings) == (True, True)
    # a corrupt cache file is rebuilt, not trusted
    path.write_bytes(b"garbage")
    rebuilt = make_spin_glass_dataset(5, 6, seed=3, cache_dir=tmp_path, progress=False)
    assert torch.equal(rebuilt.spins, ds.spins)


def test_ising_excess_energy_nonnegative_and_zero_at_ground_state():
    ds = make_spin_glass_dataset(6, 8, seed=1, cache_dir=False, progress=False)
    exact = ising_excess_energy(ds.spins * 5.0, ds.couplings, ds.energies)
    assert float(exact.abs().max()) < 1e-5
    flipped = ising_excess_energy(-ds.spins, ds.couplings, ds.energies)  # global flip: same energy
    assert float(flipped.abs().max()) < 1e-5
    rnd = ising_excess_energy(torch.randn(8, 6, 6), ds.couplings, ds.energies)
    assert float(rnd.min()) > -1e-5


def test_model_shapes_and_short_training(tmp_path):
    for kw in ({}, {"coords": True, "dilations": (1, 2)}):
        model = SpinResNet(width=8, n_blocks=2, **kw)
        assert model(random_couplings(6, 3, seed=0)).shape == (3, 6, 6)
    assert SpinResNet(width=8, n_blocks=1, periodic=True)(random_couplings(5, 2, boundary="periodic")).shape == (
        2,
        5,
        5,
    )
    train = make_spin_glass_dataset(6, 256, seed=0, cache_dir=tmp_path, progress=False)
    test = make_spin_glass_dataset(6, 64, seed=1, cache_dir=tmp_path, progress=False)
    random_excess = float(
        ising_excess_energy(
            torch.randn(64, 6, 6, generator=torch.Generator().manual_seed(0)), test.couplings, test.energies
        ).mean()
    )
    # the unsupervised true-energy loss learns fast: well below a random guess
    cfg = spin_training.TrainConfig(epochs=6, batch_size=32, lr=3e-3, width=16, n_blocks=2, loss_kwargs={"T": 0.1})
    res = spin_training.train_spin_model("true_energy", train, test, seed=0, config=cfg)
    assert res["final"]["excess_mean"] < 0.75 * random_excess
    # a supervised loss at least fits its training data: the training loss goes down
    cfg = spin_training.TrainConfig(epochs=4, batch_size=32, lr=3e-3, width=16, n_blocks=2, gauge="center", coords=True)
    res = spin_training.train_spin_model("local_field", train, test, seed=0, config=cfg)
    assert len(res["curves"]["train_loss"]) == 4 and res["curves"]["train_loss"][-1] < res["curves"]["train_loss"][0]
    assert all(math.isfinite(v) for v in res["curves"]["held_out_excess"])
