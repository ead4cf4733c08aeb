"""``energyloss-torchmd-train``: TorchMD-Net's ``torchmd-train`` with the energy loss and position tasks.

Every ``torchmd-train`` option and conf file works; on top of them:

--conf NAME            also the name of a configuration shipped with the package
                       (``structure_tensornet``, ``diffusion_et``, ...; see ``torchmdnet_ext.configs``)
--task                 structure | diffusion | generation | energy (default: structure for
                       EnergyLossDB/PositionHDF5, energy otherwise = TorchMD-Net's own LNNP, unchanged)
--parameterization     diffusion output: eps | v | x0 | velocity (flow matching)
--noise-schedule       polynomial | cosine
--max-weight           clip of the diffusion time weight w_t (diffusion: 1000; generation: none)
--elements             generation: atomic numbers the model generates, e.g. 1,6,7,8,16
--position-weight      generation: weight of the positional term against the type term
--sampling-steps       denoising steps of predict_step
--log-structure-metrics  log aligned RMSD, bond-length MAE, stability in val/test (structure task)
--version              the package's version

One run, one folder: without ``--log-dir`` on the command line each run writes to a new folder
``<log_dir>/<conf>-<train_loss>-<time>`` (:func:`run_folder`), so two runs never share checkpoints,
``hparams.yaml`` or ``input.yaml``; ``--log-dir DIR`` names the run folder itself.
``python -m torchmdnet_ext.train`` is the same command (same parser, same ``main``).

``--train-loss-arg`` and ``--dataset-arg`` also accept YAML/JSON strings on the command line.
``--checkpoint-monitor``/``--early-stopping-monitor`` accept any logged metric; by default they
follow ``val_total_<train_loss>`` (TorchMD-Net's default ``val_total_mse_loss`` for task energy).

How this builds on TorchMD-Net 3.1's ``torchmdnet.scripts.train`` (instead of copying or patching it):

- The parser is upstream's ``get_argparse()``, used as an argparse parent after ``import
  torchmdnet_ext`` has registered our losses, heads and datasets, so upstream's choices accept
  them. The three options whose upstream definition we must change are redefined through argparse's
  documented ``conflict_handler="resolve"``: ``--conf`` (also a shipped name), and the two monitors
  (upstream allows only ``train/val_total_mse_loss``, which a position task never logs).
- Upstream's ``main`` takes no arguments: it parses ``sys.argv`` with its own parser and builds its
  own ``LNNP`` and ``DataModule``, with no hook for other classes. So :func:`train` runs the same
  steps from TorchMD-Net's and Lightning's public pieces (seed, data module, prior models, model,
  ``--load-weights`` through upstream's ``fix_state_dict``, ``ModelCheckpoint``/``EarlyStopping``,
  ``check_logs``, CSV/W&B/TensorBoard loggers, ``Trainer.fit`` resuming ``--load-model``, then a test
  of the best checkpoint), with :class:`~torchmdnet_ext.module.PositionLNNP` and
  :class:`~torchmdnet_ext.data.PositionDataModule` (the builder's ``split.npz``) for the position
  tasks and upstream's ``LNNP``/``DataModule`` unchanged for task ``energy``. Nothing in TorchMD-Net's
  modules is set or swapped (beyond the names ``import torchmdnet_ext`` registers).
  :func:`get_args` does what upstream's ``get_args`` does after parsing (``--redirect``,
  ``inference_batch_size``, ``input.yaml``). Every checkpoint read is read with ``weights_only=True``
  unless ``--trust-checkpoint``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence

from energyloss_plugins.console import ArgumentParser, console_script
from energyloss_plugins.optional import add_version_option, require

PROG = "energyloss-torchmd-train"
#: Environment variable carrying rank 0's run folder to the DDP processes Lightning launches.
RUN_FOLDER_ENV = "ENERGYLOSS_TORCHMD_RUN_FOLDER"
POSITION_DATASETS = ("EnergyLossDB", "PositionHDF5")


def _upstream_parser() -> argparse.ArgumentParser:
    """``torchmd-train``'s parser, built after registering our names (so its choices list them)."""
    require("torchmdnet", PROG, "torchmdnet")
    from torchmdnet.scripts.train import get_argparse as upstream_argparse

    import torchmdnet_ext  # noqa: F401  (registers losses, heads, datasets)

    return upstream_argparse()


