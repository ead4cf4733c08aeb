"""Training objectives shared by the SchNetPack and TorchMD-Net adapters (one copy of the task logic).

The adapters only map their framework's batch (SchNetPack ``inputs`` dict, PyG ``Data``) onto
flat tensors — positions ``(N, 3)`` Å, ``batch`` ``(N,)``, ``numbers`` ``(N,)`` — and call these.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.diffusion import Denoiser, NoiseSchedule, diffusion_loss, noise_batch, sample
from energyloss_plugins.losses import LOSSES, REDUCTIONS, call_loss
from energyloss_plugins.modules import DATA_SPRINGS, check_energy_options


def with_batch_data(options: Mapping, numbers: Tensor | None = None, bonds: Tensor | None = None,
                    springs: tuple[Tensor, Tensor] | None = None) -> dict:
    """Loss options completed with a batch's atomic numbers, bonds and stored springs.

    ``springs`` is ``(edge_index (2, E) flat atom indices, k (E,) eV/Å²)``. With
    ``coefficients: hessian`` the springs are required; with any other scheme they are ignored.
    """
    options = dict(options)
    if numbers is not None:
        options.setdefault("numbers", numbers)
    if bonds is not None:
        options.setdefault("bonds", bonds)
    if options.get("coefficients") == DATA_SPRINGS:
        if springs is None:
            raise ValueError(
                "coefficients: hessian uses the springs stored with each structure, but this batch has none. "
                "Store them with energyloss_plugins.ase.add_springs_to_db (row.data spring_pairs/spring_k)."
            )
        options["edge_index"], options["coefficients"] = springs[0], springs[1]
        options.pop("graph", None)
    return options


class _Objective:
    """A loss by name with its options, completed per batch with the batch's data."""

    def __init__(self, loss: str = "energy", loss_kwargs: Mapping | None = None):
        _checks.check_choice("loss", loss, LOSSES)
        self.loss_name = loss
        self.loss_kwargs = dict(loss_kwargs or {})
        # Configuration errors now, not at the first batch; springs stored with the data are read per batch.
        names = ("coefficients", "coefficient_kwargs", "graph", "graph_kwargs", "reduction")
        if loss == "energy":
            check_energy_options(**{k: v for k, v in self.loss_kwargs.items() if k in names}, data_springs=True)
        elif "reduction" in self.loss_kwargs:
            _checks.check_choice("reduction", self.loss_kwargs["reduction"], REDUCTIONS)

    @property
    def needs_springs(self) -> bool:
        """True when the loss reads per-structure springs from the batch (``coefficients: hessian``)."""
        return self.loss_name == "energy" and self.loss_kwargs.get("coefficients") == DATA_SPRINGS

    def _options(self, numbers: Tensor | None, bonds: Tensor | None,
                 springs: tuple[Tensor, Tensor] | None) -> dict:
        if self.loss_name != "energy":  # baselines take no per-batch data
            return self.loss_kwargs
        return with_batch_data(self.loss_kwargs, numbers, bonds, springs)


class StructureObjective(_Objective):
    """Structure prediction: input geometry → equilibrium geometry.

    Args:
        loss: ``energy``, ``mse``, ``mae`` or ``kabsch``.
        loss_kwargs: options of the loss (coefficients, coefficient_kwargs, graph, graph_kwargs,
            reduction, normalize); energy-only options are ignored by the baselines.
            ``coefficients: hessian`` takes the springs stored per structure in the data.
    """

    def loss(self, pred: Tensor, target: Tensor, batch: Tensor, numbers: Tensor | None = None,
             bonds: Tensor | None = None, springs: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Scalar loss of predicted positions ``(N, 3)`` against targets ``(N, 3)``."""
        return call_loss(self.loss_name, pred, target, batch, **self._options(numbers, bonds, springs))


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

    def __init__(self, loss: str = "energy", parameterization: str = "eps", schedule: str = "polynomial",
                 loss_kwargs: Mapping | None = None, max_weight: float | None = 1e3, precision: float = 1e-4):
        super().__init__(loss, loss_kwargs)
        self.parameterization = parameterization
        self.flow_matching = parameterization == "velocity"
        self.schedule = NoiseSchedule(schedule, precision)
        self.max_weight = max_weight

    def noise(self, x0: Tensor, batch: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Noised batch: dict with ``x0``, ``x_t``, ``eps`` ``(N, 3)`` and ``t``, ``alpha``, ``sigma`` ``(B,)``."""
        return noise_batch(x0, batch, self.schedule, generator=generator, flow_matching=self.flow_matching)

    def loss(self, output: Tensor, noised: Mapping[str, Tensor], batch: Tensor, numbers: Tensor | None = None,
             bonds: Tensor | None = None, springs: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Diffusion loss of a model output for ``noised["x_t"]``.

        See :func:`~energyloss_plugins.diffusion.diffusion_loss`.
        """
        return diffusion_loss(output, noised, batch, loss=self.loss_name, parameterization=self.parameterization,
                              max_weight=self.max_weight, loss_kwargs=self._options(numbers, bonds, springs))

    def sample(self, denoiser: Denoiser, batch: Tensor, *, steps: int = 100, method: str | None = None,
               progress: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Positions ``(N, 3)`` for the structures of ``batch``.

        ``method`` defaults to euler for flow matching, else ancestral.
        """
        method = method or ("euler" if self.flow_matching else "ancestral")
        return sample(denoiser, batch, 3, steps=steps, method=method, parameterization=self.parameterization,
                      schedule=self.schedule, progress=progress, generator=generator)
