"""Seeded target rotations (energyloss_plugins.augment): one definition for both adapters."""

from __future__ import annotations

import pytest
import torch

from energyloss_plugins.alignment import kabsch_align
from energyloss_plugins.augment import seeded_rotation


def test_seeded_rotation_is_a_rigid_motion_fixed_by_seed_and_index():
    x = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 4.0
    a = seeded_rotation(x, seed=5, index=3)
    assert torch.equal(a, seeded_rotation(x, 5, 3))  # the same sample every epoch and process
    assert not torch.allclose(a, seeded_rotation(x, 5, 4)) and not torch.allclose(a, seeded_rotation(x, 6, 3))
    assert torch.allclose(torch.cdist(a, a), torch.cdist(x, x), atol=1e-12)  # distances kept
    assert torch.allclose(a.mean(0), x.mean(0), atol=1e-12)  # about the centroid
    assert not torch.allclose(a, x, atol=1e-3)
    # a proper rotation: Kabsch (proper rotations only) maps it back exactly
    assert torch.allclose(kabsch_align(a, x), x, atol=1e-10)
    assert seeded_rotation(x.float(), 5, 3).dtype == torch.float32


def test_seeded_rotation_rejects_bad_positions():
    with pytest.raises(ValueError, match="positions"):
        seeded_rotation(torch.zeros(4, 5), 0, 0)


def test_both_adapters_rotate_a_row_identically(tmp_path):
    P = pytest.importorskip("schnetpack.properties")
    pytest.importorskip("torchmdnet")
    h5py = pytest.importorskip("h5py")
    from schnetpack_ext import RotateTarget
    from torchmdnet_ext import PositionHDF5

    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = seeded_rotation(x, 7, 11)
    assert not torch.allclose(expected, x, atol=1e-3)
    # SchNetPack: the RotateTarget transform on the row with index 11
    out = RotateTarget(seed=7)({P.idx: torch.tensor([11]), "target_positions": x.clone()})["target_positions"]
    assert torch.equal(out, expected)
    # TorchMD-Net: a target_frame="random" dataset whose one structure is source row 11
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        group = f.create_group("n6")
        group["types"] = torch.tensor([[6, 1, 1, 1, 1, 8]]).numpy()
        group["pos"] = x[None].numpy()
        group["pos_target"] = x[None].numpy()
        group["row"] = torch.tensor([11]).numpy()
    dataset = PositionHDF5(str(path), target_frame="random", rotation_seed=7)
    assert len(dataset) == 1
    assert torch.equal(dataset[0].pos_target, expected.float())  # the dataset stores float32
