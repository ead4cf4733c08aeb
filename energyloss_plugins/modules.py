"""``nn.Module`` wrappers over the functional losses (the torchmetrics split).

Each module stores its configuration (scheme, edge set, reduction) and forwards per-batch data
(``batch``/``mask``, ``numbers``, ``bonds``, ``edge_index``, ``cell``/``pbc``) to the function.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from energyloss_plugins import _checks
from energyloss_plugins.coefficients import CoefficientFn
from energyloss_plugins.losses import kabsch_mse_loss, loss_options, mae_loss, mse_loss, pair_energy_loss


class PairEnergyLoss(nn.Module):
    """Pair energy loss module; see :func:`energyloss_plugins.pair_energy_loss`.

    Example:
        >>> loss_fn = PairEnergyLoss(coefficients="exp", coefficient_kwargs={"length_scale": 1.0}, graph="complete")
        >>> loss = loss_fn(pred, target, batch=batch)  # pred, target (N_total, 3), batch (N_total,)
    """

    def __init__(self, coefficients: str | CoefficientFn = "exp", coefficient_kwargs: Mapping | None = None,
                 graph: str = "complete", graph_kwargs: Mapping | None = None,
                 reduction: str = "mean", normalize: bool = True, chunk_size: int = 2**22):
        super().__init__()
        # Fail at construction, not at the first batch, for a misspelt name.
        from energyloss_plugins.coefficients import coefficient_names
        from energyloss_plugins.graphs import GRAPH_NAMES
        from energyloss_plugins.losses import REDUCTIONS

        if isinstance(coefficients, str):
            _checks.check_choice("coefficient scheme", coefficients, coefficient_names())
        _checks.check_choice("graph", graph, GRAPH_NAMES)
        _checks.check_choice("reduction", reduction, REDUCTIONS)
        self.coefficients = coefficients
        self.coefficient_kwargs = dict(coefficient_kwargs or {})
        self.graph = graph
        self.graph_kwargs = dict(graph_kwargs or {})
        self.reduction = reduction
        self.normalize = normalize
        self.chunk_size = chunk_size

    def forward(self, pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None,
                **data) -> Tensor:
        return pair_energy_loss(pred, target, batch, mask, coefficients=data.pop("coefficients", self.coefficients),
                                coefficient_kwargs=self.coefficient_kwargs, graph=self.graph,
                                graph_kwargs=self.graph_kwargs, reduction=self.reduction,
                                normalize=self.normalize, chunk_size=self.chunk_size, **data)

    def extra_repr(self) -> str:
        return f"coefficients={self.coefficients!r}, graph={self.graph!r}, reduction={self.reduction!r}, normalize={self.normalize}"


class _PerAtomLoss(nn.Module):
    _fn = staticmethod(mse_loss)

    def __init__(self, reduction: str = "mean", normalize: bool = True):
        super().__init__()
        self.reduction = reduction
        self.normalize = normalize

    def forward(self, pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None,
                **unused) -> Tensor:
        # Extra per-batch data (numbers, bonds, ...) is accepted and ignored so that losses swap freely.
        return self._fn(pred, target, batch, mask, reduction=self.reduction, normalize=self.normalize)


class MSELoss(_PerAtomLoss):
    """Squared displacement per atom; see :func:`energyloss_plugins.mse_loss`."""

    _fn = staticmethod(mse_loss)


class MAELoss(_PerAtomLoss):
    """Absolute error per atom; see :func:`energyloss_plugins.mae_loss`."""

    _fn = staticmethod(mae_loss)


class KabschMSELoss(_PerAtomLoss):
    """Kabsch-aligned MSE; see :func:`energyloss_plugins.kabsch_mse_loss`."""

    _fn = staticmethod(kabsch_mse_loss)


LOSS_MODULES: dict[str, type[nn.Module]] = {
    "energy": PairEnergyLoss,
    "mse": MSELoss,
    "mae": MAELoss,
    "kabsch": KabschMSELoss,
}


def make_loss(name: str, **kwargs) -> nn.Module:
    """Build a loss module by name (``energy``, ``mse``, ``mae``, ``kabsch``); kwargs go to its constructor.

    Options that only the energy loss takes (coefficients, graph, ...) are dropped for the
    baselines, so one config can switch losses with one key.
    """
    _checks.check_choice("loss", name, LOSS_MODULES)
    return LOSS_MODULES[name](**loss_options(name, kwargs))
