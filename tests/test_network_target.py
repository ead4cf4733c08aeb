"""energyloss_plugins.diffusion.network_target: the exact inverse of predicted_x0."""

from __future__ import annotations

import pytest
import torch

from energyloss_plugins.diffusion import NoiseSchedule, network_target, noise_batch, predicted_x0

BATCH = torch.repeat_interleave(torch.arange(3), torch.tensor([4, 7, 10]))


@pytest.mark.parametrize("parameterization", ["eps", "v", "x0", "velocity"])
def test_network_target_is_what_predicted_x0_inverts(parameterization):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH.shape[0], 3, dtype=torch.float64, generator=g)
    noised = noise_batch(x, BATCH, NoiseSchedule("cosine"), generator=g, flow_matching=parameterization == "velocity")
    target = network_target(noised, BATCH, parameterization)
    x_hat, _ = predicted_x0(target, noised["x_t"], BATCH, noised["alpha"], noised["sigma"], parameterization)
    assert torch.allclose(x_hat, noised["x0"], atol=1e-9)
    # and the definitions written out: x_t = α x + σ ε, v = α ε − σ x, u = ε − x
    a, s = noised["alpha"][BATCH, None], noised["sigma"][BATCH, None]
    assert torch.allclose(noised["x_t"], a * noised["x0"] + s * noised["eps"], atol=1e-12)
    expected = {"eps": noised["eps"], "v": a * noised["eps"] - s * noised["x0"], "x0": noised["x0"],
                "velocity": noised["eps"] - noised["x0"]}[parameterization]
    assert torch.allclose(target, expected, atol=1e-12)


def test_network_target_names_valid_parameterizations():
    noised = noise_batch(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="parameterization"):
        network_target(noised, torch.zeros(4, dtype=torch.long), "score")


def test_schnetpack_output_uses_the_core_target():
    pytest.importorskip("schnetpack")
    from schnetpack_ext import DiffusionOutput, EnergyLoss

    noised = noise_batch(torch.randn(BATCH.shape[0], 3), BATCH, flow_matching=False)
    out = DiffusionOutput(loss_fn=EnergyLoss(), parameterization="v")
    assert torch.equal(out.network_target(noised, BATCH), network_target(noised, BATCH, "v"))
