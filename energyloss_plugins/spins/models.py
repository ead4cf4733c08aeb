"""A small ResNet-style CNN mapping couplings to per-site spin logits."""

from __future__ import annotations

from torch import Tensor, nn

from ._checks import check_couplings
from .lattice import coupling_features

__all__ = ["SpinResNet"]


class _Block(nn.Module):
    def __init__(self, width: int, padding_mode: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, padding_mode=padding_mode)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, padding_mode=padding_mode)
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
    """

    def __init__(self, width: int = 32, n_blocks: int = 3, periodic: bool = False) -> None:
        super().__init__()
        if width < 1 or n_blocks < 0:
            raise ValueError(f"Need width >= 1 and n_blocks >= 0, got width={width}, n_blocks={n_blocks}.")
        padding_mode = "circular" if periodic else "zeros"
        self.stem = nn.Conv2d(4, width, 3, padding=1, padding_mode=padding_mode)
        self.blocks = nn.Sequential(*[_Block(width, padding_mode) for _ in range(n_blocks)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(width, 1, 1))

    def forward(self, couplings: Tensor) -> Tensor:
        check_couplings(couplings)
        x = self.stem(coupling_features(couplings))
        return self.head(self.blocks(x)).squeeze(1)
