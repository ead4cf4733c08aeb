"""Loss functions registered by name in ``torchmdnet.loss.loss_class_mapping``.

TorchMD-Net selects the loss with ``train_loss`` (checked against ``loss_class_mapping``) and
passes ``train_loss_arg`` as keyword arguments. Its stock losses are element-wise
(``torch.nn.functional.mse_loss``); the energy loss needs the structure index, which the stock
``LNNP`` never passes. :class:`torchmdnet_ext.module.PositionLNNP` passes it (and the atomic numbers
and bonds) through the core's :class:`energyloss_plugins.tasks.StructureObjective`.

Names (position tasks, all per structure then averaged, the core's conventions):

==================  ==============================  ========================================
``train_loss``       core loss                       notes
==================  ==============================  ========================================
``energy_loss``      ``energy`` (pair energy)        options: coefficients, graph, ... (§2)
``kabsch_loss``      ``kabsch`` (Kabsch-aligned MSE)  the paper's rotation-invariant baseline
``mse_loss``         ``mse``                         Σ_xyz |ŷ_i − y_i|² averaged per atom
``l1_loss``          ``mae``                         Σ_xyz |ŷ_i − y_i| averaged per atom
==================  ==============================  ========================================
"""

from __future__ import annotations

from torch import Tensor

from energyloss_plugins.losses import call_loss

#: TorchMD-Net ``train_loss`` name → core loss name, for position targets.
CORE_NAMES = {"energy_loss": "energy", "kabsch_loss": "kabsch", "mse_loss": "mse", "l1_loss": "mae"}


def _check_positions(name: str, input: Tensor, target: Tensor):
    if input.dim() != 2 or input.shape[-1] != 3 or input.shape != target.shape:
        raise ValueError(
            f"{name} compares positions (N, 3) of structures, got prediction {tuple(input.shape)} and target "
            f"{tuple(target.shape)}. TorchMD-Net's stock LNNP trains energies/forces and passes no batch vector; "
            "train position targets with `energyloss-torchmd-train --task structure` (or --task diffusion), "
            "i.e. torchmdnet_ext.PositionLNNP.")


def energy_loss(input: Tensor, target: Tensor, batch: Tensor | None = None, **options) -> Tensor:
    """Pair energy loss (SPEC §2) of predicted positions ``input`` against ``target``, both ``(N, 3)`` Å.

    ``batch`` ``(N,)`` is the structure index (None: one structure); ``options`` are the core's
    (coefficients, coefficient_kwargs, graph, graph_kwargs, numbers, bonds, reduction, normalize).
    """
    _check_positions("energy_loss", input, target)
    return call_loss("energy", input, target, batch, **options)


def kabsch_loss(input: Tensor, target: Tensor, batch: Tensor | None = None, **options) -> Tensor:
    """Kabsch-aligned MSE per structure (rotation without gradient, as in the paper)."""
    _check_positions("kabsch_loss", input, target)
    return call_loss("kabsch", input, target, batch, **options)


def core_name(train_loss: str) -> str:
    """Core loss name for a TorchMD-Net ``train_loss`` name; clear error for the others."""
    if train_loss not in CORE_NAMES:
        raise ValueError(f"train_loss {train_loss!r} is not available for position targets; choose one of "
                         f"{sorted(CORE_NAMES)}.")
    return CORE_NAMES[train_loss]
