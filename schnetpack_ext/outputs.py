"""SchNetPack ``ModelOutput`` subclasses that give the loss the structure index.

SchNetPack calls ``output.calculate_loss(pred, targets)`` with ``targets`` holding only the target
properties; a structure loss also needs ``_idx_m`` (which atoms form one structure) and the atomic
numbers. :class:`schnetpack_ext.StructureTask` / :class:`schnetpack_ext.DiffusionTask` add them to
``targets`` (see ``BATCH_CONTEXT``); these outputs read them. Metrics (``metrics:`` torchmetrics on
the output) work unchanged.
"""

from __future__ import annotations

import schnetpack.properties as properties
import torch
from schnetpack.task import ModelOutput
from torch import nn

from energyloss_plugins.config import LossConfig
from energyloss_plugins.diffusion import network_target
from energyloss_plugins.tasks import DiffusionObjective

#: Batch entries the adapter's tasks copy into ``targets`` for the losses and metrics.
BATCH_CONTEXT = (properties.idx_m, properties.Z, properties.R, properties.n_atoms)
#: ``targets`` key of the springs resolved by the data pipeline (a :class:`~energyloss_plugins.PairSprings`).
SPRINGS = "_springs"


def step_loss_arguments(target: dict) -> dict:
    """What a loss needs in a step besides the positions: the springs of the data pipeline (if any),
    the number of structures B (from ``_n_atoms``'s shape: no host synchronisation) and no value checks."""
    return {"springs": target.get(SPRINGS), "n_structures": len(target[properties.n_atoms]), "validate_args": False}


def loss_config(loss_fn: nn.Module | None) -> LossConfig:
    """The :class:`LossConfig` of an output's ``loss_fn`` (a :class:`schnetpack_ext.EnergyLoss`; default: energy)."""
    return getattr(loss_fn, "config", None) or LossConfig()


def _need(targets: dict[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in targets:
        raise KeyError(f"{what} needs targets[{key!r}]: use it inside schnetpack_ext.StructureTask or "
                       "schnetpack_ext.DiffusionTask (task._target_ in the YAML), which pass the batch context.")
    return targets[key]


class StructureOutput(ModelOutput):
    """Predicted positions ``(N, 3)`` against reference positions, with a structure loss.

    Args:
        name: key of the prediction (the ``output_key`` of the :class:`schnetpack_ext.PositionHead`).
        target_property: key of the reference positions in the batch (``target_positions`` in
            databases from ``energyloss-data build``).
        loss_fn: :class:`schnetpack_ext.EnergyLoss` (or any ``fn(pred, target)``, e.g. ``torch.nn.MSELoss``).
        loss_weight, metrics, constraints: as for :class:`schnetpack.task.ModelOutput`.
    """

    def __init__(self, name: str = "positions_pred", loss_fn: nn.Module | None = None, loss_weight: float = 1.0,
                 metrics: dict[str, nn.Module] | None = None, constraints: list[nn.Module] | None = None,
                 target_property: str | None = "target_positions"):
        super().__init__(name=name, loss_fn=loss_fn, loss_weight=loss_weight, metrics=metrics or {},
                         constraints=constraints, target_property=target_property)

    def calculate_loss(self, pred, target):
        if self.loss_weight == 0 or self.loss_fn is None:
            return 0.0
        if getattr(self.loss_fn, "takes_batch", False):
            value = self.loss_fn(pred[self.name], target[self.target_property],
                                 batch=_need(target, properties.idx_m, type(self).__name__),
                                 numbers=target.get(properties.Z), **step_loss_arguments(target))
        else:
            value = self.loss_fn(pred[self.name], target[self.target_property])
        return self.loss_weight * value


class DiffusionOutput(ModelOutput):
    """Denoising diffusion / flow matching output: the loss of the implied clean sample (SPEC §3).

    The network output ``pred[name]`` is in ``parameterization`` (``eps``, ``v``, ``x0`` or
    ``velocity`` for flow matching). The loss is w_t · L(x̂, x) with L chosen by the same
    :class:`schnetpack_ext.EnergyLoss` entry as for structure prediction (one key switches energy,
    MSE, MAE, Kabsch). Schedules, weights and samplers are the core's
    :class:`energyloss_plugins.tasks.DiffusionObjective`.

    Args:
        name: key of the network output (the ``output_key`` of a :class:`schnetpack_ext.PositionHead`
            with ``add_positions: false``).
        loss_fn: :class:`schnetpack_ext.EnergyLoss` (its ``loss`` and options configure the objective).
        parameterization, schedule, max_weight: see :class:`energyloss_plugins.tasks.DiffusionObjective`.
        target_property: batch key the task fills with the true network target (ε, v, x0 or u), for
            SchNetPack's metrics (e.g. MAE of the predicted noise).
    """

    def __init__(self, name: str = "diffusion_output", loss_fn: nn.Module | None = None,
                 loss_weight: float = 1.0, metrics: dict[str, nn.Module] | None = None,
                 constraints: list[nn.Module] | None = None, target_property: str | None = "diffusion_target",
                 parameterization: str = "eps", schedule: str = "polynomial", max_weight: float | None = 1e3):
        super().__init__(name=name, loss_fn=loss_fn, loss_weight=loss_weight, metrics=metrics or {},
                         constraints=constraints, target_property=target_property)
        self.objective = DiffusionObjective(loss=loss_config(loss_fn), parameterization=parameterization,
                                            schedule=schedule, max_weight=max_weight)

    def network_target(self, noised: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        """What a perfect network outputs for this noised batch ``(N, 3)`` (for metrics); see
        :func:`energyloss_plugins.diffusion.network_target`."""
        return network_target(noised, batch, self.objective.parameterization)

    def calculate_loss(self, pred, target):
        if self.loss_weight == 0 or self.loss_fn is None:
            return 0.0
        noised = _need(target, "_noised", type(self).__name__)
        batch = _need(target, properties.idx_m, type(self).__name__)
        return self.loss_weight * self.objective.loss(pred[self.name], noised, batch, numbers=target.get(properties.Z),
                                                      **step_loss_arguments(target))
