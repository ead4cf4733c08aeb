"""``AtomisticTask`` subclasses for structure prediction and denoising diffusion.

Both keep SchNetPack's own training/validation/test steps (losses, ``train_loss``/``val_loss``
logging, torchmetrics, checkpoints, EMA, ``spktrain``'s best-model export). They only

1. pass the batch context (``_idx_m``, atomic numbers, input positions) into ``targets`` so that
   the outputs' structure losses see which atoms form one structure;
2. log the core's structure metrics (aligned RMSD, bond-length MAE, ...) per epoch
   (``val_rmsd``, ``val_bond_mae``, ...), next to SchNetPack's own metrics in TensorBoard/CSV;
3. for diffusion, noise the clean positions before the forward pass and rebuild the neighbour list
   on the noisy positions, and sample new structures as ASE ``Atoms``.

The loss, schedule and sampler are the core's (:mod:`energyloss_plugins.tasks`), and so are the epoch metrics
(:class:`energyloss_plugins.metrics.epoch.StructureMetrics`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import schnetpack.properties as properties
import torch
from schnetpack.model.base import AtomisticModel
from schnetpack.task import AtomisticTask, ModelOutput
from torch import nn

from energyloss_plugins.checkpoints import load_checkpoint
from energyloss_plugins.diffusion import eval_generator
from energyloss_plugins.graphs import complete_directed_pairs
from energyloss_plugins.layouts import flat_numbers, structure_counts, structure_index
from energyloss_plugins.metrics.epoch import StructureMetrics
from schnetpack_ext.checkpoint import plain_hparams, save_plain_hparams
from schnetpack_ext.heads import DIFFUSION_TIME
from schnetpack_ext.outputs import BATCH_CONTEXT, SPRINGS, DiffusionOutput, StructureOutput
from schnetpack_ext.transforms import COMPLETE_PAIRS, STORED_SPRINGS, PairSpringsTransform, batch_springs

_SUBSETS = ("train", "val", "test")
#: Checkpoint key naming the task class (``module.Class``), so a checkpoint can be loaded without knowing it.
TASK_CLASS_KEY = "energyloss_task_class"


class ContextTask(AtomisticTask):
    """AtomisticTask whose outputs also receive the batch context in ``targets``."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only: bool | None = None, *, trusted: bool = False, **kwargs):
        """As Lightning's, reading the file with ``weights_only=True``: the model and outputs are rebuilt from
        the plain description the task saved (see :mod:`schnetpack_ext.checkpoint`).

        Args:
            trusted: allow a full unpickle (checkpoints from before that format, or holding classes outside
                the allow-list): only for files you made or trust; it can run code from the file.

        Raises:
            UntrustedCheckpointError: the file needs a full unpickle and ``trusted`` is False.
            CorruptCheckpointError: the file is truncated or not a checkpoint.
        """
        trusted = trusted or weights_only is False
        checkpoint = load_checkpoint(checkpoint_path, map_location="cpu", trusted=trusted)
        kwargs = {**plain_hparams(checkpoint), **kwargs}  # {} for a checkpoint with pickled hyperparameters
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, weights_only=not trusted, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[TASK_CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"
        save_plain_hparams(checkpoint)  # so the file loads with weights_only=True

    _batch: dict[str, torch.Tensor] | None = None
    _extra_targets: dict[str, Any] | None = None

    @contextlib.contextmanager
    def _context(self, batch, extra=None):
        self._batch, self._extra_targets = batch, extra or {}
        try:
            yield
        finally:
            self._batch, self._extra_targets = None, None

    def apply_constraints(self, pred, targets):
        # Called by every SchNetPack step right before loss_fn and log_metrics: the one hook that
        # sees the targets dict, so the context is added here (not in copies of the steps).
        if self._batch is not None:
            for key in BATCH_CONTEXT:
                if key in self._batch and key not in targets:
                    targets[key] = self._batch[key]
            targets.update(self._extra_targets or {})
        return super().apply_constraints(pred, targets)

    def _prepare(self, batch, batch_idx, subset: str):
        """The batch the step runs on and extra ``targets`` entries (subclasses transform it)."""
        return batch, None

    def _eval_noise(self, batch, batch_idx, subset: str) -> torch.Generator | None:
        """Seeded noise for validation/test (``val_loss`` comparable across epochs); None in training.

        Subclasses that noise the batch define ``val_seed``.
        """
        if subset == "train":
            return None
        return eval_generator(self.val_seed, batch_idx, self.global_rank, batch[properties.R].device)

    def _step(self, step, subset, batch, batch_idx):
        batch, extra = self._prepare(batch, batch_idx, subset)
        springs = batch_springs(batch)  # resolved by the data pipeline (PairSpringsTransform), if listed
        if springs is not None:
            extra = {**(extra or {}), SPRINGS: springs}
        with self._context(batch, extra):
            return step(self, batch, batch_idx)

    def on_train_start(self) -> None:
        super().on_train_start()
        check_data_springs(self.outputs, getattr(self.trainer.train_dataloader, "dataset", None))

    def training_step(self, batch, batch_idx):
        return self._step(AtomisticTask.training_step, "train", batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        return self._step(AtomisticTask.validation_step, "val", batch, batch_idx)

    def test_step(self, batch, batch_idx):
        return self._step(AtomisticTask.test_step, "test", batch, batch_idx)


def check_data_springs(outputs: Sequence[ModelOutput], dataset) -> None:
    """Raise before the first step when a loss takes the springs stored with the data (``coefficients:
    hessian``) and the SchNetPack training dataset does not provide them.

    They reach the loss only through :class:`schnetpack_ext.PairSpringsTransform` with ``coefficients:
    hessian`` in the dataset's transforms and ``spring_pairs``/``spring_k`` in its ``load_properties``.
    A dataset that is not SchNetPack's (no ``transforms``) is not checked: a step without springs
    raises the same fix.
    """
    from schnetpack_ext.losses import HESSIAN_FIX

    names = [o.name for o in outputs if getattr(getattr(o.loss_fn, "config", None), "uses_data_springs", False)]
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    if not names or not isinstance(getattr(dataset, "transforms", None), list):
        return
    transform = any(isinstance(t, PairSpringsTransform) and t.config.uses_data_springs for t in dataset.transforms)
    missing = [key for key in STORED_SPRINGS if key not in (getattr(dataset, "load_properties", None) or ())]
    if not transform or missing:
        lacks = ([] if transform else ["no PairSpringsTransform(coefficients: hessian) in data.transforms"]) + (
            [f"no {' or '.join(missing)} in data.load_properties"] if missing else [])
        raise ValueError(f"Output(s) {', '.join(names)}: coefficients='hessian' means the springs stored with each "
                         f"structure, but the training data give none ({'; '.join(lacks)}); {HESSIAN_FIX}")


class StructureTask(ContextTask):
    """Structure prediction: input geometry (``_positions``) → equilibrium geometry (``target_positions``).

    Args:
        model, outputs, optimizer_cls, optimizer_args, scheduler_cls, scheduler_args,
        scheduler_monitor, warmup_steps: as :class:`schnetpack.task.AtomisticTask`.
        structure_metrics: subsets (``train``, ``val``, ``test``) on which the core's structure
            metrics are logged per epoch for every :class:`StructureOutput`.
    """

    def __init__(self, model: AtomisticModel, outputs: list[ModelOutput],
                 optimizer_cls: type[torch.optim.Optimizer] = torch.optim.Adam,
                 optimizer_args: dict[str, Any] | None = None, scheduler_cls: type | None = None,
                 scheduler_args: dict[str, Any] | None = None, scheduler_monitor: str | None = None,
                 warmup_steps: int = 0, structure_metrics: Sequence[str] = ("val", "test")):
        outputs = list(outputs)  # Hydra passes a ListConfig of objects, which the CSV logger cannot serialise
        super().__init__(model=model, outputs=outputs, optimizer_cls=optimizer_cls,
                         optimizer_args=optimizer_args or {"lr": 5e-4}, scheduler_cls=scheduler_cls,
                         scheduler_args=scheduler_args, scheduler_monitor=scheduler_monitor, warmup_steps=warmup_steps)
        unknown = set(structure_metrics or ()) - set(_SUBSETS)
        if unknown:
            raise ValueError(f"structure_metrics: unknown subsets {sorted(unknown)}; choose from {list(_SUBSETS)}.")
        self.structure_metric_subsets = tuple(structure_metrics or ())
        # One dataset-level accumulator per (subset, structure output); its states are not saved in checkpoints.
        structure_outputs = [o for o in self.outputs if isinstance(o, StructureOutput)]
        self._structure_metrics = nn.ModuleDict({
            f"{subset}_{output.name}": StructureMetrics()
            for subset in self.structure_metric_subsets for output in structure_outputs
        })

    def log_metrics(self, pred, targets, subset):
        super().log_metrics(pred, targets, subset)
        if subset not in self.structure_metric_subsets or properties.idx_m not in targets:
            return
        for output in self.outputs:
            if isinstance(output, StructureOutput):
                self._structure_metrics[f"{subset}_{output.name}"].update(
                    pred[output.name], targets[output.target_property], targets[properties.idx_m],
                    targets.get(properties.Z))

    def _log_structure_metrics(self, subset: str):
        for output in self.outputs:
            key = f"{subset}_{output.name}"
            if key not in self._structure_metrics:
                continue
            metric = self._structure_metrics[key]
            if metric.update_called:
                prefix = f"{subset}_" if len(self.outputs) == 1 else f"{subset}_{output.name}_"
                # compute() already sums the states of all processes, so every rank logs the same
                # value; sync_dist (a mean of equal values) only spares Lightning's DDP warning.
                for name, value in metric.compute().items():
                    self.log(prefix + name, value, prog_bar=name == "rmsd", sync_dist=True)
            metric.reset()

    def on_train_epoch_end(self):
        self._log_structure_metrics("train")

    def on_validation_epoch_end(self):
        self._log_structure_metrics("val")

    def on_test_epoch_end(self):
        self._log_structure_metrics("test")


def full_neighbor_list(idx_m: torch.Tensor, cutoff: float | None = None,
                       positions: torch.Tensor | None = None, *, n_structures: int | None = None
                       ) -> dict[str, torch.Tensor]:
    """All ordered atom pairs (i ≠ j) inside each structure, optionally within ``cutoff`` Å of ``positions``.

    Returns SchNetPack's ``_idx_i``, ``_idx_j`` and zero ``_offsets`` (non-periodic molecules). The
    pairs are the core's :func:`~energyloss_plugins.graphs.complete_directed_pairs` (read back to the
    host: meant for molecules, which diffusion relists every step). ``n_structures``: B when ``idx_m``
    lies in ``[0, B)``; None counts the distinct ids.
    """
    batch, n_structures = structure_index(idx_m, n_structures, validate_args=False)
    pairs = complete_directed_pairs(batch, n_structures)
    if cutoff is not None and positions is not None:
        x = positions.detach()
        pairs = pairs[:, (x[pairs[1]] - x[pairs[0]]).norm(dim=-1) < cutoff]
    dtype = positions.dtype if positions is not None else torch.float32
    return {properties.idx_i: pairs[0], properties.idx_j: pairs[1],
            properties.offsets: torch.zeros(pairs.shape[1], 3, dtype=dtype, device=idx_m.device)}


def noisy_molecule_inputs(numbers: torch.Tensor, x: torch.Tensor, t: torch.Tensor, batch: torch.Tensor,
                          cutoff: float | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """SchNetPack's inputs of noisy molecules for a sampler's denoiser: atomic numbers ``(N,)``, positions
    ``x`` ``(N, 3)`` Å, diffusion time ``t`` ``(B,)`` and structure index ``batch`` ``(N,)`` in ``[0, B)``;
    no cell, neighbours within ``cutoff`` Å (None: all pairs of a molecule); floats in ``dtype``."""
    n_structures, device = t.shape[0], x.device
    x = x.to(dtype)
    inputs = {properties.Z: numbers, properties.R: x, properties.idx_m: batch,
              properties.n_atoms: structure_counts(batch, n_structures), DIFFUSION_TIME: t.to(dtype),
              properties.cell: torch.zeros(n_structures, 3, 3, dtype=dtype, device=device),
              properties.pbc: torch.zeros(n_structures, 3, dtype=torch.bool, device=device)}
    inputs.update(full_neighbor_list(batch, cutoff, x, n_structures=n_structures))
    return inputs


def noisy_neighbor_list(batch: dict[str, torch.Tensor], cutoff: float | None,
                        positions: torch.Tensor) -> dict[str, torch.Tensor]:
    """The neighbour list of noisy ``positions``: the batch's own when the loader listed all pairs
    (:class:`schnetpack_ext.CompleteNeighborList`, no cutoff: nothing to rebuild, no host
    synchronisation), else :func:`full_neighbor_list` (which reads the pair count back to the host)."""
    if cutoff is None and COMPLETE_PAIRS in batch:
        return {key: batch[key] for key in (properties.idx_i, properties.idx_j, properties.offsets)}
    return full_neighbor_list(batch[properties.idx_m], cutoff, positions,
                              n_structures=batch[properties.n_atoms].shape[0])


class DiffusionTask(ContextTask):
    """Denoising diffusion (conformer generation given the atoms) on equilibrium structures.

    Each step noises the clean positions with the core's schedule (centre-of-mass-free noise),
    gives the network x_t and t (``inputs["diffusion_t"]``, read by :class:`schnetpack_ext.TimeEmbedding`),
    rebuilds the neighbour list on x_t, and the :class:`schnetpack_ext.DiffusionOutput` computes
    w_t · L(x̂, x). Trains on any SchNetPack database: only atomic numbers and positions are used.

    Args:
        clean_positions: batch key of the clean structure; None for the database geometry
            (``_positions``), ``target_positions`` for databases from ``energyloss-data build``.
        cutoff: neighbour cutoff (Å) on the noisy positions; None for all pairs in a molecule.
        val_seed: seed of the noise in validation/test (fixed, so that ``val_loss`` is comparable
            across epochs).
        (other arguments as :class:`schnetpack.task.AtomisticTask`)
    """

    def __init__(self, model: AtomisticModel, outputs: list[ModelOutput],
                 optimizer_cls: type[torch.optim.Optimizer] = torch.optim.Adam,
                 optimizer_args: dict[str, Any] | None = None, scheduler_cls: type | None = None,
                 scheduler_args: dict[str, Any] | None = None, scheduler_monitor: str | None = None,
                 warmup_steps: int = 0, clean_positions: str | None = None, cutoff: float | None = None,
                 val_seed: int = 1234):
        outputs = list(outputs)  # Hydra passes a ListConfig of objects, which the CSV logger cannot serialise
        super().__init__(model=model, outputs=outputs, optimizer_cls=optimizer_cls,
                         optimizer_args=optimizer_args or {"lr": 5e-4}, scheduler_cls=scheduler_cls,
                         scheduler_args=scheduler_args, scheduler_monitor=scheduler_monitor, warmup_steps=warmup_steps)
        diffusion = [o for o in self.outputs if isinstance(o, DiffusionOutput)]
        if len(diffusion) != 1:
            raise ValueError(
                f"DiffusionTask needs exactly one DiffusionOutput among its outputs, got {len(diffusion)}.")
        self.clean_positions = clean_positions
        self.cutoff = cutoff
        self.val_seed = val_seed

    @property
    def diffusion_output(self) -> DiffusionOutput:
        return next(o for o in self.outputs if isinstance(o, DiffusionOutput))

    def _prepare(self, batch, batch_idx, subset: str):
        """Noise the clean positions (seeded in validation/test) and rebuild the neighbour list on x_t."""
        generator = self._eval_noise(batch, batch_idx, subset)
        output = self.diffusion_output
        idx_m = batch[properties.idx_m]
        x0 = batch[self.clean_positions or properties.R].to(batch[properties.R].dtype)
        noised = output.objective.noise(x0, idx_m, generator=generator, n_structures=len(batch[properties.n_atoms]),
                                        validate_args=False)
        new = dict(batch)
        new[properties.R] = noised["x_t"]
        new[DIFFUSION_TIME] = noised["t"]
        new.update(noisy_neighbor_list(batch, self.cutoff, noised["x_t"]))
        new[output.target_property] = output.network_target(noised, idx_m)
        return new, {"_noised": noised}

    @torch.no_grad()
    def sample(self, molecules: Sequence, *, steps: int = 100, method: str | None = None, batch_size: int = 64,
               seed: int | None = None, progress: bool = False) -> list:
        """Generate one conformer per entry of ``molecules`` (ASE ``Atoms`` or atomic-number sequences).

        Args:
            steps: denoising steps.
            method: ``ancestral`` (default for diffusion), ``ddim``, or ``euler`` (flow matching).
            batch_size: molecules per network call.
            seed: seed of the sampler's noise; None draws from torch's global RNG (new samples every call).

        Returns:
            a list of ``ase.Atoms`` with the generated positions (Å, centred).
        """
        from ase import Atoms

        numbers_list = [torch.as_tensor(m.numbers if hasattr(m, "numbers") else m, dtype=torch.long) for m in molecules]
        device = next(self.parameters()).device
        dtype = next(self.parameters()).dtype
        # seed=None: torch's global RNG (fresh samples each call), as torchmdnet_ext.sample_positions
        generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        was_training, pp = self.training, self.model.do_postprocessing
        self.eval()
        self.model.do_postprocessing = False
        name = self.diffusion_output.name
        result = []
        try:
            for start in range(0, len(numbers_list), batch_size):
                chunk = numbers_list[start : start + batch_size]
                numbers, idx_m, counts = flat_numbers(chunk, device)

                def denoiser(x, t, batch, numbers=numbers):
                    return self.model(noisy_molecule_inputs(numbers, x, t, batch, self.cutoff, dtype))[name]

                x = self.diffusion_output.objective.sample(denoiser, idx_m, steps=steps, method=method,
                                                           progress=progress, generator=generator)
                for positions, z in zip(torch.split(x.cpu(), counts.tolist()), chunk, strict=True):
                    result.append(Atoms(numbers=z.numpy(), positions=positions.double().numpy()))
        finally:
            self.train(was_training)
            self.model.do_postprocessing = pp
        return result
