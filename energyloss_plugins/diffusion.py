"""Diffusion and flow matching with the energy loss (SPEC §3), in the flat layout.

Variance-preserving diffusion: x_t = α_t x + σ_t ε with α_t² + σ_t² = 1, t ∈ [0, 1].
Whatever the network predicts (ε, v, x0, or a flow-matching velocity), the implied clean sample x̂
is recovered and the loss is w_t · E(x̂, x), where w_t makes it equal to the usual MSE objective
when E is the MSE: α²/σ² for ε, 1/σ² for v, 1 for x0, 1/t² for flow-matching velocity.

Molecular positions live in the zero-centre-of-mass subspace: noise is sampled there and the
samplers project every step onto it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.layouts import segment_mean, structure_index
from energyloss_plugins.losses import call_loss

PARAMETERIZATIONS = ("eps", "v", "x0", "velocity")
SCHEDULES = ("cosine", "polynomial")

#: Denoiser signature: ``fn(x_t (N, d), t (B,), batch (N,)) -> (N, d)`` model output.
Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]


def remove_com(x: Tensor, batch: Tensor, n_structures: int | None = None, *, validate_args: bool = True) -> Tensor:
    """Project ``(N, d)`` positions onto zero centre of mass (unweighted mean) per structure.

    With ``n_structures`` and ``validate_args=False`` nothing is read back to the host.
    """
    batch, n_structures = structure_index(batch, n_structures, validate_args=validate_args)
    return x - segment_mean(x, batch, n_structures)[batch]


def com_free_noise(like: Tensor, batch: Tensor, generator: torch.Generator | None = None, *,
                   n_structures: int | None = None, validate_args: bool = True) -> Tensor:
    """Gaussian noise ``(N, d)`` projected onto the zero-centre-of-mass subspace of each structure."""
    eps = torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)
    return remove_com(eps, batch, n_structures, validate_args=validate_args)


@dataclass
class NoiseSchedule:
    """Variance-preserving schedule α_t, σ_t on continuous t ∈ [0, 1].

    Args:
        kind: ``cosine`` (Nichol & Dhariwal) or ``polynomial`` (EDM: α_t² = (1 − t²)², squeezed by ``precision``).
        precision: keeps α_1 > 0 and σ_0 > 0 so every weight stays finite.
    """

    kind: str = "polynomial"
    precision: float = 1e-4

    def __post_init__(self):
        _checks.check_choice("noise schedule", self.kind, SCHEDULES)
        _checks.check_number("precision", self.precision, low=0.0, high=0.5, high_inclusive=False)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """α_t and σ_t for ``t`` in [0, 1] (any shape)."""
        if self.kind == "cosine":
            s = 0.008
            f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
            alpha2 = f.clamp(0.0, 1.0)
        else:
            alpha2 = (1 - t**2) ** 2
        alpha2 = (1 - 2 * self.precision) * alpha2 + self.precision
        return alpha2.sqrt(), (1 - alpha2).sqrt()


def noise_batch(x0: Tensor, batch: Tensor, schedule: NoiseSchedule | None = None, t: Tensor | None = None,
                n_structures: int | None = None, generator: torch.Generator | None = None,
                flow_matching: bool = False, validate_args: bool = True) -> dict[str, Tensor]:
    """Noise a clean flat batch for training.

    Args:
        x0: ``(N, d)`` clean positions (Å); centred per structure here.
        batch: ``(N,)`` structure index.
        t: ``(B,)`` times in [0, 1]; default uniform.
        flow_matching: use the linear path x_t = (1 − t) x + t ε instead of the VP schedule.
        validate_args: value checks (finite positions, ids and times in range). Off, with
            ``n_structures``, nothing is read back to the host (a training step).

    Returns:
        dict with ``x0`` (centred), ``x_t``, ``eps`` ``(N, d)`` and ``t``, ``alpha``, ``sigma`` ``(B,)``.
    """
    if validate_args:
        _checks.check_positions("x0", x0, 2)
        _checks.check_batch(batch, x0.shape[0])
        if t is not None:
            _check_times("t", t)
    # Structures are the distinct ids (renumbered 0..B-1 if there are gaps): nothing is allocated by the largest id.
    batch, n_structures = structure_index(batch, n_structures, validate_args=validate_args)
    x0 = remove_com(x0, batch, n_structures, validate_args=False)
    if t is None:
        t = torch.rand(n_structures, dtype=x0.dtype, device=x0.device, generator=generator)
    eps = com_free_noise(x0, batch, generator, n_structures=n_structures, validate_args=False)
    if flow_matching:
        alpha, sigma = 1 - t, t
    else:
        alpha, sigma = (schedule or NoiseSchedule()).alpha_sigma(t)
    x_t = alpha[batch].unsqueeze(1) * x0 + sigma[batch].unsqueeze(1) * eps
    return {"x0": x0, "x_t": x_t, "eps": eps, "t": t, "alpha": alpha, "sigma": sigma}


def _check_times(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a (B,) tensor of times in [0, 1], got {type(t).__name__}.")
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        bad = t[~((t >= 0) & (t <= 1))]
        raise ValueError(f"{name} must lie in [0, 1] (0: clean data, 1: pure noise), "
                         f"got values such as {bad[0].item()}.")


def predicted_x0(output: Tensor, x_t: Tensor, batch: Tensor, alpha: Tensor, sigma: Tensor,
                 parameterization: str) -> tuple[Tensor, Tensor]:
    """The clean sample x̂ implied by a model output, and the per-structure weight w_t ``(B,)``.

    ``alpha``/``sigma`` are ``(B,)``; for ``velocity`` (flow matching) pass α = 1 − t, σ = t.
    With these weights, w_t · |x̂ − x|² equals the usual objective |output − true output|².
    """
    _checks.check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    a, s = alpha[batch].unsqueeze(1), sigma[batch].unsqueeze(1)
    if parameterization == "eps":
        return (x_t - s * output) / a, alpha**2 / sigma**2
    if parameterization == "v":  # v = α ε − σ x  ⇒  x = α x_t − σ v
        return a * x_t - s * output, 1 / sigma**2
    if parameterization == "velocity":  # u = ε − x, x_t = (1 − t) x + t ε  ⇒  x = x_t − t u
        return x_t - s * output, 1 / sigma**2
    return output, torch.ones_like(alpha)


def network_target(noised: Mapping[str, Tensor], batch: Tensor, parameterization: str) -> Tensor:
    """What a perfect network outputs for a noised batch ``(N, d)``: the inverse of :func:`predicted_x0`.

    ``noised`` is the dict of :func:`noise_batch`. ε for ``eps``, v = α ε − σ x for ``v``, x for ``x0``
    and u = ε − x for ``velocity`` (flow matching, where α = 1 − t, σ = t). Feeding it to
    :func:`predicted_x0` returns ``noised["x0"]``.
    """
    _checks.check_choice("parameterization", parameterization, PARAMETERIZATIONS)
    x0, eps = noised["x0"], noised["eps"]
    if parameterization == "eps":
        return eps
    if parameterization == "v":
        a, s = noised["alpha"][batch].unsqueeze(1), noised["sigma"][batch].unsqueeze(1)
        return a * eps - s * x0
    if parameterization == "velocity":
        return eps - x0
    return x0


def time_features(t: Tensor, frequencies: Tensor) -> Tensor:
    """Sinusoidal features [t, sin(ω t), cos(ω t)] ``(..., 2K + 1)`` of diffusion times t ``(...)`` ∈ [0, 1].

    ``frequencies`` ω ``(K,)`` (a module buffer of each adapter's time embedding); the result has its dtype.
    """
    t = t.unsqueeze(-1).to(frequencies.dtype)
    angles = t * frequencies
    return torch.cat([t, angles.sin(), angles.cos()], dim=-1)


#: Stride between the validation-noise seeds of two processes (a prime above any epoch's batch count).
RANK_SEED_STRIDE = 100003


def eval_generator(seed: int, batch_idx: int, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of the validation/test noise of batch ``batch_idx`` on process ``rank`` (both adapters).

    The same batch gets the same noise every epoch, so validation losses are comparable across epochs.
    The process rank is mixed in so that under DDP (each rank holding different molecules) the ranks do
    not draw the same noise for their i-th batches; a single process (rank 0) draws ``seed + batch_idx``.
    ``batch_idx`` and ``rank`` are Python ints (Lightning's), so nothing is read from the device.
    """
    return torch.Generator(device=device).manual_seed(int(seed) + int(batch_idx) + RANK_SEED_STRIDE * int(rank))


#: A per-structure loss ``fn(x_hat (N, d), x0 (N, d), batch (N,), n_structures) -> (B,)``.
PerStructureLoss = Callable[[Tensor, Tensor, Tensor, int], Tensor]


def diffusion_loss(output: Tensor, noised: Mapping[str, Tensor], batch: Tensor, *,
                   loss: str | PerStructureLoss = "energy", parameterization: str = "eps",
                   max_weight: float | None = 1e3, loss_kwargs: Mapping | None = None,
                   n_structures: int | None = None, validate_args: bool = True) -> Tensor:
    """One-call diffusion/flow-matching loss on a noised batch: mean_b w_t(b) · L(x̂_b, x_b).

    Args:
        output: ``(N, d)`` model output for ``noised["x_t"]``.
        noised: the dict of :func:`noise_batch`.
        loss: ``energy`` (the pair energy) or a baseline name (``mse``, ``mae``, ``kabsch``), or a
            per-structure loss (what :class:`energyloss_plugins.tasks.DiffusionObjective` passes).
        max_weight: clip w_t (at t → 0 the weight of an ε-model diverges; EDM-style training clips
            or uses L_simple). None disables.
        loss_kwargs: passed to a loss by name (coefficients, graph, numbers, ...).
        n_structures, validate_args: as in :func:`noise_batch` (a training step: B and False).
    """
    if max_weight is not None:
        _checks.check_number("max_weight", max_weight, low=0.0)
    if validate_args:
        # Check what the caller passed before the loss sees the derived x̂ (it would blame ``pred``).
        _checks.check_positions("output", output, 2)
        for key in ("x_t", "x0"):
            _checks.check_positions(f"noised[{key!r}]", noised[key], 2)
        if max_weight is None and parameterization in ("eps", "v", "velocity") and bool((noised["sigma"] == 0).any()):
            raise ValueError(
                "max_weight=None with noise level sigma = 0 (t = 0 in flow matching) gives an infinite weight "
                "w_t (NaN loss); pass a max_weight (e.g. 1e3) or draw t in (0, 1]."
            )
    # The same renumbering as noise_batch's.
    batch, n_structures = structure_index(batch, n_structures, validate_args=validate_args)
    x_hat, weight = predicted_x0(output, noised["x_t"], batch, noised["alpha"], noised["sigma"], parameterization)
    if max_weight is not None:
        weight = weight.clamp(max=max_weight)
    if callable(loss):
        per_structure = loss(x_hat, noised["x0"], batch, n_structures)
    else:
        options = {**dict(loss_kwargs or {}), "reduction": "none"}
        per_structure = call_loss(loss, x_hat, noised["x0"], batch, n_structures=n_structures,
                                  validate_args=validate_args, **options)
    if per_structure.numel() == 0:
        return output.sum() * 0.0
    return (weight.detach().to(per_structure.dtype) * per_structure).mean()


def reverse_step(x: Tensor, output: Tensor, batch: Tensor, t: Tensor, s: Tensor, *, method: str = "ancestral",
                 parameterization: str = "eps", schedule: NoiseSchedule | None = None, noise: Tensor | None = None,
                 final: bool = False) -> Tensor:
    """One sampler step from time ``t`` to ``s < t`` (0-d tensors) for any per-atom state ``x`` ``(N, F)``.

    Args:
        output: the denoiser's output for ``x`` at ``t``, in ``parameterization``.
        method: ``ancestral`` (DDPM posterior), ``ddim`` (deterministic, η = 0) or ``euler`` (flow matching).
        noise: standard normal like ``x`` for the ancestral step (centre-of-mass free for positions);
            unused by the other methods and by the final step.
        final: the last step, which returns the implied clean sample x̂ itself.

    Shared by :func:`sample` (positions) and :mod:`energyloss_plugins.generation` (positions and types).
    """
    if not isinstance(output, Tensor) or output.shape != x.shape:
        # (N, 1) or (1, 3) would broadcast into a plausible but wrong sample
        raise ValueError(f"The denoiser returned {_checks.describe(output)}; it must return one {x.shape[-1]}-vector "
                         f"per atom, shape {tuple(x.shape)} like its input x_t.")
    if method == "euler":
        return x - (t - s) * output
    schedule = schedule or NoiseSchedule()
    a_t, s_t = schedule.alpha_sigma(t)
    a_s, s_s = schedule.alpha_sigma(s)
    batch, n_structures = structure_index(batch)
    x0_hat, _ = predicted_x0(output, x, batch, a_t.expand(n_structures), s_t.expand(n_structures), parameterization)
    if final:
        return x0_hat
    if method == "ddim":
        eps_hat = (x - a_t * x0_hat) / s_t
        return a_s * x0_hat + s_s * eps_hat
    a_ts = a_t / a_s
    var_ts = s_t**2 - a_ts**2 * s_s**2
    mean = (a_ts * s_s**2 / s_t**2) * x + (a_s * var_ts / s_t**2) * x0_hat
    std = (var_ts * s_s**2 / s_t**2).sqrt()
    return mean + std * noise


@torch.no_grad()
def sample(denoiser: Denoiser, batch: Tensor, dim: int = 3, *, steps: int = 100, method: str = "ancestral",
           parameterization: str = "eps", schedule: NoiseSchedule | None = None,
           generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
           progress: bool = False) -> Tensor:
    """Generate positions ``(N, dim)`` for the structures of ``batch`` (their atom counts).

    Args:
        denoiser: ``fn(x_t, t, batch) -> output`` in ``parameterization``.
        method: ``ancestral`` (DDPM posterior sampling), ``ddim`` (deterministic, η = 0) or
            ``euler`` (flow matching with a ``velocity`` model, t from 1 to 0).
        steps: number of denoising steps.
    """
    _checks.check_choice("sampler", method, ("ancestral", "ddim", "euler"))
    _checks.check_number("steps", steps, low=1, low_inclusive=True, integer=True)
    _checks.check_number("dim", dim, low=2, high=3, low_inclusive=True, integer=True)
    steps = int(steps)
    batch, n_structures = structure_index(batch)
    schedule = schedule or NoiseSchedule()
    x = com_free_noise(torch.empty(batch.shape[0], dim, dtype=dtype, device=batch.device), batch, generator)
    times = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype, device=batch.device)
    iterator = range(steps)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=f"sampling ({method})")
    for step in iterator:
        t, s = times[step], times[step + 1]
        out = denoiser(x, t.expand(n_structures), batch)
        final = step == steps - 1
        noise = com_free_noise(x, batch, generator) if method == "ancestral" and not final else None
        x = reverse_step(x, out, batch, t, s, method=method, parameterization=parameterization, schedule=schedule,
                         noise=noise, final=final)
        x = remove_com(x, batch, n_structures)
    return x
