"""The split of a database by molecule (train/val/test row indices) and its ``.split.npz`` file."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from energyloss_plugins.data.settings import BuildSettings, check_split
from energyloss_plugins.io import atomic_savez


def is_split_file(path: str) -> bool:
    """True if ``path`` is an ``.npz`` holding ``train_idx``, ``val_idx`` and ``test_idx`` (a split file)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"train_idx", "val_idx", "test_idx"} <= set(z.files)
    except Exception:
        return False


def split_molecules(mol_ids: np.ndarray, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Row indices of a split by molecule.

    Args:
        mol_ids: ``(n_rows,)`` molecule id of each row.
        fractions: (train, val, test) fractions of the molecules.
        seed: the global seed (the permutation is drawn from ``SeedSequence([seed, 'split'])``).

    Returns:
        ``train_idx``, ``val_idx``, ``test_idx``: sorted 0-based int64 row indices; all rows of a
        molecule are in the same split.
    """
    f = check_split(fractions)
    mol_ids = np.asarray(mol_ids, dtype=np.int64)
    unique = np.unique(mol_ids)
    n = len(unique)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B117]))
    perm = unique[rng.permutation(n)]
    n_train = int(round(f[0] * n))
    n_val = min(int(round(f[1] * n)), n - n_train)
    n_test = n - n_train - n_val if abs(sum(f) - 1) < 1e-9 else min(int(round(f[2] * n)), n - n_train - n_val)
    groups = (perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val : n_train + n_val + n_test])
    out = {}
    for name, group in zip(("train_idx", "val_idx", "test_idx"), groups, strict=True):
        out[name] = np.flatnonzero(np.isin(mol_ids, group)).astype(np.int64)
    return out


def ensure_split(out: str, split_path: str, s: BuildSettings) -> None:
    """(Re)write the split of a complete database unless the file already holds it.

    The split is a function of the rows' molecule ids, the fractions and the seed, so a split file
    replaced by another build (the old shared ``split.npz``) or deleted is restored exactly.
    """
    from ase.db import connect

    db = connect(out, type="db", use_lock_file=False)
    mol_ids = np.array([r.key_value_pairs["mol_id"] for r in db.select(sort="id", include_data=False)], dtype=np.int64)
    split = split_molecules(mol_ids, s.split, s.seed)
    if is_split_file(split_path):
        with np.load(split_path, allow_pickle=False) as z:
            if all(np.array_equal(z[k], split[k]) for k in split):
                return
    atomic_savez(split_path, **split)
