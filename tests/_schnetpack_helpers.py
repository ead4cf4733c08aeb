"""Helpers shared by the SchNetPack tests (tiny databases, models, loaders, DDP probes); not shipped."""

from __future__ import annotations

import os

import pytorch_lightning as pl
import torch


def tiny_structure_db(directory: str, n_molecules: int = 12, max_heavy_atoms: int = 6, seed: int = 0,
                      inputs=("cheap", "thermal")) -> str:
    """Build (once) a small structure database with ``energyloss-data``'s builder from RDKit's bundled NCI set."""
    from energyloss_plugins.data import build_dataset
    from energyloss_plugins.data.paths import split_file_for

    path = os.path.join(directory, "data.db")
    if not os.path.exists(split_file_for(path)):
        build_dataset("nci", path, method="mmff", inputs=inputs, max_molecules=n_molecules,
                      max_heavy_atoms=max_heavy_atoms, seed=seed, progress=False)
    return path


def small_painn(n_atom_basis: int = 16, n_interactions: int = 2, cutoff: float = 5.0, electronic_embeddings=None):
    import schnetpack as spk

    return spk.representation.PaiNN(n_atom_basis=n_atom_basis, n_interactions=n_interactions,
                                    radial_basis=spk.nn.GaussianRBF(n_rbf=10, cutoff=cutoff),
                                    cutoff_fn=spk.nn.CosineCutoff(cutoff), electronic_embeddings=electronic_embeddings)


def small_so3net(n_atom_basis: int = 16, n_interactions: int = 2, cutoff: float = 5.0, electronic_embeddings=None):
    import schnetpack as spk

    return spk.representation.SO3net(n_atom_basis=n_atom_basis, n_interactions=n_interactions, lmax=1,
                                     radial_basis=spk.nn.GaussianRBF(n_rbf=10, cutoff=cutoff),
                                     cutoff_fn=spk.nn.CosineCutoff(cutoff), electronic_embeddings=electronic_embeddings)


def structure_task(loss: str = "energy", representation=None, lr: float = 1e-3, **loss_kwargs):
    """A small PaiNN structure task built in Python (what the YAML experiment instantiates)."""
    import schnetpack as spk

    from schnetpack_ext import EnergyLoss, PositionHead, StructureOutput, StructureTask

    representation = representation or small_painn()
    model = spk.model.NeuralNetworkPotential(
        representation=representation, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[PositionHead(n_in=representation.n_atom_basis, output_key="positions_pred")])
    output = StructureOutput(name="positions_pred", target_property="target_positions",
                             loss_fn=EnergyLoss(loss=loss, **loss_kwargs))
    return StructureTask(model=model, outputs=[output], optimizer_cls=torch.optim.Adam, optimizer_args={"lr": lr})


def diffusion_task(loss: str = "energy", parameterization: str = "eps"):
    """A small PaiNN diffusion task built in Python (what the diffusion YAML experiment instantiates)."""
    import schnetpack as spk

    from schnetpack_ext import DiffusionOutput, DiffusionTask, EnergyLoss, PositionHead, TimeEmbedding

    rep = small_painn(electronic_embeddings=[TimeEmbedding(16)], cutoff=10.0)
    model = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[PositionHead(16, output_key="diffusion_output", add_positions=False, remove_mean=True)])
    out = DiffusionOutput(name="diffusion_output", loss_fn=EnergyLoss(loss=loss), parameterization=parameterization)
    return DiffusionTask(model=model, outputs=[out], optimizer_args={"lr": 1e-3})


def loader(datapath: str, indices=None, batch_size: int = 4, cutoff: float = 5.0, shuffle: bool = False,
           load_properties=("target_positions",), sampler=None):
    import schnetpack as spk
    import schnetpack.transform as trn

    dataset = spk.data.ASEAtomsData(datapath, load_properties=list(load_properties),
                                    transforms=[trn.MatScipyNeighborList(cutoff=cutoff), trn.CastTo32()])
    if indices is not None:
        dataset = dataset.subset(list(indices))
    return spk.data.AtomsLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0, sampler=sampler)


class RecordSteps(pl.Callback):
    """Lightning callback (top level, so ddp_spawn can pickle it): per-rank step losses and final parameters."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory
        self.losses = []
        self.indices = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))
        if "_idx" in batch:
            self.indices.append(batch["_idx"].tolist())

    def on_train_end(self, trainer, pl_module):
        import json

        rank = trainer.global_rank
        with open(os.path.join(self.directory, f"losses_rank{rank}.json"), "w") as f:
            json.dump(self.losses, f)
        with open(os.path.join(self.directory, f"indices_rank{rank}.json"), "w") as f:
            json.dump(self.indices, f)
        torch.save({k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
                   os.path.join(self.directory, f"params_rank{rank}.pt"))


class InterleavedSampler(torch.utils.data.Sampler):
    """Indices ``rank::world_size`` of ``range(n)`` in order (rank read at iteration time, so it pickles for
    ddp_spawn)."""

    def __init__(self, n: int):
        self.n = n

    def _slice(self):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return list(range(self.n))[dist.get_rank()::dist.get_world_size()]
        return list(range(self.n))

    def __iter__(self):
        return iter(self._slice())

    def __len__(self):
        return len(self._slice())


def trained_structure_files(directory, steps: int) -> dict:
    """A tiny PaiNN structure task trained ``steps`` steps in ``directory`` (a pathlib folder): the task, its
    Lightning checkpoint ``ckpt``, a whole-model pickle ``best_model`` (as spktrain exports) and the ``db``."""
    import warnings

    db = tiny_structure_db(str(directory))
    torch.manual_seed(0)
    task = structure_task()
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=str(directory))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, loader(db, batch_size=4, shuffle=True))
    ckpt = str(directory / "structure.ckpt")
    trainer.save_checkpoint(ckpt)
    best_model = str(directory / "best_model")
    torch.save(task.model, best_model)
    return {"task": task, "ckpt": ckpt, "best_model": best_model, "db": db}
