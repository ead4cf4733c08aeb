"""``PositionLNNP``: TorchMD-Net's ``LNNP`` trained on position targets (structure prediction or diffusion).

The stock ``LNNP`` trains energies ``y`` and forces ``neg_dy`` with element-wise losses and no batch
vector. This subclass keeps its optimiser, learning-rate schedule, logging layout
(``{stage}_total_{loss}``), checkpoints, hyper-parameters and the contract of ``step`` (``(name, loss)``
pairs, ``y_weight``, ``ema_alpha_y``), and replaces what the step computes:

- ``task: structure``: the model (a :mod:`torchmdnet_ext.heads` ``PositionOutput``) maps the input
  geometry ``pos`` to positions; the loss compares them with ``pos_target`` through the core's
  :class:`energyloss_plugins.tasks.StructureObjective` (with the batch vector, atomic numbers, bonds);
  validation and test also log the core's dataset-level structure metrics
  (:class:`energyloss_plugins.metrics.epoch.StructureMetrics`: aligned RMSD, bond-length MAE,
  stability) as ``{stage}_{metric}``.
- ``task: diffusion``: ``pos_target`` (or ``pos`` if absent) is noised by the core's
  :class:`energyloss_plugins.tasks.DiffusionObjective`; a ``NoiseOutput`` head predicts ε/v/x0/velocity
  with the time as input, and the objective's loss (energy on the implied clean sample) is used.
- ``task: generation``: de novo molecules (types and positions, SPEC §7): ``pos_target`` (or ``pos``)
  and ``z`` are noised together by the core's :class:`energyloss_plugins.generation.GenerationObjective`;
  the network sees only x_t, h_t and t (:mod:`torchmdnet_ext.generation`); ``elements`` fixes the
  generated elements, the training split's atom-count histogram is stored in the checkpoint, and
  :meth:`PositionLNNP.sample_molecules` draws new molecules.

``train_loss`` names: see :mod:`torchmdnet_ext.losses` (``energy_loss``, ``kabsch_loss``, ``mse_loss``,
``l1_loss``); ``train_loss_arg`` holds the core loss options, e.g. ``{coefficients: exp, graph: complete}``.
"""

from __future__ import annotations

import argparse
import functools
import warnings
from collections.abc import Mapping

import torch
import yaml
from torchmdnet.module import LNNP

from energyloss_plugins.config import ENERGY_OPTIONS, LossConfig
from energyloss_plugins.console import check_option
from energyloss_plugins.diffusion import eval_generator
from energyloss_plugins.generation import AtomCountDistribution, GenerationObjective, TypeEncoding, sample_with_model
from energyloss_plugins.losses import PairSprings
from energyloss_plugins.metrics.epoch import StructureMetrics
from energyloss_plugins.tasks import DiffusionObjective, StructureObjective
from torchmdnet_ext import heads
from torchmdnet_ext.generation import attach_generation_modules, denoise
from torchmdnet_ext.losses import CORE_NAMES, core_name
from torchmdnet_ext.springs import COMPLETE_PAIRS, batch_springs

TASKS = ("structure", "diffusion", "generation")

#: Hyper-parameters this package adds (also console-script options); defaults.
PLUGIN_DEFAULTS = {
    "task": "structure",
    "parameterization": "eps",
    "noise_schedule": "polynomial",
    "max_weight": None,  # diffusion: DIFFUSION_MAX_WEIGHT; generation: no clip (mse = exact ε-MSE)
    "sampling_steps": 100,
    "log_structure_metrics": True,
    "elements": None,  # generation: atomic numbers the model generates (required)
    "position_weight": 1.0,  # generation: weight of the positional term against the type term
    "data_springs": False,  # resolve the energy's springs per molecule in the data pipeline (torchmdnet_ext.springs)
}
#: Default clip of the diffusion time weight w_t for ``task: diffusion``.
DIFFUSION_MAX_WEIGHT = 1000.0
#: Seed of the validation/test noise of ``task: generation`` (val losses comparable across epochs).
VAL_SEED = 1234

#: Losses logged besides ``train_loss`` during validation (l1_loss first, as in TorchMD-Net).
MONITOR_LOSSES = ("l1_loss", "mse_loss")


