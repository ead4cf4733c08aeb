"""De novo molecule generation in SchNetPack (``spktrain experiment=energyloss_generation``).

The joint diffusion of positions and atom types of :mod:`energyloss_plugins.generation` (SPEC §7)
as SchNetPack building blocks:

- :class:`TypeFeatureEmbedding`: the noisy type features h_t ``(N, F)`` as an "electronic
  embedding" of PaiNN/SO3net (added to the atoms' initial scalar features), like
  :class:`schnetpack_ext.TimeEmbedding` for t;
- :class:`TypeNoiseHead`: a scalar MLP on ``scalar_representation`` predicting ε_h ``(N, F)``;
- :class:`GenerationOutput`: the ``ModelOutput`` holding the core's
  :class:`~energyloss_plugins.generation.GenerationObjective` (positional loss by name + type MSE);
- :class:`GenerationTask`: noises x and h each step, gives the representation a constant dummy
  atomic number (so its ``nn.Embedding`` yields one learned vector for every atom and the network
  can only learn the types from h_t), rebuilds the neighbour list on x_t, keeps the clean numbers
  for the loss only, stores the element list and the training set's atom-count histogram in the
  checkpoint, and samples molecules (:meth:`GenerationTask.sample_molecules`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import schnetpack.nn as snn
import schnetpack.properties as properties
import torch
import torch.nn.functional as F
from schnetpack.model.base import AtomisticModel
from schnetpack.task import ModelOutput
from torch import nn

from energyloss_plugins.generation import AtomCountDistribution, GenerationObjective, TypeEncoding, sample_with_model
from schnetpack_ext.checkpoint import apply_ema_weights
from schnetpack_ext.heads import DIFFUSION_TIME
from schnetpack_ext.losses import EnergyLoss, LossContext, StructureLossFn, per_structure_loss, plain_config
from schnetpack_ext.outputs import SPRINGS
from schnetpack_ext.tasks import ContextTask, noisy_molecule_inputs, noisy_neighbor_list

log = logging.getLogger(__name__)

#: Batch key of the noisy type features h_t ``(N, F)`` (read by :class:`TypeFeatureEmbedding`).
GENERATION_TYPES = "generation_h"
#: Atomic number given to the representation instead of the clean one (index 0 of its embedding table).
DUMMY_NUMBER = 0


class TypeFeatureEmbedding(nn.Module):
    """Noisy type features h_t as an additive embedding of PaiNN/SO3net initial features.

    Use it in ``representation.electronic_embeddings``; it reads ``inputs["generation_h"]`` ``(N, F)``.

    Args:
        n_atom_basis: feature size of the representation.
        elements: the model's elements (F = len(elements) + 1).
    """

    def __init__(self, n_atom_basis: int, elements: Sequence[int]):
        super().__init__()
        n_features = TypeEncoding(plain_config(elements)).n_features
        self.net = nn.Sequential(snn.Dense(n_features, n_atom_basis, activation=F.silu),
                                 snn.Dense(n_atom_basis, n_atom_basis, activation=None))

    def forward(self, q: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if GENERATION_TYPES not in inputs:
            raise KeyError("TypeFeatureEmbedding needs inputs['generation_h']: train and sample with "
                           "schnetpack_ext.GenerationTask.")
        return self.net(inputs[GENERATION_TYPES].to(q.dtype)).reshape(q.shape)


class TypeNoiseHead(nn.Module):
    """Per-atom type output ``(N, F)`` (ε_h, or the velocity for flow matching) from scalar features.

    Args:
        n_in: size of the representation.
        elements: the model's elements (F = len(elements) + 1 outputs).
        n_hidden, n_layers: of the MLP (as :func:`schnetpack.nn.build_mlp`).
        output_key: key of the output in the results.
    """

    def __init__(self, n_in: int, elements: Sequence[int], n_hidden: int | None = None, n_layers: int = 2,
                 output_key: str = "type_noise"):
        super().__init__()
        self.output_key = output_key
        self.model_outputs = [output_key]
        n_out = TypeEncoding(plain_config(elements)).n_features
        self.outnet = snn.build_mlp(n_in=n_in, n_out=n_out, n_hidden=n_hidden, n_layers=n_layers, activation=F.silu)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs[self.output_key] = self.outnet(inputs["scalar_representation"])
        return inputs


class GenerationOutput(ModelOutput):
    """Joint position/type diffusion output with the core's :class:`GenerationObjective`.

    Args:
        name: key of the position output (a :class:`schnetpack_ext.PositionHead` with
            ``add_positions: false, remove_mean: true``).
        type_name: key of the type output (:class:`TypeNoiseHead`).
        elements: atomic numbers the model generates.
        loss_fn: the positional loss P(x̂, x): :class:`schnetpack_ext.EnergyLoss` (energy | mse | kabsch |
            mae; default: the energy), or any ``fn(x_hat, x, context)``; the output hands it the
            implied clean sample and the clean positions per structure (see :mod:`schnetpack_ext.losses`).
        position_weight, parameterization, schedule, precision, max_weight: see
            :class:`energyloss_plugins.generation.GenerationObjective`.
        target_property: batch key the task fills with the true position output (ε_x), for metrics.
    """

    def __init__(self, elements: Sequence[int], name: str = "position_noise", type_name: str = "type_noise",
                 loss_fn: StructureLossFn | None = None, loss_weight: float = 1.0,
                 metrics: dict[str, nn.Module] | None = None, constraints: list[nn.Module] | None = None,
                 target_property: str | None = "generation_target", position_weight: float = 1.0,
                 parameterization: str = "eps", schedule: str = "polynomial", precision: float = 1e-5,
                 max_weight: float | None = None):
        super().__init__(name=name, loss_fn=loss_fn if loss_fn is not None else EnergyLoss(), loss_weight=loss_weight,
                         metrics=metrics or {}, constraints=constraints, target_property=target_property)
        self.type_name = type_name
        self.objective = GenerationObjective(  # noise, type term, sampler; the positional loss is loss_fn
            plain_config(elements), position_weight=position_weight, schedule=schedule,
            precision=precision, parameterization=parameterization, max_weight=max_weight)

    def network_target(self, noised: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        """What a perfect network outputs for the positions ``(N, 3)`` (ε_x, or ε_x − x for flow matching), as
        :meth:`DiffusionOutput.network_target`: the core's
        :meth:`~energyloss_plugins.generation.GenerationObjective.position_target`."""
        return self.objective.position_target(noised, batch)

    def calculate_loss(self, pred, target):
        if self.loss_weight == 0:
            return 0.0
        if "_noised" not in target or properties.idx_m not in target:
            raise KeyError("GenerationOutput needs the noised batch: use it inside schnetpack_ext.GenerationTask.")
        noised = target["_noised"]
        # The network saw dummy atomic numbers; the loss's element-aware springs need the clean ones.
        context = LossContext(target[properties.idx_m], noised["t"].shape[0], noised["numbers"], target.get(SPRINGS),
                              validate_args=False)
        return self.loss_weight * self.objective.loss(pred[self.name], pred[self.type_name], noised, context.idx_m,
                                                      validate_args=False,
                                                      per_structure=per_structure_loss(self.loss_fn, context))


class GenerationTask(ContextTask):
    """De novo generation of molecules (types and positions) by joint diffusion (SPEC §7).

    Args:
        clean_positions: batch key of the clean geometry; None for ``_positions``,
            ``target_positions`` for databases from ``energyloss-data build``.
        cutoff: neighbour cutoff (Å) on the noisy positions; None for all pairs in a molecule (EDM).
        val_seed: seed of the validation/test noise (``val_loss`` comparable across epochs).
        atom_counts: histogram of atoms per training molecule; None: counted from the training
            split when training starts. Saved in the checkpoint either way.
        (other arguments as :class:`schnetpack.task.AtomisticTask`)
    """

    def __init__(self, model: AtomisticModel, outputs: list[ModelOutput],
                 optimizer_cls: type[torch.optim.Optimizer] = torch.optim.Adam,
                 optimizer_args: dict[str, Any] | None = None, scheduler_cls: type | None = None,
                 scheduler_args: dict[str, Any] | None = None, scheduler_monitor: str | None = None,
                 warmup_steps: int = 0, clean_positions: str | None = None, cutoff: float | None = None,
                 val_seed: int = 1234, atom_counts: Sequence[float] | None = None):
        outputs = list(outputs)  # Hydra passes a ListConfig of objects, which the CSV logger cannot serialise
        super().__init__(model=model, outputs=outputs, optimizer_cls=optimizer_cls,
                         optimizer_args=optimizer_args or {"lr": 5e-4}, scheduler_cls=scheduler_cls,
                         scheduler_args=scheduler_args, scheduler_monitor=scheduler_monitor, warmup_steps=warmup_steps)
        found = [o for o in self.outputs if isinstance(o, GenerationOutput)]
        if len(found) != 1:
            raise ValueError(f"GenerationTask needs exactly one GenerationOutput among its outputs, got {len(found)}.")
        self.clean_positions = clean_positions
        self.cutoff = cutoff
        self.val_seed = val_seed
        atom_counts = plain_config(atom_counts)
        self.atom_counts = AtomCountDistribution(atom_counts) if atom_counts is not None else None

    @property
    def generation_output(self) -> GenerationOutput:
        return next(o for o in self.outputs if isinstance(o, GenerationOutput))

    @property
    def objective(self) -> GenerationObjective:
        return self.generation_output.objective

    @property
    def elements(self) -> tuple:
        return self.objective.encoding.elements

    # --- atom-count histogram (training split) and element check (every split) -----------------
    def on_fit_start(self):
        if self.atom_counts is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            dataset = getattr(datamodule, "train_dataset", None)
            if not hasattr(dataset, "iter_properties"):
                raise ValueError("GenerationTask counts the atoms per molecule of the training split of a SchNetPack "
                                 "AtomsDataModule: train with one (spktrain does), or pass atom_counts=[...] "
                                 "(number of training molecules per atom count).")
            rows = dataset.iter_properties(load_properties=[], load_structure=True)
            # validation and test molecules are encoded too: their elements are checked as well
            splits = [getattr(datamodule, name, None) for name in ("val_dataset", "test_dataset")]
            others = (row[properties.Z] for split in splits if hasattr(split, "iter_properties")
                      for row in split.iter_properties(load_properties=[], load_structure=True))
            self.atom_counts = AtomCountDistribution.from_molecules(
                (row[properties.Z] for row in rows), self.elements, others=others,
                setting=lambda zs: f"globals.elements=[{','.join(map(str, zs))}]")
            log.info("atom counts of the training molecules: %s", self.atom_counts)

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        if self.atom_counts is not None:
            self.atom_counts.save_to(checkpoint)

    def on_load_checkpoint(self, checkpoint):
        self.atom_counts = AtomCountDistribution.from_checkpoint(checkpoint) or self.atom_counts

    # --- training -------------------------------------------------------------------------------
    def network_inputs(self, batch: dict[str, torch.Tensor],
                       noised: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's inputs for a noised batch: x_t, h_t, t, a dummy atomic number, pairs on x_t.

        Nothing here depends on the clean atomic numbers except through h_t.
        """
        new = dict(batch)
        new[properties.R] = noised["x_t"]
        new[properties.Z] = torch.full_like(batch[properties.Z], DUMMY_NUMBER)
        new[GENERATION_TYPES] = noised["h_t"]
        new[DIFFUSION_TIME] = noised["t"]
        new.update(noisy_neighbor_list(batch, self.cutoff, noised["x_t"]))
        return new

    def _noised_batch(self, batch, generator=None):
        x0 = batch[self.clean_positions or properties.R].to(batch[properties.R].dtype)
        noised = self.objective.noise(x0, batch[properties.Z], batch[properties.idx_m], generator=generator,
                                      n_structures=len(batch[properties.n_atoms]), validate_args=False)
        new = self.network_inputs(batch, noised)
        output = self.generation_output
        new[output.target_property] = output.network_target(noised, batch[properties.idx_m])
        return new, {"_noised": noised}

    def _prepare(self, batch, batch_idx, subset: str):
        return self._noised_batch(batch, self._eval_noise(batch, batch_idx, subset))

    # --- sampling -------------------------------------------------------------------------------
    def denoiser(self):
        """``fn(x_t, h_t, t, batch) -> (out_x, out_h)`` calling the model (for the core's sampler)."""
        output = self.generation_output
        dtype = next(self.parameters()).dtype

        def denoise(x, h, t, batch):
            inputs = noisy_molecule_inputs(torch.full_like(batch, DUMMY_NUMBER), x, t, batch, self.cutoff, dtype)
            inputs[GENERATION_TYPES] = h.to(dtype)
            results = self.model(inputs)
            return results[output.name].to(x.dtype), results[output.type_name].to(h.dtype)

        return denoise

    @torch.no_grad()
    def sample_molecules(self, n: int, *, steps: int = 500, method: str | None = None, seed: int | None = None,
                         batch_size: int = 250, progress: bool = True) -> list:
        """``n`` new molecules as ``ase.Atoms`` (sizes from the training histogram, types by argmax).

        Args:
            steps: denoising steps (EDM: 1,000).
            method: ``ancestral`` (default), ``ddim``, or ``euler`` (flow matching, its default).
            seed: None for fresh randomness, an int for reproducible samples (same ``batch_size``).
            batch_size: molecules per network call.
        """
        postprocessing = self.model.do_postprocessing
        self.model.do_postprocessing = False  # the denoiser's outputs are raw network outputs
        try:
            return sample_with_model(self, self.objective, self.denoiser(), self.atom_counts, n,
                                     how_to_count="pass atom_counts=[...] to GenerationTask", steps=steps,
                                     method=method, seed=seed, batch_size=batch_size, progress=progress)
        finally:
            self.model.do_postprocessing = postprocessing


def load_generation_model(checkpoint: str, map_location: str = "cpu", use_ema: bool = True, *,
                          trusted: bool = False) -> GenerationTask:
    """A :class:`GenerationTask` from a Lightning checkpoint, in eval mode, with the EMA weights when it holds them
    (see :func:`schnetpack_ext.checkpoint.apply_ema_weights`).

    The file is read with ``weights_only=True``; ``trusted=True`` allows a full unpickle (a checkpoint
    written before plain hyperparameters): only for files you made or trust.
    """
    task = GenerationTask.load_from_checkpoint(checkpoint, map_location=map_location, trusted=trusted)
    if use_ema:
        apply_ema_weights(task, checkpoint, trusted=trusted)
    return task.eval()
