"""The functional losses by name: ``get_loss``, ``loss_options`` (one config switches losses) and ``call_loss``."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.losses.baselines import kabsch_mse_loss, mae_loss, mse_loss
from energyloss_plugins.losses.pair_energy import pair_energy_loss

LOSSES: dict[str, Callable[..., Tensor]] = {
    "energy": pair_energy_loss,
    "mse": mse_loss,
    "mae": mae_loss,
    "kabsch": kabsch_mse_loss,
}


#: Options every loss takes; the rest (coefficients, graph, numbers, bonds, ...) are the energy's own.
COMMON_OPTIONS = ("reduction", "normalize", "n_structures", "validate_args")


def get_loss(name: str) -> Callable[..., Tensor]:
    """The functional loss called ``name`` (``energy``, ``mse``, ``mae``, ``kabsch``)."""
    _checks.check_choice("loss", name, LOSSES)
    return LOSSES[name]


def loss_options(name: str, options: Mapping) -> dict:
    """``options`` restricted to what loss ``name`` takes, so that one config switches losses with one key."""
    _checks.check_choice("loss", name, LOSSES)
    if name == "energy":
        return dict(options)
    return {key: value for key, value in options.items() if key in COMMON_OPTIONS}


def call_loss(name: str, pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None,
              **options) -> Tensor:
    """Evaluate loss ``name``; energy-only options (numbers, bonds, coefficients, ...) are dropped for baselines."""
    return get_loss(name)(pred, target, batch, mask, **loss_options(name, options))
