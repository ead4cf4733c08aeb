"""Spin-glass ground-state datasets: seeded couplings, exact ground states, an on-disk cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from energyloss_plugins._checks import check_number
from energyloss_plugins.io import atomic_savez

from ._checks import check_boundary
from .exact import ground_states
from .lattice import random_couplings

__all__ = ["SpinGlassDataset", "make_spin_glass_dataset", "default_cache_dir", "cache_path"]

_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$ENERGYLOSS_SPINS_CACHE`` if set, else ``~/.cache/energyloss_plugins/spins``."""
    env = os.environ.get("ENERGYLOSS_SPINS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "energyloss_plugins" / "spins"


def cache_path(cache_dir: str | os.PathLike, L: int, n: int, seed: int, boundary: str) -> Path:
    """Cache file of the dataset keyed by ``(L, n, seed, boundary)``."""
    return Path(cache_dir) / f"spinglass_L{L}_n{n}_seed{seed}_{boundary}_v{_FORMAT_VERSION}.npz"


class SpinGlassDataset(Dataset):
    """Couplings with their exact ground states; items are ``(couplings, spins, energy)``.

    Attributes:
        couplings: ``(n, 2, L, L)`` float32 (uniform in [-1, 1], zero wrapping bonds if open).
        spins: ``(n, L, L)`` float32 ground states in {-1, +1}, gauge spin (0, 0) = +1.
        energies: ``(n,)`` float64 ground-state energies of the float32 couplings.
    """

    def __init__(self, couplings: Tensor, spins: Tensor, energies: Tensor, L: int, seed: int, boundary: str):
        if couplings.shape[0] != spins.shape[0] or spins.shape[0] != energies.shape[0]:
            raise ValueError("couplings, spins and energies must have the same number of lattices.")
        self.couplings, self.spins, self.energies = couplings, spins, energies
        self.L, self.seed, self.boundary = L, seed, boundary

    def __len__(self) -> int:
        return self.couplings.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.couplings[i], self.spins[i], self.energies[i]

    def __repr__(self) -> str:
        return f"SpinGlassDataset(n={len(self)}, L={self.L}, seed={self.seed}, boundary={self.boundary!r})"


def _load(path: Path, L: int, n: int, seed: int, boundary: str) -> SpinGlassDataset | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = tuple(int(v) for v in z["meta"])
            if meta != (_FORMAT_VERSION, L, n, seed) or str(z["boundary"]) != boundary:
                return None
            J, s, e = z["couplings"], z["spins"], z["energies"]
    except (OSError, KeyError, ValueError):
        return None  # missing or corrupt: rebuild
    if J.shape != (n, 2, L, L) or s.shape != (n, L, L) or e.shape != (n,):
        return None
    return SpinGlassDataset(torch.from_numpy(J), torch.from_numpy(s), torch.from_numpy(e), L, seed, boundary)


def make_spin_glass_dataset(
    L: int,
    n: int,
    seed: int,
    boundary: str = "open",
    cache_dir: str | os.PathLike | None | bool = None,
    progress: bool = True,
    max_states: int = 1 << 20,
) -> SpinGlassDataset:
    """Build (or load from the cache) ``n`` random L×L spin glasses with exact ground states.

    Couplings are i.i.d. uniform in [-1, 1] from ``numpy.random.default_rng(seed)``; ground states
    come from the transfer-matrix DP (:func:`~.exact.ground_state`), about 0.05 s per lattice at
    L = 16 (open). The first ``k`` lattices of a dataset do not depend on ``n``.

    Args:
        L: lattice size.
        n: number of lattices.
        seed: coupling seed (use different seeds for train and test sets).
        boundary: ``"open"`` or ``"periodic"`` (periodic ground states cost O(L²·4^L): L <= 10).
        cache_dir: directory of the cache; ``None`` uses :func:`default_cache_dir`, ``False``
            disables caching. The file is keyed by ``(L, n, seed, boundary)`` and written
            atomically (temporary file, then ``os.replace``).
        progress: tqdm progress bar while solving.

    Returns:
        A :class:`SpinGlassDataset`.
    """
    check_boundary(boundary)
    check_number("L", L, low=2, low_inclusive=True, integer=True)
    check_number("n", n, low=1, low_inclusive=True, integer=True)
    path = None
    if cache_dir is not False:
        path = cache_path(default_cache_dir() if cache_dir in (None, True) else cache_dir, L, n, seed, boundary)
        if path.exists():
            ds = _load(path, L, n, seed, boundary)
            if ds is not None:
                return ds
    J = random_couplings(L, n, seed=seed, boundary=boundary, dtype=torch.float32)
    spins, energies = ground_states(
        J, progress=progress, desc=f"ground states L={L} seed={seed}", max_states=max_states
    )
    ds = SpinGlassDataset(J, spins, energies, L, seed, boundary)
    if path is not None:
        atomic_savez(
            path,
            meta=np.array([_FORMAT_VERSION, L, n, seed], dtype=np.int64),
            boundary=np.array(boundary),
            couplings=J.numpy(),
            spins=spins.numpy(),
            energies=energies.numpy(),
        )
    return ds
