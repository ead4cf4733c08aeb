"""De novo molecule generation with TorchMD-Net representations (``task: generation``, SPEC §7).

The joint diffusion of positions and atom types is the core's
:class:`~energyloss_plugins.generation.GenerationObjective`; this module only wires a TorchMD-Net
model to it, so that the network sees x_t, h_t and t and never the clean types:

- every ``nn.Embedding(max_z, hidden)`` of the representation (ET: the atom and neighbour
  embeddings; TensorNet: the embedding of its pair messages) is replaced by a
  :class:`FeatureEmbedding`, a linear map of the continuous per-atom inputs [h_t, t] ``(N, F + 1)``;
  the atomic numbers handed to the representation are a constant dummy (:data:`DUMMY_Z`), so nothing
  about the clean types can enter;
- the task's ``NoiseOutput`` head (time-conditioned, equivariant) predicts ε_x ``(N, 3)``; its
  centre of mass is removed per molecule (ε_x lives in the CoM-free subspace);
- a :class:`TypeNoiseOutput` MLP on the representation's scalar features and t predicts ε_h ``(N, F)``.

:func:`attach_generation_modules` makes these changes on a model built by TorchMD-Net's
``create_model``; :func:`denoise` runs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torchmdnet.models.utils import MLP

from energyloss_plugins.diffusion import remove_com

#: Representations whose atom-type inputs are plain ``nn.Embedding`` tables (all replaced).
GENERATION_MODELS = ("equivariant-transformer", "tensornet", "graph-network", "transformer")
#: Atomic number given to the representation: carries nothing (its embeddings no longer read z).
DUMMY_Z = 0


class FeatureEmbedding(nn.Module):
    """Stands in for ``nn.Embedding(max_z, hidden)``: embeds per-atom continuous inputs, not z.

    ``forward(z)`` ignores the values of ``z`` (the representation's call signature) and returns
    ``linear(features)`` ``(N, hidden)`` for the features set by :func:`feature_inputs`. Rows of
    ``z`` beyond the features (TensorNet's ghost atom with ``static_shapes``) get zero inputs.
    """

    def __init__(self, n_inputs: int, hidden_channels: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.linear = nn.Linear(n_inputs, hidden_channels, dtype=dtype)
        self.features: Tensor | None = None

    def reset_parameters(self):
        self.linear.reset_parameters()

    def forward(self, z: Tensor) -> Tensor:
        if self.features is None:
            raise RuntimeError("FeatureEmbedding has no per-atom inputs: call the model through "
                               "torchmdnet_ext.generation.denoise (task generation), not model(z, pos, batch).")
        f = self.features.to(self.linear.weight.dtype)
        if z.shape[0] > f.shape[0]:
            f = torch.cat([f, f.new_zeros(z.shape[0] - f.shape[0], f.shape[1])])
        return self.linear(f)


class TypeNoiseOutput(nn.Module):
    """ε_h ``(N, F)`` from the representation's scalar features ``(N, hidden)`` and the time t ``(N,)``."""

    def __init__(self, hidden_channels: int, n_features: int, activation: str = "silu",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.mlp = MLP(hidden_channels + 1, n_features, hidden_channels, activation, num_hidden_layers=1, dtype=dtype)

    def reset_parameters(self):
        self.mlp.reset_parameters()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mlp(torch.cat([x, t.unsqueeze(-1).to(x.dtype)], dim=-1))


def attach_generation_modules(model: nn.Module, hparams, n_features: int) -> nn.Module:
    """Turn a ``create_model`` model (``NoiseOutput`` head) into a joint position/type denoiser, in place.

    Replaces the representation's embedding tables by :class:`FeatureEmbedding` of ``n_features + 1``
    inputs and adds ``model.type_output`` (:class:`TypeNoiseOutput`); both are submodules of
    ``model``, so the optimiser and checkpoints include them.
    """
    if hparams["model"] not in GENERATION_MODELS:
        raise ValueError(f"task generation supports the representations {GENERATION_MODELS}, got "
                         f"model {hparams['model']!r}.")
    dtype = next(model.parameters()).dtype
    hidden = hparams["embedding_dimension"]
    replaced = []
    for name, module in list(model.representation_model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Embedding):
                setattr(module, child_name, FeatureEmbedding(n_features + 1, child.embedding_dim, dtype))
                replaced.append(f"{name}.{child_name}".lstrip("."))
    if not replaced:
        raise ValueError(f"{type(model.representation_model).__name__} has no atom-type embedding to replace.")
    model.type_output = TypeNoiseOutput(hidden, n_features, hparams.get("activation", "silu"), dtype)
    return model


@contextlib.contextmanager
def feature_inputs(model: nn.Module, features: Tensor) -> Iterator[None]:
    """Give every :class:`FeatureEmbedding` of ``model`` the per-atom inputs ``features`` inside the block."""
    embeddings = [m for m in model.modules() if isinstance(m, FeatureEmbedding)]
    for m in embeddings:
        m.features = features
    try:
        yield
    finally:
        for m in embeddings:
            m.features = None


def denoise(model: nn.Module, x_t: Tensor, h_t: Tensor, t: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
    """Joint denoiser of a generation model (the core sampler's ``JointDenoiser`` signature).

    Args:
        model: a TorchMD-Net model prepared by :func:`attach_generation_modules`.
        x_t: ``(N, 3)`` noisy positions (Å, CoM-free per molecule).
        h_t: ``(N, F)`` noisy type features.
        t: ``(B,)`` diffusion times in [0, 1].
        batch: ``(N,)`` molecule index.

    Returns:
        ``(out_x (N, 3) CoM-free, out_h (N, F))`` in the objective's parameterization (ε or velocity).
    """
    dtype = next(model.parameters()).dtype
    n_structures = t.shape[0]
    t_atoms = t[batch].to(dtype)
    z = torch.full_like(batch, DUMMY_Z)
    pos = x_t.to(dtype)
    with feature_inputs(model.representation_model, torch.cat([h_t.to(dtype), t_atoms.unsqueeze(-1)], dim=-1)):
        x, v, z, pos, batch = model.representation_model(z, pos, batch)
    out_x = model.output_model.pre_reduce(x, v, z, pos, batch, t=t_atoms)
    out_h = model.type_output(x, t_atoms)
    # ids in [0, B) by construction (B from t): no range check, which reads back to the host
    return remove_com(out_x, batch, n_structures, validate_args=False).to(x_t.dtype), out_h.to(h_t.dtype)

