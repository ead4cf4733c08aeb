"""``nn.Module`` wrappers over the functional losses (the torchmetrics split).

Each module stores its configuration (scheme, edge set, reduction, ``validate_args``) and forwards
per-batch data (``batch``/``mask``, ``numbers``, ``bonds``, ``edge_index``, ``cell``/``pbc``,
``n_structures``) to the function. Configuration errors are raised at construction.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from torch import Tensor, nn

from energyloss_plugins import _checks
from energyloss_plugins.coefficients import CoefficientFn, coefficient_names, scheme_function
from energyloss_plugins.graphs import GRAPH_NAMES
from energyloss_plugins.losses import (
    REDUCTIONS,
    PairSprings,
    kabsch_mse_loss,
    loss_options,
    mae_loss,
    mse_loss,
    pair_energy_loss,
)

#: Coefficient name for springs stored per structure with the data (fitted to a Hessian); only a
#: task objective (energyloss_plugins.tasks), which reads them from each batch, can supply them.
DATA_SPRINGS = "hessian"
# Options of graphs.build_pairs a user sets through graph_kwargs (the others come with each batch).
_GRAPH_OPTIONS = ("cutoff", "seed", "pool_size", "symmetrize")


def check_energy_options(coefficients: str | CoefficientFn = "exp", coefficient_kwargs: Mapping | None = None,
                         graph: str = "complete", graph_kwargs: Mapping | None = None, reduction: str = "mean", *,
                         data_springs: bool = False) -> None:
    """Raise now, not at the first batch, for a pair-energy configuration that cannot work.

    Checks the names (scheme, graph, reduction), the parameter names of the scheme and of the
    graph, a ``radius`` graph's cutoff, and that ``coefficients="hessian"`` (springs stored with
    the data) is only used where the data supplies them (``data_springs``: a task objective).
    """
    if isinstance(coefficients, str):
        _checks.check_choice("coefficient scheme", coefficients, coefficient_names())
        if coefficients == DATA_SPRINGS and not data_springs:
            raise ValueError(
                "coefficients='hessian' means the springs stored with each structure, which this loss cannot read: "
                "pass them per call, loss_fn(pred, target, batch, edge_index=pairs, coefficients=k) (any scheme "
                "here), or train through a task objective (energyloss_plugins.tasks, used by the SchNetPack and "
                "TorchMD-Net adapters), which reads them from the batch (fit them with "
                "energyloss_plugins.ase.add_springs_to_db).")
    elif not callable(coefficients):
        # A ValueError naming the argument, the team's convention for bad arguments.
        raise ValueError(  # noqa: TRY004
            f"coefficients must be a scheme name or a callable, got {type(coefficients).__name__}; "
            f"per-pair springs are passed per call with edge_index=. Valid names: {', '.join(coefficient_names())}.")
    _checks.check_choice("graph", graph, GRAPH_NAMES)
    _checks.check_choice("reduction", reduction, REDUCTIONS)
    if coefficient_kwargs and not (isinstance(coefficients, str) and coefficients == DATA_SPRINGS):
        _check_parameters(f"coefficient_kwargs of scheme {getattr(coefficients, '__name__', coefficients)!r}",
                          scheme_function(coefficients), coefficient_kwargs, skip=1)
    graph_kwargs = dict(graph_kwargs or {})
    unknown = sorted(set(graph_kwargs) - set(_GRAPH_OPTIONS))
    if unknown:
        raise ValueError(f"graph_kwargs: unknown option(s) {', '.join(unknown)}. Valid: {', '.join(_GRAPH_OPTIONS)} "
                         f"(see energyloss_plugins.graphs.build_pairs; numbers/bonds come with each batch).")
    cutoff = _checks.as_python_number(graph_kwargs.get("cutoff"))
    numeric = isinstance(cutoff, (int, float)) and not isinstance(cutoff, bool)
    if graph == "radius" and not (numeric and cutoff > 0 and cutoff < float("inf")):
        raise ValueError(f"graph='radius' needs a positive finite cutoff in Å, graph_kwargs={{'cutoff': 5.0}}; "
                         f"got {cutoff!r}.")


def _check_parameters(what: str, fn, kwargs: Mapping, skip: int) -> None:
    try:
        params = list(inspect.signature(fn).parameters.values())[skip:]
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    valid = [p.name for p in params if p.kind in named]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(f"{what}: unknown parameter(s) {', '.join(unknown)}. Valid: {', '.join(valid) or 'none'}.")


class PairEnergyLoss(nn.Module):
    """Pair energy loss module; see :func:`energyloss_plugins.pair_energy_loss`.

    ``validate_args=False`` skips the value checks (the torchmetrics switch): with ``n_structures``
    and pairs given per call (``edge_index=``, or ``springs=`` resolved once by
    :func:`energyloss_plugins.resolve_springs`) a call then reads nothing back to the host.

    Example:
        >>> loss_fn = PairEnergyLoss(coefficients="exp", coefficient_kwargs={"length_scale": 1.0}, graph="complete")
        >>> loss = loss_fn(pred, target, batch=batch)  # pred, target (N_total, 3), batch (N_total,)
        >>> springs = resolve_springs(target, batch)     # once per reference (cacheable)
        >>> loss = loss_fn(pred, springs=springs)        # the kernel only
    """

    def __init__(self, coefficients: str | CoefficientFn = "exp", coefficient_kwargs: Mapping | None = None,
                 graph: str = "complete", graph_kwargs: Mapping | None = None,
                 reduction: str = "mean", normalize: bool = True, chunk_size: int = 2**22,
                 validate_args: bool = True):
        super().__init__()
        check_energy_options(coefficients, coefficient_kwargs, graph, graph_kwargs, reduction)
        self.coefficients = coefficients
        self.coefficient_kwargs = dict(coefficient_kwargs or {})
        self.graph = graph
        self.graph_kwargs = dict(graph_kwargs or {})
        self.reduction = reduction
        self.normalize = normalize
        self.chunk_size = chunk_size
        self.validate_args = validate_args

    def forward(self, pred: Tensor, target: Tensor | None = None, batch: Tensor | None = None,
                mask: Tensor | None = None, *, springs: PairSprings | None = None, **data) -> Tensor:
        """Loss of ``pred`` against ``target`` (per-batch data as in :func:`~energyloss_plugins.pair_energy_loss`),
        or, with ``springs`` (a :class:`~energyloss_plugins.PairSprings`), the kernel alone (``target`` unused)."""
        if springs is not None:
            return springs.loss(pred, reduction=self.reduction, normalize=self.normalize, chunk_size=self.chunk_size,
                                validate_args=self.validate_args)
        if target is None:
            raise ValueError("PairEnergyLoss needs target= positions, or springs= resolved by resolve_springs.")
        return pair_energy_loss(pred, target, batch, mask, coefficients=data.pop("coefficients", self.coefficients),
                                coefficient_kwargs=self.coefficient_kwargs, graph=self.graph,
                                graph_kwargs=self.graph_kwargs, reduction=self.reduction,
                                normalize=self.normalize, chunk_size=self.chunk_size,
                                validate_args=data.pop("validate_args", self.validate_args), **data)

    def extra_repr(self) -> str:
        return (f"coefficients={self.coefficients!r}, graph={self.graph!r}, reduction={self.reduction!r}, "
                f"normalize={self.normalize}")


class _PerAtomLoss(nn.Module):
    _fn = staticmethod(mse_loss)

    def __init__(self, reduction: str = "mean", normalize: bool = True, validate_args: bool = True):
        super().__init__()
        _checks.check_choice("reduction", reduction, REDUCTIONS)
        self.reduction = reduction
        self.normalize = normalize
        self.validate_args = validate_args

    def forward(self, pred: Tensor, target: Tensor, batch: Tensor | None = None, mask: Tensor | None = None,
                n_structures: int | None = None, **unused) -> Tensor:
        # Extra per-batch data (numbers, bonds, ...) is accepted and ignored so that losses swap freely.
        return self._fn(pred, target, batch, mask, reduction=self.reduction, normalize=self.normalize,
                        n_structures=n_structures, validate_args=self.validate_args)


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
    kwargs = loss_options(name, kwargs)
    kwargs.pop("n_structures", None)  # per call, not configuration
    return LOSS_MODULES[name](**kwargs)
