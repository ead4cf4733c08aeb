"""``energyloss-torchmd-train``: drop-in ``torchmd-train`` with the energy loss and position tasks.

Accepts every ``torchmd-train`` option and conf file (the parser is TorchMD-Net's own, built after
``import torchmdnet_ext`` so ``train_loss: energy_loss``, ``output_model: PositionOutput`` and
``dataset: EnergyLossDB`` pass its choices), plus:

--task                 structure | diffusion | generation | energy (default: structure for
                       EnergyLossDB/PositionHDF5, energy otherwise = TorchMD-Net's own LNNP, unchanged)
--parameterization     diffusion output: eps | v | x0 | velocity (flow matching)
--noise-schedule       polynomial | cosine
--max-weight           clip of the diffusion time weight w_t (diffusion: 1000; generation: none)
--elements             generation: atomic numbers the model generates, e.g. 1,6,7,8,16
--position-weight      generation: weight of the positional term against the type term
--sampling-steps       denoising steps of predict_step
--log-structure-metrics  log aligned RMSD, bond-length MAE, stability in val/test (structure task)

``--train-loss-arg`` and ``--dataset-arg`` also accept YAML/JSON strings on the command line.
``--checkpoint-monitor``/``--early-stopping-monitor`` accept any logged metric; by default they
follow ``val_total_<train_loss>`` (TorchMD-Net's default ``val_total_mse_loss`` for task energy).
"""

from __future__ import annotations

import argparse
import os
import sys

import torchmdnet_ext  # noqa: F401  (registers losses, heads, datasets)
from torchmdnet_ext.module import PLUGIN_DEFAULTS, TASKS, _parse_mapping, prepare_hparams

POSITION_DATASETS = ("EnergyLossDB", "PositionHDF5")


def _bool(text) -> bool:
    if str(text).lower() in ("1", "true", "yes", "on"):
        return True
    if str(text).lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def get_argparse() -> argparse.ArgumentParser:
    from torchmdnet.scripts.train import get_argparse as tmd_argparse

    parser = tmd_argparse()
    parser.prog = "energyloss-torchmd-train"
    parser.description = "TorchMD-Net training with the energy loss (energyloss-plugins)"
    for action in parser._actions:
        if action.dest in ("checkpoint_monitor", "early_stopping_monitor"):
            action.choices = None  # any logged metric, e.g. val_total_energy_loss or val_rmsd
            action.default = None
    group = parser.add_argument_group("energyloss-plugins")
    group.add_argument("--task", default=None, choices=[*TASKS, "energy"],
                       help="structure (input geometry -> equilibrium positions), diffusion (denoising on the targets), "
                            "generation (de novo molecules: types and positions, needs --elements) "
                            "or energy (TorchMD-Net's own energy/force training). Default: structure for "
                            f"{'/'.join(POSITION_DATASETS)}, else energy.")
    group.add_argument("--parameterization", default=PLUGIN_DEFAULTS["parameterization"], choices=["eps", "v", "x0", "velocity"],
                       help="What the diffusion head predicts (velocity = flow matching).")
    group.add_argument("--noise-schedule", default=PLUGIN_DEFAULTS["noise_schedule"], choices=["polynomial", "cosine"],
                       help="Variance-preserving noise schedule (diffusion).")
    group.add_argument("--max-weight", default=PLUGIN_DEFAULTS["max_weight"], type=float,
                       help="Clip of the diffusion time weight w_t (default: 1000 for diffusion, none for generation).")
    group.add_argument("--elements", default=None,
                       help="task generation: atomic numbers the model generates, e.g. 1,6,7,8,16 (QM7).")
    group.add_argument("--position-weight", default=PLUGIN_DEFAULTS["position_weight"], type=float,
                       help="task generation: weight of the positional loss term against the type term.")
    group.add_argument("--sampling-steps", default=PLUGIN_DEFAULTS["sampling_steps"], type=int,
                       help="Denoising steps used by predict_step (diffusion).")
    group.add_argument("--log-structure-metrics", default=PLUGIN_DEFAULTS["log_structure_metrics"], type=_bool,
                       help="Log aligned RMSD, bond-length MAE and stability in validation/test (structure task).")
    return parser


