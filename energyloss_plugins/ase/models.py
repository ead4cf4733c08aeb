"""Run trained models from ASE scripts: Atoms in, Atoms out.

- :func:`run_structure_model`, :func:`run_diffusion_model`: a trained SchNetPack (``schnetpack_ext``)
  or TorchMD-Net (``torchmdnet_ext``) structure / diffusion model — object or checkpoint path —
  applied to ASE structures, results written with ``ase.io``. They delegate to the adapters' own
  inference code (``schnetpack_ext.predict``, ``StructureTask``/``DiffusionTask``, ``torchmdnet_ext.inference``).
- :class:`TorchMDNetCalculator`: a TorchMD-Net potential (model object or checkpoint) as an ASE
  calculator (TorchMD-Net ships none), so its Hessian can be fitted with
  :func:`coefficients_from_calculator` like any other calculator. SchNetPack models already have
  one: ``schnetpack.interfaces.SpkCalculator``.
- :func:`predict_structures`: a structure model ``positions, numbers -> positions`` applied to Atoms.
- :func:`sample_structures`: a diffusion / flow-matching denoiser sampled with the core's samplers.

Both take plain callables, so they work with any framework: wrap a SchNetPack or TorchMD-Net
module (e.g. from the ``schnetpack_ext`` / ``torchmdnet_ext`` adapters) in a small function that
maps flat tensors (positions ``(N, 3)`` Å, numbers ``(N,)``, batch ``(N,)``) to its own input format.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from torch import Tensor

from energyloss_plugins._optional import require

#: Structure model: ``fn(positions (N, 3) Å, numbers (N,) long) -> positions (N, 3)`` for one structure,
#: or with ``batched=True`` ``fn(positions, numbers, batch (N,) long) -> positions`` for a flat batch.
StructureModel = Callable[..., Tensor]
#: Denoiser: ``fn(x_t (N, 3), t (B,), batch (N,), numbers (N,)) -> output (N, 3)`` in the model's parameterization.
NumbersDenoiser = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def _energy_unit(unit: str | float) -> float:
    """Factor converting the model's energy unit to eV (``eV``, ``kcal/mol``, ``kJ/mol``, ``Hartree`` or a number)."""
    if isinstance(unit, (int, float)):
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


