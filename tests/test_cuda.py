"""The core's CUDA paths agree with its CPU paths (skipped where no CUDA device is present).

Run on a GPU machine with ``python -m pytest -q tests/test_cuda.py``; CI has no GPU, so there the
module is skipped as a whole.
"""

from __future__ import annotations

import pytest
import torch

from energyloss_plugins import PairEnergyLoss, kabsch_mse_loss, mae_loss, mse_loss, pair_energy_loss
from energyloss_plugins.diffusion import NoiseSchedule, diffusion_loss, noise_batch, sample

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _molecules(sizes, seed=0, noise=0.3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    target = torch.cat([torch.randn(n, 3, generator=g, dtype=dtype) * n ** (1 / 3) for n in sizes])
    pred = target + noise * torch.randn(target.shape, generator=g, dtype=dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return pred, target, batch


def _value_and_grad(fn, pred, *args, **kwargs):
    pred = pred.detach().clone().requires_grad_()
    value = fn(pred, *args, **kwargs)
    (grad,) = torch.autograd.grad(value.sum(), pred)
    return value.detach().cpu(), grad.cpu()


@pytest.mark.parametrize("options", [
    {"coefficients": "exp"},
    {"coefficients": "inverse_square", "graph": "radius", "graph_kwargs": {"cutoff": 4.0}},
    {"coefficients": "constant", "graph": "rigid_sparse", "graph_kwargs": {"seed": 3, "pool_size": 1}},
    {"coefficients": "exp", "reduction": "none", "normalize": False},
])
def test_pair_energy_cuda_matches_cpu(options):
    pred, target, batch = _molecules([5, 17, 29, 2])
    v_cpu, g_cpu = _value_and_grad(pair_energy_loss, pred, target, batch, **options)
    v_gpu, g_gpu = _value_and_grad(pair_energy_loss, pred.cuda(), target.cuda(), batch.cuda(), **options)
    torch.testing.assert_close(v_gpu, v_cpu, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-9, atol=1e-12)


def test_chunked_complete_graph_cuda_matches_unchunked():
    """A structure larger than one chunk: chunking must not change value or gradient."""
    pred, target, batch = _molecules([3000], dtype=torch.float64)
    pred, target, batch = pred.cuda(), target.cuda(), batch.cuda()
    v_small, g_small = _value_and_grad(pair_energy_loss, pred, target, batch, chunk_size=2**16)
    v_big, g_big = _value_and_grad(pair_energy_loss, pred, target, batch, chunk_size=2**24)
    torch.testing.assert_close(v_small, v_big, rtol=1e-10, atol=0)
    torch.testing.assert_close(g_small, g_big, rtol=1e-9, atol=1e-12)


def test_cuda_loss_invariant_under_rigid_motion():
    pred, target, batch = _molecules([12, 20], dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    moved = pred @ q.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    a = pair_energy_loss(pred.cuda(), target.cuda(), batch.cuda())
    b = pair_energy_loss(moved.cuda(), target.cuda(), batch.cuda())
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_baselines_cuda_match_cpu():
    pred, target, batch = _molecules([7, 11, 4])
    for fn in (mse_loss, mae_loss, kabsch_mse_loss):
        v_cpu, g_cpu = _value_and_grad(fn, pred, target, batch)
        v_gpu, g_gpu = _value_and_grad(fn, pred.cuda(), target.cuda(), batch.cuda())
        torch.testing.assert_close(v_gpu, v_cpu, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-8, atol=1e-12)


def test_autocast_bf16_on_cuda_computes_float32():
    pred, target, batch = _molecules([9, 13], dtype=torch.float32)
    pred = pred.cuda().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        value = PairEnergyLoss()(pred.to(torch.bfloat16), target.cuda().to(torch.bfloat16), batch.cuda())
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(pred.grad).all()


def test_coincident_atoms_finite_gradient_cuda():
    pred, target, batch = _molecules([6])
    pred[1] = pred[0]
    _, grad = _value_and_grad(pair_energy_loss, pred.cuda(), target.cuda(), batch.cuda())
    assert torch.isfinite(grad).all()


def test_diffusion_loss_and_sampler_on_cuda():
    pred, target, batch = _molecules([5, 8], dtype=torch.float32)
    target, batch = target.cuda(), batch.cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    noised = noise_batch(target, batch, NoiseSchedule(), generator=g)
    out = torch.zeros_like(noised["x_t"], requires_grad=True)
    loss = diffusion_loss(out, noised, batch)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.grad).all()
    x = sample(lambda x_t, t, b: torch.zeros_like(x_t), batch, steps=5, generator=g)
    assert x.device.type == "cuda" and torch.isfinite(x).all()
    com = torch.zeros(2, 3, device="cuda").index_add_(0, batch, x)
    torch.testing.assert_close(com, torch.zeros_like(com), atol=1e-5 * float(x.abs().max()) * len(x), rtol=0)


def test_spin_losses_cuda_match_cpu():
    from energyloss_plugins.spins import (
        cross_entropy_spin_loss,
        local_field_free_energy_loss,
        margin_spin_loss,
        random_couplings,
    )

    couplings = random_couplings(6, 3, seed=0).double()
    g = torch.Generator().manual_seed(1)
    spins = torch.where(torch.rand(3, 6, 6, generator=g) < 0.5, -1.0, 1.0).double()
    logits = torch.randn(3, 6, 6, generator=g, dtype=torch.float64)
    for fn in (local_field_free_energy_loss, cross_entropy_spin_loss, margin_spin_loss):
        args = (spins, couplings) if fn is local_field_free_energy_loss else (spins,)
        v_cpu, g_cpu = _value_and_grad(fn, logits, *args)
        v_gpu, g_gpu = _value_and_grad(fn, logits.cuda(), *(a.cuda() for a in args))
        torch.testing.assert_close(v_gpu, v_cpu, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-9, atol=1e-12)


def test_lean_kernel_on_cuda_compiles_and_matches_validated_cpu_path():
    from energyloss_plugins import pair_energy_kernel, resolve_springs

    pred, target, batch = _molecules([5, 9, 12, 30])
    ref = _value_and_grad(pair_energy_loss, pred, target, batch)
    s = resolve_springs(target.cuda(), batch.cuda())

    def lean(p):
        return pair_energy_kernel(p, s.distances, s.pairs, s.springs, s.batch, s.n_structures, validate_args=False)

    compiled = torch.compile(lean, fullgraph=True)
    for fn in (lean, compiled, compiled):  # the second compiled call runs the cached graph
        value, grad = _value_and_grad(fn, pred.cuda())
        torch.testing.assert_close(value, ref[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, ref[1], rtol=1e-11, atol=1e-14)
