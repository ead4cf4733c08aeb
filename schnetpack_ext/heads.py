"""Output and embedding modules for SchNetPack models (usable as ``_target_`` in YAML).

- :class:`PositionHead`: an equivariant per-atom vector read out of PaiNN's or SO3net's l = 1
  features by gated equivariant blocks (as SchNetPack's own ``DipoleMoment``); either added to the
  input positions (structure prediction: ``positions_pred = R + Δ``) or returned as is (the noise
  or velocity of a diffusion model).
- :class:`TimeEmbedding`: the diffusion time t as an "electronic embedding" of PaiNN/SO3net, i.e.
  added to the atoms' initial scalar features (both representations take a list of these).
"""

from __future__ import annotations

import math

import schnetpack.nn as snn
import schnetpack.properties as properties
import torch
import torch.nn.functional as F
from torch import nn

from energyloss_plugins.diffusion import time_features
from energyloss_plugins.layouts import segment_mean

#: Key under which the diffusion task passes the per-structure time t ∈ [0, 1] ``(B,)``.
DIFFUSION_TIME = "diffusion_t"


def vector_features(inputs: dict[str, torch.Tensor], vector_key: str = "vector_representation") -> torch.Tensor:
    """l = 1 features ``(N, 3, F)`` in Cartesian order from PaiNN (``vector_representation``) or SO3net.

    SO3net keeps them in ``multipole_representation`` ``(N, (lmax+1)², F)`` in (y, z, x) order unless
    ``return_vector_representation=True``; both are handled, so SO3net's stock config works unchanged.
    """
    if vector_key in inputs:
        return inputs[vector_key]
    if "multipole_representation" in inputs:
        multipoles = inputs["multipole_representation"]
        if multipoles.shape[1] < 4:
            raise ValueError("SO3net with lmax=0 has no vector features: use lmax >= 1 for a position head.")
        return torch.roll(multipoles[:, 1:4], 1, 1)
    raise KeyError(f"No vector features in the inputs (looked for {vector_key!r} and 'multipole_representation'): "
                   "the position head needs an equivariant representation such as PaiNN or SO3net.")


class PositionHead(nn.Module):
    """Equivariant per-atom vector output on PaiNN/SO3net features.

    Args:
        n_in: size of the representation (``n_atom_basis``).
        n_hidden: hidden size of the gated equivariant blocks (None: pyramidal, as SchNetPack).
        n_layers: number of gated equivariant blocks.
        output_key: key of the output in the results (the ``name`` of the ModelOutput).
        add_positions: True for structure prediction (``R + Δ``); False to return Δ itself
            (diffusion noise/velocity).
        remove_mean: remove the per-structure mean of Δ (keeps diffusion outputs centre-of-mass free).
        scale: multiplies Δ (Å); a small value starts training near the input geometry.
        vector_key: where the representation stores its l = 1 features.
    """

    def __init__(self, n_in: int, n_hidden: int | None = None, n_layers: int = 2,
                 output_key: str = "positions_pred", add_positions: bool = True, remove_mean: bool = False,
                 scale: float = 1.0, vector_key: str = "vector_representation"):
        super().__init__()
        self.output_key = output_key
        self.model_outputs = [output_key]
        self.add_positions = add_positions
        self.remove_mean = remove_mean
        self.scale = scale
        self.vector_key = vector_key
        self.outnet = snn.build_gated_equivariant_mlp(n_in=n_in, n_out=1, n_hidden=n_hidden, n_layers=n_layers,
                                                      activation=F.silu, sactivation=F.silu)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scalars = inputs["scalar_representation"]
        vectors = vector_features(inputs, self.vector_key)
        _, v = self.outnet((scalars, vectors))
        delta = self.scale * v.squeeze(-1)
        if self.remove_mean:
            idx_m = inputs[properties.idx_m]
            delta = delta - segment_mean(delta, idx_m, inputs[properties.n_atoms].shape[0])[idx_m]
        inputs[self.output_key] = inputs[properties.R] + delta if self.add_positions else delta
        return inputs


class TimeEmbedding(nn.Module):
    """Diffusion time as an additive embedding of PaiNN/SO3net initial features.

    Use it in ``representation.electronic_embeddings``; it reads ``inputs["diffusion_t"]`` ``(B,)``
    (set by :class:`schnetpack_ext.DiffusionTask`) and broadcasts it to the atoms with ``_idx_m``.

    Args:
        n_atom_basis: feature size of the representation.
        n_frequencies: sinusoidal frequencies of the time encoding.
    """

    def __init__(self, n_atom_basis: int, n_frequencies: int = 16):
        super().__init__()
        self.register_buffer("frequencies", torch.exp(torch.linspace(0.0, math.log(1000.0), n_frequencies)))
        self.net = nn.Sequential(snn.Dense(2 * n_frequencies + 1, n_atom_basis, activation=F.silu),
                                 snn.Dense(n_atom_basis, n_atom_basis, activation=None))

    def forward(self, q: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if DIFFUSION_TIME not in inputs:
            raise KeyError(
                "TimeEmbedding needs inputs['diffusion_t']: train and sample with schnetpack_ext.DiffusionTask."
            )
        t = inputs[DIFFUSION_TIME].to(q.dtype)[inputs[properties.idx_m]]
        return self.net(time_features(t, self.frequencies.to(q.dtype))).reshape(q.shape)
