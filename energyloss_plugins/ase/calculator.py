"""EnergyLossCalculator: the pair energy loss E(atoms, reference) as a standard ASE calculator.

The energy is the core's :func:`energyloss_plugins.pair_energy_loss` with ``normalize=False,
reduction="sum"`` (one source of truth), in eV with springs in eV/Å²; forces are minus its
analytic gradient. Because it is an ordinary ``ase.calculators.calculator.Calculator`` (result
caching and ``check_state`` from the base class), ASE optimisers, MD, ``ase.io`` and ``ase.gui``
work on it unchanged, and it combines with other calculators through ``SumCalculator`` /
``LinearCombinationCalculator`` (e.g. as a restraint towards a reference structure).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.ase._utils import (
    as_edge_index,
    bonds_from_atoms,
    is_periodic,
    pairs_for_atoms,
    reference_tensors,
)
from energyloss_plugins.coefficients import PairContext, resolve_coefficients
from energyloss_plugins.losses import pair_energy_loss


class EnergyLossCalculator(Calculator):
    """Harmonic pair-spring surrogate around a reference structure, E(ŷ) = Σ_G ½ k_ij (|y_i−y_j| − |ŷ_i−ŷ_j|)².

    Args:
        reference: the reference structure y (its positions, numbers, and cell/pbc if periodic).
            The minimum of the energy is E = 0 on every rigid motion of ``reference``.
        coefficients: springs k in eV/Å²: a core scheme name (``exp``, ``constant``, ``inverse``,
            ``inverse_square``, ``bond_aware``, ``morse``, ``lennard_jones``), a callable
            ``fn(PairContext, **kw) -> (E,)``, or per-pair springs ``(E,)`` (tensor or array) together
            with ``edge_index`` (e.g. fitted by :func:`coefficients_from_calculator`).
        coefficient_kwargs: parameters of the scheme, e.g. ``{"k0": 10.0, "length_scale": 1.0}``.
        graph: edge set G (``complete``, ``radius``, ``bonds``, ``rigid_sparse``), built once on the
            reference (``rigid_sparse`` with ``seed``, so the energy is deterministic).
        graph_kwargs: e.g. ``{"cutoff": 4.0}`` for ``radius``.
        edge_index: explicit ``(2, E)`` or ``(E, 2)`` pairs (overrides ``graph``).
        bonds: ``(2, M)`` bonds for ``bond_aware`` / ``graph="bonds"``; default: ASE covalent-radius
            neighbour analysis of the reference when needed.
        seed: seed of the ``rigid_sparse`` graph.
        max_materialized_pairs: complete graphs up to this many pairs get their pair list and
            springs computed once at construction (fast MD); larger ones stay lazy and chunked.
        **kwargs: passed to ``ase.calculators.calculator.Calculator`` (label, directory).

    Periodic references use minimum-image pairs of the reference (core convention); the cell of
    the evaluated atoms must equal the reference cell.

    Implemented properties: ``energy`` and ``free_energy`` (eV), ``forces`` (eV/Å). The exact
    Hessian is available through :meth:`get_hessian`.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    name = "energyloss"

    def __init__(
        self,
        reference: Atoms,
        coefficients: str | Callable | Tensor | np.ndarray = "exp",
        *,
        coefficient_kwargs: Mapping | None = None,
        graph: str = "complete",
        graph_kwargs: Mapping | None = None,
        edge_index=None,
        bonds=None,
        seed: int = 0,
        max_materialized_pairs: int = 2_000_000,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(reference, Atoms):
            raise ValueError(f"reference must be an ase.Atoms, got {type(reference).__name__}.")
        if len(reference) < 2:
            raise ValueError("The reference needs at least two atoms to define a pair energy.")
        self.reference = reference.copy()
        self.reference.calc = None
        ref = reference_tensors(self.reference)
        self._target = ref["positions"]
        self._numbers = ref["numbers"]
        self._cell, self._pbc = ref["cell"], ref["pbc"]
        n = len(self.reference)

        per_pair = isinstance(coefficients, (Tensor, np.ndarray, list, tuple))
        if per_pair:
            if edge_index is None:
                raise ValueError("Per-pair coefficients need the matching edge_index= (2, E) pair list.")
            coefficients = torch.as_tensor(
                np.asarray(coefficients.detach().cpu() if isinstance(coefficients, Tensor) else coefficients),
                dtype=torch.float64,
            ).reshape(-1)
        name = coefficients if isinstance(coefficients, str) else None
        needs_bonds = name == "bond_aware" or (edge_index is None and graph == "bonds")
        if bonds is None and needs_bonds:
            bonds = bonds_from_atoms(self.reference)
        self._bonds = as_edge_index(bonds, n, "bonds") if bonds is not None else None

        if edge_index is not None:
            self._edge_index = as_edge_index(edge_index, n)
            graph = "explicit"
        elif graph == "complete":
            self._edge_index = None  # generated lazily in chunks by the core
        else:
            self._edge_index = pairs_for_atoms(self.reference, graph, graph_kwargs, self._bonds, seed)
        if per_pair and coefficients.shape[0] != self._edge_index.shape[1]:
            raise ValueError(f"{coefficients.shape[0]} per-pair coefficients for {self._edge_index.shape[1]} pairs.")
        if per_pair:  # refused here, so get_hessian() and springs() never see springs the energy would refuse
            _checks.check_finite("coefficients", coefficients)
            if coefficients.numel() and bool((coefficients < 0).any()):
                raise ValueError(f"coefficients: per-pair springs must be >= 0 (eV/Å²), got a minimum of "
                                 f"{float(coefficients.min()):.3g}.")
        self.coefficients = coefficients
        self.coefficient_kwargs = dict(coefficient_kwargs or {})
        self.graph = graph
        self.fit_report = None  # set by from_calculator
        self.parameters.update(
            coefficients=name or ("per_pair" if per_pair else "custom"),
            graph=graph,
            coefficient_kwargs=self.coefficient_kwargs,
            graph_kwargs=dict(graph_kwargs or {}),
            seed=seed,
        )
        # Springs depend on the reference only: evaluate the scheme once (this also fails now, not in
        # the first MD step, if it cannot be evaluated) and pass per-pair k to the core at every call.
        # Huge complete graphs stay lazy (chunked by the core, scheme evaluated per call).
        self._k: Tensor | None = None
        if self._edge_index is not None or n * (n - 1) // 2 <= max_materialized_pairs:
            self._edge_index, self._k = self.springs()
        else:
            self._loss(self._target.clone())

    def set(self, **kwargs) -> dict:
        """ASE's ``set``, limited to what this calculator can honour.

        The springs and the pair list are fixed at construction (they define the surrogate), so
        ``set`` refuses any change of them instead of recording a value that would not be used.
        Build a new ``EnergyLossCalculator`` for other settings. Setting a value equal to the
        current one is accepted (ASE's restart/``todict`` round trips do this).
        """
        fixed = set(self.parameters) | {"reference", "edge_index", "bonds", "max_materialized_pairs"}
        changed = sorted(k for k in kwargs if k in fixed and not _same(kwargs[k], self.parameters.get(k, _MISSING)))
        unknown = sorted(k for k in kwargs if k not in fixed)
        if unknown:
            raise ValueError(
                f"EnergyLossCalculator has no parameter {', '.join(unknown)}. Its parameters: "
                f"{', '.join(sorted(fixed))} (label and directory go to ase's Calculator)."
            )
        if changed:
            raise ValueError(
                f"EnergyLossCalculator cannot change {', '.join(changed)} after construction (springs and "
                f"pairs are computed from the reference once); build a new EnergyLossCalculator(reference, ...) "
                f"instead. Current parameters: {dict(self.parameters)}."
            )
        return {}

    # ------------------------------------------------------------------ construction helpers

    @classmethod
    def from_calculator(
        cls,
        reference: Atoms,
        calc: Calculator | None = None,
        *,
        graph: str = "complete",
        graph_kwargs: Mapping | None = None,
        **fit_kwargs,
    ) -> EnergyLossCalculator:
        """Surrogate whose springs are fitted to ``calc``'s Hessian at ``reference`` (see
        :func:`coefficients_from_calculator`); the fit report is kept in ``.fit_report``."""
        from energyloss_plugins.ase.springs import coefficients_from_calculator

        pairs, k, report = coefficients_from_calculator(
            reference, calc, graph=graph, graph_kwargs=graph_kwargs, **fit_kwargs
        )
        out = cls(reference, k, edge_index=pairs)
        out.fit_report = report
        return out

    @classmethod
    def from_row(cls, row, **kwargs) -> EnergyLossCalculator:
        """Surrogate around an ASE db row, with the springs stored in its data (:func:`store_springs`)."""
        from energyloss_plugins.ase.springs import springs_from_data

        pairs, k = springs_from_data(row.data)
        return cls(row.toatoms(), k, edge_index=pairs, **kwargs)

    # ------------------------------------------------------------------ evaluation

    def _loss(self, positions: Tensor) -> Tensor:
        if self._k is not None:
            coefficients, kwargs = self._k, None
        else:
            coefficients, kwargs = self.coefficients, self.coefficient_kwargs
        return pair_energy_loss(
            positions,
            self._target,
            coefficients=coefficients,
            coefficient_kwargs=kwargs,
            graph="complete",
            edge_index=self._edge_index,
            numbers=self._numbers,
            bonds=self._bonds,
            cell=self._cell,
            pbc=self._pbc,
            reduction="sum",
            normalize=False,
        )

    def _check_atoms(self, atoms: Atoms) -> None:
        _checks.check_finite("atoms.positions", torch.as_tensor(np.asarray(atoms.positions, dtype=float)))
        if len(atoms) != len(self.reference):
            raise ValueError(f"EnergyLossCalculator was built for {len(self.reference)} atoms, got {len(atoms)}.")
        if not np.array_equal(atoms.numbers, self.reference.numbers):
            raise ValueError("The atoms' elements (atomic numbers, in order) differ from the reference's.")
        if is_periodic(self.reference) or is_periodic(atoms):
            if not np.array_equal(atoms.pbc, self.reference.pbc):
                raise ValueError(
                    f"pbc {atoms.pbc.tolist()} differs from the reference's {self.reference.pbc.tolist()}."
                )
            if not np.allclose(atoms.cell[:], self.reference.cell[:], atol=1e-8):
                raise ValueError("The cell differs from the reference cell; EnergyLossCalculator needs a fixed cell.")

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self._check_atoms(self.atoms)
        pos = torch.tensor(np.asarray(self.atoms.positions), dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            energy = self._loss(pos)
            (grad,) = torch.autograd.grad(energy, pos)
        e = float(energy.detach())
        self.results["energy"] = e
        self.results["free_energy"] = e
        self.results["forces"] = -grad.numpy().copy()

    # ------------------------------------------------------------------ springs and Hessian

    def springs(self) -> tuple[Tensor, Tensor]:
        """The pair list ``(2, E)`` and springs ``(E,)`` in eV/Å² this calculator uses (complete graph materialised)."""
        if getattr(self, "_k", None) is not None:
            return self._edge_index, self._k
        pairs = self._edge_index if self._edge_index is not None else pairs_for_atoms(self.reference, "complete")
        if isinstance(self.coefficients, Tensor):
            return pairs, self.coefficients
        vec = self._target[pairs[1]] - self._target[pairs[0]]
        if self._cell is not None:
            from energyloss_plugins.periodic import MinimumImage

            mic = MinimumImage(
                self._target, torch.zeros(len(self.reference), dtype=torch.long), 1, self._cell, self._pbc
            )
            vec = vec + mic.shifts(pairs)
        bonded = None
        if self._bonds is not None:
            n = len(self.reference)
            keys = torch.unique(
                torch.minimum(self._bonds[0], self._bonds[1]) * n + torch.maximum(self._bonds[0], self._bonds[1])
            )
            bonded = torch.isin(torch.minimum(pairs[0], pairs[1]) * n + torch.maximum(pairs[0], pairs[1]), keys)
        ctx = PairContext(vec.norm(dim=-1), self._numbers[pairs[0]], self._numbers[pairs[1]], bonded)
        return pairs, resolve_coefficients(self.coefficients, self.coefficient_kwargs)(ctx)

    def get_hessian(self, atoms: Atoms | None = None) -> np.ndarray:
        """Exact Hessian ``(3n, 3n)`` in eV/Å² at ``atoms`` (default: the reference, where it is Σ k b bᵀ)."""
        from energyloss_plugins.ase.springs import spring_hessian

        positions = None
        if atoms is not None:
            self._check_atoms(atoms)
            positions = atoms.positions
        pairs, k = self.springs()
        return spring_hessian(self.reference, pairs, k, positions=positions)


_MISSING = object()


def _same(a: object, b: object) -> bool:
    """Plain-value equality for ``set`` (tensors and arrays are never "the same": they are refused)."""
    if isinstance(a, (Tensor, np.ndarray)) or isinstance(b, (Tensor, np.ndarray)):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False