def get_args(argv=None) -> argparse.Namespace:
    from torchmdnet.utils import save_argparse

    parser = get_argparse()
    args = parser.parse_args(argv)
    if args.redirect:
        import logging

        sys.stdout = open(os.path.join(args.log_dir, "log"), "w")
        sys.stderr = sys.stdout
        logging.getLogger("pytorch_lightning").addHandler(logging.StreamHandler(sys.stdout))
    if args.inference_batch_size is None:
        args.inference_batch_size = args.batch_size
    args.train_loss_arg = _parse_mapping(args.train_loss_arg, "train_loss_arg")
    args.dataset_arg = _parse_mapping(args.dataset_arg, "dataset_arg") or None
    if args.task is None:
        args.task = "structure" if args.dataset in POSITION_DATASETS else "energy"
    if args.task in TASKS:
        args = argparse.Namespace(**prepare_hparams(args))
    os.makedirs(os.path.abspath(args.log_dir), exist_ok=True)
    save_argparse(args, os.path.join(args.log_dir, "input.yaml"), exclude=["conf"])
    return args


def _devices(ngpus: int):
    import torch

    if ngpus == -1 and not torch.cuda.is_available():
        return "auto"  # CPU: Lightning rejects devices=-1
    return ngpus


def main(argv=None):
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
    from lightning_utilities.core.rank_zero import rank_zero_warn
    from torchmdnet.models.model import create_prior_models
    from torchmdnet.module import LNNP
    from torchmdnet.scripts.train import fix_state_dict
    from torchmdnet.utils import check_logs

    from torchmdnet_ext.data import PositionDataModule
    from torchmdnet_ext.module import PositionLNNP

    args = get_args(argv)
    position = args.task in TASKS
    if not position and args.remove_ref_energy:
        args.prior_model = list(args.prior_model or []) if isinstance(args.prior_model, list) else (
            [args.prior_model] if args.prior_model else [])
        args.prior_model.append({"Atomref": {"enable": False}})

    pl.seed_everything(args.seed, workers=True)
    data = PositionDataModule(args)
    data.prepare_data()
    data.setup("fit")

    if position:
        model_cls = PositionLNNP
        model = PositionLNNP(args)
    else:
        model_cls = LNNP
        prior_models = create_prior_models(vars(args), data.dataset)
        args.prior_args = [p.get_init_args() for p in prior_models]
        model = LNNP(args, prior_model=prior_models, mean=data.mean, std=data.std)
    if args.load_weights is not None:
        print(f"Loading weights from {args.load_weights}")
        ckpt = torch.load(args.load_weights, map_location="cpu", weights_only=False)
        model.model.load_state_dict(fix_state_dict(ckpt))

    default_monitor = f"val_total_{args.train_loss}"
    mon = args.checkpoint_monitor or default_monitor
    early_mon = args.early_stopping_monitor or mon
    chkpoint_name = f"epoch={{epoch}}-{mon.split('_')[0]}_loss={{{mon}:.4f}}"
    if len(data.idx_test) and args.test_interval > 0:
        chkpoint_name += "-test_loss={test_total_l1_loss:.4f}"

    callbacks = [ModelCheckpoint(dirpath=args.log_dir, monitor=mon, save_top_k=10, every_n_epochs=args.save_interval,
                                 filename=chkpoint_name, auto_insert_metric_name=False)]
    if early_mon is not None:
        callbacks.append(EarlyStopping(early_mon, patience=args.early_stopping_patience))

    check_logs(args.log_dir)
    loggers = [CSVLogger(args.log_dir, name="", version="")]
    if args.wandb_use:
        loggers.append(WandbLogger(project=args.wandb_project, name=args.wandb_name, save_dir=args.log_dir,
                                   resume="must" if args.wandb_resume_from_id is not None else None,
                                   id=args.wandb_resume_from_id))
    if args.tensorboard_use:
        loggers.append(TensorBoardLogger(args.log_dir, name="tensorboard", version="", default_hp_metric=False))
    if args.test_interval > 0:
        rank_zero_warn(f"WARNING: Test set will be evaluated every {args.test_interval} epochs. This will slow down training.")

    devices = _devices(args.ngpus)
    trainer = pl.Trainer(strategy="auto", max_epochs=args.num_epochs, accelerator="auto", devices=devices,
                         num_nodes=args.num_nodes, default_root_dir=args.log_dir, callbacks=callbacks, logger=loggers,
                         precision=args.precision, gradient_clip_val=args.gradient_clipping, inference_mode=False,
                         reload_dataloaders_every_n_epochs=1 if args.test_interval > 0 else 0)
    trainer.fit(model, data, ckpt_path=None if args.reset_trainer else args.load_model)

    best = trainer.checkpoint_callback.best_model_path
    if not best:
        rank_zero_warn("No checkpoint was written (num_epochs < save_interval?); skipping the test run.")
        return
    model = model_cls.load_from_checkpoint(best)
    trainer = pl.Trainer(logger=loggers, inference_mode=False, accelerator="auto", devices=devices, num_nodes=args.num_nodes)
    trainer.test(model, data)


if __name__ == "__main__":
    main()
