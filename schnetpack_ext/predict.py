"""Get structures out of a trained SchNetPack structure model as ASE ``Atoms``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Optional, Union

import torch

import schnetpack.properties as properties


def load_structure_model(path: str, device: str = "cpu"):
    """Load ``best_model`` (a ``torch.save``d model) or a Lightning checkpoint (``*.ckpt``) of a StructureTask."""
    if str(path).endswith(".ckpt"):
        from schnetpack_ext.tasks import StructureTask

        return StructureTask.load_from_checkpoint(path, map_location=device).model
    return torch.load(path, map_location=device, weights_only=False)


@torch.no_grad()
def predict_structures(model, atoms: Sequence, *, output_key: str = "positions_pred", cutoff: Optional[float] = None,
                       batch_size: int = 32, device: Union[str, torch.device] = "cpu") -> list:
    """Predict equilibrium structures for input geometries.

    Args:
        model: a SchNetPack model (``best_model``), a task (``StructureTask``) or a path to either.
        atoms: input geometries (``ase.Atoms``).
        output_key: the position head's output key.
        cutoff: neighbour-list cutoff in Å; default: the representation's cutoff.
        batch_size: structures per forward pass.

    Returns:
        copies of ``atoms`` with the predicted positions.
    """
    from schnetpack.interfaces import AtomsConverter
    from schnetpack.transform import MatScipyNeighborList

    if isinstance(model, (str, os.PathLike)):
        model = load_structure_model(str(model), device=str(device))
    model = getattr(model, "model", model)  # a task → its model
    if cutoff is None:
        cutoff = float(getattr(getattr(model, "representation", None), "cutoff", 5.0))
    model = model.to(device).eval()
    converter = AtomsConverter(neighbor_list=MatScipyNeighborList(cutoff=cutoff), device=device, dtype=torch.float32)
    results = []
    atoms = list(atoms)
    for start in range(0, len(atoms), batch_size):
        chunk = atoms[start : start + batch_size]
        inputs = converter(chunk)
        positions = model(inputs)[output_key].detach().cpu().double()
        for at, pos in zip(chunk, torch.split(positions, inputs[properties.n_atoms].cpu().tolist())):
            new = at.copy()
            new.positions = pos.numpy()
            results.append(new)
    return results
