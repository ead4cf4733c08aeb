"""Diffusion and flow matching: implied clean samples, weights, centre of mass, samplers."""

from __future__ import annotations

import pytest
import torch

from energyloss_plugins.diffusion import NoiseSchedule, diffusion_loss, noise_batch, predicted_x0, remove_com, sample
from energyloss_plugins.layouts import segment_mean
from energyloss_plugins.tasks import DiffusionObjective

BATCH = torch.repeat_interleave(torch.arange(3), torch.tensor([5, 9, 12]))


def true_output(noised, parameterization):
    a, s = noised["alpha"][BATCH].unsqueeze(1), noised["sigma"][BATCH].unsqueeze(1)
    return {"eps": noised["eps"], "v": a * noised["eps"] - s * noised["x0"],
            "x0": noised["x0"], "velocity": noised["eps"] - noised["x0"]}[parameterization]


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0", "velocity"])
def test_implied_sample_and_weights_reproduce_the_usual_objective(parameterization):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH.shape[0], 3, dtype=torch.float64, generator=g)
    noised = noise_batch(x, BATCH, NoiseSchedule("cosine"), generator=g, flow_matching=parameterization == "velocity")
    assert torch.allclose(segment_mean(noised["x_t"], BATCH, 3), torch.zeros(3, 3, dtype=torch.float64), atol=1e-12)
    truth = true_output(noised, parameterization)
    x_hat, w = predicted_x0(truth, noised["x_t"], BATCH, noised["alpha"], noised["sigma"], parameterization)
    assert torch.allclose(x_hat, noised["x0"], atol=1e-9)
    # With the MSE as "energy", w_t |x̂ − x|² equals |output − true output|² per structure.
    output = truth + 0.1 * torch.randn(truth.shape, dtype=torch.float64, generator=g)
    per_structure = torch.zeros(3, dtype=torch.float64).index_add_(0, BATCH, ((output - truth) ** 2).sum(-1))
    ours = diffusion_loss(output, noised, BATCH, loss="mse", parameterization=parameterization, max_weight=None,
                          loss_kwargs={"normalize": False})
    assert torch.allclose(ours, per_structure.mean(), rtol=1e-8)
    # The energy version is zero at the true output, positive elsewhere, and rotation-blind.
    assert float(diffusion_loss(truth, noised, BATCH, parameterization=parameterization)) < 1e-12
    assert float(diffusion_loss(output, noised, BATCH, parameterization=parameterization)) > 0


def test_remove_com_and_samplers_stay_centred_and_finite():
    x = torch.randn(BATCH.shape[0], 3)
    assert torch.allclose(segment_mean(remove_com(x, BATCH), BATCH, 3), torch.zeros(3, 3), atol=1e-6)

    target = remove_com(torch.randn(BATCH.shape[0], 3, generator=torch.Generator().manual_seed(1)), BATCH)
    schedule = NoiseSchedule()

    def oracle(x_t, t, batch):  # a perfect ε-model for a single point mass at `target`
        a, s = schedule.alpha_sigma(t)
        return (x_t - a[batch].unsqueeze(1) * target) / s[batch].unsqueeze(1)

    for method in ("ancestral", "ddim"):
        generator = torch.Generator().manual_seed(0)
        out = sample(oracle, BATCH, steps=50, method=method, schedule=schedule, generator=generator)
        assert torch.allclose(out, target, atol=1e-3)
    velocity = lambda x_t, t, batch: (x_t - target) / t[batch].unsqueeze(1).clamp_min(1e-6)  # noqa: E731
    out = sample(velocity, BATCH, steps=50, method="euler", parameterization="velocity")
    assert torch.allclose(out, target, atol=1e-4)


def test_objective_trains_a_denoiser_with_the_energy_loss():
    torch.manual_seed(0)
    objective = DiffusionObjective(loss="energy", parameterization="eps")
    x0 = torch.randn(BATCH.shape[0], 3)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.SiLU(), torch.nn.Linear(32, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        noised = objective.noise(x0, BATCH)
        out = net(torch.cat([noised["x_t"], noised["t"][BATCH].unsqueeze(1)], 1))
        loss = objective.loss(out, noised, BATCH)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])


def test_objectives_take_stored_springs_with_coefficients_hessian():
    from energyloss_plugins import pair_energy_loss
    from energyloss_plugins.graphs import build_pairs
    from energyloss_plugins.tasks import StructureObjective

    g = torch.Generator().manual_seed(2)
    target = torch.randn(BATCH.shape[0], 3, dtype=torch.float64, generator=g)
    pred = target + 0.2 * torch.randn(target.shape, dtype=torch.float64, generator=g)
    pairs = build_pairs("complete", target, BATCH, 3).materialize()
    k = torch.rand(pairs.shape[1], dtype=torch.float64, generator=g)
    objective = StructureObjective("energy", {"coefficients": "hessian", "graph": "complete"})
    assert objective.needs_springs
    expected = pair_energy_loss(pred, target, BATCH, edge_index=pairs, coefficients=k)
    assert torch.allclose(objective.loss(pred, target, BATCH, springs=(pairs, k)), expected)
    with pytest.raises(ValueError, match="add_springs_to_db"):
        objective.loss(pred, target, BATCH)
    assert not StructureObjective("mse", {"coefficients": "hessian"}).needs_springs