def parse_mapping(value, name: str) -> dict:
    """A mapping option given as a dict or a YAML string (None and empty YAML: ``{}``); ``name`` is used in errors."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping (YAML dict), got {value!r}.")
    return dict(value)


def prepare_hparams(hparams) -> dict:
    """Validate and complete the hyper-parameters of a position task (also used by the console script)."""
    if isinstance(hparams, argparse.Namespace):
        hparams = vars(hparams)
    h = dict(hparams)
    for key, value in PLUGIN_DEFAULTS.items():
        if h.get(key) is None:
            h[key] = value
    if h["task"] not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {h['task']!r}.")
    if h["task"] == "diffusion" and h["max_weight"] is None:
        h["max_weight"] = DIFFUSION_MAX_WEIGHT
    if h["task"] == "generation":
        h["elements"] = _parse_elements(h["elements"])
    _check_numbers(h)
    h.setdefault("train_loss", "energy_loss")
    if h["train_loss"] not in CORE_NAMES:
        raise ValueError(f"train_loss {h['train_loss']!r} does not apply to position targets; choose one of "
                         f"{sorted(CORE_NAMES)} (energy_loss: pair energy, kabsch_loss: Kabsch-aligned MSE, mse_loss, "
                         "l1_loss).")
    h["train_loss_arg"] = parse_mapping(h.get("train_loss_arg"), "train_loss_arg")
    loss_config(h["train_loss"], h["train_loss_arg"])  # fails now for a misspelt scheme, graph or option
    _refuse_energy_options(h)
    h["output_model"] = _output_model(h["task"], h.get("output_model"))
    for key in ("precision", "load_model", "charge", "spin", "remove_ref_energy"):
        h.setdefault(key, {"precision": 32}.get(key))
    for key in ("y_weight", "ema_alpha_y"):  # upstream's step reads them; its command-line defaults
        h.setdefault(key, 1.0)
    h["remove_ref_energy"] = bool(h["remove_ref_energy"])
    return h


def _check_numbers(h: Mapping) -> None:
    """The numeric options, checked before any data is read (one line from the console script)."""
    for key, low, inclusive in (("position_weight", 0.0, True), ("y_weight", 0.0, True),
                                ("sampling_steps", 1, True)):
        if h.get(key) is not None:
            check_option(f"--{key.replace('_', '-')}", h[key], low=low, low_inclusive=inclusive,
                         integer=key == "sampling_steps")
    if h.get("max_weight") is not None:
        check_option("--max-weight", h["max_weight"], low=0.0)


def _refuse_energy_options(h: Mapping) -> None:
    """Upstream's options for energy targets, which a position task cannot honour."""
    if h.get("derivative"):
        raise ValueError("derivative: true (forces as -dE/dx) does not apply to position targets; "
                         "set derivative: false.")
    if h.get("standardize"):
        raise ValueError("standardize: true rescales energies; it does not apply to position targets.")
    if h.get("remove_ref_energy"):
        raise ValueError("remove_ref_energy does not apply to position targets.")
    if h.get("prior_model"):
        raise ValueError("Prior models add energies; position heads do not take them (remove prior_model).")


def _output_model(task: str, output: str | None) -> str:
    """The head of ``task`` as stored in checkpoints; upstream's default ``Scalar`` picks it."""
    wanted = "PositionOutput" if task == "structure" else "NoiseOutput"  # generation: ε_x head
    output = output or "Scalar"
    if output == "Scalar":  # TorchMD-Net's default: pick the head of the task
        output = wanted
    if heads.base_name(output) != wanted:
        raise ValueError(f"task {task!r} needs output_model: {wanted} (a per-atom vector head), got {output!r}.")
    return heads.checkpoint_name(output)


def _parse_elements(value) -> list[int]:
    """``elements`` as a sorted list of atomic numbers (from a list, or a string ``"1,6,7,8"``)."""
    if value is None:
        raise ValueError("task generation needs elements, the atomic numbers the model generates: e.g. "
                         "--elements 1,6,7,8,16 (QM7) or `elements: [1, 6, 7, 8, 9]` (QM9) in the conf file.")
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
        except yaml.YAMLError:
            value = None
        if not isinstance(value, list):
            raise ValueError("--elements must be comma-separated atomic numbers such as 1,6,7,8,16.")
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"--elements must be a list of atomic numbers such as 1,6,7,8,16, got {value!r}.")
    try:  # the core's check: whole numbers in 1..118, never truncated
        return list(TypeEncoding(value).elements)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--{exc} Give atomic numbers such as --elements 1,6,7,8,16.") from None


def loss_config(train_loss: str, options: Mapping) -> LossConfig:
    """The core :class:`LossConfig` of ``train_loss`` with ``train_loss_arg`` (validated: errors list the valid names).

    Options only the energy takes are kept (and unused) for the baselines, with a warning.
    """
    name = core_name(train_loss)
    if name != "energy":
        ignored = sorted(set(options) & set(ENERGY_OPTIONS))
        if ignored:
            warnings.warn(f"train_loss_arg {ignored} ignored by {train_loss} (energy-only options).", stacklevel=3)
    return LossConfig.from_options(name, options)