def atoms_to_batch(
    images: Atoms | Sequence[Atoms], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Flat batch of structures: ``positions`` ``(N, 3)`` Å, ``numbers`` ``(N,)``, ``batch`` ``(N,)``, ``n_atoms`` ``(B,)``."""
    images = [images] if isinstance(images, Atoms) else list(images)
    if not images:
        raise ValueError("No structures given.")
    pos = torch.tensor(np.concatenate([a.positions for a in images]), dtype=dtype, device=device)
    numbers = torch.tensor(np.concatenate([a.numbers for a in images]), dtype=torch.long, device=device)
    counts = torch.tensor([len(a) for a in images], dtype=torch.long, device=device)
    batch = torch.repeat_interleave(torch.arange(len(images), device=device), counts)
    return {"positions": pos, "numbers": numbers, "batch": batch, "n_atoms": counts}


def batch_to_atoms(
    positions: Tensor, numbers: Tensor, batch: Tensor, templates: Sequence[Atoms] | None = None
) -> list[Atoms]:
    """Split flat tensors back into Atoms (cell, pbc and info copied from ``templates`` when given)."""
    positions = positions.detach().cpu().double().numpy()
    numbers = numbers.detach().cpu().numpy()
    batch = batch.detach().cpu().numpy()
    n_struct = int(batch.max()) + 1 if batch.size else 0
    out = []
    for b in range(n_struct):
        sel = batch == b
        if templates is not None:
            atoms = templates[b].copy()
            atoms.calc = None
            if not np.array_equal(atoms.numbers, numbers[sel]):
                raise ValueError(f"Structure {b}: the model changed the atom types or count.")
            atoms.positions = positions[sel]
        else:
            atoms = Atoms(numbers=numbers[sel], positions=positions[sel])
        out.append(atoms)
    return out


def _align_onto(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    from energyloss_plugins.alignment import kabsch_align

    return kabsch_align(torch.tensor(pred, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)).numpy()


@torch.no_grad()
def predict_structures(
    model: StructureModel,
    images: Atoms | Sequence[Atoms],
    *,
    batched: bool = False,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    align_to_input: bool = True,
    output: str | None = None,
    **write_kwargs,
) -> list[Atoms]:
    """Apply a structure model (input geometry → predicted equilibrium geometry) to ASE structures.

    Args:
        model: ``fn(positions (N, 3) Å, numbers (N,)) -> positions (N, 3)`` per structure, or with
            ``batched=True`` ``fn(positions, numbers, batch) -> positions`` on flat batches of
            ``batch_size`` structures. An ``nn.Module`` is put in eval mode.
        images: one Atoms or a sequence.
        align_to_input: Kabsch-align each prediction onto its input (models trained with the
            rotation-invariant energy loss predict in an arbitrary frame); periodic structures are not aligned.
        output: if given, write the predictions with ``ase.io.write(output, ..., **write_kwargs)``.

    Returns:
        Predicted structures (cell, pbc, info of the inputs), ``info["prediction_of"]`` = input index.
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    images = [images] if isinstance(images, Atoms) else list(images)
    out: list[Atoms] = []
    step = batch_size if batched else 1
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        flat = atoms_to_batch(chunk, dtype=dtype, device=device)
        if batched:
            pred = model(flat["positions"], flat["numbers"], flat["batch"])
        else:
            pred = model(flat["positions"], flat["numbers"])
        pred = torch.as_tensor(pred)
        if pred.shape != flat["positions"].shape:
            raise ValueError(
                f"The model returned shape {tuple(pred.shape)}; expected positions {tuple(flat['positions'].shape)}."
            )
        if not bool(torch.isfinite(pred).all()):
            raise ValueError("The model returned NaN or Inf positions.")
        for offset, atoms in enumerate(batch_to_atoms(pred, flat["numbers"], flat["batch"], chunk)):
            if align_to_input and not any(atoms.pbc):
                atoms.positions = _align_onto(atoms.positions, chunk[offset].positions)
            atoms.info["prediction_of"] = start + offset
            out.append(atoms)
    if output is not None:
        from ase.io import write

        write(output, out, **write_kwargs)
    return out


@torch.no_grad()
def sample_structures(
    denoiser: NumbersDenoiser,
    templates: Sequence[Atoms] | Sequence[Sequence[int]],
    *,
    parameterization: str = "eps",
    schedule: str = "polynomial",
    steps: int = 100,
    method: str | None = None,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    output: str | None = None,
    **write_kwargs,
) -> list[Atoms]:
    """Generate structures with a diffusion or flow-matching model through the core sampler.

    Args:
        denoiser: ``fn(x_t (N, 3), t (B,), batch (N,), numbers (N,)) -> output (N, 3)`` in ``parameterization``.
        templates: Atoms (only their elements are used) or lists of atomic numbers, one per structure to generate.
        parameterization: ``eps``, ``v``, ``x0`` or ``velocity`` (flow matching); ``schedule``: ``polynomial``
            or ``cosine`` — the settings the model was trained with (see ``energyloss_plugins.tasks.DiffusionObjective``).
        steps, method: sampler steps and ``ancestral`` / ``ddim`` / ``euler`` (default: euler for flow
            matching, else ancestral).
        seed: seeds the sampler noise (None: torch's global RNG).
        output: if given, written with ``ase.io.write``.

    Returns:
        Generated Atoms (centred at the origin, positions in Å).
    """
    from energyloss_plugins.tasks import DiffusionObjective

    if isinstance(denoiser, torch.nn.Module):
        denoiser.eval()
    numbers_list = [np.asarray(t.numbers if isinstance(t, Atoms) else t, dtype=np.int64) for t in templates]
    if not numbers_list:
        raise ValueError("No templates given.")
    numbers = torch.tensor(np.concatenate(numbers_list), dtype=torch.long, device=device)
    counts = torch.tensor([len(x) for x in numbers_list], device=device)
    batch = torch.repeat_interleave(torch.arange(len(numbers_list), device=device), counts)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    objective = DiffusionObjective(parameterization=parameterization, schedule=schedule)
    wrapped = lambda x_t, t, b: denoiser(x_t.to(dtype), t.to(dtype), b, numbers)  # noqa: E731
    pos = objective.sample(wrapped, batch, steps=steps, method=method, generator=generator)
    out = batch_to_atoms(pos, numbers, batch)
    if output is not None:
        from ase.io import write

        write(output, out, **write_kwargs)
    return out


class TorchMDNetCalculator(Calculator):
    """A TorchMD-Net potential as an ASE calculator (energy, forces; Hessian by double backward).

    Args:
        model: a ``torchmdnet.models.model.TorchMD_Net`` module or a checkpoint path (loaded with
            ``torchmdnet.models.model.load_model(path, derivative=True)``). The model maps
            ``(z, pos, batch)`` to ``(energy (1, 1), forces or None)``.
        energy_unit: the model's energy unit (``eV``, ``kcal/mol``, ``kJ/mol``, ``Hartree`` or a
            factor to eV); positions are assumed in Å.
        dtype, device: evaluation precision and device.

    Implemented properties: ``energy``, ``free_energy`` (eV), ``forces`` (eV/Å); ``get_hessian(atoms)``
    returns the autograd Hessian in eV/Å² (used by :func:`coefficients_from_calculator`).
    Periodic boxes are not supported (TorchMD-Net needs a reduced box); use molecules.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    name = "torchmdnet"

    def __init__(
        self,
        model,
        energy_unit: str | float = "eV",
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(model, str):
            load_model = require("torchmdnet.models.model", "TorchMDNetCalculator from a checkpoint", "torchmdnet").load_model
            model = load_model(model, device=device, derivative=True)
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a TorchMD-Net module or checkpoint path, got {type(model).__name__}.")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.dtype, self.device = dtype, torch.device(device)
        self.energy_factor = _energy_unit(energy_unit)
        self.parameters.update(energy_unit=str(energy_unit))

    def _energy(self, z: Tensor, pos: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.model(z, pos, torch.zeros_like(z))
        energy, neg_dy = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
        return energy.sum(), neg_dy

    def _inputs(self, atoms: Atoms) -> tuple[Tensor, Tensor]:
        if any(atoms.pbc):
            raise ValueError("TorchMDNetCalculator supports non-periodic molecules only.")
        z = torch.tensor(atoms.numbers, dtype=torch.long, device=self.device)
        pos = torch.tensor(atoms.positions, dtype=self.dtype, device=self.device, requires_grad=True)
        return z, pos

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        z, pos = self._inputs(self.atoms)
        with torch.enable_grad():
            energy, neg_dy = self._energy(z, pos)
            if neg_dy is None:
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
        z, pos = self._inputs(atoms)

        def energy_of(p: Tensor) -> Tensor:
            return self._energy(z, p)[0]

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


# ----------------------------------------------------------------------------- adapter models

FRAMEWORKS = ("schnetpack", "torchmdnet")


def _framework(model, framework: str | None) -> str:
    if framework is not None:
        if framework not in FRAMEWORKS:
            raise ValueError(f"Unknown framework {framework!r}. Valid: {', '.join(FRAMEWORKS)}.")
        return framework
    if isinstance(model, (str, os.PathLike)):
        raise ValueError("A checkpoint path needs framework='schnetpack' or framework='torchmdnet'.")
    module = type(model).__module__
    if module.startswith(("schnetpack", "schnetpack_ext")):
        return "schnetpack"
    if module.startswith(("torchmdnet", "torchmdnet_ext")):
        return "torchmdnet"
    raise ValueError(
        f"Cannot tell the framework of a {type(model).__name__}; pass framework='schnetpack' or "
        "'torchmdnet', or use predict_structures / sample_structures with a plain callable."
    )


def _finish(
    predictions: list[Atoms],
    inputs: Sequence[Atoms] | None,
    align_to_input: bool,
    output: str | None,
    write_kwargs: dict,
) -> list[Atoms]:
    for index, atoms in enumerate(predictions):
        atoms.calc = None
        if inputs is not None:
            if align_to_input and not any(atoms.pbc):
                atoms.positions = _align_onto(atoms.positions, inputs[index].positions)
            atoms.info["prediction_of"] = index
    if output is not None:
        from ase.io import write

        write(output, predictions, **write_kwargs)
    return predictions


def load_torchmdnet_position_model(path: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A TorchMD-Net position model (``PositionOutput``/``NoiseOutput`` head) from a ``torchmdnet_ext`` checkpoint."""
    import torchmdnet_ext  # noqa: F401  (registers the position heads with TorchMD-Net)

    load_model = require("torchmdnet.models.model", "load_torchmdnet_position_model", "torchmdnet").load_model
    from torchmdnet_ext.module import prepare_hparams

    hparams = prepare_hparams(torch.load(path, map_location="cpu", weights_only=False)["hyper_parameters"])
    return load_model(path, args=hparams, device=device)


@torch.no_grad()
def run_structure_model(
    model,
    images: Atoms | Sequence[Atoms],
    *,
    framework: str | None = None,
    align_to_input: bool = True,
    output: str | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    **write_kwargs,
) -> list[Atoms]:
    """Predicted equilibrium structures of a trained SchNetPack or TorchMD-Net structure model.

    Args:
        model: SchNetPack: a ``schnetpack_ext.StructureTask``, its model, or a path to ``best_model`` /
            a ``.ckpt``; TorchMD-Net: a ``PositionOutput`` model or a ``torchmdnet_ext`` checkpoint path.
        images: input geometries.
        framework: ``schnetpack`` or ``torchmdnet``; detected for model objects, required for paths.
        align_to_input: Kabsch-align each prediction onto its input.
        output: write the predictions with ``ase.io.write(output, ...)``.

    Returns:
        One Atoms per input (cell, pbc, info of the input), ``info["prediction_of"]`` its index.
    """
    images = [images] if isinstance(images, Atoms) else list(images)
    fw = _framework(model, framework)
    if fw == "schnetpack":
        from schnetpack_ext.predict import predict_structures as spk_predict

        model = str(model) if isinstance(model, os.PathLike) else model
        return _finish(
            spk_predict(model, images, batch_size=batch_size, device=device),
            images,
            align_to_input,
            output,
            write_kwargs,
        )
    from torchmdnet_ext.inference import predict_positions

    if isinstance(model, (str, os.PathLike)):
        model = load_torchmdnet_position_model(str(model), device)
    model.eval()
    dtype = next(model.parameters()).dtype

    def fn(positions: Tensor, numbers: Tensor, batch: Tensor) -> Tensor:
        return predict_positions(model, numbers, positions, batch)

    return predict_structures(
        fn,
        images,
        batched=True,
        batch_size=batch_size,
        dtype=dtype,
        device=device,
        align_to_input=align_to_input,
        output=output,
        **write_kwargs,
    )


@torch.no_grad()
def run_diffusion_model(
    model,
    templates: Sequence[Atoms] | Sequence[Sequence[int]],
    *,
    framework: str | None = None,
    checkpoint: str | None = None,
    objective=None,
    steps: int = 100,
    method: str | None = None,
    seed: int | None = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    output: str | None = None,
    **write_kwargs,
) -> list[Atoms]:
    """Structures generated by a trained SchNetPack or TorchMD-Net diffusion / flow-matching model.

    Args:
        model: SchNetPack: a ``schnetpack_ext.DiffusionTask`` or a path to its ``.ckpt``;
            TorchMD-Net: a ``NoiseOutput`` model or a ``torchmdnet_ext`` checkpoint path.
        templates: Atoms (their elements) or atomic-number lists, one per structure to generate.
        framework: ``schnetpack`` or ``torchmdnet``; detected for model objects, required for paths.
        checkpoint, objective: TorchMD-Net only: where the parameterisation and noise schedule come
            from (the checkpoint path, or a ``DiffusionObjective``); a path ``model`` is its own checkpoint.
        steps, method, seed: sampler settings (``ancestral``/``ddim``/``euler``; seeded noise).
        output: write the structures with ``ase.io.write(output, ...)``.

    Returns:
        Generated Atoms (positions in Å, zero centre of mass).
    """
    fw = _framework(model, framework)
    templates = list(templates)
    if fw == "schnetpack":
        if isinstance(model, (str, os.PathLike)):
            from schnetpack_ext.tasks import DiffusionTask

            model = DiffusionTask.load_from_checkpoint(str(model), map_location=device)
        if not callable(getattr(model, "sample", None)):
            raise ValueError(
                "A SchNetPack diffusion model must be a schnetpack_ext.DiffusionTask (it owns the sampler)."
            )
        out = model.sample(templates, steps=steps, method=method, batch_size=batch_size, seed=seed)
        return _finish(out, None, False, output, write_kwargs)
    from torchmdnet_ext.inference import sample_positions

    if isinstance(model, (str, os.PathLike)):
        checkpoint = checkpoint or str(model)
        model = load_torchmdnet_position_model(str(model), device)
    if objective is None and checkpoint is None:
        raise ValueError(
            "A TorchMD-Net diffusion model needs checkpoint= or objective= (parameterisation and schedule)."
        )
    numbers_list = [np.asarray(t.numbers if isinstance(t, Atoms) else t, dtype=np.int64) for t in templates]
    numbers = torch.tensor(np.concatenate(numbers_list), dtype=torch.long, device=device)
    counts = torch.tensor([len(x) for x in numbers_list], device=device)
    batch = torch.repeat_interleave(torch.arange(len(numbers_list), device=device), counts)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    pos = sample_positions(
        model,
        numbers,
        batch,
        objective=objective,
        checkpoint=checkpoint,
        steps=steps,
        method=method,
        generator=generator,
    )
    return _finish(batch_to_atoms(pos, numbers, batch), None, False, output, write_kwargs)
