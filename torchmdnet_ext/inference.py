"""Using trained position models: predictions, denoisers and sampling (the core's samplers)."""

from __future__ import annotations

import torch
from torch import Tensor

from energyloss_plugins.checkpoints import load_checkpoint
from energyloss_plugins.tasks import DiffusionObjective
from torchmdnet_ext.heads import denoiser
from torchmdnet_ext.module import PositionLNNP, make_objective, prepare_hparams


def objective_from_checkpoint(path: str, *, trusted: bool = False) -> DiffusionObjective:
    """The diffusion objective (parameterisation, schedule) a checkpoint was trained with (read with
    ``weights_only=True``; ``trusted=True``: a full unpickle, only for files you trust)."""
    hparams = load_checkpoint(path, trusted=trusted)["hyper_parameters"]
    h = prepare_hparams(hparams)
    if h["task"] != "diffusion":
        raise ValueError(f"{path} was trained on task {h['task']!r}, not diffusion.")
    return make_objective(h)


@torch.no_grad()
def sample_positions(model, z: Tensor, batch: Tensor, *, objective: DiffusionObjective | None = None,
                     checkpoint: str | None = None, steps: int = 100, method: str | None = None,
                     generator: torch.Generator | None = None, progress: bool = False) -> Tensor:
    """Generate ``(N, 3)`` positions (Å, zero centre of mass) for atoms ``z`` grouped by ``batch``.

    Give the training ``objective`` or the ``checkpoint`` path it is read from.
    """
    if objective is None:
        if checkpoint is None:
            raise ValueError(
                "sample_positions needs objective= or checkpoint= (for the parameterisation and schedule)."
            )
        objective = objective_from_checkpoint(checkpoint)
    was_training = model.training
    model.eval()
    try:
        return objective.sample(denoiser(model, z), batch, steps=steps, method=method, progress=progress,
                                generator=generator)
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_positions(model, z: Tensor, pos: Tensor, batch: Tensor | None = None) -> Tensor:
    """Predicted equilibrium positions ``(N, 3)`` of a structure-task model for input geometries ``pos``."""
    y, _ = model(z, pos, batch=batch)
    return y


def load_generation_model(checkpoint: str, map_location: str = "cpu", *, trusted: bool = False):
    """A trained ``task: generation`` :class:`~torchmdnet_ext.PositionLNNP` from its checkpoint, in eval mode.

    The checkpoint holds everything sampling needs (elements, schedule, atom-count histogram):
    ``load_generation_model(path).sample_molecules(1000, steps=500, seed=0)``. The file is read with
    ``weights_only=True``; ``trusted=True`` allows a full unpickle (only for files you made or trust).
    """
    load_checkpoint(checkpoint, trusted=trusted)  # a refused file is named with the opt-in
    module = PositionLNNP.load_from_checkpoint(checkpoint, map_location=map_location, weights_only=not trusted)
    if module.hparams.task != "generation":
        raise ValueError(f"{checkpoint} was trained on task {module.hparams.task!r}, not generation.")
    return module.eval()
