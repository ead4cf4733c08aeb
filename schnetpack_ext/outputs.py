"""SchNetPack ``ModelOutput`` subclasses that call their loss with the batch context.

SchNetPack calls ``output.calculate_loss(pred, targets)`` with ``targets`` holding only the target
properties; a structure loss also needs ``_idx_m`` (which atoms form one structure) and the atomic
numbers. :class:`schnetpack_ext.StructureTask` / :class:`schnetpack_ext.DiffusionTask` add them to
``targets`` (see ``BATCH_CONTEXT``); these outputs build a :class:`~schnetpack_ext.losses.LossContext`
from them and call ``loss_fn(pred, target, context)`` (the contract of :mod:`schnetpack_ext.losses`).
Metrics (``metrics:`` torchmetrics on the output) work unchanged.
"""

from __future__ import annotations

import schnetpack.properties as properties
import torch
from schnetpack.task import ModelOutput
from torch import nn

from energyloss_plugins.diffusion import network_target
from energyloss_plugins.tasks import DiffusionObjective
from schnetpack_ext.losses import LossContext, StructureLossFn, per_structure_loss

#: Batch entries the adapter's tasks copy into ``targets`` for the losses and metrics.
BATCH_CONTEXT = (properties.idx_m, properties.Z, properties.R, properties.n_atoms)
#: ``targets`` key of the springs resolved by the data pipeline (a :class:`~energyloss_plugins.PairSprings`).
SPRINGS = "_springs"


def _need(targets: dict[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in targets:
        raise KeyError(f"{what} needs targets[{key!r}]: use it inside schnetpack_ext.StructureTask or "
                       "schnetpack_ext.DiffusionTask (task._target_ in the YAML), which pass the batch context.")
    return targets[key]


def loss_context(targets: dict[str, torch.Tensor], what: str, numbers: torch.Tensor | None = None) -> LossContext:
    """The :class:`LossContext` of a training step from the ``targets`` a task filled: ``_idx_m``, B from
    ``_n_atoms``'s shape (no host synchronisation), the atomic numbers (or ``numbers``), the springs of
    the data pipeline (if any), no value checks. ``what`` names the caller in the error of a bare output."""
    return LossContext(_need(targets, properties.idx_m, what), len(_need(targets, properties.n_atoms, what)),
                       targets.get(properties.Z) if numbers is None else numbers, targets.get(SPRINGS),
                       validate_args=False)


class StructureOutput(ModelOutput):
    """Predicted positions ``(N, 3)`` against reference positions, with a structure loss.

    Args:
        name: key of the prediction (the ``output_key`` of the :class:`schnetpack_ext.PositionHead`).
        target_property: key of the reference positions in the batch (``target_positions`` in
            databases from ``energyloss-data build``).
        loss_fn: :class:`schnetpack_ext.EnergyLoss`, or any ``fn(pred, target, context)`` (see
            :mod:`schnetpack_ext.losses`), called with the prediction and the reference positions.
        loss_weight, metrics, constraints: as for :class:`schnetpack.task.ModelOutput`.
    """

    def __init__(self, name: str = "positions_pred", loss_fn: StructureLossFn | None = None, loss_weight: float = 1.0,
                 metrics: dict[str, nn.Module] | None = None, constraints: list[nn.Module] | None = None,
                 target_property: str | None = "target_positions"):
        super().__init__(name=name, loss_fn=loss_fn, loss_weight=loss_weight, metrics=metrics or {},
                         constraints=constraints, target_property=target_property)

    def calculate_loss(self, pred, target):
        if self.loss_weight == 0 or self.loss_fn is None:
            return 0.0
        context = loss_context(target, type(self).__name__)
        return self.loss_weight * self.loss_fn(pred[self.name], target[self.target_property], context)


class DiffusionOutput(ModelOutput):
    """Denoising diffusion / flow matching output: the loss of the implied clean sample (SPEC §3).

    The network output ``pred[name]`` is in ``parameterization`` (``eps``, ``v``, ``x0`` or
    ``velocity`` for flow matching). The loss is mean_b w_t · L(x̂_b, x_b): the output hands the
    implied clean sample x̂ and the clean positions x to ``loss_fn`` (per structure, see
    :mod:`schnetpack_ext.losses`), the same :class:`schnetpack_ext.EnergyLoss` entry as for structure
    prediction (one key switches energy, MSE, MAE, Kabsch). Noise, weights and samplers are the
    core's :class:`energyloss_plugins.tasks.DiffusionObjective` (``objective``; its own loss unused).

    Args:
        name: key of the network output (the ``output_key`` of a :class:`schnetpack_ext.PositionHead`
            with ``add_positions: false``).
        loss_fn: :class:`schnetpack_ext.EnergyLoss`, or any ``fn(x_hat, x, context)``; None: no loss.
        parameterization, schedule, max_weight: see :class:`energyloss_plugins.tasks.DiffusionObjective`.
        target_property: batch key the task fills with the true network target (ε, v, x0 or u), for
            SchNetPack's metrics (e.g. MAE of the predicted noise).
    """

    def __init__(self, name: str = "diffusion_output", loss_fn: StructureLossFn | None = None,
                 loss_weight: float = 1.0, metrics: dict[str, nn.Module] | None = None,
                 constraints: list[nn.Module] | None = None, target_property: str | None = "diffusion_target",
                 parameterization: str = "eps", schedule: str = "polynomial", max_weight: float | None = 1e3):
        super().__init__(name=name, loss_fn=loss_fn, loss_weight=loss_weight, metrics=metrics or {},
                         constraints=constraints, target_property=target_property)
        self.objective = DiffusionObjective(parameterization=parameterization, schedule=schedule,
                                            max_weight=max_weight)

    def network_target(self, noised: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        """What a perfect network outputs for this noised batch ``(N, 3)`` (for metrics); see
        :func:`energyloss_plugins.diffusion.network_target`."""
        return network_target(noised, batch, self.objective.parameterization)

    def calculate_loss(self, pred, target):
        if self.loss_weight == 0 or self.loss_fn is None:
            return 0.0
        noised = _need(target, "_noised", type(self).__name__)
        context = loss_context(target, type(self).__name__)
        return self.loss_weight * self.objective.loss(pred[self.name], noised, context.idx_m,
                                                      n_structures=context.n_structures, validate_args=False,
                                                      per_structure=per_structure_loss(self.loss_fn, context))
