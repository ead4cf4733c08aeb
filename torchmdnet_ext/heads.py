"""Per-atom vector output models (no reduction) for TorchMD-Net representations.

TorchMD-Net's ``TorchMD_Net`` always runs ``output_model.pre_reduce → reduce → post_reduce``. The
heads here make ``reduce`` and ``post_reduce`` the identity, so ``model(z, pos, batch)`` returns a
``(N, 3)`` per-atom vector ``y`` instead of a ``(B, 1)`` energy, and they are created by TorchMD-Net's
own ``create_model``/``load_model`` through the ``output_model`` name.

Two output kinds:

- ``PositionOutput``: the structure task. ``y = pos + Δ`` are the predicted positions (Å); Δ is an
  equivariant displacement initialised to zero, so an untrained model returns its input geometry.
- ``NoiseOutput``: denoising diffusion. ``y`` is the network output in the objective's
  parameterisation (ε, v, x0 or a flow-matching velocity); it needs the diffusion time ``t`` and is
  called through :func:`denoiser` (``TorchMD_Net.forward`` has no time input).

Two architectures of each (``create_model`` prefixes ``Equivariant`` for the equivariant transformer):

- invariant representations (TensorNet, graph network, transformer) only return scalar features
  ``x``; the head builds Δ_i = Σ_j φ(x_i, x_j, |r_ij|) (r_i − r_j) / (|r_ij| + 1) over all pairs of
  the structure (an EGNN-style coordinate update: equivariant under O(3), translation invariant);
- the equivariant transformer also returns vector features ``v`` ``(N, 3, F)``; its head uses two
  gated equivariant blocks (TorchMD-Net's ``EquivariantVectorOutput``) without the reduction, plus
  the same pairwise term.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torchmdnet.models.output_modules import OutputModel
from torchmdnet.models.utils import MLP, GatedEquivariantBlock

from energyloss_plugins.diffusion import time_features
from energyloss_plugins.graphs import complete_pairs

#: Suffix of the ``output_model`` names stored in checkpoints: without ``import torchmdnet_ext``,
#: TorchMD-Net's ``create_model`` fails with ``module 'torchmdnet.models.output_modules' has no
#: attribute 'PositionOutput (needs `import torchmdnet_ext`)'``, which says what to import.
CHECKPOINT_SUFFIX = " (needs `import torchmdnet_ext`)"


class _TimeEmbedding(nn.Module):
    """Fourier features of the diffusion time t ∈ [0, 1] → ``(N, channels)``."""

    def __init__(self, channels: int, activation: str, dtype: torch.dtype, n_freq: int = 8):
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(n_freq, dtype=dtype)) * math.pi)
        self.mlp = MLP(2 * n_freq + 1, channels, channels, activation, dtype=dtype)

    def reset_parameters(self):
        self.mlp.reset_parameters()

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(time_features(t, self.freqs))


class _PairVectorTerm(nn.Module):
    """Δ_i = Σ_j φ(x_i, x_j, rbf(d_ij)) (r_i − r_j) / (d_ij + 1) over all pairs of each structure."""

    def __init__(
        self, channels: int, activation: str, dtype: torch.dtype, num_rbf: int = 16, max_distance: float = 8.0
    ):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, max_distance, num_rbf, dtype=dtype))
        self.width = max_distance / (num_rbf - 1)
        self.edge_mlp = MLP(2 * channels + num_rbf, 1, channels, activation, dtype=dtype)

    def reset_parameters(self):
        self.edge_mlp.reset_parameters()
        last = self.edge_mlp.layers[-1]
        nn.init.zeros_(last.weight)  # Δ = 0 at initialisation
        nn.init.zeros_(last.bias)

    #: ``(pairs (2, E) or None, B)`` set by :func:`given_pairs` for the duration of a step.
    given: tuple[Tensor | None, int] | None = None

    def forward(self, h: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        pairs, n_structures = self.given or (None, None)
        if pairs is None:
            if n_structures is None:
                n_structures = int(batch.max()) + 1 if batch.numel() else 0
            pairs = complete_pairs(batch, n_structures)  # lists them: reads pair counts back to the host
        i, j = pairs
        rij = pos[i] - pos[j]
        d = rij.norm(dim=-1, keepdim=True)
        rbf = torch.exp(-(((d - self.centers) / self.width) ** 2))
        w_ij = self.edge_mlp(torch.cat([h[i], h[j], rbf], dim=-1))
        w_ji = self.edge_mlp(torch.cat([h[j], h[i], rbf], dim=-1))
        unit = rij / (d + 1.0)
        out = torch.zeros_like(pos)
        out.index_add_(0, i, w_ij * unit)
        out.index_add_(0, j, -w_ji * unit)
        return out


@contextlib.contextmanager
def given_pairs(model: nn.Module, pairs: Tensor | None, n_structures: int) -> Iterator[None]:
    """Inside, the position heads' pair term of ``model`` uses ``pairs`` ``(2, E)`` (all pairs i < j of each
    structure, flat indices: the ``complete_pair_index`` of :class:`torchmdnet_ext.springs.CompletePairs`)
    and B = ``n_structures`` instead of listing them, which reads back to the host."""
    terms = [m for m in model.modules() if isinstance(m, _PairVectorTerm)]
    for term in terms:
        term.given = (pairs, n_structures)
    try:
        yield
    finally:
        for term in terms:
            term.given = None


class _VectorHead(OutputModel):
    """Shared behaviour: no prior models, no reduction, optional time conditioning."""

    residual = True  # PositionOutput: y = pos + Δ
    timed = False  # NoiseOutput: needs t

    def __init__(self, hidden_channels, activation="silu", reduce_op="sum", dtype=torch.float,
                 static_shapes=False, **kwargs):
        super().__init__(allow_prior_model=False, reduce_op=reduce_op, static_shapes=static_shapes)
        channels = max(hidden_channels // 2, 8)
        self.node = MLP(hidden_channels, channels, channels, activation,
                        num_hidden_layers=kwargs.get("num_hidden_layers", 0) or 0, dtype=dtype)
        self.time = _TimeEmbedding(channels, activation, dtype) if self.timed else None
        self.pair = _PairVectorTerm(channels, activation, dtype)
        self.reset_parameters()

    def reset_parameters(self):
        self.node.reset_parameters()
        if self.time is not None:
            self.time.reset_parameters()
        self.pair.reset_parameters()

    def _features(self, x: Tensor, t: Tensor | None) -> Tensor:
        h = self.node(x)
        if self.time is not None:
            if t is None:
                raise ValueError(
                    f"{type(self).__name__} is a diffusion head and needs the time t; call the model through "
                    "torchmdnet_ext.heads.denoiser(model, z) or torchmdnet_ext.sample_positions(model, ...), "
                    "not model(z, pos, batch).")
            h = h + self.time(t)
        return h

    def _vector(self, h: Tensor, x: Tensor, v: Tensor | None, pos: Tensor, batch: Tensor, t: Tensor | None) -> Tensor:
        return self.pair(h, pos, batch)

    def pre_reduce(self, x, v, z, pos, batch, box: Tensor | None = None, t: Tensor | None = None):
        if box is not None and bool(box.abs().sum() > 0):
            raise ValueError("Position heads do not support periodic boxes yet.")
        h = self._features(x, t)
        delta = self._vector(h, x, v, pos, batch, t)
        return pos + delta if self.residual else delta

    def reduce(self, x, batch, num_systems: int | None = None):
        return x  # per-atom output: no reduction

    def post_reduce(self, x):
        return x


class _EquivariantVectorHead(_VectorHead):
    """Equivariant-transformer head: gated equivariant blocks on (x, v) plus the pairwise term."""

    def __init__(self, hidden_channels, activation="silu", reduce_op="sum", dtype=torch.float,
                 static_shapes=False, **kwargs):
        super().__init__(hidden_channels, activation, reduce_op, dtype, static_shapes, **kwargs)
        channels = max(hidden_channels // 2, 8)
        self.blocks = nn.ModuleList([
            GatedEquivariantBlock(
                hidden_channels, channels, activation=activation, scalar_activation=True, dtype=dtype
            ),
            GatedEquivariantBlock(channels, 1, activation=activation, dtype=dtype),
        ])
        self.time_x = _TimeEmbedding(hidden_channels, activation, dtype) if self.timed else None
        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        if getattr(self, "time_x", None) is not None:
            self.time_x.reset_parameters()
        if hasattr(self, "blocks"):
            for block in self.blocks:
                block.reset_parameters()
            nn.init.zeros_(self.blocks[-1].vec2_proj.weight)  # Δ = 0 at initialisation

    def _vector(self, h, x, v, pos, batch, t):
        if v is None:
            raise ValueError(f"{type(self).__name__} needs vector features; use it with the equivariant transformer.")
        if self.time_x is not None:
            x = x + self.time_x(t)
        xs, vs = x, v
        for block in self.blocks:
            xs, vs = block(xs, vs)
        return vs.squeeze(-1) + self.pair(h, pos, batch)


class PositionOutput(_VectorHead):
    """Structure task, invariant representations (TensorNet): ``y = pos + Δ`` (N, 3), Å."""


class EquivariantPositionOutput(_EquivariantVectorHead):
    """Structure task, equivariant transformer: ``y = pos + Δ`` (N, 3), Å."""


class NoiseOutput(_VectorHead):
    """Diffusion, invariant representations: ``(N, 3)`` ε/v/x0/velocity, time-conditioned."""

    residual = False
    timed = True


class EquivariantNoiseOutput(_EquivariantVectorHead):
    """Diffusion, equivariant transformer: ``(N, 3)`` ε/v/x0/velocity, time-conditioned."""

    residual = False
    timed = True


#: Names users put in ``output_model`` (create_model adds the ``Equivariant`` prefix for ET).
HEADS = {"PositionOutput": PositionOutput, "NoiseOutput": NoiseOutput}
EQUIVARIANT_HEADS = {"PositionOutput": EquivariantPositionOutput, "NoiseOutput": EquivariantNoiseOutput}


def checkpoint_name(name: str) -> str:
    """The ``output_model`` value stored in hyper-parameters/checkpoints for head ``name``."""
    base = base_name(name)
    return base + CHECKPOINT_SUFFIX if base in HEADS else name


def base_name(name: str) -> str:
    """``PositionOutput`` for ``PositionOutput (needs ...)``; other names unchanged."""
    return name[: -len(CHECKPOINT_SUFFIX)] if name.endswith(CHECKPOINT_SUFFIX) else name


def run_denoiser(model, z: Tensor, x_t: Tensor, batch: Tensor, t_atoms: Tensor, box=None, q=None, s=None) -> Tensor:
    """Output ``(N, 3)`` of a ``NoiseOutput`` TorchMD-Net model for noised positions ``x_t`` at per-atom times
    ``t_atoms``."""
    x, v, z, pos, batch = model.representation_model(z, x_t, batch, box=box, q=q, s=s)
    return model.output_model.pre_reduce(x, v, z, pos, batch, box=box, t=t_atoms)


def denoiser(model, z: Tensor, box=None, q=None, s=None):
    """``fn(x_t, t, batch) -> output`` of a ``NoiseOutput`` TorchMD-Net model (the core sampler's signature)."""

    def fn(x_t: Tensor, t: Tensor, batch: Tensor) -> Tensor:
        return run_denoiser(model, z, x_t.to(z.device), batch, t[batch].to(x_t.dtype), box=box, q=q, s=s)

    return fn