def _bool(text) -> bool:
    if str(text).lower() in ("1", "true", "yes", "on"):
        return True
    if str(text).lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _open_conf(name_or_path: str):
    """``--conf`` value: an existing file, else the name of a shipped configuration."""
    from torchmdnet_ext.configs import config_path

    if not os.path.exists(name_or_path):
        try:
            name_or_path = config_path(name_or_path)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{name_or_path!r} is not a file: {exc}") from None
    return open(name_or_path)


def get_argparse() -> argparse.ArgumentParser:
    """Upstream's ``torchmd-train`` parser plus this package's options (see the module docstring)."""
    from torchmdnet.utils import LoadFromFile

    from torchmdnet_ext.configs import config_names
    from torchmdnet_ext.module import PLUGIN_DEFAULTS, TASKS

    parser = ArgumentParser(prog=PROG,
                            description="TorchMD-Net training with the energy loss (energyloss-plugins)",
                            parents=[_upstream_parser()], add_help=False, conflict_handler="resolve")
    add_version_option(parser)
    parser.add_argument("--conf", "-c", type=_open_conf, action=LoadFromFile,
                        help=f"Configuration yaml file, or the name of a shipped one ({', '.join(config_names())})")
    parser.add_argument("--checkpoint-monitor", type=str, default=None,
                        help="Metric to monitor for writing out best models: any logged metric "
                             "(default: val_total_<train_loss>)")
    parser.add_argument("--early-stopping-monitor", type=str, default=None,
                        help="Metric to monitor for early stopping: any logged metric "
                             "(default: the checkpoint monitor)")
    group = parser.add_argument_group("energyloss-plugins")
    group.add_argument("--task", default=None, choices=[*TASKS, "energy"],
                       help="structure (input geometry -> equilibrium positions), "
                            "diffusion (denoising on the targets), "
                            "generation (de novo molecules: types and positions, needs --elements) "
                            "or energy (TorchMD-Net's own energy/force training). Default: structure for "
                            f"{'/'.join(POSITION_DATASETS)}, else energy.")
    group.add_argument("--parameterization", default=PLUGIN_DEFAULTS["parameterization"],
                       choices=["eps", "v", "x0", "velocity"],
                       help="What the diffusion head predicts (velocity = flow matching).")
    group.add_argument("--noise-schedule", default=PLUGIN_DEFAULTS["noise_schedule"], choices=["polynomial", "cosine"],
                       help="Variance-preserving noise schedule (diffusion).")
    group.add_argument("--max-weight", default=PLUGIN_DEFAULTS["max_weight"], type=float,
                       help="Clip of the diffusion time weight w_t (default: 1000 for diffusion, none for generation).")
    group.add_argument("--elements", default=None,
                       help="task generation: atomic numbers the model generates, e.g. 1,6,7,8,16 (QM7).")
    group.add_argument("--position-weight", default=PLUGIN_DEFAULTS["position_weight"], type=float,
                       help="task generation: weight of the positional loss term against the type term.")
    group.add_argument("--data-springs", default=PLUGIN_DEFAULTS["data_springs"], type=_bool,
                       help="Resolve the energy loss's pairs and springs once per molecule in the data pipeline "
                            "(torchmdnet_ext.springs.PairSpringsTransform); the step then runs the loss kernel alone.")
    group.add_argument("--sampling-steps", default=PLUGIN_DEFAULTS["sampling_steps"], type=int,
                       help="Denoising steps used by predict_step (diffusion).")
    group.add_argument("--trust-checkpoint", action="store_true",
                       help="allow --load-model/--load-weights files that need a full unpickle (it can run code from "
                            "the file; only for files you made or trust). Default: read with weights_only=True.")
    group.add_argument("--log-structure-metrics", default=PLUGIN_DEFAULTS["log_structure_metrics"], type=_bool,
                       help="Log aligned RMSD, bond-length MAE and stability in validation/test (structure task).")
    return parser


