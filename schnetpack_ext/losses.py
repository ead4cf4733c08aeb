"""The plugin's loss entry for SchNetPack YAML configs.

``EnergyLoss`` is what a ``loss_fn:`` entry of a :class:`schnetpack_ext.StructureOutput` or
:class:`schnetpack_ext.DiffusionOutput` instantiates. It is a thin configuration holder around the
core's :class:`energyloss_plugins.tasks.StructureObjective`: one key (``loss``) switches between the
pair energy and the baselines, the other keys configure the energy (coefficient scheme, edge set);
options only the energy takes are ignored by the baselines, so one config serves all four::

    loss_fn:
      _target_: schnetpack_ext.EnergyLoss
      loss: energy            # energy | mse | mae | kabsch
      coefficients: exp       # constant | inverse | inverse_square | exp | bond_aware | morse | lennard_jones
      coefficient_kwargs: {k0: 1.0, length_scale: 1.0}
      graph: complete         # complete | radius | bonds | rigid_sparse
    loss_weight: 1.0          # on the output, as for every SchNetPack ModelOutput

The options are one :class:`energyloss_plugins.config.LossConfig` (``EnergyLoss.config``), shared
with the data pipeline's :class:`schnetpack_ext.PairSpringsTransform`.
"""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from energyloss_plugins.config import LossConfig
from energyloss_plugins.tasks import BatchSprings, StructureObjective

#: Why and how to replace ``coefficients: hessian`` in SchNetPack (the rest of the error message).
HESSIAN_FIX = ("the SchNetPack adapter cannot read (its loader does not carry per-structure pair lists). Train with "
               "the TorchMD-Net adapter (dataset: EnergyLossDB reads the springs of "
               "energyloss_plugins.ase.add_springs_to_db), or choose a scheme computed from the reference, "
               "e.g. coefficients: exp.")


def plain_config(value):
    """OmegaConf containers (what Hydra passes) → plain Python, so the loss pickles into checkpoints cleanly."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class EnergyLoss(nn.Module):
    """Structure loss selected by name, evaluated per structure with SchNetPack's ``_idx_m``.

    Args:
        loss: ``energy`` (the pair energy, SPEC §2), ``mse``, ``mae`` or ``kabsch``.
        coefficients: spring scheme of the energy (see :mod:`energyloss_plugins.coefficients`).
        coefficient_kwargs: its parameters, e.g. ``{"k0": 1.0, "length_scale": 1.0}``.
        graph: edge set of the energy (``complete``, ``radius``, ``bonds``, ``rigid_sparse``).
        graph_kwargs: e.g. ``{"cutoff": 5.0}``.
        reduction: ``mean`` over structures (default) or ``sum``.
        normalize: divide each structure's value by its atom count (default True).

    Called as ``loss(pred (N, 3), target (N, 3), batch=(N,), numbers=(N,))``; the adapter's
    outputs pass ``batch`` and ``numbers`` from the task, and in a step also ``n_structures``,
    ``validate_args=False`` and the springs of :class:`schnetpack_ext.PairSpringsTransform` when the
    data pipeline has them.

    ``coefficients: hessian`` (springs fitted per structure and stored in the database) is refused
    here: SchNetPack's loader does not carry the stored per-structure pair lists.
    """

    #: Tells :class:`schnetpack_ext.StructureOutput` to pass the structure index and atomic numbers.
    takes_batch = True

    def __init__(self, loss: str = "energy", coefficients: str = "exp", coefficient_kwargs: Mapping | None = None,
                 graph: str = "complete", graph_kwargs: Mapping | None = None, reduction: str = "mean",
                 normalize: bool = True):
        super().__init__()
        # Validated now: a typo fails here, not at the first batch.
        self.config = LossConfig(loss, plain_config(coefficients), plain_config(coefficient_kwargs), graph,
                                 plain_config(graph_kwargs), reduction, normalize)
        self.config.require_scheme_springs(HESSIAN_FIX)
        self.objective = StructureObjective(self.config)

    @property
    def loss_name(self) -> str:
        return self.config.name

    def __setstate__(self, state: dict) -> None:
        # Losses pickled (in checkpoints) before LossConfig held a name and an options dict.
        if "config" not in state and "options" in state:
            state = dict(state)
            state["config"] = LossConfig.from_options(state.pop("loss_name"), state.pop("options"))
        super().__setstate__(state)

    def forward(self, pred: Tensor, target: Tensor, batch: Tensor | None = None, numbers: Tensor | None = None,
                bonds: Tensor | None = None, *, springs: BatchSprings | None = None, n_structures: int | None = None,
                validate_args: bool = True) -> Tensor:
        return self.objective.loss(pred, target, batch if batch is not None else _single(pred), numbers, bonds,
                                   springs, n_structures=n_structures, validate_args=validate_args)

    def extra_repr(self) -> str:
        if self.loss_name != "energy":
            return f"loss={self.loss_name!r}"
        return (f"loss='energy', coefficients={self.config.coefficients!r}, "
                f"coefficient_kwargs={self.config.coefficient_kwargs}, graph={self.config.graph!r}")


def _single(pred: Tensor) -> Tensor:
    import torch

    return torch.zeros(pred.shape[0], dtype=torch.long, device=pred.device)
