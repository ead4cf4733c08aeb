"""SchNetPack side of the core's adapter protocol (:mod:`energyloss_plugins.adapters`): trained tasks,
``best_model`` files and Lightning checkpoints applied to ASE ``Atoms``.

Registered as the entry point ``schnetpack`` of the group ``energyloss_plugins.adapters``; the
core's ``predict_structures``, ``run_diffusion_model`` and the ``energyloss-sample`` command find it
there. Kinds: ``structure`` (:class:`~schnetpack_ext.StructureTask`, or a ``best_model`` exported
by ``spktrain``), ``diffusion`` (:class:`~schnetpack_ext.DiffusionTask`), ``generation`` (a task with
``sample_molecules``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import schnetpack.properties as properties
import torch
from ase import Atoms
from schnetpack.model.base import AtomisticModel
from schnetpack.task import AtomisticTask
from tqdm.auto import tqdm

from energyloss_plugins.adapters import generate
from energyloss_plugins.checkpoints import load_checkpoint, peek_checkpoint, pickle_globals
from schnetpack_ext.generation import GenerationTask
from schnetpack_ext.tasks import TASK_CLASS_KEY, DiffusionTask, StructureTask

#: Kinds of pickled Lightning checkpoints (written before plain hyperparameters), by the output class they name.
_KIND_OF_OUTPUT = {"schnetpack_ext.outputs.StructureOutput": "structure",
                   "schnetpack_ext.outputs.DiffusionOutput": "diffusion",
                   "schnetpack_ext.generation.GenerationOutput": "generation"}


def _kind_of_task(cls: type) -> str:
    if hasattr(cls, "sample_molecules"):
        return "generation"
    if hasattr(cls, "sample"):
        return "diffusion"
    return "structure"


def _task_class(checkpoint: dict) -> type | None:
    """The ``schnetpack_ext`` task class a Lightning checkpoint was saved from, or None."""
    name = checkpoint.get(TASK_CLASS_KEY)
    if isinstance(name, str) and name.startswith("schnetpack_ext."):
        module, _, qualname = name.rpartition(".")
        cls = getattr(importlib.import_module(module), qualname, None)
        return cls if isinstance(cls, type) and issubclass(cls, AtomisticTask) else None
    return None


def _pickled_kind(names: list[str]) -> str | None:
    """The kind of a file that needs a full unpickle, from the globals its pickle names (nothing is unpickled):
    a ``best_model`` (its first global, the top-level object, is an ``AtomisticModel``) or an old task checkpoint."""
    if names and names[0].startswith("schnetpack."):
        module, _, qualname = names[0].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), qualname, None)
        except ImportError:
            cls = None
        if isinstance(cls, type) and issubclass(cls, AtomisticModel):
            return "structure"
    kinds = {_KIND_OF_OUTPUT[n] for n in names if n in _KIND_OF_OUTPUT}
    return kinds.pop() if len(kinds) == 1 else None


def identify(source: Any) -> str | None:
    """``structure``/``diffusion``/``generation`` for a SchNetPack task, model or checkpoint path; else None.

    A path is read with ``weights_only=True`` or, for a file that needs a full unpickle, only by the
    names its pickle refers to: identifying runs no code from the file.
    """
    if isinstance(source, (str, os.PathLike)):
        content, names = peek_checkpoint(source)
        if content is None:
            return _pickled_kind(names)
        if isinstance(content, dict) and "state_dict" in content:
            cls = _task_class(content)
            return None if cls is None else _kind_of_task(cls)
        return None
    if isinstance(source, AtomisticTask) and type(source).__module__.startswith("schnetpack_ext."):
        return _kind_of_task(type(source))
    if isinstance(source, AtomisticModel):
        return "structure"
    return None


def load(path: str, device: str | torch.device = "cpu", *, trusted: bool = False) -> Any:
    """The task of a Lightning checkpoint, or the model of a ``best_model`` file.

    Read with ``weights_only=True``; a ``best_model`` (``torch.save`` of the whole model) or an old
    checkpoint needs ``trusted=True`` (a full unpickle: only for files you made or trust).

    Raises:
        UntrustedCheckpointError: the file needs a full unpickle and ``trusted`` is False.
    """
    content = load_checkpoint(path, map_location="cpu", trusted=trusted)
    if isinstance(content, AtomisticModel):
        return content.to(device)
    cls = _task_class(content) if isinstance(content, dict) else None
    if cls is None and trusted and isinstance(content, dict):
        kinds = {"structure": StructureTask, "diffusion": DiffusionTask, "generation": GenerationTask}
        cls = kinds.get(_pickled_kind(pickle_globals(path)))
    if cls is None:
        raise ValueError(f"{path} is not a schnetpack_ext checkpoint or best_model file.")
    return cls.load_from_checkpoint(os.fspath(path), map_location=device, trusted=trusted)


def load_structure_model(path: str, device: str = "cpu", *, trusted: bool = False) -> AtomisticModel:
    """The network of a structure ``best_model`` file (needs ``trusted=True``) or ``StructureTask`` checkpoint."""
    model = load(path, device, trusted=trusted)
    return getattr(model, "model", model)


@torch.no_grad()
def predict(
    model: Any,
    images: Sequence[Atoms],
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    output_key: str = "positions_pred",
    cutoff: float | None = None,
) -> list[np.ndarray]:
    """Predicted positions ``(n_i, 3)`` Å of a structure model (task or network) for ``images``.

    Args:
        output_key: the position head's output key.
        cutoff: neighbour-list cutoff in Å; default: the representation's cutoff.
    """
    from schnetpack.interfaces import AtomsConverter
    from schnetpack.transform import MatScipyNeighborList

    model = getattr(model, "model", model)  # a task -> its network
    if cutoff is None:
        cutoff = float(getattr(getattr(model, "representation", None), "cutoff", 5.0))
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    converter = AtomsConverter(neighbor_list=MatScipyNeighborList(cutoff=cutoff), device=device, dtype=dtype)
    out: list[np.ndarray] = []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="predicting", unit="batch", disable=not progress):
        chunk = list(images[start : start + batch_size])
        inputs = converter(chunk)
        positions = model(inputs)[output_key].detach().cpu().double()
        out.extend(p.numpy() for p in torch.split(positions, inputs[properties.n_atoms].cpu().tolist()))
    return out


def sample_conformers(model: Any, templates: Sequence, *, steps: int = 100, method: str | None = None,
                      seed: int | None = 0, batch_size: int = 64, device: str | torch.device = "cpu",
                      progress: bool = False) -> list[Atoms]:
    """One conformer per template (Atoms or atomic numbers) from a :class:`~schnetpack_ext.DiffusionTask`."""
    if not callable(getattr(model, "sample", None)):
        raise ValueError("A SchNetPack diffusion model must be a schnetpack_ext.DiffusionTask (it owns the sampler).")
    model = model.to(device)
    return model.sample(list(templates), steps=steps, method=method, batch_size=batch_size, seed=seed,
                        progress=progress)


__all__ = ["generate", "identify", "load", "load_structure_model", "predict", "sample_conformers"]
