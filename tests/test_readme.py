"""The README's Python block runs as pasted, and what it computes is the loss it claims to be."""

from __future__ import annotations

import math
import os
import re

import torch

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _loss_block() -> str:
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## The loss in a few lines"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run(block: str, rotate: torch.Tensor | None = None) -> list[float]:
    """Execute the block, recording every value assigned to ``loss`` (a prediction rotated if asked)."""
    losses: list[float] = []
    lines = []
    for line in block.splitlines():
        lines.append(line)
        if rotate is not None and line.startswith("pred = "):
            lines.append("pred = pred @ _R.T + torch.tensor([0.3, -1.0, 2.0])")
        if line.startswith("loss = "):
            lines.append("_losses.append(float(loss))")
    torch.manual_seed(0)
    exec("\n".join(lines), {"_losses": losses, "_R": rotate})  # noqa: S102  (our own README)
    return losses


def test_readme_loss_block_runs_and_is_rigid_motion_invariant():
    block = _loss_block()
    losses = _run(block)
    assert len(losses) == sum(line.startswith("loss = ") for line in block.splitlines()) >= 5  # every one ran
    assert all(math.isfinite(v) and v > 0 for v in losses)
    assert math.isclose(losses[0], losses[1], rel_tol=1e-5)  # flat and padded layouts: same structures, same loss
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(3)))
    rotated = _run(block, rotate=q)
    for a, b in zip(losses, rotated, strict=True):
        assert math.isclose(a, b, rel_tol=1e-4), (a, b)
