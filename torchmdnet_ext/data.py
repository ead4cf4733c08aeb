"""TorchMD-Net ``DataModule`` that also understands the offline builder's ``split.npz``."""

from __future__ import annotations

import os

from torchmdnet import datasets
from torchmdnet.data import DataModule

from torchmdnet_ext.datasets import convert_split
from torchmdnet_ext.module import TASKS, loss_config
from torchmdnet_ext.springs import pipeline_transform


class PositionDataModule(DataModule):
    """TorchMD-Net's ``DataModule`` plus split handling for position datasets.

    ``splits`` may be TorchMD-Net's npz (``idx_train/idx_val/idx_test``, dataset indices) or the
    builder's (``train_idx/val_idx/test_idx``, 0-based database rows, mapped through the dataset's
    ``input_kinds`` filter). Without ``splits``, an :class:`~torchmdnet_ext.datasets.EnergyLossDB`
    uses its database's split file (``<name>.split.npz``, split by molecule) when it exists, else TorchMD-Net's
    random ``train_size/val_size/test_size`` split.

    With ``data_springs: true`` (a position task), the dataset gets a
    :func:`~torchmdnet_ext.springs.pipeline_transform`: the energy loss's springs and the heads' pairs
    per molecule.
    """

    def setup(self, stage):
        if self.dataset is None and self.hparams["dataset"] not in (None, "Custom"):
            dataset_arg = dict(self.hparams["dataset_arg"] or {})
            if self.hparams["dataset"] == "HDF5":
                dataset_arg["dataset_preload_limit"] = self.hparams["dataset_preload_limit"]
            self.dataset = getattr(datasets, self.hparams["dataset"])(self.hparams["dataset_root"], **dataset_arg)
        split_file = self.hparams["splits"]
        if split_file is None and getattr(self.dataset, "split_file", None) and os.path.exists(self.dataset.split_file):
            split_file = self.dataset.split_file
        if split_file is not None and hasattr(self.dataset, "dataset_indices"):
            out = os.path.join(self.hparams["log_dir"], "source_splits.npz")
            self.hparams["splits"] = convert_split(self.dataset, split_file, out)
        if self.hparams.get("data_springs") and self.hparams.get("task") in TASKS:
            # The energy's springs per molecule, in the loaders' workers (PyG applies dataset.transform).
            config = loss_config(self.hparams["train_loss"], self.hparams["train_loss_arg"])
            self.dataset.transform = pipeline_transform(config, self.hparams["task"])
        super().setup(stage)
        sizes = {name: 0 if getattr(self, f"idx_{name}", None) is None else len(getattr(self, f"idx_{name}"))
                 for name in ("train", "val")}
        if not sizes["train"] or not sizes["val"]:
            # fail now, not after an epoch on the checkpoint monitor's missing val_* metric
            raise ValueError(f"the {'training' if not sizes['train'] else 'validation'} split of "
                             f"{self.hparams['dataset_root']} is empty ({len(self.dataset)} structures: "
                             f"{sizes['train']} train, {sizes['val']} val); the best checkpoint is chosen on "
                             "validation molecules. Use a larger database, or --splits / --val-size to give "
                             "validation at least one molecule.")
