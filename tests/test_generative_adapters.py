"""The generative pieces both adapters take from the core: validation noise, time embeddings, loss smoothing."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("schnetpack")
pytest.importorskip("torchmdnet")

from _steps import molecule_db, schnetpack_batch, schnetpack_task, torchmd_batch, torchmd_module  # noqa: E402
from energyloss_plugins.diffusion import eval_generator  # noqa: E402


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return molecule_db(str(tmp_path_factory.mktemp("shared_db")))


def _torchmd_validation_noise(module, batch, batch_idx):
    """The noised batch of ``module``'s validation step ``batch_idx`` (recorded from its objective)."""
    seen = []
    noise = module.objective.noise
    module.objective.noise = lambda *args, **kwargs: seen.append(noise(*args, **kwargs)) or seen[-1]
    try:
        module.eval()
        module.validation_step(batch.clone(), batch_idx)
    finally:
        del module.objective.noise
    (noised,) = seen
    return noised


def test_both_adapters_draw_the_same_validation_noise_for_the_same_seed_and_batch(db):
    task = schnetpack_task("generation", "mse")
    module = torchmd_module("generation", "mse")
    assert task.val_seed == 1234  # TorchMD-Net's VAL_SEED
    spk_batch = schnetpack_batch(db, "generation", "mse", springs=False)
    tmd_batch = torchmd_batch("generation", "mse", springs=False)
    spk_noised = task._prepare(spk_batch, 3, "val")[1]["_noised"]
    tmd_noised = _torchmd_validation_noise(module, tmd_batch, 3)
    for key in ("t", "eps", "eps_h"):
        assert torch.equal(spk_noised[key], tmd_noised[key]), key
    # every epoch the same noise for a batch, another batch other noise
    assert torch.equal(_torchmd_validation_noise(module, tmd_batch, 3)["eps"], tmd_noised["eps"])
    assert not torch.equal(_torchmd_validation_noise(module, tmd_batch, 4)["eps"], tmd_noised["eps"])
    # the noise is the core's: the times are the first draw of eval_generator(seed, batch index, rank 0)
    expected_t = torch.rand(len(spk_batch["_n_atoms"]), generator=eval_generator(1234, 3, 0))
    assert torch.equal(spk_noised["t"], expected_t)


def test_time_embeddings_compute_the_earlier_formula():
    from schnetpack_ext import TimeEmbedding
    from torchmdnet_ext.heads import _TimeEmbedding

    torch.manual_seed(0)
    t = torch.rand(3)
    idx_m = torch.tensor([0, 0, 1, 2, 2])
    spk = TimeEmbedding(8, n_frequencies=4)
    q = torch.zeros(5, 1, 8)
    t_atoms = t[idx_m].unsqueeze(-1)  # the formula before the core's time_features
    angles = t_atoms * spk.frequencies
    old = spk.net(torch.cat([t_atoms, torch.sin(angles), torch.cos(angles)], dim=-1)).reshape(q.shape)
    assert torch.allclose(spk(q, {"diffusion_t": t, "_idx_m": idx_m}), old, atol=1e-6)

    tmd = _TimeEmbedding(8, "silu", torch.float32, n_freq=4)
    angles = t.unsqueeze(-1) * tmd.freqs
    old = tmd.mlp(torch.cat([t.unsqueeze(-1), angles.sin(), angles.cos()], dim=-1))
    assert torch.allclose(tmd(t), old, atol=1e-6)


def test_torchmdnet_loss_smoothing_matches_upstream_lnnp():
    from torchmdnet.module import LNNP

    module = torchmd_module("generation", "mse")
    module.hparams.ema_alpha_y = 0.3
    losses = [torch.tensor(v) for v in (2.0, 1.0, 4.0, 0.5)]
    for stage in ("train", "val", "test"):
        for value in losses:
            ours = module.smooth_loss(stage, "mse_loss", value)
            upstream = LNNP._update_loss_with_ema(module, stage, "y", "mse_loss", value)  # the reference
            assert torch.allclose(ours, upstream)
    assert torch.equal(module.smooth_loss("test", "mse_loss", losses[0]), losses[0])  # test losses: not smoothed
    module.hparams.ema_alpha_y = 1.0
    assert torch.equal(module.smooth_loss("train", "mse_loss", losses[2]), losses[2])
