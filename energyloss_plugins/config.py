"""One typed configuration of a structure loss: :class:`LossConfig`, the home of every loss option name.

Every place that configures a loss builds one :class:`LossConfig` (the ``nn.Module`` losses of
:mod:`energyloss_plugins.modules`, the task objectives of :mod:`energyloss_plugins.tasks` and
:mod:`energyloss_plugins.generation`, the SchNetPack ``EnergyLoss`` YAML entry, TorchMD-Net's
``train_loss``/``train_loss_arg``, the data-pipeline spring transforms). It is validated once, when
it is built, with errors that list the valid names; a training step then calls
:meth:`LossConfig.evaluate` with ``validate_args=False`` and the number of structures, and reads
nothing back to the host.

Options (YAML / ``train_loss_arg`` keys)::

    name                energy | mse | mae | kabsch
    coefficients        spring scheme (energy only): constant | inverse | inverse_square | exp | bond_aware |
                        morse | lennard_jones | hessian (springs stored with the data) | a callable
    coefficient_kwargs  parameters of the scheme, e.g. {k0: 1.0, length_scale: 1.0}
    graph               edge set (energy only): complete | radius | bonds | rigid_sparse
    graph_kwargs        cutoff (radius), seed, pool_size, symmetrize (rigid_sparse)
    reduction           mean | sum | none (over structures)
    normalize           divide each structure's value by its atom count
    chunk_size          pairs per chunk of the energy (memory bound for huge structures)

Options only the energy takes are kept but unused by the baselines, so one config switches losses
with the one key ``name``.

The springs (pairs, reference distances, spring constants) depend on the reference only; a data
pipeline resolves them once per structure with :meth:`LossConfig.structure_springs` and a step
passes the collated :class:`~energyloss_plugins.losses.PairSprings` to :meth:`LossConfig.evaluate`,
which then runs :func:`~energyloss_plugins.losses.pair_energy_kernel` alone.
"""

from __future__ import annotations

import functools
import inspect
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.coefficients import CoefficientFn, coefficient_names, resolve_coefficients, scheme_function
from energyloss_plugins.graphs import (
    GRAPH_NAMES,
    TEMPLATE_MAX_ATOMS,
    complete_template,
    rigid_sparse_graph,
    symmetrize_pairs,
)
from energyloss_plugins.losses import LOSSES, REDUCTIONS, PairSprings, call_loss, resolve_springs
from energyloss_plugins.losses.pair_energy import check_reference_distances

#: Coefficient name for springs stored per structure with the data (fitted to a Hessian by
#: :func:`energyloss_plugins.ase.add_springs_to_db`); read from each batch by the task objectives.
DATA_SPRINGS = "hessian"
#: Options of :func:`energyloss_plugins.graphs.build_pairs` set through ``graph_kwargs`` (the
#: others, numbers and bonds, come with each batch).
GRAPH_OPTIONS = ("cutoff", "seed", "pool_size", "symmetrize")
#: Options only the pair energy takes.
ENERGY_OPTIONS = ("coefficients", "coefficient_kwargs", "graph", "graph_kwargs", "chunk_size")
#: Every option key of a loss configuration besides its name.
OPTIONS = (*ENERGY_OPTIONS, "reduction", "normalize")


