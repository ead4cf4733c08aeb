"""A TorchMD-Net potential as an ASE calculator with an autograd Hessian (for spring fitting).

TorchMD-Net 3.1 ships ``torchmdnet.calculators.TMDNETCalculator`` (energy and forces from a checkpoint
path only, float32 positions, a required ``atoms.info["charge"]``, optional ``torch.compile``). Spring
fitting needs more: model objects as well as paths, float64 evaluation, the model's energy unit
converted to eV, molecules without a charge entry, and :meth:`~TorchMDNetCalculator.get_hessian`
(eV/Å²) used by :func:`energyloss_plugins.ase.coefficients_from_calculator`. So
:class:`TorchMDNetCalculator` is its own ASE ``Calculator``; it reads a checkpoint path with upstream's
``torchmdnet.models.model.load_model`` (the loader ``TMDNETCalculator`` uses, with its defaults) under
``weights_only`` loading, and, like upstream, treats a changed ``atoms.info`` (the charge) as a change.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from torch import Tensor
from torchmdnet.models.model import load_model

from energyloss_plugins.checkpoints import load_checkpoint, weights_only_loads


def energy_unit_factor(unit: str | float) -> float:
    """Factor converting the model's energy unit to eV (``eV``, ``meV``, ``kcal/mol``, ``kJ/mol``, ``Hartree``
    or a number)."""
    if isinstance(unit, numbers.Real) and not isinstance(unit, bool):  # numpy scalars too
        if not (math.isfinite(float(unit)) and float(unit) > 0):
            raise ValueError(f"energy_unit must be a positive factor to eV or a unit name, got {unit!r}.")
        return float(unit)
    table = {
        "ev": 1.0,
        "kcal/mol": units.kcal / units.mol,
        "kj/mol": units.kJ / units.mol,
        "hartree": units.Hartree,
        "ha": units.Hartree,
        "mev": 1e-3,
    }
    key = unit.replace(" ", "").lower()
    if key not in table:
        raise ValueError(f"Unknown energy unit {unit!r}. Valid: eV, meV, kcal/mol, kJ/mol, Hartree, or a factor to eV.")
    return table[key]


class TorchMDNetCalculator(Calculator):
    """A TorchMD-Net potential as an ASE calculator (energy, forces; Hessian by double backward).

    Args:
        model: a ``torchmdnet.models.model.TorchMD_Net`` module or a checkpoint path (read by upstream's
            ``load_model(path, derivative=False, remove_ref_energy=True, max_num_neighbors=64,
            static_shapes=False, ...)``,
            as ``TMDNETCalculator`` reads it, with ``weights_only=True``; its parameters are frozen).
            The model maps ``(z, pos, batch, q=...)`` to ``(energy (1, 1), forces or None)``.
        energy_unit: the model's energy unit (``eV``, ``kcal/mol``, ``kJ/mol``, ``Hartree`` or a
            factor to eV); positions are assumed in Å.
        dtype, device: evaluation precision and device.
        trusted: allow a full unpickle of a checkpoint path (it can run code from the file: only for
            files you made or trust).
        **kwargs: passed to ``load_model`` (paths only), e.g. ``remove_ref_energy``, ``max_num_neighbors``.

    Implemented properties: ``energy``, ``free_energy`` (eV), ``forces`` (eV/Å); ``get_hessian(atoms)``
    returns the autograd Hessian in eV/Å². The total charge is ``atoms.info["charge"]`` when present (passed as ``q``).
    Periodic boxes are not supported (TorchMD-Net needs a reduced box); use molecules.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    name = "torchmdnet"

    def __init__(self, model, energy_unit: str | float = "eV", dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu", *, trusted: bool = False, **kwargs):
        super().__init__()
        if isinstance(model, (str, os.PathLike)):
            model = self._load(os.fspath(model), device, trusted, **kwargs)
        elif not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a TorchMD-Net module or checkpoint path, got {type(model).__name__}.")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.dtype, self.device = dtype, torch.device(device)
        self.energy_factor = energy_unit_factor(energy_unit)
        self.parameters.update(energy_unit=str(energy_unit))

    @staticmethod
    def _load(path: str, device: str | torch.device, trusted: bool, *, remove_ref_energy: bool = True,
              max_num_neighbors: int = 64, static_shapes: bool = False, **kwargs) -> torch.nn.Module:
        """Upstream's loader with ``TMDNETCalculator``'s defaults; a refused or corrupt file is named as such."""
        load_checkpoint(path, trusted=trusted)
        with weights_only_loads(not trusted):  # load_model asks torch.load for a full unpickle
            model = load_model(path, device=device, derivative=False, remove_ref_energy=remove_ref_energy,
                               max_num_neighbors=max_num_neighbors, static_shapes=static_shapes, **kwargs)
        for parameter in model.parameters():  # a calculator differentiates positions only
            parameter.requires_grad_(False)
        return model

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes plus ``"info"`` when ``atoms.info`` (the total charge) differs from the last call's."""
        state = super().check_state(atoms, tol=tol)
        if not state and self.atoms is not None and self.atoms.info != atoms.info:
            state.append("info")
        return state

    def _inputs(self, atoms: Atoms) -> tuple[Tensor, Tensor, Tensor | None]:
        if any(atoms.pbc):
            raise ValueError("TorchMDNetCalculator supports non-periodic molecules only.")
        z = torch.tensor(atoms.numbers, dtype=torch.long, device=self.device)
        pos = torch.tensor(atoms.positions, dtype=self.dtype, device=self.device, requires_grad=True)
        q = None  # models trained without charges take none
        if "charge" in atoms.info:
            q = torch.tensor([float(atoms.info["charge"])], dtype=self.dtype, device=self.device)
        return z, pos, q

    def _energy(self, z: Tensor, pos: Tensor, q: Tensor | None) -> tuple[Tensor, Tensor | None]:
        out = self.model(z, pos, torch.zeros_like(z), q=q)
        energy, neg_dy = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
        return energy.sum(), neg_dy

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        z, pos, q = self._inputs(self.atoms)
        with torch.enable_grad():
            energy, neg_dy = self._energy(z, pos, q)
            if neg_dy is None or neg_dy.numel() == 0:  # derivative=False: TorchMD-Net returns no forces
                (grad,) = torch.autograd.grad(energy, pos)
                neg_dy = -grad
        e = float(energy.detach()) * self.energy_factor
        self.results["energy"] = e
        self.results["free_energy"] = e
        self.results["forces"] = neg_dy.detach().cpu().double().numpy().reshape(-1, 3) * self.energy_factor

    def get_hessian(self, atoms: Atoms | None = None) -> np.ndarray:
        """Autograd Hessian ``(3n, 3n)`` in eV/Å² at ``atoms`` (default: the calculator's atoms)."""
        atoms = atoms if atoms is not None else self.atoms
        if atoms is None:
            raise ValueError("No atoms: pass atoms= or evaluate the calculator first.")
        z, pos, q = self._inputs(atoms)

        def energy_of(p: Tensor) -> Tensor:
            return self._energy(z, p, q)[0]

        # TorchMD-Net computes forces inside forward with autograd.grad (freeing the graph in eval
        # mode); switch that off so the energy alone is differentiated twice here.
        had = getattr(self.model, "derivative", None)
        try:
            if had is not None:
                self.model.derivative = False
            with torch.enable_grad():
                h = torch.autograd.functional.hessian(energy_of, pos)
        finally:
            if had is not None:
                self.model.derivative = had
        return h.detach().cpu().double().numpy().reshape(3 * len(atoms), 3 * len(atoms)) * self.energy_factor
