"""TorchMD-Net configurations shipped with the package, found by name.

``energyloss-torchmd-train --conf structure_tensornet`` reads ``structure_tensornet.yaml`` from this
folder; a path to any ``.yaml`` file still works. Every key is a ``torchmd-train`` option (or one of
``energyloss-torchmd-train``'s own: ``task``, ``parameterization``, ...), overridable on the command line.
"""

from __future__ import annotations

import os
from importlib.resources import files


def config_names() -> list[str]:
    """Names of the shipped configurations (file names without ``.yaml``), sorted."""
    return sorted(p.name.removesuffix(".yaml") for p in files(__name__).iterdir() if p.name.endswith(".yaml"))


def config_path(name: str) -> str:
    """Path of the shipped configuration ``name`` (``"structure_tensornet"`` or ``"structure_tensornet.yaml"``).

    Raises ValueError listing the shipped names when there is none of that name.
    """
    stem = name.removesuffix(".yaml")
    if stem not in config_names():
        raise ValueError(f"no shipped TorchMD-Net configuration named {name!r}; shipped: {', '.join(config_names())} "
                         "(or give the path of a .yaml file).")
    return os.fspath(files(__name__) / f"{stem}.yaml")
