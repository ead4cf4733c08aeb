"""SchNetPack data transforms of the adapter (usable in ``data.transforms`` of a YAML config)."""

from __future__ import annotations

import schnetpack.properties as properties
import torch
from schnetpack.transform.base import Transform

from energyloss_plugins.augment import seeded_rotation


class RotateTarget(Transform):
    """Rotate the target positions of each sample by a fixed random rotation about their centroid.

    Simulates data that arrives in arbitrary frames: the input geometry and the target no longer
    share a frame. The rotation depends only on ``seed`` and the sample's database index
    (:func:`energyloss_plugins.augment.seeded_rotation`), so every epoch (and every process) sees the
    same rotated target. A rotation-invariant loss (energy) does
    not care; MSE does (SPEC §6).

    Args:
        property: key of the target positions.
        seed: base seed of the rotations.
        enabled: False makes the transform a no-op (so a YAML flag can switch it).
    """

    is_preprocessor: bool = True
    is_postprocessor: bool = False

    def __init__(self, property: str = "target_positions", seed: int = 0, enabled: bool = True):
        super().__init__()
        self.enabled = bool(enabled)
        self.property = property
        self.seed = seed

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return inputs
        index = int(inputs[properties.idx].reshape(-1)[0])
        inputs[self.property] = seeded_rotation(inputs[self.property], self.seed, index)
        return inputs