def make_objective(h: Mapping, train_loss: str | None = None):
    """The core objective of a position task; ``train_loss`` overrides the configured loss (monitors)."""
    name = train_loss or h["train_loss"]
    config = LossConfig.from_options(core_name(name), h["train_loss_arg"] if name == h["train_loss"] else {})
    if h["task"] == "structure":
        return StructureObjective(config)
    if h["task"] == "generation":
        return GenerationObjective(h["elements"], config, position_weight=h["position_weight"],
                                   schedule=h["noise_schedule"], parameterization=h["parameterization"],
                                   max_weight=h["max_weight"])
    return DiffusionObjective(config, parameterization=h["parameterization"], schedule=h["noise_schedule"],
                              max_weight=h["max_weight"])


def _resolved(springs) -> PairSprings | None:
    return springs if isinstance(springs, PairSprings) else None


class PositionLNNP(LNNP):
    """LNNP for position targets; same constructor and step contract as TorchMD-Net's ``LNNP``.

    Positions are the task's ``y``: every loss is weighted by ``y_weight`` and smoothed by
    ``ema_alpha_y`` as upstream; there is no ``neg_dy`` term (``derivative`` is rejected).
    """

    def __init__(self, hparams, prior_model=None, mean=None, std=None):
        hparams = prepare_hparams(hparams)
        super().__init__(hparams, prior_model=None, mean=None, std=None)
        self.objective = make_objective(self.hparams)
        # Upstream's training_step passes (train_loss, self.train_loss_fn) to step(): the core objective.
        self.train_loss_fn = self.objective
        self._monitors = {name: make_objective(self.hparams, name) for name in MONITOR_LOSSES}
        # Dataset-level structure metrics per stage; their states are not saved in checkpoints.
        self._structure_metrics = torch.nn.ModuleDict({stage: StructureMetrics() for stage in ("val", "test")})
        self.atom_counts: AtomCountDistribution | None = None
        # Running averages of the train/val losses ({stage: {name: loss}}) for ema_alpha_y (smooth_loss).
        self.loss_ema: dict[str, dict[str, torch.Tensor]] = {}
        # Upstream's step() has no batch index; validation/test record it here so that the generation
        # task draws the same noise for a batch every epoch (comparable validation losses).
        self._eval_batch_idx = 0
        if self.hparams.task == "generation":
            attach_generation_modules(self.model, self.hparams, self.objective.n_features)

    # ----------------------------------------------------------------- steps
    def _monitor_list(self) -> list:
        names = [n for n in MONITOR_LOSSES if n != self.hparams.train_loss] + [self.hparams.train_loss]
        return [(name, self._objective(name)) for name in names]

    def validation_step(self, batch, batch_idx, *args):
        self._eval_batch_idx = int(batch_idx)
        # As upstream: a second validation dataloader (args[0] == 1) is the periodic test set.
        if len(args) == 0 or args[0] == 0:
            return self.step(batch, self._monitor_list(), "val")
        return self.step(batch, [("l1_loss", self._objective("l1_loss"))], "test")

    def test_step(self, batch, batch_idx):
        self._eval_batch_idx = int(batch_idx)
        return self.step(batch, self._monitor_list(), "test")

    def _objective(self, name):
        if name == self.hparams.train_loss:
            return self.objective
        if name not in self._monitors:
            self._monitors[name] = make_objective(self.hparams, name)  # ValueError for non-position losses
        return self._monitors[name]

    def _conditioning(self, batch):
        box = batch.box if "box" in batch else None
        q = batch.q if self.hparams.charge else None
        s = batch.s if self.hparams.spin else None
        return box, q, s

    def smooth_loss(self, stage: str, name: str, loss: torch.Tensor) -> torch.Tensor:
        """The loss ``name`` of ``stage`` smoothed by an exponential moving average, as TorchMD-Net's ``LNNP``.

        With α = ``ema_alpha_y`` in (0, 1), train and val losses become α · loss + (1 − α) · previous (the
        first one is its own previous); test losses and α = 1 are unchanged. The running values are
        detached tensors kept on the module (not in checkpoints), so nothing is read back to the host.
        """
        alpha = self.hparams.ema_alpha_y
        if stage not in ("train", "val") or not 0 < alpha < 1:
            return loss
        previous = self.loss_ema.setdefault(stage, {}).get(name, loss.detach())
        loss = alpha * loss + (1 - alpha) * previous
        self.loss_ema[stage][name] = loss.detach()
        return loss

    def step(self, batch, loss_fn_list, stage):
        """Forward pass and losses, with upstream ``LNNP.step``'s contract.

        Args:
            batch: a PyG batch with ``z``, ``pos``, ``batch`` and ``pos_target`` (else ``pos`` is the target).
            loss_fn_list: ``(name, loss)`` pairs; each is recorded under ``{stage}_y_{name}`` and
                ``{stage}_total_{name}``. A loss that is not a core objective (e.g. upstream's
                element-wise ``l1_loss``) is replaced by the core loss of the same name, which gets
                the batch vector, atomic numbers and bonds that a position loss needs.
            stage: ``train``, ``val`` or ``test``.

        Returns:
            ``y_weight`` times the (EMA-smoothed, as upstream) loss of the last pair.
        """
        if not loss_fn_list:
            raise ValueError("loss_fn_list is empty: give at least one (name, loss) pair.")
        batch = self.data_transform(batch)
        z, b = batch.z, batch.batch
        target = batch.pos_target if "pos_target" in batch else batch.pos
        bonds = batch.bond_index if "bond_index" in batch else None
        # Springs resolved by the data pipeline (data_springs: true), else those stored with the data (hessian).
        springs = batch_springs(batch)
        if springs is None and "spring_index" in batch:
            springs = (batch.spring_index, batch.spring_k)
        n_structures = batch.num_graphs  # a Python int from PyG's collate: no host synchronisation
        box, q, s = self._conditioning(batch)
        head_pairs = batch[COMPLETE_PAIRS] if COMPLETE_PAIRS in batch else None
        with torch.set_grad_enabled(stage == "train"), heads.given_pairs(self.model, head_pairs, n_structures):
            if self.hparams.task == "structure":
                pred, _ = self(z, batch.pos, batch=b, box=box, q=q, s=s)
                compared = (pred, target)
            elif self.hparams.task == "generation":
                generator = None
                if stage != "train":  # the same noise every epoch: comparable validation losses
                    generator = eval_generator(VAL_SEED, self._eval_batch_idx, self.global_rank, target.device)
                noised = self.objective.noise(target, z, b, generator=generator, n_structures=n_structures,
                                              validate_args=False)
                out_x, out_h = denoise(self.model, noised["x_t"], noised["h_t"], noised["t"], b)
                compared = (out_x, out_h, noised)
            else:
                noised = self.objective.noise(target, b, n_structures=n_structures, validate_args=False)
                out = heads.run_denoiser(self.model, z, noised["x_t"], b, noised["t"][b], box=box, q=q, s=s)
                compared = (out, noised)
            for name, loss_fn in loss_fn_list:
                is_core = isinstance(loss_fn, StructureObjective | DiffusionObjective | GenerationObjective)
                objective = loss_fn if is_core else self._objective(name)
                if self.hparams.task == "generation":  # types and positions together; no bonds or stored springs
                    loss = objective.loss(*compared, b, springs=_resolved(springs), validate_args=False)
                else:
                    loss = objective.loss(*compared, b, numbers=z, bonds=bonds, springs=springs,
                                          n_structures=n_structures, validate_args=False)
                loss = self.smooth_loss(stage, name, loss)
                if self.hparams.y_weight > 0:
                    self.losses[stage]["y"][name].append(loss.detach())
                total_loss = loss * self.hparams.y_weight
                self.losses[stage]["total"][name].append(total_loss.detach())
        if stage != "train" and self.hparams.task == "structure" and self.hparams.log_structure_metrics:
            self._structure_metrics[stage].update(pred, target, b, z, bonds)
        return total_loss

    def predict_step(self, batch, batch_idx):
        """Predicted positions ``(N, 3)`` (structure) or generated positions (diffusion, ``sampling_steps``)."""
        batch = self.data_transform(batch)
        box, q, s = self._conditioning(batch)
        if self.hparams.task == "structure":
            return self(batch.z, batch.pos, batch=batch.batch, box=box, q=q, s=s)[0]
        if self.hparams.task == "generation":
            raise ValueError("task generation has no per-batch prediction; draw molecules with "
                             "PositionLNNP.sample_molecules(n).")
        return self.objective.sample(heads.denoiser(self.model, batch.z, box=box, q=q, s=s), batch.batch,
                                     steps=self.hparams.sampling_steps)

    # --------------------------------------------------------------- logging
    def _log_structure_metrics(self, stages):
        for stage in stages:
            metric = self._structure_metrics[stage]
            if metric.update_called and not self.trainer.sanity_checking:
                # compute() already sums the states of all processes; sync_dist (a mean of equal
                # values) only spares Lightning's DDP warning.
                self.log_dict({f"{stage}_{k}": v for k, v in metric.compute().items()}, sync_dist=True)
            metric.reset()

    def on_validation_epoch_end(self):
        self._log_structure_metrics(("val", "test"))
        super().on_validation_epoch_end()

    def on_test_epoch_end(self):
        self._log_structure_metrics(("test",))
        super().on_test_epoch_end()

    # ------------------------------------------------------------ generation
    def on_fit_start(self):
        if self.hparams.task == "generation" and self.atom_counts is None:
            self.atom_counts = self._training_atom_counts()

    def _training_atom_counts(self) -> AtomCountDistribution:
        """Histogram of atoms per training molecule; checks the elements of every split against ``elements``."""
        dm = self.trainer.datamodule
        dataset = dm.dataset
        # validation and test molecules are encoded too: their elements are checked as well
        others = (dataset[int(i)].z for idx in (getattr(dm, "idx_val", None), getattr(dm, "idx_test", None))
                  if idx is not None for i in idx)
        return AtomCountDistribution.from_molecules((dataset[int(i)].z for i in dm.idx_train), self.hparams.elements,
                                                    others=others,
                                                    setting=lambda zs: "--elements " + ",".join(map(str, zs)))

    def on_save_checkpoint(self, checkpoint):
        if self.atom_counts is not None:
            self.atom_counts.save_to(checkpoint)

    def on_load_checkpoint(self, checkpoint):
        self.atom_counts = AtomCountDistribution.from_checkpoint(checkpoint) or self.atom_counts

    @torch.no_grad()
    def sample_molecules(self, n: int, *, steps: int = 500, method: str | None = None, seed: int | None = None,
                         batch_size: int = 250, progress: bool = True) -> list:
        """``n`` new molecules as ``ase.Atoms`` (task generation; sizes from the training histogram).

        Args:
            steps: denoising steps (EDM: 1,000).
            method: ``ancestral`` (default), ``ddim``, or ``euler`` (flow matching, its default).
            seed: None for fresh randomness, an int for reproducible samples.
            batch_size: molecules per network call.
        """
        if self.hparams.task != "generation":
            raise ValueError(f"sample_molecules needs a model trained with task generation, not {self.hparams.task!r}.")
        return sample_with_model(self, self.objective, lambda x, h, t, b: denoise(self.model, x, h, t, b),
                                 self.atom_counts, n, how_to_count="set model.atom_counts = AtomCountDistribution(...)",
                                 steps=steps, method=method, seed=seed, batch_size=batch_size, progress=progress)


