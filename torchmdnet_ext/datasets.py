"""TorchMD-Net datasets with position targets.

Both are ``torch_geometric`` datasets of ``Data`` objects with

- ``z`` ``(N,)`` long atomic numbers, ``pos`` ``(N, 3)`` input positions (Å),
- ``pos_target`` ``(N, 3)`` equilibrium positions (Å, same atom order),
- ``bond_index`` ``(2, M)`` bonds of the target (PyG offsets it per structure when batching, so a
  batch holds flat atom indices, the core's ``bonds`` layout), when known,
- ``row`` ``(1,)`` long row index in the source file,

and are registered in ``torchmdnet.datasets`` (``dataset: EnergyLossDB`` / ``dataset: PositionHDF5``),
so TorchMD-Net's ``DataModule`` builds them from ``dataset_root`` and ``dataset_arg``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch_geometric.data import Data, Dataset

from energyloss_plugins.augment import seeded_rotation
from energyloss_plugins.io import atomic_savez

TARGET_FRAMES = ("same", "random")


def _check_frame(target_frame: str):
    if target_frame not in TARGET_FRAMES:
        raise ValueError(f"target_frame must be one of {TARGET_FRAMES}, got {target_frame!r}.")


class _PositionDataset(Dataset):
    def __init__(self):
        super().__init__()
        self.items: list[Data] = []
        self.rows: np.ndarray = np.zeros(0, dtype=np.int64)

    def len(self) -> int:
        return len(self.items)

    def get(self, idx: int) -> Data:
        return self.items[idx].clone()

    def dataset_indices(self, rows: Sequence[int]) -> np.ndarray:
        """Dataset indices of the given source rows (rows filtered out are dropped)."""
        lookup = {int(r): i for i, r in enumerate(self.rows)}
        return np.asarray([lookup[int(r)] for r in rows if int(r) in lookup], dtype=np.int64)

    @staticmethod
    def _data(numbers, positions, target, bonds=None, row=0, springs=None) -> Data:
        d = Data(z=torch.as_tensor(numbers, dtype=torch.long),
                 pos=torch.as_tensor(positions, dtype=torch.float32),
                 pos_target=torch.as_tensor(target, dtype=torch.float32),
                 row=torch.tensor([int(row)], dtype=torch.long))
        if bonds is not None:
            d.bond_index = torch.as_tensor(np.asarray(bonds), dtype=torch.long).reshape(-1, 2).T.contiguous()
        if springs is not None and springs[0] is not None:
            # "index" in the name makes PyG offset the pairs per structure when batching.
            d.spring_index = springs[0].reshape(-1, 2).T.contiguous().long()
            d.spring_k = springs[1].to(torch.float64)
        return d


class EnergyLossDB(_PositionDataset):
    """The offline builder's ASE database (``energyloss-data build``): one row per (molecule, input).

    Args:
        root: path of the ``.db`` file (TorchMD-Net's ``dataset_root``).
        input_kinds: keep only rows of these input kinds (e.g. ``[mmff]``); default all.
        target_frame: ``same`` (target as stored) or ``random`` (each target rotated about its
            centroid by a random rotation fixed per row: the "arbitrary frame" benchmark setting).
        rotation_seed: seed of those rotations.
        max_rows: read only the first rows (quick runs).
        split_file: the builder's split file (default: the database's own ``<name>.split.npz``, or a
            legacy ``split.npz`` beside it when unambiguous); used when the run gives no ``splits``.
    """

    def __init__(self, root: str, input_kinds: Sequence[str] | str | None = None, target_frame: str = "same",
                 rotation_seed: int = 0, max_rows: int | None = None, split_file: str | None = None,
                 dataset_preload_limit=None, **unused):
        super().__init__()
        from energyloss_plugins.data.paths import find_split_file
        from energyloss_plugins.data.reader import read_dataset

        _check_frame(target_frame)
        if isinstance(input_kinds, str):
            input_kinds = [k for k in input_kinds.replace(" ", ",").split(",") if k]
        self.path = os.path.abspath(os.path.expanduser(root))
        indices = None
        if max_rows is not None:
            import ase.db

            n = ase.db.connect(self.path, type="db", use_lock_file=False).count()
            indices = range(min(int(max_rows), n))
        records = read_dataset(self.path, indices=indices, input_kinds=input_kinds)
        if not records:
            raise ValueError(f"No rows in {self.path} for input_kinds={input_kinds}.")
        targets = [r.target_positions for r in records]
        self.rows = np.asarray([r.row_index for r in records], dtype=np.int64)
        if target_frame == "random":
            targets = [seeded_rotation(t, rotation_seed, row) for t, row in zip(targets, self.rows, strict=True)]
        self.items = [self._data(r.numbers, r.positions, t, r.bonds, r.row_index, (r.spring_pairs, r.spring_k))
                      for r, t in zip(records, targets, strict=True)]
        self.mol_ids = np.asarray([r.mol_id for r in records], dtype=np.int64)
        self.input_kinds = [r.input_kind for r in records]
        self.split_file = split_file or find_split_file(self.path)


class PositionHDF5(_PositionDataset):
    """HDF5 file(s) with input positions, atomic numbers and target positions.

    TorchMD-Net's HDF5 layout: one group per batch of equal-size structures, with arrays

    - ``pos`` ``(S, N, 3)`` input positions, ``types`` or ``z`` ``(S, N)`` (or ``(N,)``) atomic numbers,
    - ``pos_target`` (name set by ``target_key``) ``(S, N, 3)`` target positions,
    - optionally ``bonds`` ``(S, M, 2)`` and ``row`` ``(S,)`` (the source row index, for splits).

    Args:
        root: a path, or several separated by ``;`` (TorchMD-Net's ``dataset_root``).
        target_key: name of the target array.
        target_frame, rotation_seed: as for :class:`EnergyLossDB`.
    """

    def __init__(self, root: str, target_key: str = "pos_target", target_frame: str = "same", rotation_seed: int = 0,
                 dataset_preload_limit=None, **unused):
        super().__init__()
        import h5py

        _check_frame(target_frame)
        numbers, positions, targets, bonds, rows = [], [], [], [], []
        for filename in root.split(";"):
            with h5py.File(os.path.expanduser(filename), "r") as f:
                for name, group in f.items():
                    if name == "_metadata":
                        continue
                    if "pos" not in group or target_key not in group or not ("types" in group or "z" in group):
                        raise ValueError(f"HDF5 group {name!r} of {filename} needs 'pos', 'types' (or 'z') and "
                                         f"{target_key!r}; it has {sorted(group)}.")
                    pos = np.asarray(group["pos"])
                    tgt = np.asarray(group[target_key])
                    z = np.asarray(group["types"] if "types" in group else group["z"])
                    if z.ndim == 1:
                        z = np.broadcast_to(z, pos.shape[:2])
                    b = np.asarray(group["bonds"]) if "bonds" in group else None
                    r = np.asarray(group["row"]) if "row" in group else None
                    for s in range(pos.shape[0]):
                        numbers.append(z[s])
                        positions.append(pos[s])
                        targets.append(torch.as_tensor(tgt[s], dtype=torch.float64))
                        bonds.append(None if b is None else b[s])
                        rows.append(int(r[s]) if r is not None else len(rows))
        self.rows = np.asarray(rows, dtype=np.int64)
        if target_frame == "random":
            targets = [seeded_rotation(t, rotation_seed, row) for t, row in zip(targets, self.rows, strict=True)]
        self.items = [self._data(*args) for args in zip(numbers, positions, targets, bonds, rows, strict=True)]


def write_position_hdf5(db_path: str, h5_path: str, input_kinds: Sequence[str] | None = None) -> str:
    """Convert a builder database into a :class:`PositionHDF5` file (groups by atom count)."""
    import h5py

    from energyloss_plugins.data.reader import read_dataset

    by_size: dict[int, list] = {}
    for r in read_dataset(db_path, input_kinds=input_kinds):
        by_size.setdefault(len(r.numbers), []).append(r)
    with h5py.File(h5_path, "w") as f:
        for n, recs in sorted(by_size.items()):
            g = f.create_group(f"n{n}")
            g["types"] = np.stack([r.numbers.numpy() for r in recs])
            g["pos"] = np.stack([r.positions.numpy() for r in recs]).astype(np.float32)
            g["pos_target"] = np.stack([r.target_positions.numpy() for r in recs]).astype(np.float32)
            g["row"] = np.asarray([r.row_index for r in recs], dtype=np.int64)
            if len({len(r.bonds) for r in recs}) == 1:
                g["bonds"] = np.stack([r.bonds.numpy() for r in recs])
    return h5_path


DATASETS = {"EnergyLossDB": EnergyLossDB, "PositionHDF5": PositionHDF5}


def _indices(z, key: str, split_file: str) -> np.ndarray:
    """Array ``key`` of an opened split npz; object arrays (pickles) are refused, never loaded."""
    try:
        return z[key]
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise
        raise ValueError(f"{split_file}: {key} holds pickled Python objects (loading them could run code); a split "
                         "file holds integer index arrays, as energyloss-data writes them.") from None


def convert_split(dataset, split_file: str, out_file: str) -> str:
    """Write TorchMD-Net's ``idx_train/idx_val/idx_test`` npz for ``dataset`` from a split file.

    Accepts the builder's ``train_idx/val_idx/test_idx`` (0-based source rows, mapped through the
    dataset's row filter) or TorchMD-Net's own keys (dataset indices, copied).
    """
    with np.load(split_file, allow_pickle=False) as z:  # a split file is data: never unpickled
        keys = set(z.files)
        if {"idx_train", "idx_val", "idx_test"} <= keys:
            parts = [np.asarray(_indices(z, k, split_file), dtype=np.int64)
                     for k in ("idx_train", "idx_val", "idx_test")]
        elif {"train_idx", "val_idx", "test_idx"} <= keys:
            if not hasattr(dataset, "dataset_indices"):
                raise ValueError(f"{split_file} holds source row indices (train_idx, ...); the dataset "
                                 f"{type(dataset).__name__} cannot map them; give idx_train/idx_val/idx_test.")
            parts = [dataset.dataset_indices(_indices(z, k, split_file)) for k in ("train_idx", "val_idx", "test_idx")]
        else:
            raise ValueError(f"{split_file} has keys {sorted(keys)}; expected train_idx/val_idx/test_idx "
                             "(energyloss-data) or idx_train/idx_val/idx_test (TorchMD-Net).")
    atomic_savez(out_file, idx_train=parts[0], idx_val=parts[1], idx_test=parts[2])  # DDP ranks write the same file
    return out_file
