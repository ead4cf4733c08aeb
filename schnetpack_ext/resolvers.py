"""OmegaConf resolvers used by the shipped configs (no heavy imports at module level: the Hydra plugin
loads this file; the resolvers import what they need when a config is resolved)."""

from __future__ import annotations

import os

#: SchNetPack's default split file, created in the run directory from num_train/num_val.
RUN_SPLIT = "split.npz"
#: What ``${el.split_file:path}`` (one argument) requires of the rows: the structure task's targets.
STRUCTURE_TARGET = "target_positions"


def split_file_beside(datapath: str, required: str | None = STRUCTURE_TARGET) -> str:
    """The database's split file (``energyloss-data build`` writes ``<name>.split.npz``; an older
    ``split.npz`` beside it when unambiguous), else ``split.npz`` in the run directory (SchNetPack
    then splits by ``num_train``/``num_val``, as for its own QM9 and MD17).

    Also checks ``datapath`` first (SchNetPack's data module would otherwise create an empty
    database at a missing path and fail later with a ``KeyError``): see :func:`check_atoms_db`.

    Args:
        datapath: the database.
        required: a property the rows must hold (the structure task's target); None for diffusion and
            generation, which need atoms and positions only (``${el.split_file:${data.datapath},null}``
            or the experiment's ``globals.clean_positions``).
    """
    check_atoms_db(datapath, required)
    from energyloss_plugins.data.reader import read_split

    split_file = _found_split(datapath)
    if split_file is not None:
        sizes = {k: len(v) for k, v in read_split(split_file).items()}
        if not sizes["train_idx"] or not sizes["val_idx"]:
            # fail at config resolution, not after an epoch on the checkpoint's missing val_loss
            raise ValueError(f"data.datapath={datapath}: its split {split_file} has {sizes['train_idx']} training and "
                             f"{sizes['val_idx']} validation rows; training needs both (the best model is chosen on "
                             "validation). Rebuild with more molecules or another --split.")
    return split_file or RUN_SPLIT


def size_unless_split(datapath: str, size):
    """``size`` (num_train/num_val) unless the database has a split file (then None: the file decides)."""
    return None if _found_split(datapath) else size


def _found_split(datapath: str) -> str | None:
    from energyloss_plugins.data.paths import find_split_file

    return find_split_file(os.path.expanduser(str(datapath)))


def check_atoms_db(datapath: str, required: str | None = STRUCTURE_TARGET) -> None:
    """Raise a ValueError unless ``datapath`` is an ASE database SchNetPack reads, with ``required`` (read-only)."""
    from energyloss_plugins.data.reader import check_atoms_db as check

    check(os.path.expanduser(str(datapath)), what="data.datapath", required=required)


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("el.split_file"):
        OmegaConf.register_new_resolver("el.split_file", split_file_beside)
    if not OmegaConf.has_resolver("el.size"):
        OmegaConf.register_new_resolver("el.size", size_unless_split)
