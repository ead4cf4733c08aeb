"""OmegaConf resolvers used by the shipped configs (no heavy imports: the Hydra plugin loads this file)."""

from __future__ import annotations

import os


def split_file_beside(datapath: str, name: str = "split.npz") -> str:
    """``split.npz`` beside the database if it exists (``energyloss-data build`` writes one), else
    ``split.npz`` in the run directory (SchNetPack's default, created from num_train/num_val)."""
    candidate = os.path.join(os.path.dirname(os.path.abspath(str(datapath))), name)
    return candidate if os.path.exists(candidate) else name


def size_unless_split(datapath: str, size):
    """``size`` (num_train/num_val) unless a split file lies beside the database (then None: the file decides)."""
    return None if split_file_beside(datapath) != "split.npz" else size


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("el.split_file"):
        OmegaConf.register_new_resolver("el.split_file", split_file_beside)
    if not OmegaConf.has_resolver("el.size"):
        OmegaConf.register_new_resolver("el.size", size_unless_split)
