"""Core de novo generation (energyloss_plugins.generation): encoding, histogram, loss, sampler symmetries."""

import math

import pytest
import torch

from energyloss_plugins.diffusion import eval_generator, remove_com, time_features
from energyloss_plugins.generation import (
    AtomCountDistribution,
    GenerationObjective,
    TypeEncoding,
    sample_molecules,
    sample_with_model,
    to_atoms,
)

ELEMENTS = (1, 6, 7, 8)


def _random_rotation(generator, dtype=torch.float64, reflect=False):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def _batch(counts):
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def _molecules(generator, counts=(5, 3, 7)):
    batch = _batch(counts)
    positions = 1.5 * torch.randn(len(batch), 3, generator=generator, dtype=torch.float64)
    numbers = torch.tensor(ELEMENTS)[torch.randint(0, len(ELEMENTS), (len(batch),), generator=generator)]
    return positions, numbers, batch


class EquivariantDenoiser:
    """An analytic E(3)-equivariant, permutation-equivariant joint denoiser (no training needed).

    out_x_i = Σ_j (x_i − x_j) φ(|x_i − x_j|) (h_j · w), out_h_i = Σ_j φ(|x_i − x_j|) h_j + h_i · c(t)
    over the atoms j of i's molecule: rotations/reflections of x rotate out_x and leave out_h;
    permutations of atoms permute both.
    """

    def __init__(self, n_features, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(n_features, generator=g, dtype=torch.float64)

    def __call__(self, x, h, t, batch):
        same = batch.unsqueeze(0) == batch.unsqueeze(1)
        diff = x.unsqueeze(1) - x.unsqueeze(0)
        phi = torch.exp(-(diff**2).sum(-1)) * same
        out_x = (diff * (phi * (h @ self.w.to(h.dtype)).unsqueeze(0)).unsqueeze(-1)).sum(1) * 0.1
        out_h = 0.1 * phi @ h + 0.5 * h * t[batch].unsqueeze(1)
        return remove_com(out_x, batch), out_h


def test_type_encoding_scales_round_trips_and_rejects_unknown_elements():
    enc = TypeEncoding([8, 1, 6, 6])
    assert enc.elements == (1, 6, 8) and enc.n_features == 4
    numbers = torch.tensor([6, 1, 8, 1])
    h = enc.encode(numbers)
    assert torch.allclose(h[0], torch.tensor([0.0, 0.25, 0.0, 0.6]))
    assert torch.equal(enc.decode(h), numbers)
    assert torch.equal(enc.decode(h + 0.05 * torch.randn(h.shape, generator=torch.Generator().manual_seed(0))), numbers)
    with pytest.raises(ValueError, match="not among the model's elements"):
        enc.encode(torch.tensor([1, 9]))
    with pytest.raises(ValueError, match="shape"):
        enc.decode(torch.zeros(3, 5))


def test_atom_count_distribution_samples_only_seen_sizes_with_their_frequencies():
    dist = AtomCountDistribution.from_counts([3, 3, 3, 5])
    draws = dist.sample(4000, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {3, 5}
    assert abs(float((draws == 3).float().mean()) - 0.75) < 0.03
    assert AtomCountDistribution(dist.histogram).histogram == dist.histogram
    with pytest.raises(ValueError, match="counts"):
        AtomCountDistribution.from_counts([])


def test_noise_is_com_free_and_follows_the_schedule():
    g = torch.Generator().manual_seed(1)
    positions, numbers, batch = _molecules(g)
    obj = GenerationObjective(ELEMENTS)
    noised = obj.noise(positions, numbers, batch, generator=g)
    centre = torch.zeros(3, 3, dtype=positions.dtype).index_add_(0, batch, noised["x_t"])
    assert torch.allclose(centre, torch.zeros_like(centre), atol=1e-10)
    a, s = noised["alpha"][batch, None], noised["sigma"][batch, None]
    assert torch.allclose(noised["h_t"], a * obj.encoding.encode(numbers, positions.dtype) + s * noised["eps_h"])
    assert torch.allclose(noised["alpha"] ** 2 + noised["sigma"] ** 2, torch.ones(3, dtype=positions.dtype))


@pytest.mark.parametrize("parameterization", ["eps", "velocity"])
def test_mse_loss_equals_the_noise_mse_formula(parameterization):
    """loss='mse' = [w · Σ|ε − ε̂|²/n + Σ|ε_h − ε̂_h|²/n] / (3 + F), computed here without the library."""
    g = torch.Generator().manual_seed(2)
    positions, numbers, batch = _molecules(g)
    obj = GenerationObjective(ELEMENTS, loss="mse", position_weight=0.7, max_weight=None,
                              parameterization=parameterization)
    noised = obj.noise(positions, numbers, batch, generator=g)
    out_x = remove_com(torch.randn(positions.shape, generator=g, dtype=positions.dtype), batch)
    out_h = torch.randn(noised["h0"].shape, generator=g, dtype=positions.dtype)
    x0 = positions - torch.stack([positions[batch == b].mean(0) for b in range(3)])[batch]
    h0 = torch.cat([torch.nn.functional.one_hot(torch.tensor([ELEMENTS.index(int(z)) for z in numbers]), 4) * 0.25,
                    numbers.unsqueeze(1) * 0.1], 1).to(positions.dtype)
    target_x = noised["eps"] - x0 if parameterization == "velocity" else noised["eps"]
    target_h = noised["eps_h"] - h0 if parameterization == "velocity" else noised["eps_h"]
    pos = sum(((out_x - target_x)[batch == b] ** 2).sum() / (batch == b).sum() for b in range(3)) / 3
    typ = sum(((out_h - target_h)[batch == b] ** 2).sum() / (batch == b).sum() for b in range(3)) / 3
    expected = (0.7 * pos + typ) / (3 + 5)
    assert torch.allclose(obj.loss(out_x, out_h, noised, batch), expected, rtol=1e-9)
    terms = obj.loss_terms(out_x, out_h, noised, batch)
    assert torch.allclose(terms["types"], typ / 8, rtol=1e-9)


def test_energy_term_vanishes_for_a_rotated_clean_prediction_and_mse_does_not():
    g = torch.Generator().manual_seed(3)
    positions, numbers, batch = _molecules(g)
    rot = _random_rotation(g)
    for loss, vanishes in (("energy", True), ("mse", False)):
        obj = GenerationObjective(ELEMENTS, loss=loss, max_weight=None)
        noised = obj.noise(positions, numbers, batch, generator=torch.Generator().manual_seed(4))
        a, s = noised["alpha"][batch, None], noised["sigma"][batch, None]
        out_x = (noised["x_t"] - a * (noised["x0"] @ rot.T)) / s  # implies x̂ = R x exactly
        term = obj.loss_terms(out_x, torch.zeros_like(noised["h0"]), noised, batch)["positions"]
        assert (float(term) < 1e-8) == vanishes


def test_loss_has_finite_gradients_and_checks_shapes():
    g = torch.Generator().manual_seed(5)
    positions, numbers, batch = _molecules(g)
    obj = GenerationObjective(ELEMENTS, loss="energy", loss_kwargs={"coefficient_kwargs": {"k0": 5.0}})
    noised = obj.noise(positions, numbers, batch, generator=g)
    out_x = torch.zeros_like(positions, requires_grad=True)
    out_h = torch.zeros_like(noised["h0"], requires_grad=True)
    obj.loss(out_x, out_h, noised, batch).backward()
    assert torch.isfinite(out_x.grad).all() and torch.isfinite(out_h.grad).all() and out_h.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="out_h"):
        obj.loss(out_x, out_h[:, :2], noised, batch)
    with pytest.raises(ValueError, match="parameterization"):
        GenerationObjective(ELEMENTS, parameterization="x0")


def _initial(generator, counts, n_features):
    batch = _batch(counts)
    x = remove_com(torch.randn(len(batch), 3, generator=generator, dtype=torch.float64), batch)
    return x, torch.randn(len(batch), n_features, generator=generator, dtype=torch.float64), batch


@pytest.mark.parametrize("reflect", [False, True])
def test_sampler_is_e3_equivariant(reflect):
    """Rotating (or reflecting) the initial noise rotates the samples and keeps the types (DDIM: deterministic)."""
    g = torch.Generator().manual_seed(6)
    obj = GenerationObjective(ELEMENTS)
    counts = torch.tensor([4, 6])
    x, h, _ = _initial(g, counts.tolist(), obj.n_features)
    rot = _random_rotation(g, reflect=reflect)
    den = EquivariantDenoiser(obj.n_features)
    z1, p1, b1 = obj.sample(den, counts, steps=20, method="ddim", initial=(x, h), dtype=torch.float64)
    z2, p2, b2 = obj.sample(den, counts, steps=20, method="ddim", initial=(x @ rot.T, h), dtype=torch.float64)
    assert torch.equal(z1, z2) and torch.equal(b1, b2)
    assert torch.allclose(p1 @ rot.T, p2, atol=1e-8)
    assert p1.abs().max() > 1e-3  # not trivially zero


def test_sampler_is_permutation_equivariant():
    g = torch.Generator().manual_seed(7)
    obj = GenerationObjective(ELEMENTS)
    counts = [5, 4]
    x, h, batch = _initial(g, counts, obj.n_features)
    perm = torch.cat([torch.randperm(5, generator=g), 5 + torch.randperm(4, generator=g)])
    den = EquivariantDenoiser(obj.n_features)
    z1, p1, _ = obj.sample(den, torch.tensor(counts), steps=15, method="ddim", initial=(x, h), dtype=torch.float64)
    z2, p2, _ = obj.sample(den, torch.tensor(counts), steps=15, method="ddim", initial=(x[perm], h[perm]),
                           dtype=torch.float64)
    assert torch.equal(z1[perm], z2)
    assert torch.allclose(p1[perm], p2, atol=1e-10)


@pytest.mark.parametrize("parameterization,method", [("eps", "ancestral"), ("eps", "ddim"), ("velocity", None)])
def test_samples_are_com_free_atoms_with_model_elements(parameterization, method):
    obj = GenerationObjective(ELEMENTS, parameterization=parameterization)
    counts = AtomCountDistribution.from_counts([3, 4, 4, 9])
    den = EquivariantDenoiser(obj.n_features)
    g = torch.Generator().manual_seed(8)
    numbers, positions, batch = obj.sample(den, counts.sample(6, generator=g), steps=10, method=method, generator=g)
    centre = torch.zeros(6, 3).index_add_(0, batch, positions)  # float32: relative to the sample's size
    assert centre.abs().max() <= 1e-5 * max(1.0, float(positions.abs().max()))
    atoms = to_atoms(numbers, positions, batch)
    assert len(atoms) == 6 and all(len(a) in (3, 4, 9) for a in atoms)
    assert {int(z) for a in atoms for z in a.numbers} <= set(ELEMENTS)
    assert all(math.isfinite(float(a.positions.sum())) for a in atoms)


def test_sample_molecules_is_reproducible_with_a_seed_and_batches():
    obj = GenerationObjective(ELEMENTS)
    counts = AtomCountDistribution.from_counts([3, 5, 6])
    den = EquivariantDenoiser(obj.n_features)
    a = sample_molecules(obj, den, counts, 7, steps=5, seed=3, batch_size=3, progress=False)
    b = sample_molecules(obj, den, counts, 7, steps=5, seed=3, batch_size=3, progress=False)
    c = sample_molecules(obj, den, counts, 7, steps=5, seed=4, batch_size=3, progress=False)
    assert len(a) == 7
    assert all((x.numbers == y.numbers).all() and (x.positions == y.positions).all() for x, y in zip(a, b, strict=True))
    assert any(len(x) != len(y) or not (x.positions == y.positions).all() for x, y in zip(a, c, strict=True))


def test_sampler_rejects_bad_requests():
    obj = GenerationObjective(ELEMENTS)
    den = EquivariantDenoiser(obj.n_features)
    with pytest.raises(ValueError, match="euler"):
        obj.sample(den, torch.tensor([3]), steps=2, method="euler")
    with pytest.raises(ValueError, match="sampler"):
        obj.sample(den, torch.tensor([3]), steps=2, method="heun")
    with pytest.raises(ValueError, match="n_atoms"):
        obj.sample(den, torch.tensor([0, 3]), steps=2)


def test_atom_counts_from_molecules_count_sizes_and_refuse_unknown_elements():
    molecules = [torch.tensor([8, 1, 1]), torch.tensor([6, 1, 1, 1, 1]), torch.tensor([7, 1, 1, 1]),
                 torch.tensor([6, 8, 1, 1])]
    counts = AtomCountDistribution.from_molecules(iter(molecules), ELEMENTS)
    assert counts.histogram == [0.0, 0.0, 0.0, 1.0, 2.0, 1.0]
    assert counts.histogram == AtomCountDistribution.from_counts([len(z) for z in molecules]).histogram
    # an element outside the model's: the error names it, the model's elements and how to set them
    with pytest.raises(ValueError, match=r"elements \[9, 16\] outside elements=\[1, 6, 7, 8\]; "
                                         r"pass elements=\[1, 6, 8, 9, 16\]"):
        AtomCountDistribution.from_molecules([torch.tensor([9, 6, 1]), torch.tensor([16, 8, 1])], ELEMENTS)
    # validation/test molecules are checked (their elements in the fix) but not counted
    with pytest.raises(ValueError, match=r"elements \[17\] outside --elements 1,6,7,8; pass --elements 1,6,7,8,17"):
        AtomCountDistribution.from_molecules(molecules, ELEMENTS, others=[torch.tensor([17, 6])],
                                             setting=lambda zs: "--elements " + ",".join(map(str, zs)))
    counted = AtomCountDistribution.from_molecules(molecules, ELEMENTS, others=[torch.tensor([6] * 9)])
    assert counted.histogram == counts.histogram
    with pytest.raises(ValueError, match="counts"):
        AtomCountDistribution.from_molecules([], ELEMENTS)


def test_eval_generator_repeats_per_batch_and_differs_across_batches_and_ranks():
    def draw(*args):
        return torch.randn(8, generator=eval_generator(*args))

    assert torch.equal(draw(1234, 3, 0), draw(1234, 3, 0))  # same batch, every epoch
    # a single process: seed + batch index (TorchMD-Net's earlier seeding); rank r: + 100003 r (SchNetPack's)
    assert torch.equal(draw(1234, 3, 0), torch.randn(8, generator=torch.Generator().manual_seed(1237)))
    assert torch.equal(draw(1234, 3, 2), torch.randn(8, generator=torch.Generator().manual_seed(1237 + 2 * 100003)))
    assert not torch.equal(draw(1234, 3, 0), draw(1234, 4, 0))
    assert not torch.equal(draw(1234, 3, 0), draw(1234, 3, 1))  # DDP ranks draw different noise


def test_time_features_are_t_and_its_sines_and_cosines():
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    freqs = torch.tensor([1.0, 3.0], dtype=torch.float32)
    f = time_features(t, freqs)
    assert f.shape == (3, 5) and f.dtype == torch.float32
    for row, tau in zip(f.double(), t.tolist(), strict=True):
        expected = [tau, math.sin(tau), math.sin(3 * tau), math.cos(tau), math.cos(3 * tau)]
        assert torch.allclose(row, torch.tensor(expected, dtype=torch.float64), atol=1e-6)


def test_sample_with_model_restores_the_mode_and_names_the_missing_histogram():
    obj = GenerationObjective(ELEMENTS)
    den = EquivariantDenoiser(obj.n_features)
    model = torch.nn.Linear(2, 2).double().train()
    modes = []

    def denoiser(x, h, t, batch):
        modes.append(model.training)
        assert x.dtype == torch.float64  # the model's dtype
        return den(x, h, t, batch)

    counts = AtomCountDistribution.from_counts([3, 4])
    mols = sample_with_model(model, obj, denoiser, counts, 3, how_to_count="pass atom_counts", steps=3, seed=0,
                             progress=False)
    again = sample_molecules(obj, den, counts, 3, steps=3, seed=0, progress=False, dtype=torch.float64)
    assert len(mols) == 3 and modes and not any(modes) and model.training
    assert all((a.positions == b.positions).all() for a, b in zip(mols, again, strict=True))
    with pytest.raises(ValueError, match="no atom-count histogram.*pass atom_counts"):
        sample_with_model(model, obj, denoiser, None, 3, how_to_count="pass atom_counts", steps=3, progress=False)

    def failing(x, h, t, batch):
        raise RuntimeError("denoiser failed")

    with pytest.raises(RuntimeError, match="denoiser failed"):
        sample_with_model(model, obj, failing, counts, 1, how_to_count="", steps=2, progress=False)
    assert model.training  # restored after a failure too