def _complete(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve this package's defaults: mappings, task, position hyper-parameters, monitors."""
    from torchmdnet_ext.module import TASKS, parse_mapping, prepare_hparams

    args.train_loss_arg = parse_mapping(args.train_loss_arg, "train_loss_arg")
    args.dataset_arg = parse_mapping(args.dataset_arg, "dataset_arg") or None
    if args.task is None:
        args.task = "structure" if args.dataset in POSITION_DATASETS else "energy"
    if args.task in TASKS:
        args = argparse.Namespace(**prepare_hparams(args))
    args.checkpoint_monitor = args.checkpoint_monitor or f"val_total_{args.train_loss}"
    args.early_stopping_monitor = args.early_stopping_monitor or args.checkpoint_monitor
    from energyloss_plugins.checkpoints import load_checkpoint

    for option, path in (("--load-model", args.load_model), ("--load-weights", args.load_weights)):
        if path:  # refused (needs a full unpickle) or corrupt files are named here, before any work
            try:
                load_checkpoint(path, trusted=args.trust_checkpoint)
            except FileNotFoundError as err:
                raise ValueError(f"{option}: {err}") from None
    if args.num_epochs < args.save_interval:
        raise ValueError(f"num_epochs ({args.num_epochs}) < save_interval ({args.save_interval}): no checkpoint would "
                         "be written, and the test run after training loads the best one; lower save_interval.")
    return args


def _given(argv: Sequence[str]) -> argparse.Namespace:
    """``--conf`` and ``--log-dir`` as written on the command line (None where absent)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--conf", "-c")
    parser.add_argument("--log-dir", "-l")
    return parser.parse_known_args(list(argv))[0]


def run_folder(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """The run's own log folder, created empty: one run, one folder (as ``spktrain``'s ``run.id``).

    ``--log-dir`` on the command line is the run folder itself (upstream's meaning; an earlier run's
    files there are kept, TorchMD-Net's ``check_logs`` renames its ``metrics.csv``). Otherwise the run
    gets ``<log_dir>/<conf>-<train_loss>-<YYYYmmdd-HHMMSS>`` under the conf's ``log_dir`` (upstream's
    default ``/tmp/logs`` without one); ``<conf>`` is the conf file's name, else the task. A folder of
    that name (two runs in the same second) gets a ``-2``, ``-3``, ... suffix. The DDP processes that
    Lightning starts with the same command line (``LOCAL_RANK`` > 0) use rank 0's folder.
    """
    given = _given(argv)
    if given.log_dir is not None:
        return given.log_dir
    if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0 and os.environ.get(RUN_FOLDER_ENV):
        return os.environ[RUN_FOLDER_ENV]  # a DDP process Lightning started: rank 0's folder
    conf = os.path.basename(given.conf).removesuffix(".yaml").removesuffix(".yml") if given.conf else args.task
    base = os.path.join(args.log_dir, f"{conf}-{args.train_loss}-{time.strftime('%Y%m%d-%H%M%S')}")
    folder, n = base, 1
    while True:
        try:
            os.makedirs(folder)
            os.environ[RUN_FOLDER_ENV] = folder  # inherited by the DDP processes Lightning starts (same argv)
            return folder
        except FileExistsError:
            n += 1
            folder = f"{base}-{n}"



def get_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and complete the arguments, then do what upstream's ``get_args`` does after its parse.

    That is: ``--redirect`` (stdout and stderr to ``<log_dir>/log``), ``inference_batch_size``
    defaulting to ``batch_size``, and the arguments written to ``<log_dir>/input.yaml`` (upstream's
    ``save_argparse``). Upstream's ``get_args`` itself cannot be called: it parses ``sys.argv`` with
    upstream's parser.

    Raises ValueError for options that do not fit together (e.g. a position task with ``derivative: true``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _complete(get_argparse().parse_args(argv))
    args.log_dir = run_folder(args, argv)
    from torchmdnet.utils import save_argparse

    if args.redirect:
        import logging

        sys.stdout = open(os.path.join(args.log_dir, "log"), "w")  # noqa: SIM115  (stays open: the run's output)
        sys.stderr = sys.stdout
        logging.getLogger("pytorch_lightning").addHandler(logging.StreamHandler(sys.stdout))
    if args.inference_batch_size is None:
        args.inference_batch_size = args.batch_size
    os.makedirs(os.path.abspath(args.log_dir), exist_ok=True)
    save_argparse(args, os.path.join(args.log_dir, "input.yaml"), exclude=["conf"])
    if args.ngpus == -1:
        import torch

        if not torch.cuda.is_available():
            args.ngpus = 1  # Lightning's CPU accelerator rejects devices=-1 ("all GPUs")
    return args


def _classes(task: str) -> tuple[type, type]:
    """The LightningModule and DataModule classes of ``task``: ours for position tasks, upstream's for energy."""
    from torchmdnet_ext.module import TASKS

    if task in TASKS:
        from torchmdnet_ext.data import PositionDataModule
        from torchmdnet_ext.module import PositionLNNP

        return PositionLNNP, PositionDataModule
    from torchmdnet.data import DataModule
    from torchmdnet.module import LNNP

    return LNNP, DataModule