@dataclass(frozen=True)
class LossConfig:
    """A structure loss and its options, validated when built (see the module docstring).

    Attributes:
        name: ``energy`` (pair energy, SPEC §2), ``mse``, ``mae`` or ``kabsch``.
        coefficients: spring scheme name or callable ``fn(PairContext, **coefficient_kwargs) -> (E,)``
            (eV/Å²); ``hessian``: springs stored with the data (task objectives only).
        coefficient_kwargs: parameters of the scheme.
        graph: edge set name; ``graph_kwargs``: its options (:data:`GRAPH_OPTIONS`).
        reduction: ``mean`` | ``sum`` | ``none`` over structures.
        normalize: divide each structure's value by its atom count (eV/atom).
        chunk_size: pairs per chunk of the energy.
    """

    name: str = "energy"
    coefficients: str | CoefficientFn = "exp"
    coefficient_kwargs: Mapping = field(default_factory=dict)
    graph: str = "complete"
    graph_kwargs: Mapping = field(default_factory=dict)
    reduction: str = "mean"
    normalize: bool = True
    chunk_size: int = 2**22

    def __post_init__(self):
        _checks.check_choice("loss", self.name, LOSSES)
        _checks.check_choice("reduction", self.reduction, REDUCTIONS)
        object.__setattr__(self, "normalize", bool(self.normalize))
        _checks.check_number("chunk_size", self.chunk_size, low=1, low_inclusive=True, integer=True)
        for key in ("coefficient_kwargs", "graph_kwargs"):
            value = getattr(self, key)
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                raise ValueError(f"{key} must be a mapping (YAML dict), got {value!r}.")
            object.__setattr__(self, key, dict(value))
        if self.name == "energy":
            self._check_energy()

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_options(cls, name: str = "energy", options: Mapping | None = None) -> LossConfig:
        """A config from a loss name and a mapping of options (YAML, ``train_loss_arg``, ``loss_kwargs``).

        Unknown keys raise a ValueError listing the valid ones.
        """
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"Unknown loss option(s) {', '.join(unknown)}. Valid: {', '.join(OPTIONS)} "
                             "(numbers, bonds and stored springs come with each batch).")
        return cls(name, **options)

    def options(self) -> dict:
        """The options as a plain dict (the inverse of :meth:`from_options`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}

    def _check_energy(self) -> None:
        coefficients = self.coefficients
        if isinstance(coefficients, str):
            _checks.check_choice("coefficient scheme", coefficients, coefficient_names())
        elif not callable(coefficients):
            # A ValueError naming the argument, the team's convention for bad arguments.
            raise ValueError(  # noqa: TRY004
                f"coefficients must be a scheme name or a callable, got {type(coefficients).__name__}; "
                f"per-pair springs are passed per call with edge_index=. Valid names: "
                f"{', '.join(coefficient_names())}.")
        _checks.check_choice("graph", self.graph, GRAPH_NAMES)
        if self.coefficient_kwargs and not self.uses_data_springs:
            _check_parameters(f"coefficient_kwargs of scheme {getattr(coefficients, '__name__', coefficients)!r}",
                              scheme_function(coefficients), self.coefficient_kwargs, skip=1)
        unknown = sorted(set(self.graph_kwargs) - set(GRAPH_OPTIONS))
        if unknown:
            raise ValueError(f"graph_kwargs: unknown option(s) {', '.join(unknown)}. Valid: {', '.join(GRAPH_OPTIONS)} "
                             f"(see energyloss_plugins.graphs.build_pairs; numbers/bonds come with each batch).")
        cutoff = _checks.as_python_number(self.graph_kwargs.get("cutoff"))  # numpy scalars are numbers too
        numeric = isinstance(cutoff, (int, float)) and not isinstance(cutoff, bool)
        if self.graph == "radius" and not (numeric and 0 < cutoff < float("inf")):
            raise ValueError(f"graph='radius' needs a positive finite cutoff in Å, graph_kwargs={{'cutoff': 5.0}}; "
                             f"got {cutoff!r}.")
        if self.graph == "rigid_sparse":
            for key in ("seed", "pool_size"):
                if key in self.graph_kwargs:
                    _checks.check_number(f"graph_kwargs['{key}']", self.graph_kwargs[key],
                                         low=1 if key == "pool_size" else 0, low_inclusive=True, integer=True)

    # --------------------------------------------------------------------------------- queries
    @property
    def is_energy(self) -> bool:
        return self.name == "energy"

    @property
    def uses_data_springs(self) -> bool:
        """True when the energy reads per-structure springs stored with the data (``coefficients: hessian``)."""
        return self.is_energy and isinstance(self.coefficients, str) and self.coefficients == DATA_SPRINGS

    def require_scheme_springs(self, fix: str) -> None:
        """Raise when the springs must come with the data, where the caller cannot read them; ``fix`` says how."""
        if self.uses_data_springs:
            raise ValueError(f"coefficients='hessian' means the springs stored with each structure, which {fix}")

    def energy_kwargs(self) -> dict:
        """Keyword arguments of :func:`~energyloss_plugins.losses.resolve_springs` for a named scheme."""
        return {"coefficients": self.coefficients, "coefficient_kwargs": self.coefficient_kwargs,
                "graph": self.graph, "graph_kwargs": self.graph_kwargs}

    def call_kwargs(self) -> dict:
        """Keyword arguments of the functional loss (:data:`energyloss_plugins.losses.LOSSES`)."""
        common = {"reduction": self.reduction, "normalize": self.normalize}
        if not self.is_energy:
            return common
        return {**common, **self.energy_kwargs(), "chunk_size": self.chunk_size}

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, pred: Tensor, target: Tensor, batch: Tensor | None = None, *,
                 n_structures: int | None = None, numbers: Tensor | None = None, bonds: Tensor | None = None,
                 stored: tuple[Tensor, Tensor] | None = None, springs: PairSprings | None = None,
                 reduction: str | None = None, validate_args: bool = True) -> Tensor:
        """The loss of ``pred`` against ``target``, both ``(N, d)`` Å (flat layout).

        Args:
            batch: ``(N,)`` structure index; ``n_structures``: B (a training step passes it, so that
                nothing is read back to the host).
            numbers, bonds: per-batch data of element- and bond-aware springs and graphs.
            stored: ``(pairs (2, E) flat, k (E,) eV/Å²)`` springs stored with the data
                (``coefficients: hessian``; required there, ignored otherwise).
            springs: the energy's springs resolved beforehand (data pipeline): the kernel alone runs.
            reduction: overrides the configured one (objectives weight per-structure values).
            validate_args: value checks; a training step turns them off (they read back to the host).
        """
        reduction = reduction or self.reduction
        if not self.is_energy:
            return call_loss(self.name, pred, target, batch, reduction=reduction, normalize=self.normalize,
                             n_structures=n_structures, validate_args=validate_args)
        if springs is not None:
            return springs.loss(pred, reduction=reduction, normalize=self.normalize, chunk_size=self.chunk_size,
                                validate_args=validate_args)
        options = {**self.call_kwargs(), "reduction": reduction}
        if self.uses_data_springs:
            if stored is None:
                raise ValueError("coefficients: hessian uses the springs stored with each structure, but this batch "
                                 "has none. Store them with energyloss_plugins.ase.add_springs_to_db "
                                 "(row.data spring_pairs/spring_k).")
            options.update(edge_index=stored[0], coefficients=stored[1])
        return call_loss("energy", pred, target, batch, numbers=numbers, bonds=bonds, n_structures=n_structures,
                         validate_args=validate_args, **options)

    def structure_springs(self, target: Tensor, *, numbers: Tensor | None = None, bonds: Tensor | None = None,
                          stored: tuple[Tensor, Tensor] | None = None, key: int = 0) -> PairSprings:
        """The springs of ONE reference structure (a data pipeline's per-molecule step).

        Args:
            target: ``(n, d)`` reference positions in Å (for diffusion/generation: the clean molecule).
            numbers: ``(n,)`` atomic numbers; ``bonds``: ``(2, M)`` local bonded pairs.
            stored: ``(pairs (2, E) local, k (E,))`` springs stored with the data (``coefficients: hessian``).
            key: identifies the molecule (e.g. its dataset index): a ``rigid_sparse`` graph is the
                pool member ``crc32(key) mod pool_size`` of the seeded pool, the same in every epoch,
                process and batch (the in-step path draws a member at every call instead).

        Returns:
            :class:`~energyloss_plugins.losses.PairSprings` with local pair indices, one structure.
        """
        if not self.is_energy:
            raise ValueError(f"loss {self.name!r} has no springs; only the energy loss does.")
        with torch.no_grad():
            if self.uses_data_springs:
                if stored is None:
                    raise ValueError("coefficients: hessian needs the springs stored with each structure "
                                     "(energyloss_plugins.ase.add_springs_to_db); this structure has none.")
                return resolve_springs(target, edge_index=stored[0], coefficients=stored[1].to(target.dtype),
                                       numbers=numbers, bonds=bonds)
            if self.graph == "complete" and bonds is None and target.shape[0] <= TEMPLATE_MAX_ATOMS:
                return self._complete_springs(target, numbers)
            edge_index = None
            if self.graph == "rigid_sparse":
                seed = int(self.graph_kwargs.get("seed", 0))
                pool = int(self.graph_kwargs.get("pool_size", 8))
                member = zlib.crc32(str(int(key)).encode()) % pool
                edge_index = rigid_sparse_graph(target.shape[0], target.shape[1], seed, member).to(target.device)
                if self.graph_kwargs.get("symmetrize", False):
                    edge_index = symmetrize_pairs(edge_index, target, torch.zeros(target.shape[0], dtype=torch.long,
                                                                                    device=target.device), numbers)
            return resolve_springs(target, edge_index=edge_index, numbers=numbers, bonds=bonds,
                                   **self.energy_kwargs())

    def _complete_springs(self, target: Tensor, numbers: Tensor | None) -> PairSprings:
        """:meth:`structure_springs` of one small molecule's complete graph, the data pipeline's common case.

        The same pairs (the cached per-size template, in the order the flat-batch path yields them),
        springs and checks (finite reference, no coincident atoms, scheme parameters and springs) as
        :func:`resolve_springs` with ``graph="complete"``, without its flat-batch machinery (which
        reads the structure sizes back to plan chunks): about 3x less time per molecule, paid in the
        loader at every epoch.
        """
        _checks.check_finite("target", target)
        pairs = complete_template(target.shape[0], str(target.device)).long()
        springs = resolve_springs(target, edge_index=pairs, numbers=numbers, validate_args=False,
                                  coefficients=_checked_scheme(self.coefficients, self.coefficient_kwargs))
        check_reference_distances(springs.distances, springs.pairs)
        return springs


def _checked_scheme(scheme: str | CoefficientFn, params: Mapping) -> CoefficientFn:
    """:func:`~energyloss_plugins.coefficients.resolve_coefficients` (the checked scheme), built once per named
    scheme and parameters: building it inspects the scheme's signature, a third of a small molecule's springs."""
    if isinstance(scheme, str):
        key = tuple(sorted(params.items()))
        try:
            hash(key)
        except TypeError:  # unhashable parameter values (e.g. a list): built per call below
            pass
        else:
            return _checked_named_scheme(scheme, key)
    return resolve_coefficients(scheme, params)


@functools.lru_cache(maxsize=64)
def _checked_named_scheme(scheme: str, params: tuple) -> CoefficientFn:
    return resolve_coefficients(scheme, dict(params))


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
