"""A small ResNet-style CNN mapping couplings to per-site spin logits."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from energyloss_plugins._checks import check_number

from ._checks import check_couplings
from .lattice import coupling_features

__all__ = ["SpinResNet"]


class _Block(nn.Module):
    def __init__(self, width: int, padding_mode: str, dilation: int = 1) -> None:
        super().__init__()
        d = dilation
        self.conv1 = nn.Conv2d(width, width, 3, padding=d, dilation=d, padding_mode=padding_mode)
        self.conv2 = nn.Conv2d(width, width, 3, padding=d, dilation=d, padding_mode=padding_mode)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class SpinResNet(nn.Module):
    """Pre-activation residual CNN: couplings ``(B, 2, H, W)`` -> logits ``(B, H, W)``.

    The input is the four bonds of every site (:func:`~.lattice.coupling_features`). A 3x3 stem,
    ``n_blocks`` residual blocks of two 3x3 convolutions (``2 * n_blocks`` hidden layers; the paper
    uses 6 layers of width 256 on a GPU, the default here is a CPU-sized 6 x 32) and a 1x1 head.
    Zero padding for open lattices, circular padding for periodic ones.

    Args:
        width: hidden channels.
        n_blocks: residual blocks.
        periodic: circular padding.
        dilations: dilation of each block (default all 1: receptive field 2 * (1 + 2 * n_blocks) + 1
            sites); e.g. ``(1, 2, 4)`` widens it to 31 sites at the same cost.
        coords: append two channels of site coordinates in [-1, 1] (lets the network locate the
            gauge anchor of the labels, e.g. the centre site).
    """

    def __init__(
        self,
        width: int = 32,
        n_blocks: int = 3,
        periodic: bool = False,
        dilations: tuple[int, ...] | None = None,
        coords: bool = False,
    ) -> None:
        super().__init__()
        width = check_number("width", width, low=1, low_inclusive=True, integer=True)
        n_blocks = check_number("n_blocks", n_blocks, low=0, low_inclusive=True, integer=True)
        dilations = tuple(dilations) if dilations is not None else (1,) * n_blocks
        if len(dilations) != n_blocks or min(dilations, default=1) < 1:
            raise ValueError(f"dilations must hold n_blocks={n_blocks} integers >= 1, got {dilations}.")
        padding_mode = "circular" if periodic else "zeros"
        self.coords = bool(coords)
        self.stem = nn.Conv2d(6 if coords else 4, width, 3, padding=1, padding_mode=padding_mode)
        self.blocks = nn.Sequential(*[_Block(width, padding_mode, d) for d in dilations])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(width, 1, 1))

    def forward(self, couplings: Tensor) -> Tensor:
        check_couplings(couplings)
        x = coupling_features(couplings)
        if self.coords:
            B, _, H, W = couplings.shape
            r = torch.linspace(-1.0, 1.0, H, dtype=x.dtype, device=x.device).view(1, 1, H, 1).expand(B, 1, H, W)
            c = torch.linspace(-1.0, 1.0, W, dtype=x.dtype, device=x.device).view(1, 1, 1, W).expand(B, 1, H, W)
            x = torch.cat([x, r, c], dim=1)
        x = self.stem(x)
        return self.head(self.blocks(x)).squeeze(1)