#: What the console script is called, for messages that send users to it.
WRAPPER = "energyloss-torchmd-train (or python -m torchmdnet_ext.train)"


def stock_lnnp_problem(hparams) -> str | None:
    """Why TorchMD-Net's stock ``LNNP`` cannot train ``hparams`` (a position task), or None if it can."""
    h = vars(hparams) if hasattr(hparams, "__dict__") and not isinstance(hparams, Mapping) else dict(hparams)
    output = heads.base_name(str(h.get("output_model") or "")).removeprefix("Equivariant")
    if h.get("task") in TASKS:
        return f"task {h['task']!r}"
    if h.get("train_loss") in ("energy_loss", "kabsch_loss"):
        return f"train_loss {h['train_loss']!r}"
    if output in heads.HEADS:
        return f"output_model {h['output_model']!r}"
    if h.get("dataset") in ("EnergyLossDB", "PositionHDF5"):
        return f"dataset {h['dataset']!r} (position targets, no energies)"
    return None


def guard_stock_lnnp() -> None:
    """Make TorchMD-Net's ``LNNP`` refuse a position task at construction, naming the wrapper (idempotent).

    After ``import torchmdnet_ext``, upstream's ``torchmd-train`` code would otherwise accept the
    plugin's names and train nothing: the position datasets hold no ``y``, so the stock loss is a
    constant and Lightning stops with "element 0 of tensors does not require grad". Subclasses
    (:class:`PositionLNNP`) are not affected; neither are energy/force runs.
    """
    if getattr(LNNP.__init__, "_energyloss_guard", False):
        return
    init = LNNP.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        hparams = args[0] if args else kwargs.get("hparams")
        if type(self) is LNNP and hparams is not None:
            problem = stock_lnnp_problem(hparams)
            if problem is not None:
                raise ValueError(f"TorchMD-Net's stock LNNP (torchmd-train) cannot train {problem}: it trains "
                                 "energies and forces and passes no structure index to a loss. Train with "
                                 f"{WRAPPER}, which takes every torchmd-train option and conf key.")
        init(self, *args, **kwargs)

    __init__._energyloss_guard = True
    LNNP.__init__ = __init__