def _callbacks(args: argparse.Namespace, n_test: int) -> list:
    """Upstream's callbacks: the 10 best checkpoints on ``checkpoint_monitor``, early stopping on its monitor."""
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    monitor = args.checkpoint_monitor
    name = f"epoch={{epoch}}-{monitor.split('_')[0]}_loss={{{monitor}:.4f}}"
    if n_test:
        name += "-test_loss={test_total_l1_loss:.4f}"
    callbacks = [ModelCheckpoint(dirpath=args.log_dir, monitor=monitor, save_top_k=10,
                                 every_n_epochs=args.save_interval, filename=name, auto_insert_metric_name=False)]
    if args.early_stopping_monitor is not None:
        callbacks.append(EarlyStopping(args.early_stopping_monitor, patience=args.early_stopping_patience))
    return callbacks


def _loggers(args: argparse.Namespace) -> list:
    """Upstream's loggers: CSV in the run folder, W&B (``--wandb-use``), TensorBoard (``--tensorboard-use``)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    loggers = [CSVLogger(args.log_dir, name="", version="")]
    if args.wandb_use:
        loggers.append(WandbLogger(project=args.wandb_project, name=args.wandb_name, save_dir=args.log_dir,
                                   resume="must" if args.wandb_resume_from_id is not None else None,
                                   id=args.wandb_resume_from_id))
    if args.tensorboard_use:
        loggers.append(TensorBoardLogger(args.log_dir, name="tensorboard", version="", default_hp_metric=False))
    return loggers


def train(args: argparse.Namespace) -> None:
    """Train on completed ``args`` (:func:`get_args`), then test the best checkpoint: upstream ``main``'s steps.

    The steps and their settings are those of TorchMD-Net 3.1's ``torchmdnet.scripts.train.main``,
    composed here because that function accepts neither arguments nor classes (module docstring).
    ``--load-weights`` is read by :func:`energyloss_plugins.checkpoints.load_checkpoint`, and Lightning
    reads ``--load-model`` and the best checkpoint, with ``weights_only=True`` unless ``--trust-checkpoint``.
    """
    import lightning.pytorch as pl
    from lightning_utilities.core.rank_zero import rank_zero_warn
    from torchmdnet.models.model import create_prior_models
    from torchmdnet.scripts.train import fix_state_dict
    from torchmdnet.utils import check_logs

    from energyloss_plugins.checkpoints import load_checkpoint

    module_class, data_class = _classes(args.task)
    if args.remove_ref_energy:  # upstream: delta learning disables the dataset's Atomref prior
        priors = [] if args.prior_model is None else args.prior_model
        args.prior_model = [*(priors if isinstance(priors, list) else [priors]), {"Atomref": {"enable": False}}]
    pl.seed_everything(args.seed, workers=True)
    data = data_class(args)
    data.prepare_data()
    data.setup("fit")
    prior_models = create_prior_models(vars(args), data.dataset)
    args.prior_args = [p.get_init_args() for p in prior_models]
    model = module_class(args, prior_model=prior_models, mean=data.mean, std=data.std)
    if args.load_weights is not None:
        print(f"Loading weights from {args.load_weights}")
        state = load_checkpoint(args.load_weights, trusted=args.trust_checkpoint)
        model.model.load_state_dict(fix_state_dict(state))
    check_logs(args.log_dir)
    loggers = _loggers(args)
    if args.test_interval > 0:
        rank_zero_warn(f"WARNING: Test set will be evaluated every {args.test_interval} epochs. "
                       "This will slow down training.")
    devices = {"accelerator": "auto", "devices": args.ngpus, "num_nodes": args.num_nodes}
    trainer = pl.Trainer(strategy="auto", max_epochs=args.num_epochs, default_root_dir=args.log_dir,
                         callbacks=_callbacks(args, len(data.idx_test)), logger=loggers, precision=args.precision,
                         gradient_clip_val=args.gradient_clipping, inference_mode=False,
                         # testing during training needs the dataloaders rebuilt every epoch (upstream)
                         reload_dataloaders_every_n_epochs=1 if args.test_interval > 0 else 0, **devices)
    weights_only = not args.trust_checkpoint
    trainer.fit(model, data, ckpt_path=None if args.reset_trainer else args.load_model, weights_only=weights_only)
    best = module_class.load_from_checkpoint(trainer.checkpoint_callback.best_model_path, weights_only=weights_only)
    pl.Trainer(logger=loggers, inference_mode=False, **devices).test(best, data)


def _check_position_dataset(args: argparse.Namespace) -> None:
    """A position dataset names an existing database (checked before a model is built or a folder filled)."""
    if args.dataset not in POSITION_DATASETS:
        return
    if not args.dataset_root or args.dataset_root == "~/data":  # upstream's default names no database
        raise ValueError(f"--dataset {args.dataset} needs --dataset-root: the database to train on, e.g. "
                         "--dataset-root qm7/data.db (make one with energyloss-data build).")
    if not os.path.exists(args.dataset_root):
        raise ValueError(f"--dataset-root {args.dataset_root} does not exist; make one with energyloss-data build.")


@console_script(PROG, interrupted="interrupted; checkpoints written so far are kept in --log-dir.")
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``energyloss-torchmd-train``: train, then test the best checkpoint (:func:`train`).

    User errors (options that do not fit, a missing database, elements outside ``--elements``, splits
    too small to validate on) print one line and exit with status 2.
    """
    args = get_args(argv)
    _check_position_dataset(args)
    fresh = not any(name.endswith(".ckpt") for name in os.listdir(args.log_dir))
    with warnings.catch_warnings():
        if fresh:  # only this run's input.yaml and splits are there; Lightning would call that "not empty"
            for what in ("Checkpoint directory", "Experiment logs directory"):  # ModelCheckpoint, CSVLogger
                warnings.filterwarnings("ignore", message=rf"{what} .* exists and is not empty")
        train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
