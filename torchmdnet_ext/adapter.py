"""TorchMD-Net side of the core's adapter protocol (:mod:`energyloss_plugins.adapters`): position
models (``PositionOutput``/``NoiseOutput`` heads), their :class:`~torchmdnet_ext.PositionLNNP` and
``energyloss-torchmd-train`` checkpoints applied to ASE ``Atoms``.

Registered as the entry point ``torchmdnet`` of the group ``energyloss_plugins.adapters``. Kinds are
the checkpoint's ``task`` hyper-parameter (``structure``, ``diffusion``, ``generation``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms
from torch import Tensor
from tqdm.auto import tqdm

from energyloss_plugins.adapters import generate, read_checkpoint
from energyloss_plugins.ase import atoms_to_batch, batch_to_atoms
from energyloss_plugins.checkpoints import load_checkpoint, weights_only_loads
from energyloss_plugins.layouts import flat_numbers
from energyloss_plugins.tasks import DiffusionObjective
from torchmdnet_ext import heads
from torchmdnet_ext.calculator import TorchMDNetCalculator
from torchmdnet_ext.inference import predict_positions, sample_positions
from torchmdnet_ext.module import PositionLNNP, prepare_hparams

#: A bare TorchMD-Net network's kind follows from its output head.
_KIND_OF_HEAD = {heads.PositionOutput: "structure", heads.EquivariantPositionOutput: "structure",
                 heads.NoiseOutput: "diffusion", heads.EquivariantNoiseOutput: "diffusion"}


def _hparams(path: str) -> dict | None:
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "task" not in hparams or "output_model" not in hparams:
        return None
    return hparams


def identify(source: Any) -> str | None:
    """The ``task`` of a ``torchmdnet_ext`` checkpoint path, ``PositionLNNP`` or position-head model; else None."""
    if isinstance(source, (str, os.PathLike)):
        hparams = _hparams(os.fspath(source))
        return None if hparams is None else str(hparams["task"])
    if isinstance(source, PositionLNNP):
        return str(source.hparams.task)
    return _KIND_OF_HEAD.get(type(getattr(source, "output_model", None)))


def load_position_model(path: str, device: str | torch.device = "cpu", *, trusted: bool = False) -> torch.nn.Module:
    """The TorchMD-Net network (``PositionOutput``/``NoiseOutput`` head) of a ``torchmdnet_ext`` checkpoint,
    read with ``weights_only=True`` (``trusted=True``: a full unpickle, only for files you trust)."""
    from torchmdnet.models.model import load_model

    hparams = prepare_hparams(load_checkpoint(path, trusted=trusted)["hyper_parameters"])
    with weights_only_loads(not trusted):  # upstream's load_model asks torch.load for a full unpickle
        return load_model(os.fspath(path), args=hparams, device=device)


def load(path: str, device: str | torch.device = "cpu", *, trusted: bool = False) -> PositionLNNP:
    """The :class:`~torchmdnet_ext.PositionLNNP` of a checkpoint (``hyper_parameters`` + ``state_dict``, as
    Lightning writes them), with its objective: structure, diffusion or generation task. Read with
    ``weights_only=True`` (``trusted=True``: a full unpickle, only for files you trust)."""
    checkpoint = load_checkpoint(path, trusted=trusted)
    module = PositionLNNP(checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)  # what Lightning's loader also restores (generation: atom counts)
    return module.to(device).eval()


def _network(model: Any) -> torch.nn.Module:
    return model.model if isinstance(model, PositionLNNP) else model


@torch.no_grad()
def predict(model: Any, images: Sequence[Atoms], *, batch_size: int = 32, device: str | torch.device = "cpu",
            progress: bool = False) -> list[np.ndarray]:
    """Predicted positions ``(n_i, 3)`` Å of a structure model (``PositionLNNP`` or network) for ``images``."""
    net = _network(model).to(device).eval()
    dtype = next(net.parameters()).dtype
    out: list[np.ndarray] = []
    for start in tqdm(range(0, len(images), batch_size), desc="predicting", unit="batch", disable=not progress):
        flat = atoms_to_batch(images[start : start + batch_size], dtype=dtype, device=device)
        pred = predict_positions(net, flat["numbers"], flat["positions"], flat["batch"])
        out.extend(p.numpy() for p in torch.split(pred.detach().cpu().double(), flat["n_atoms"].tolist()))
    return out


@torch.no_grad()
def sample_conformers(model: Any, templates: Sequence, *, steps: int = 100, method: str | None = None,
                      seed: int | None = 0, batch_size: int = 64, device: str | torch.device = "cpu",
                      progress: bool = False, objective: DiffusionObjective | None = None,
                      checkpoint: str | None = None) -> list[Atoms]:
    """One conformer per template (Atoms or atomic numbers) from a diffusion model.

    Args:
        objective, checkpoint: for a bare network, the ``DiffusionObjective`` it was trained with or the
            checkpoint it is read from (a ``PositionLNNP`` carries its own).
    """
    if isinstance(model, PositionLNNP):
        objective = objective or model.objective
    if objective is None and checkpoint is None:
        raise ValueError("A TorchMD-Net diffusion network needs objective= or checkpoint= "
                         "(parameterisation and schedule); a PositionLNNP checkpoint carries them.")
    net = _network(model).to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    numbers_list = [t.numbers if isinstance(t, Atoms) else t for t in templates]
    out: list[Atoms] = []
    for start in tqdm(range(0, len(numbers_list), batch_size), desc="sampling", unit="batch", disable=not progress):
        numbers, batch, _ = flat_numbers(numbers_list[start : start + batch_size], device)
        pos: Tensor = sample_positions(net, numbers, batch, objective=objective, checkpoint=checkpoint, steps=steps,
                                       method=method, generator=generator)
        out.extend(batch_to_atoms(pos, numbers, batch))
    return out


__all__ = ["TorchMDNetCalculator", "generate", "identify", "load", "load_position_model", "predict",
           "sample_conformers"]
