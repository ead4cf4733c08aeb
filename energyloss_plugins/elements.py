"""Element data shared by the coefficient schemes and the metrics."""

from __future__ import annotations

import torch
from torch import Tensor

# Covalent radii in Å, Z = 1..86 (Cordero et al., Dalton Trans. 2008, 2832; C sp3, Mn/Fe/Co low spin).
COVALENT_RADII = (
    0.31, 0.28,
    1.28, 0.96, 0.84, 0.76, 0.71, 0.66, 0.57, 0.58,
    1.66, 1.41, 1.21, 1.11, 1.07, 1.05, 1.02, 1.06,
    2.03, 1.76, 1.70, 1.60, 1.53, 1.39, 1.39, 1.32, 1.26, 1.24, 1.32, 1.22, 1.22, 1.20, 1.19, 1.20, 1.20, 1.16,
    2.20, 1.95, 1.90, 1.75, 1.64, 1.54, 1.47, 1.46, 1.42, 1.39, 1.45, 1.44, 1.42, 1.39, 1.39, 1.38, 1.39, 1.40,
    2.44, 2.15, 2.07, 2.04, 2.03, 2.01, 1.99, 1.98, 1.98, 1.96, 1.94, 1.92, 1.92, 1.89, 1.90, 1.87, 1.87,
    1.75, 1.70, 1.62, 1.51, 1.44, 1.41, 1.36, 1.36, 1.32, 1.45, 1.46, 1.48, 1.40, 1.50, 1.50,
)  # fmt: skip


def covalent_radius(z: Tensor) -> Tensor:
    """Covalent radius in Å of atomic numbers ``z`` (any shape, 1..86), float64."""
    if z.numel() and (int(z.min()) < 1 or int(z.max()) > len(COVALENT_RADII)):
        raise ValueError(
            f"Covalent radii are tabulated for Z = 1..{len(COVALENT_RADII)}, got {int(z.min())}..{int(z.max())}."
        )
    table = torch.tensor((0.0, *COVALENT_RADII), dtype=torch.float64, device=z.device)
    return table[z.long()]
