"""TorchMD-Net 3.1 adapter for the energy loss (Kaba et al., NeurIPS 2025).

``import torchmdnet_ext`` registers, in TorchMD-Net's own registries:

- losses ``energy_loss`` and ``kabsch_loss`` in ``torchmdnet.loss.loss_class_mapping`` (so
  ``train_loss: energy_loss`` passes TorchMD-Net's name checks);
- per-atom vector heads ``PositionOutput``/``NoiseOutput`` (and ``Equivariant*`` for the equivariant
  transformer) in ``torchmdnet.models.output_modules`` (so ``create_model``/``load_model`` build them);
- datasets ``EnergyLossDB`` (the offline builder's ASE database) and ``PositionHDF5`` in
  ``torchmdnet.datasets``;
- a check in TorchMD-Net's stock ``LNNP``: given a position task, loss or head it raises a
  ``ValueError`` naming ``energyloss-torchmd-train`` (it would otherwise train nothing).

Train with ``energyloss-torchmd-train --conf conf.yaml`` or ``python -m torchmdnet_ext.train --conf conf.yaml``
(every ``torchmd-train`` option plus ``task``, ``parameterization``, ``noise_schedule``, ...); see
docs/torchmdnet.md. De novo generation
(``task: generation``): :func:`load_generation_model` then ``.sample_molecules(n)``.
"""

from __future__ import annotations

from energyloss_plugins.optional import require

_REGISTERED = False


def register() -> None:
    """Register the losses, heads and datasets with TorchMD-Net (idempotent; done at import)."""
    global _REGISTERED
    if _REGISTERED:
        return
    require("torchmdnet", "torchmdnet_ext (the TorchMD-Net adapter)", "torchmdnet")
    from torchmdnet import datasets as tmd_datasets
    from torchmdnet import loss as tmd_loss
    from torchmdnet.models import output_modules

    from torchmdnet_ext import heads
    from torchmdnet_ext.datasets import DATASETS
    from torchmdnet_ext.losses import energy_loss, kabsch_loss

    tmd_loss.loss_class_mapping.setdefault("energy_loss", energy_loss)
    tmd_loss.loss_class_mapping.setdefault("kabsch_loss", kabsch_loss)

    for name, cls in heads.HEADS.items():
        eq_cls = heads.EQUIVARIANT_HEADS[name]
        for alias in (name, heads.checkpoint_name(name)):
            setattr(output_modules, alias, cls)
            setattr(output_modules, "Equivariant" + alias, eq_cls)
        if name not in output_modules.__all__:
            output_modules.__all__.append(name)

    from torchmdnet_ext.module import guard_stock_lnnp

    guard_stock_lnnp()  # upstream's LNNP given the plugin's names fails naming the wrapper, not mid-training

    for name, cls in DATASETS.items():
        setattr(tmd_datasets, name, cls)
        if name not in tmd_datasets.__all__:
            tmd_datasets.__all__.append(name)
    _REGISTERED = True


register()

from torchmdnet_ext.calculator import TorchMDNetCalculator  # noqa: E402
from torchmdnet_ext.datasets import EnergyLossDB, PositionHDF5, write_position_hdf5  # noqa: E402
from torchmdnet_ext.inference import load_generation_model, predict_positions, sample_positions  # noqa: E402
from torchmdnet_ext.losses import energy_loss, kabsch_loss  # noqa: E402
from torchmdnet_ext.module import PositionLNNP  # noqa: E402

__all__ = ["EnergyLossDB", "PositionHDF5", "PositionLNNP", "TorchMDNetCalculator", "energy_loss", "kabsch_loss",
           "load_generation_model", "predict_positions", "register", "sample_positions", "write_position_hdf5"]
