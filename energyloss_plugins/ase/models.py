"""Run models from ASE scripts: Atoms in, Atoms out.

- :func:`predict_structures` (alias :func:`run_structure_model`): a structure model — any callable
  ``positions, numbers -> positions``, or a trained adapter model or checkpoint (SchNetPack,
  TorchMD-Net; found through :mod:`energyloss_plugins.adapters`) — applied to ASE structures.
- :func:`sample_structures`: a diffusion / flow-matching denoiser callable sampled with the core's samplers.
- :func:`run_diffusion_model`: a trained adapter diffusion model or checkpoint sampled for given molecules.

Callables map flat tensors (positions ``(N, 3)`` Å, numbers ``(N,)``, batch ``(N,)``), so any
framework works without an adapter.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from ase import Atoms
from torch import Tensor
from tqdm.auto import tqdm

from energyloss_plugins.adapters import resolve
from energyloss_plugins.alignment import kabsch_align
from energyloss_plugins.io import check_output_path, structure_format, write_structures
from energyloss_plugins.layouts import flat_numbers

#: Structure model: ``fn(positions (N, 3) Å, numbers (N,) long) -> positions (N, 3)`` for one structure,
#: or with ``batched=True`` ``fn(positions, numbers, batch (N,) long) -> positions`` for a flat batch.
StructureModel = Callable[..., Tensor]
#: Denoiser: ``fn(x_t (N, 3), t (B,), batch (N,), numbers (N,)) -> output (N, 3)`` in the model's parameterization.
NumbersDenoiser = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def atoms_to_batch(
    images: Atoms | Sequence[Atoms], dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> dict[str, Tensor]:
    """Flat batch of structures: ``positions`` ``(N, 3)`` Å, ``numbers`` ``(N,)``, ``batch`` ``(N,)``,
    ``n_atoms`` ``(B,)``."""
    images = [images] if isinstance(images, Atoms) else list(images)
    if not images:
        raise ValueError("No structures given.")
    numbers, batch, counts = flat_numbers([a.numbers for a in images], device)
    pos = torch.tensor(np.concatenate([a.positions for a in images]), dtype=dtype, device=device)
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


def _is_plain_function(model) -> bool:
    return isinstance(model, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, partial))


def _callable_predictions(model: StructureModel, images: list[Atoms], batched: bool, batch_size: int,
                          dtype: torch.dtype, device, progress: bool) -> list[np.ndarray]:
    if isinstance(model, torch.nn.Module):
        model.eval()
    step = batch_size if batched else 1
    out: list[np.ndarray] = []
    for start in tqdm(range(0, len(images), step), desc="predicting", unit="batch", disable=not progress):
        flat = atoms_to_batch(images[start : start + step], dtype=dtype, device=device)
        args = (flat["positions"], flat["numbers"], flat["batch"]) if batched else (flat["positions"], flat["numbers"])
        pred = torch.as_tensor(model(*args))
        if pred.shape != flat["positions"].shape:
            raise ValueError(
                f"The model returned shape {tuple(pred.shape)}; expected positions {tuple(flat['positions'].shape)}."
            )
        out.extend(p.numpy() for p in torch.split(pred.detach().cpu().double(), flat["n_atoms"].tolist()))
    return out


@torch.no_grad()
def predict_structures(
    model,
    images: Atoms | Sequence[Atoms],
    *,
    framework: str | None = None,
    batched: bool = False,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    align_to_input: bool = True,
    progress: bool = False,
    output: str | None = None,
    trusted: bool = False,
    overwrite: bool = False,
    **write_kwargs,
) -> list[Atoms]:
    """Apply a structure model (input geometry → predicted equilibrium geometry) to ASE structures.

    Args:
        model: a callable ``fn(positions (N, 3) Å, numbers (N,)) -> positions (N, 3)`` per structure
            (with ``batched=True``: ``fn(positions, numbers, batch)`` on flat batches of ``batch_size``),
            or a trained adapter model or checkpoint path: SchNetPack ``StructureTask``, its network,
            ``best_model`` or ``.ckpt``; TorchMD-Net ``PositionLNNP``, ``PositionOutput`` network or checkpoint.
        images: one Atoms or a sequence.
        framework: adapter name (``schnetpack``, ``torchmdnet``) to skip detection.
        batched, dtype: for callables only.
        align_to_input: Kabsch-align each prediction onto its input (models trained with the
            rotation-invariant energy loss predict in an arbitrary frame); periodic structures are not aligned.
        progress: show a progress bar.
        output: if given, write the predictions with ``ase.io.write(output, ..., **write_kwargs)``
            (atomically; checked before any work).
        overwrite: replace an existing ``output`` (else ValueError before any work).
        trusted: allow a full unpickle of a checkpoint path (a ``best_model``): it can run code from the
            file, so only for files you made or trust. Without it checkpoints load with ``weights_only=True``.

    Returns:
        Predicted structures (cell, pbc, info of the inputs), ``info["prediction_of"]`` = input index.

    Raises:
        ValueError: the model is an adapter model of another kind (diffusion, generation), returns
            the wrong shape or non-finite positions.
    """
    _check_output(output, overwrite, write_kwargs.get("format"))
    images = [images] if isinstance(images, Atoms) else list(images)
    resolved = None
    if framework is not None or not _is_plain_function(model):
        try:
            resolved = resolve(model, framework, device=str(device), trusted=trusted)
        except ValueError:
            if framework is not None or not callable(model):
                raise
    if resolved is None:
        predictions = _callable_predictions(model, images, batched, batch_size, dtype, device, progress)
    else:
        if resolved.kind != "structure":
            raise ValueError(f"{resolved.framework} model is a {resolved.kind} model, not a structure model; "
                             "use run_diffusion_model (diffusion) or energyloss-sample (generation).")
        predictions = resolved.adapter.predict(resolved.model, images, batch_size=batch_size, device=device,
                                               progress=progress)
    out = []
    for index, (atoms_in, positions) in enumerate(zip(images, predictions, strict=True)):
        if not np.isfinite(positions).all():
            raise ValueError(f"The model returned NaN or Inf positions for structure {index}.")
        atoms = atoms_in.copy()
        atoms.calc = None
        align = align_to_input and not any(atoms.pbc)
        atoms.positions = _align_onto(positions, atoms_in.positions) if align else positions
        atoms.info["prediction_of"] = index
        out.append(atoms)
    _write(output, out, overwrite, write_kwargs)
    return out


#: The name the README documents for adapter models; the same function.
run_structure_model = predict_structures


def _align_onto(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return kabsch_align(torch.tensor(pred, dtype=torch.float64), torch.tensor(ref, dtype=torch.float64)).numpy()


def _check_output(output: str | None, overwrite: bool, fmt: str | None = None) -> None:
    if output is not None:
        check_output_path(output, name="output", overwrite=overwrite)
        structure_format(output, fmt)


def _write(output: str | None, images: list[Atoms], overwrite: bool, write_kwargs: dict) -> None:
    if output is not None:
        write_structures(output, images, overwrite=overwrite, **write_kwargs)


def split_diverged(images: Sequence[Atoms]) -> tuple[list[Atoms], list[int]]:
    """``(finite, diverged)``: the structures with finite positions, and the indices of the others.

    A sampler that diverged (too few steps, an untrained model) returns NaN or Inf positions; such a
    structure is not a sample and must not pass silently into a file or a metric.
    """
    finite, diverged = [], []
    for index, atoms in enumerate(images):
        (finite if np.isfinite(atoms.positions).all() else diverged).append(index)
    return [images[i] for i in finite], diverged


def _drop_diverged(images: list[Atoms], keep_diverged: bool) -> list[Atoms]:
    finite, diverged = split_diverged(images)
    if not diverged:
        return images
    if keep_diverged:
        for i in diverged:
            images[i].info["diverged"] = True
        warnings.warn(f"{len(diverged)} of {len(images)} samples diverged (NaN or Inf positions); kept "
                      "(keep_diverged=True) and marked info['diverged'].", stacklevel=3)
        return images
    warnings.warn(f"{len(diverged)} of {len(images)} samples diverged (NaN or Inf positions) and were left out "
                  "(more sampler steps or a better-trained model help; keep_diverged=True keeps them); "
                  "info['sample_of'] gives each kept sample's template index.", stacklevel=3)
    return finite


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
    overwrite: bool = False,
    keep_diverged: bool = False,
    **write_kwargs,
) -> list[Atoms]:
    """Generate structures with a diffusion or flow-matching denoiser callable through the core sampler.

    Args:
        denoiser: ``fn(x_t (N, 3), t (B,), batch (N,), numbers (N,)) -> output (N, 3)`` in ``parameterization``.
        templates: Atoms (only their elements are used) or lists of atomic numbers, one per structure to generate.
        parameterization: ``eps``, ``v``, ``x0`` or ``velocity`` (flow matching); ``schedule``: ``polynomial``
            or ``cosine`` — the settings the model was trained with
            (see ``energyloss_plugins.tasks.DiffusionObjective``).
        steps, method: sampler steps and ``ancestral`` / ``ddim`` / ``euler`` (default: euler for flow
            matching, else ancestral).
        seed: seeds the sampler noise (None: torch's global RNG).
        output: if given, written with ``ase.io.write`` (atomically; checked before any work).
        overwrite: replace an existing ``output``.
        keep_diverged: keep samples with NaN/Inf positions (marked ``info["diverged"]``); by default
            they are left out with a warning that counts them.

    Returns:
        Generated Atoms (centred at the origin, positions in Å), ``info["sample_of"]`` = template index.
    """
    from energyloss_plugins.tasks import DiffusionObjective

    _check_output(output, overwrite, write_kwargs.get("format"))
    if not len(templates):
        raise ValueError("templates is empty: give one Atoms (or atomic-number list) per structure to generate.")
    if isinstance(denoiser, torch.nn.Module):
        denoiser.eval()
    numbers, batch, _ = flat_numbers([t.numbers if isinstance(t, Atoms) else t for t in templates], device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    objective = DiffusionObjective(parameterization=parameterization, schedule=schedule)
    wrapped = lambda x_t, t, b: denoiser(x_t.to(dtype), t.to(dtype), b, numbers)  # noqa: E731
    pos = objective.sample(wrapped, batch, steps=steps, method=method, generator=generator)
    out = batch_to_atoms(pos, numbers, batch)
    for index, atoms in enumerate(out):
        atoms.info["sample_of"] = index
    out = _drop_diverged(out, keep_diverged)
    _write(output, out, overwrite, write_kwargs)
    return out


@torch.no_grad()
def run_diffusion_model(
    model,
    templates: Sequence[Atoms] | Sequence[Sequence[int]],
    *,
    framework: str | None = None,
    steps: int = 100,
    method: str | None = None,
    seed: int | None = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    output: str | None = None,
    trusted: bool = False,
    overwrite: bool = False,
    keep_diverged: bool = False,
    **options,
) -> list[Atoms]:
    """Conformers generated by a trained adapter diffusion / flow-matching model for given molecules.

    Args:
        model: SchNetPack ``DiffusionTask`` or its ``.ckpt``; TorchMD-Net ``PositionLNNP``, ``NoiseOutput``
            network or checkpoint path (the adapter is found by :func:`energyloss_plugins.adapters.resolve`).
        templates: Atoms (their elements) or atomic-number lists, one per structure to generate.
        framework: adapter name (``schnetpack``, ``torchmdnet``) to skip detection.
        steps, method, seed: sampler settings (``ancestral``/``ddim``/``euler``; seeded noise).
        output: write the structures with ``ase.io.write(output, ...)`` (atomically; checked before any work).
        overwrite, keep_diverged: as in :func:`sample_structures`.
        trusted: allow a full unpickle of a checkpoint path (only for files you made or trust).
        **options: adapter options, e.g. TorchMD-Net's ``objective=`` / ``checkpoint=`` for a bare network.

    Returns:
        Generated Atoms (positions in Å, zero centre of mass).
    """
    _check_output(output, overwrite)
    resolved = resolve(model, framework, device=str(device), trusted=trusted)
    if resolved.kind != "diffusion":
        raise ValueError(f"{resolved.framework} model is a {resolved.kind} model, not a diffusion model.")
    out = resolved.adapter.sample_conformers(resolved.model, list(templates), steps=steps, method=method, seed=seed,
                                             batch_size=batch_size, device=device, progress=progress, **options)
    for index, atoms in enumerate(out):
        atoms.calc = None
        atoms.info["sample_of"] = index
    out = _drop_diverged(out, keep_diverged)
    _write(output, out, overwrite, {})
    return out
