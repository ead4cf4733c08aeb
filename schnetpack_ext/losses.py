"""The plugin's loss for SchNetPack: a callable ``loss_fn(pred, target, context)``, and its YAML entry.

Contract (the one way every output of this adapter calls its loss): SchNetPack's
``ModelOutput.calculate_loss`` calls ``loss_fn(pred, target)``; a structure loss also needs to know
which atoms form one structure, so the outputs (:class:`schnetpack_ext.StructureOutput`,
:class:`schnetpack_ext.DiffusionOutput`, :class:`schnetpack_ext.GenerationOutput`) call::

    loss_fn(pred (N, 3) Å, target (N, 3) Å, context: LossContext) -> scalar, or (B,) with context.reduction "none"

with a :class:`LossContext` built from the batch (``_idx_m``, the number of structures from
``_n_atoms``'s shape, atomic numbers, the springs of :class:`schnetpack_ext.PairSpringsTransform`).
A structure output hands the predicted and reference positions; a diffusion or generation output
hands the implied clean sample x̂ and the clean positions x with ``reduction="none"`` and weights
each structure's value by w_t (the schedule and weights are the core's objectives). Any callable
with this signature can be a ``loss_fn``; :class:`EnergyLoss` is the shipped one.

``EnergyLoss`` is what a ``loss_fn:`` entry in the YAML instantiates. One key (``loss``) switches
between the pair energy and the baselines, the other keys configure the energy (coefficient scheme,
edge set); options only the energy takes are ignored by the baselines, so one config serves all four::

    loss_fn:
      _target_: schnetpack_ext.EnergyLoss
      loss: energy            # energy | mse | mae | kabsch
      coefficients: exp       # constant | inverse | inverse_square | exp | bond_aware | morse | lennard_jones |
                              # hessian (stored springs, through PairSpringsTransform; docs/schnetpack.md)
      coefficient_kwargs: {k0: 1.0, length_scale: 1.0}
      graph: complete         # complete | radius | bonds | rigid_sparse
    loss_weight: 1.0          # on the output, as for every SchNetPack ModelOutput

The options are one :class:`energyloss_plugins.config.LossConfig` (``EnergyLoss.config``), shared
with the data pipeline's :class:`schnetpack_ext.PairSpringsTransform`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from energyloss_plugins.config import LossConfig
from energyloss_plugins.diffusion import PerStructureLoss
from energyloss_plugins.tasks import BatchSprings, StructureObjective

#: What ``coefficients: hessian`` needs in SchNetPack (the rest of its error messages).
HESSIAN_FIX = ("the SchNetPack adapter reads from the data pipeline only: fit and store them with "
               "energyloss_plugins.ase.add_springs_to_db(db, calculator) (which lists them in the database's "
               "_property_unit_dict), load them with data.load_properties: [target_positions, spring_pairs, spring_k], "
               "and list schnetpack_ext.PairSpringsTransform with coefficients: hessian in data.transforms "
               "(docs/schnetpack.md); or choose a scheme computed from the reference, e.g. coefficients: exp.")


def plain_config(value):
    """OmegaConf containers (what Hydra passes) → plain Python, so the loss pickles into checkpoints cleanly."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


@dataclass(frozen=True)
class LossContext:
    """What a structure loss needs from the batch besides the two position tensors.

    Attributes:
        idx_m: ``(N,)`` structure index of each atom (SchNetPack's ``_idx_m``).
        n_structures: B; None: counted from ``idx_m`` (reads back to the host: outside a step only).
        numbers: ``(N,)`` atomic numbers (element-aware springs), or None.
        springs: springs the data pipeline resolved (:class:`~energyloss_plugins.PairSprings`), or
            stored ``(pairs (2, E), k (E,) eV/Å²)``; None: computed from the target.
        validate_args: value checks (they read back to the host; a training step turns them off).
        reduction: overrides the loss's reduction; ``none`` returns ``(B,)`` (diffusion weights each structure).
    """

    idx_m: Tensor
    n_structures: int | None = None
    numbers: Tensor | None = None
    springs: BatchSprings | None = None
    validate_args: bool = True
    reduction: str | None = None

    @classmethod
    def single(cls, positions: Tensor) -> LossContext:
        """All ``(N, 3)`` positions form one structure."""
        return cls(torch.zeros(positions.shape[0], dtype=torch.long, device=positions.device), 1)


#: A loss as the outputs call it: ``fn(pred (N, 3), target (N, 3), context) -> Tensor``.
StructureLossFn = Callable[[Tensor, Tensor, LossContext], Tensor]


def per_structure_loss(loss_fn: StructureLossFn, context: LossContext) -> PerStructureLoss:
    """``loss_fn`` as the core's diffusion objectives take it: ``fn(x_hat, x0, batch, n_structures) -> (B,)``."""
    def per_structure(x_hat: Tensor, x0: Tensor, batch: Tensor, n_structures: int | None) -> Tensor:
        return loss_fn(x_hat, x0, dataclasses.replace(context, idx_m=batch, n_structures=n_structures,
                                                      reduction="none"))

    return per_structure


class EnergyLoss(nn.Module):
    """Structure loss selected by name, evaluated per structure (called as in the module docstring).

    Args:
        loss: ``energy`` (the pair energy, SPEC §2), ``mse``, ``mae`` or ``kabsch``.
        coefficients: spring scheme of the energy (see :mod:`energyloss_plugins.coefficients`).
        coefficient_kwargs: its parameters, e.g. ``{"k0": 1.0, "length_scale": 1.0}``.
        graph: edge set of the energy (``complete``, ``radius``, ``bonds``, ``rigid_sparse``).
        graph_kwargs: e.g. ``{"cutoff": 5.0}``.
        reduction: ``mean`` over structures (default) or ``sum``.
        normalize: divide each structure's value by its atom count (default True).

    ``coefficients: hessian`` (springs fitted per structure and stored in the database) reads the
    springs the data pipeline's :class:`schnetpack_ext.PairSpringsTransform` emits from the stored
    ``spring_pairs``/``spring_k``; the task checks at the start of training that its training data
    provide them (:func:`schnetpack_ext.tasks.check_data_springs`).
    """

    def __init__(self, loss: str = "energy", coefficients: str = "exp", coefficient_kwargs: Mapping | None = None,
                 graph: str = "complete", graph_kwargs: Mapping | None = None, reduction: str = "mean",
                 normalize: bool = True):
        super().__init__()
        # Validated now: a typo fails here, not at the first batch.
        self.config = LossConfig(loss, plain_config(coefficients), plain_config(coefficient_kwargs), graph,
                                 plain_config(graph_kwargs), reduction, normalize)
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

    def forward(self, pred: Tensor, target: Tensor, context: LossContext | None = None) -> Tensor:
        """The loss of ``pred`` against ``target`` ``(N, 3)`` Å; ``context`` None: one structure."""
        context = context or LossContext.single(pred)
        if context.springs is None and self.config.uses_data_springs:
            raise ValueError(f"coefficients='hessian' means the springs stored with each structure, but this batch "
                             f"has none; {HESSIAN_FIX}")
        return self.objective.loss(pred, target, context.idx_m, context.numbers, springs=context.springs,
                                   n_structures=context.n_structures, validate_args=context.validate_args,
                                   reduction=context.reduction)

    def extra_repr(self) -> str:
        if self.loss_name != "energy":
            return f"loss={self.loss_name!r}"
        return (f"loss='energy', coefficients={self.config.coefficients!r}, "
                f"coefficient_kwargs={self.config.coefficient_kwargs}, graph={self.config.graph!r}")
