"""SchNetPack 2.2 adapter of energyloss-plugins: the energy loss and structure tasks in ``spktrain``.

YAML building blocks (``_target_: schnetpack_ext.<name>``):

- :class:`EnergyLoss`: the loss entry (``loss: energy | mse | mae | kabsch``, coefficient scheme, edge set);
- :class:`StructureOutput`, :class:`DiffusionOutput`: ``ModelOutput`` subclasses given the structure index;
- :class:`StructureTask`, :class:`DiffusionTask`: ``AtomisticTask`` subclasses (context, metrics, noising, sampling);
- :class:`PositionHead`: equivariant per-atom displacement on PaiNN/SO3net vector features;
- :class:`TimeEmbedding`: diffusion time as an embedding of PaiNN/SO3net;
- :class:`RotateTarget`: data transform rotating targets against inputs (arbitrary frames);
- :class:`GenerationTask`, :class:`GenerationOutput`, :class:`TypeFeatureEmbedding`, :class:`TypeNoiseHead`:
  de novo molecule generation (types and positions), :func:`load_generation_model` to sample.

Shipped experiments (found by ``spktrain`` through the Hydra search-path plugin
``hydra_plugins.energyloss_plugins_searchpath``): ``experiment=energyloss_structure`` and
``experiment=energyloss_diffusion``, ``experiment=energyloss_generation`` (and ``energyloss_generation_paper``).
"""

from schnetpack_ext._resolvers import register_resolvers
from schnetpack_ext.checkpoint import TrustedCheckpointIO
from schnetpack_ext.generation import (
    GenerationOutput,
    GenerationTask,
    TypeFeatureEmbedding,
    TypeNoiseHead,
    load_generation_model,
)
from schnetpack_ext.heads import PositionHead, TimeEmbedding
from schnetpack_ext.losses import EnergyLoss
from schnetpack_ext.outputs import DiffusionOutput, StructureOutput
from schnetpack_ext.predict import load_structure_model, predict_structures
from schnetpack_ext.tasks import DiffusionTask, StructureTask, full_neighbor_list
from schnetpack_ext.transforms import RotateTarget

register_resolvers()

#: Package holding the YAML configs (``pkg://schnetpack_ext.configs``).
CONFIG_PACKAGE = "schnetpack_ext.configs"

__all__ = [
    "CONFIG_PACKAGE", "DiffusionOutput", "DiffusionTask", "EnergyLoss", "GenerationOutput", "GenerationTask",
    "PositionHead", "RotateTarget", "TypeFeatureEmbedding", "TypeNoiseHead", "load_generation_model",
    "StructureOutput", "StructureTask", "TimeEmbedding", "TrustedCheckpointIO", "full_neighbor_list", "load_structure_model",
    "predict_structures", "register_resolvers",
]
