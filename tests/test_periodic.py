"""Periodic structures: pairs and shifts from the reference's minimum image, the same for the prediction."""

from __future__ import annotations

import torch

from energyloss_plugins import pair_energy_loss


def crystal(seed=0):
    g = torch.Generator().manual_seed(seed)
    cell = torch.tensor([[6.0, 0, 0], [0.5, 7.0, 0], [0, 0.3, 5.5]], dtype=torch.float64)
    frac = torch.rand(16, 3, generator=g, dtype=torch.float64)
    return frac @ cell, cell, g


def test_wrapped_structure_gives_zero():
    pos, cell, g = crystal()
    shifts = torch.randint(-2, 3, (pos.shape[0], 3), generator=g).to(torch.float64)
    wrapped = pos + shifts @ cell  # the same structure, atoms moved across the cell boundary
    for graph, kwargs in (("complete", {}), ("radius", {"cutoff": 2.5}), ("rigid_sparse", {})):
        e = pair_energy_loss(wrapped, pos, cell=cell, graph=graph, graph_kwargs=kwargs, reduction="sum")
        assert float(e) < 1e-20
        # Without the cell the wrapped copy looks badly distorted.
        assert float(pair_energy_loss(wrapped, pos, graph=graph, graph_kwargs=kwargs, reduction="sum")) > 1e-2


def test_periodic_energy_uses_minimum_image_and_gradients_ignore_wrapping():
    pos, cell, g = crystal(1)
    pred = pos + 0.05 * torch.randn(pos.shape, generator=g, dtype=torch.float64)
    shifts = torch.randint(-1, 2, (pos.shape[0], 3), generator=g).to(torch.float64)
    p1 = pred.clone().requires_grad_()
    p2 = (pred + shifts @ cell).requires_grad_()
    e1 = pair_energy_loss(p1, pos, cell=cell)
    e2 = pair_energy_loss(p2, pos, cell=cell)
    e1.backward()
    e2.backward()
    assert torch.allclose(e1, e2) and torch.allclose(p1.grad, p2.grad)
    # A translation of the whole prediction costs nothing, also across the boundary.
    assert torch.allclose(pair_energy_loss(pos + torch.tensor([5.9, 0, 0], dtype=torch.float64), pos, cell=cell),
                          torch.zeros((), dtype=torch.float64), atol=1e-20)


def test_non_periodic_direction_is_not_wrapped():
    pos, cell, _ = crystal(2)
    moved = pos.clone()
    moved[0] += cell[2]  # a full lattice vector along z
    pbc = torch.tensor([True, True, False])
    assert float(pair_energy_loss(moved, pos, cell=cell, pbc=pbc)) > 1e-3
    assert float(pair_energy_loss(moved, pos, cell=cell, pbc=True)) < 1e-20
