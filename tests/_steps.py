"""One real training step per task and adapter on a few small molecules (no sync / precision / springs tests).

SchNetPack: tasks built like the shipped experiments (``schnetpack_ext/configs/experiment``) with the
data-pipeline transforms they list, batches from SchNetPack's own loader. TorchMD-Net: ``PositionLNNP``
on PyG batches, with the transform ``data_springs: true`` sets (:func:`torchmdnet_ext.springs.pipeline_transform`).
"""

from __future__ import annotations

import os

import torch

from _molecules import noisy_molecules

TASKS = ("structure", "diffusion", "generation")
LOSSES = ("energy", "mse", "kabsch", "mae")
ELEMENTS = [1, 6, 8]
TORCHMD_LOSS = {"energy": "energy_loss", "mse": "mse_loss", "kabsch": "kabsch_loss", "mae": "l1_loss"}
N_MOLECULES = 4


def molecule_db(directory: str) -> str:
    """An ASE database of 4 small molecules (water, methane) with ``target_positions``; written once."""
    import schnetpack as spk
    from ase import Atoms

    path = os.path.join(directory, "molecules.db")
    if not os.path.exists(path):
        data = spk.data.ASEAtomsData.create(path, distance_unit="Ang", property_unit_dict={"target_positions": "Ang"})
        molecules = noisy_molecules(N_MOLECULES, seed=3)
        data.add_systems([{"target_positions": target.numpy()} for _, target, _ in molecules],
                         [Atoms(numbers=z.numpy(), positions=noisy.numpy()) for noisy, _, z in molecules])
    return path


def schnetpack_transforms(task: str, loss: str, springs: bool = True, **energy) -> list:
    """The ``data.transforms`` of the shipped experiment of ``task`` (springs: with PairSpringsTransform)."""
    import schnetpack.transform as trn

    from schnetpack_ext import CompleteNeighborList, PairSpringsTransform

    pairs = trn.MatScipyNeighborList(cutoff=5.0) if task == "structure" else CompleteNeighborList()
    out = [pairs, trn.CastTo32()]
    if springs:
        reference = "target_positions" if task == "structure" else None
        out.append(PairSpringsTransform(loss=loss, reference=reference, **energy))
    return out


def schnetpack_batch(db: str, task: str, loss: str, springs: bool = True, **energy) -> dict:
    import schnetpack as spk

    load = ["target_positions"] if task == "structure" else []
    dataset = spk.data.ASEAtomsData(db, load_properties=load, transforms=schnetpack_transforms(task, loss, springs,
                                                                                              **energy))
    return next(iter(spk.data.AtomsLoader(dataset, batch_size=N_MOLECULES, shuffle=False)))


def schnetpack_task(task: str, loss: str, **energy):
    """A tiny PaiNN task with the heads and outputs of the shipped experiment of ``task``."""
    import schnetpack as spk

    from _schnetpack_helpers import small_painn, structure_task
    from schnetpack_ext import (
        DiffusionOutput,
        DiffusionTask,
        EnergyLoss,
        GenerationOutput,
        GenerationTask,
        PositionHead,
        TimeEmbedding,
        TypeFeatureEmbedding,
        TypeNoiseHead,
    )

    torch.manual_seed(0)
    if task == "structure":
        return structure_task(loss, **energy)
    if task == "diffusion":
        rep = small_painn(n_atom_basis=16, n_interactions=1, cutoff=10.0, electronic_embeddings=[TimeEmbedding(16)])
        model = spk.model.NeuralNetworkPotential(
            representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
            output_modules=[PositionHead(16, output_key="diffusion_output", add_positions=False, remove_mean=True)])
        out = DiffusionOutput(name="diffusion_output", loss_fn=EnergyLoss(loss=loss, **energy))
        return DiffusionTask(model=model, outputs=[out], optimizer_args={"lr": 1e-3})
    rep = small_painn(n_atom_basis=16, n_interactions=1, cutoff=10.0,
                      electronic_embeddings=[TimeEmbedding(16), TypeFeatureEmbedding(16, ELEMENTS)])
    model = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[PositionHead(16, output_key="position_noise", add_positions=False, remove_mean=True),
                        TypeNoiseHead(16, ELEMENTS, output_key="type_noise")])
    out = GenerationOutput(ELEMENTS, loss_fn=EnergyLoss(loss, **energy))
    return GenerationTask(model=model, outputs=[out], optimizer_args={"lr": 1e-3})


def torchmd_data(task: str, loss: str, springs: bool = True, **energy) -> list:
    from torch_geometric.data import Data

    from torchmdnet_ext.module import loss_config
    from torchmdnet_ext.springs import pipeline_transform

    items = [Data(z=z, pos=noisy.float(), pos_target=target.float(), row=torch.tensor([i]))
             for i, (noisy, target, z) in enumerate(noisy_molecules(N_MOLECULES, seed=3))]
    if springs:
        transform = pipeline_transform(loss_config(TORCHMD_LOSS[loss], energy), task)
        items = [transform(item) for item in items]
    return items


def torchmd_batch(task: str, loss: str, springs: bool = True, **energy):
    from torch_geometric.data import Batch

    return Batch.from_data_list(torchmd_data(task, loss, springs, **energy))


def torchmd_module(task: str, loss: str, model: str = "tensornet", **energy):
    from _torchmdnet_args import tiny_model_args
    from torchmdnet_ext import PositionLNNP

    torch.manual_seed(0)
    extra = {"output_model": "NoiseOutput", "cutoff_upper": 10.0} if task != "structure" else {}
    if task == "generation":
        extra["elements"] = ELEMENTS
    return PositionLNNP(tiny_model_args(model=model, task=task, train_loss=TORCHMD_LOSS[loss], train_loss_arg=energy,
                                        **extra))


def training_step(adapter: str, module, batch) -> torch.Tensor:
    """One training step, forward, loss and backward; returns the loss (detached)."""
    module.train()
    if adapter == "schnetpack":
        loss = module.training_step(batch, 0)
    else:
        loss = module.training_step(batch.clone(), 0)
    loss.backward()
    return loss.detach()
