"""Training objectives shared by the SchNetPack and TorchMD-Net adapters (one copy of the task logic).

The adapters only map their framework's batch (SchNetPack ``inputs`` dict, PyG ``Data``) onto
flat tensors — positions ``(N, 3)`` Å, ``batch`` ``(N,)``, ``numbers`` ``(N,)`` — and call these.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from energyloss_plugins.config import LossConfig
from energyloss_plugins.diffusion import Denoiser, NoiseSchedule, PerStructureLoss, diffusion_loss, noise_batch, sample
from energyloss_plugins.losses import PairSprings

#: Springs a batch brings: stored with the data, ``(pairs (2, E) flat atom indices, k (E,) eV/Å²)``
#: (``coefficients: hessian``), or resolved by a data pipeline (:class:`PairSprings`, the kernel alone).
BatchSprings = tuple[Tensor, Tensor] | PairSprings


class _Objective:
    """A loss configuration (:class:`~energyloss_plugins.config.LossConfig`), completed per batch with its data.

    Args:
        loss: a loss name with its ``loss_kwargs`` options, or a :class:`LossConfig`.
    """

    def __init__(self, loss: str | LossConfig = "energy", loss_kwargs: Mapping | None = None):
        # Validated now, not at the first batch; springs stored with the data are read per batch.
        self.config = loss if isinstance(loss, LossConfig) else LossConfig.from_options(loss, loss_kwargs)

    def __setstate__(self, state: dict) -> None:
        # Objectives pickled (in checkpoints) before LossConfig held a name and an options dict.
        if "config" not in state and "loss_name" in state:
            state = dict(state)
            state["config"] = LossConfig.from_options(state.pop("loss_name"), state.pop("loss_kwargs", None))
        self.__dict__.update(state)

    @property
    def loss_name(self) -> str:
        return self.config.name

    @property
    def needs_springs(self) -> bool:
        """True when the loss reads per-structure springs from the batch (``coefficients: hessian``)."""
        return self.config.uses_data_springs

    def _evaluate(self, pred: Tensor, target: Tensor, batch: Tensor, numbers: Tensor | None,
                  bonds: Tensor | None, springs: BatchSprings | None, n_structures: int | None,
                  validate_args: bool, reduction: str | None = None) -> Tensor:
        resolved = springs if isinstance(springs, PairSprings) else None
        stored = None if resolved is not None else springs
        return self.config.evaluate(pred, target, batch, n_structures=n_structures, numbers=numbers, bonds=bonds,
                                    stored=stored, springs=resolved, reduction=reduction,
                                    validate_args=validate_args)


class StructureObjective(_Objective):
    """Structure prediction: input geometry → equilibrium geometry.

    Args:
        loss: ``energy``, ``mse``, ``mae`` or ``kabsch``.
        loss_kwargs: options of the loss (:data:`energyloss_plugins.config.OPTIONS`); energy-only
            options are ignored by the baselines. Or ``loss`` is a :class:`LossConfig`.
            ``coefficients: hessian`` takes the springs stored per structure in the data.
    """

    def loss(self, pred: Tensor, target: Tensor, batch: Tensor, numbers: Tensor | None = None,
             bonds: Tensor | None = None, springs: BatchSprings | None = None, *, n_structures: int | None = None,
             validate_args: bool = True, reduction: str | None = None) -> Tensor:
        """Loss of predicted positions ``(N, 3)`` against targets ``(N, 3)``: a scalar, or ``(B,)`` with
        ``reduction="none"`` (overrides the configured reduction; a diffusion output weights each structure).

        A training step passes ``n_structures`` and ``validate_args=False`` (no host synchronisation),
        and ``springs`` resolved by the data pipeline when it has them.
        """
        return self._evaluate(pred, target, batch, numbers, bonds, springs, n_structures, validate_args, reduction)


class DiffusionObjective(_Objective):
    """Denoising diffusion or flow matching on equilibrium structures with the energy loss (SPEC §3).

    Args:
        loss: ``energy`` or a baseline name, applied to the implied clean sample x̂.
        parameterization: what the network predicts: ``eps``, ``v``, ``x0`` or ``velocity``
            (``velocity`` means flow matching).
        schedule: ``polynomial`` or ``cosine`` (VP diffusion; unused for flow matching).
        loss_kwargs: options of the loss.
        max_weight: clip of the time weight w_t (see :func:`energyloss_plugins.diffusion.diffusion_loss`).
        precision: of the schedule (see :class:`energyloss_plugins.diffusion.NoiseSchedule`).
    """

    def __init__(self, loss: str | LossConfig = "energy", parameterization: str = "eps", schedule: str = "polynomial",
                 loss_kwargs: Mapping | None = None, max_weight: float | None = 1e3, precision: float = 1e-4):
        super().__init__(loss, loss_kwargs)
        self.parameterization = parameterization
        self.flow_matching = parameterization == "velocity"
        self.schedule = NoiseSchedule(schedule, precision)
        self.max_weight = max_weight

    def noise(self, x0: Tensor, batch: Tensor, generator: torch.Generator | None = None, *,
              n_structures: int | None = None, validate_args: bool = True) -> dict[str, Tensor]:
        """Noised batch: dict with ``x0``, ``x_t``, ``eps`` ``(N, 3)`` and ``t``, ``alpha``, ``sigma`` ``(B,)``.

        A training step passes ``n_structures`` and ``validate_args=False`` (no host synchronisation).
        """
        return noise_batch(x0, batch, self.schedule, n_structures=n_structures, generator=generator,
                           flow_matching=self.flow_matching, validate_args=validate_args)

    def loss(self, output: Tensor, noised: Mapping[str, Tensor], batch: Tensor, numbers: Tensor | None = None,
             bonds: Tensor | None = None, springs: BatchSprings | None = None, *, n_structures: int | None = None,
             validate_args: bool = True, per_structure: PerStructureLoss | None = None) -> Tensor:
        """Diffusion loss of a model output for ``noised["x_t"]``.

        See :func:`~energyloss_plugins.diffusion.diffusion_loss`; ``springs`` (of the clean
        molecules), ``n_structures`` and ``validate_args`` as in :meth:`StructureObjective.loss`.
        ``per_structure``: the loss L(x̂, x) ``fn(x_hat, x0, batch, n_structures) -> (B,)`` handed in by
        the caller (a SchNetPack output hands its ``loss_fn``); None: this objective's configured loss.
        """
        if per_structure is None:
            def per_structure(x_hat: Tensor, x0: Tensor, batch: Tensor, n: int | None) -> Tensor:
                return self._evaluate(x_hat, x0, batch, numbers, bonds, springs, n, validate_args, reduction="none")

        return diffusion_loss(output, noised, batch, loss=per_structure, parameterization=self.parameterization,
                              max_weight=self.max_weight, n_structures=n_structures, validate_args=validate_args)

    def sample(self, denoiser: Denoiser, batch: Tensor, *, steps: int = 100, method: str | None = None,
               progress: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Positions ``(N, 3)`` for the structures of ``batch``.

        ``method`` defaults to euler for flow matching, else ancestral.
        """
        method = method or ("euler" if self.flow_matching else "ancestral")
        return sample(denoiser, batch, 3, steps=steps, method=method, parameterization=self.parameterization,
                      schedule=self.schedule, progress=progress, generator=generator)
