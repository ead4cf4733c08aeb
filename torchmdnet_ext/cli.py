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

How this wraps TorchMD-Net 3.1's ``torchmdnet.scripts.train`` (instead of copying it), and why:

- The parser is upstream's ``get_argparse()``, used as an argparse parent after ``import
  torchmdnet_ext`` has registered our losses, heads and datasets, so upstream's choices accept
  them. The three options whose upstream definition we must change are redefined through argparse's
  documented ``conflict_handler="resolve"``: ``--conf`` (also a shipped name), and the two monitors
  (upstream allows only ``train/val_total_mse_loss``, which a position task never logs).
- ``main`` runs upstream's ``main``. That function takes no arguments and looks up ``get_args``,
  ``LNNP`` and ``DataModule`` as module globals, so for the duration of the call (and only then)
  :func:`_substituted` replaces them in ``torchmdnet.scripts.train``: ``get_args`` returns the
  arguments completed here; for position tasks ``LNNP`` is :class:`~torchmdnet_ext.module.PositionLNNP`
  (same constructor and ``load_from_checkpoint``) and ``DataModule`` is
  :class:`~torchmdnet_ext.data.PositionDataModule` (the builder's ``split.npz``). Task ``energy``
  runs upstream's classes unchanged. ``get_args`` lets upstream's ``get_args`` do its side effects
  (``--redirect``, ``inference_batch_size``, ``input.yaml``) on the completed arguments the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType

from energyloss_plugins.console import ArgumentParser, console_script
from energyloss_plugins.optional import add_version_option, require

PROG = "energyloss-torchmd-train"
#: Environment variable carrying rank 0's run folder to the DDP processes Lightning launches.
RUN_FOLDER_ENV = "ENERGYLOSS_TORCHMD_RUN_FOLDER"
POSITION_DATASETS = ("EnergyLossDB", "PositionHDF5")


def _upstream() -> ModuleType:
    """``torchmdnet.scripts.train`` after registering our names (so its parser's choices list them)."""
    require("torchmdnet", PROG, "torchmdnet")
    import torchmdnet_ext  # noqa: F401  (registers losses, heads, datasets)

    return require("torchmdnet.scripts.train", PROG, "torchmdnet")


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


@contextlib.contextmanager
def _substituted(module: ModuleType, **names) -> Iterator[None]:
    """Temporarily set module-level ``names`` of ``module`` (restored on exit, also on error)."""
    saved = {name: getattr(module, name) for name in names}
    try:
        for name, value in names.items():
            setattr(module, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def get_argparse() -> argparse.ArgumentParser:
    """Upstream's ``torchmd-train`` parser plus this package's options (see the module docstring)."""
    from torchmdnet.utils import LoadFromFile

    from torchmdnet_ext.configs import config_names
    from torchmdnet_ext.module import PLUGIN_DEFAULTS, TASKS

    parser = ArgumentParser(prog=PROG,
                            description="TorchMD-Net training with the energy loss (energyloss-plugins)",
                            parents=[_upstream().get_argparse()], add_help=False, conflict_handler="resolve")
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


class _Parsed:
    """Stands in for upstream's parser inside upstream's ``get_args``: returns arguments already parsed."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def parse_args(self) -> argparse.Namespace:
        return self.args


def get_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and complete the arguments, then let upstream's ``get_args`` apply its side effects.

    Raises ValueError for options that do not fit together (e.g. a position task with ``derivative: true``).
    """
    upstream = _upstream()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _complete(get_argparse().parse_args(argv))
    args.log_dir = run_folder(args, argv)
    with _substituted(upstream, get_argparse=lambda: _Parsed(args)):
        args = upstream.get_args()
    if args.ngpus == -1:
        import torch

        if not torch.cuda.is_available():
            args.ngpus = 1  # Lightning's CPU accelerator rejects devices=-1 ("all GPUs")
    return args


@console_script(PROG, interrupted="interrupted; checkpoints written so far are kept in --log-dir.")
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``energyloss-torchmd-train``: train, then test the best checkpoint (upstream's main).

    User errors (options that do not fit, a missing database, elements outside ``--elements``, splits
    too small to validate on) print one line and exit with status 2.
    """
    upstream = _upstream()
    args = get_args(argv)
    if args.dataset in POSITION_DATASETS:  # before a model is built or a log folder filled
        if not args.dataset_root or args.dataset_root == "~/data":  # upstream's default names no database
            raise ValueError(f"--dataset {args.dataset} needs --dataset-root: the database to train on, e.g. "
                             "--dataset-root qm7/data.db (make one with energyloss-data build).")
        if not os.path.exists(args.dataset_root):
            raise ValueError(f"--dataset-root {args.dataset_root} does not exist; make one with energyloss-data "
                             "build.")
    from torchmdnet_ext.module import TASKS

    hooks = {"get_args": lambda: args}
    if args.task in TASKS:
        from torchmdnet_ext.data import PositionDataModule
        from torchmdnet_ext.module import PositionLNNP

        hooks.update(LNNP=PositionLNNP, DataModule=PositionDataModule)
    if args.trust_checkpoint:  # upstream's loads default to weights_only=True; the opt-in lifts that for this run
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    fresh = not any(name.endswith(".ckpt") for name in os.listdir(args.log_dir))
    with _substituted(upstream, **hooks), warnings.catch_warnings():
        if fresh:  # only this run's input.yaml and splits are there; Lightning would call that "not empty"
            for what in ("Checkpoint directory", "Experiment logs directory"):  # ModelCheckpoint, CSVLogger
                warnings.filterwarnings("ignore", message=rf"{what} .* exists and is not empty")
        upstream.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
