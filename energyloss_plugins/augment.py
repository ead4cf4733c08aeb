"""Seeded target rotations: data "in arbitrary frames" (SPEC §6), reproducible per sample.

Both adapters use this one definition (the SchNetPack adapter's ``RotateTarget`` transform
and TorchMD-Net's ``target_frame: random`` datasets), so the same seed and row index give the same
rotated target in either framework.
"""

from __future__ import annotations

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.alignment import random_rotations

# Mixes the seed and the row index into one generator seed (a prime, so that nearby seeds and rows
# do not collide for any realistic dataset size).
_SEED_STRIDE = 1_000_003


def seeded_rotation(positions: Tensor, seed: int, index: int) -> Tensor:
    """``positions`` ``(n, d)`` (Å, d = 2 or 3) rotated about their centroid by a rotation fixed by ``(seed, index)``.

    The rotation is drawn uniformly (Haar measure) from a generator seeded with
    ``seed * 1_000_003 + index``, so it depends only on the base seed and the sample's index: every
    epoch, every worker and every process sees the same rotated sample. Distances are unchanged.
    """
    _checks.check_positions("positions", positions, 2)
    generator = torch.Generator().manual_seed(int(seed) * _SEED_STRIDE + int(index))
    rotation = random_rotations(1, positions.shape[-1], dtype=positions.dtype, generator=generator)[0]
    centre = positions.mean(0, keepdim=True)
    return (positions - centre) @ rotation.to(positions.device).T + centre
