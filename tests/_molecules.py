"""Small noisy molecules for metric tests: alternating methane and water with perturbed positions."""

from __future__ import annotations

import math

import torch

WATER = torch.tensor([[0.0, 0.0, 0.0], [0.759, 0.588, 0.0], [-0.759, 0.588, 0.0]], dtype=torch.float64)
METHANE = 1.09 / math.sqrt(3) * torch.tensor(
    [[0.0, 0.0, 0.0], [1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)


def noisy_molecules(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``n`` (perturbed positions, equilibrium positions, atomic numbers), float64 Å.

    Noise of 0.02, 0.10 or 0.18 Å in turn, so that some molecules stay EDM-stable and some do not.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x, z = (WATER, [8, 1, 1]) if i % 2 else (METHANE, [6, 1, 1, 1, 1])
        noisy = x + (0.02 + 0.08 * (i % 3)) * torch.randn(x.shape, dtype=torch.float64, generator=g)
        out.append((noisy, x.clone(), torch.tensor(z)))
    return out
