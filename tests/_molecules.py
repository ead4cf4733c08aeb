"""Metric-test helpers: small noisy molecules, and dataset-level structure metrics computed in one pass."""

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


def dataset_metrics(pred: torch.Tensor, target: torch.Tensor, batch: torch.Tensor,
                    numbers: torch.Tensor) -> dict[str, float]:
    """Independent reference for epoch metrics: per-structure values of the whole set, reduced once.

    Means over structures (NaN ones left out); atom stability as stable atoms over all atoms.
    """
    from energyloss_plugins.metrics import structure_metrics

    per = structure_metrics(pred.double(), target.double(), batch, numbers, per_structure=True)
    out = {k: float(v[~v.isnan()].mean()) for k, v in per.items() if k != "atom_stability"}
    n_atoms = torch.bincount(batch).double()
    out["atom_stability"] = float((per["atom_stability"] * n_atoms).sum() / n_atoms.sum())
    return out


def random_batch(sizes, d: int = 3, seed: int = 0, noise: float = 0.3, dtype: torch.dtype = torch.float64):
    """A flat batch of random structures: ``(pred, target, batch)``, pred = target + ``noise`` Å Gaussian."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.cat([torch.full((n,), b, dtype=torch.long) for b, n in enumerate(sizes)])
    target = 1.5 * torch.randn(batch.shape[0], d, dtype=dtype, generator=g)
    pred = target + noise * torch.randn(batch.shape[0], d, dtype=dtype, generator=g)
    return pred, target, batch
