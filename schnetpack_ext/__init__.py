"""SchNetPack 2.2 adapter of energyloss-plugins: the energy loss and structure tasks in ``spktrain``.

YAML building blocks (``_target_: schnetpack_ext.<name>``):

- :class:`EnergyLoss`: the loss entry (``loss: energy | mse | mae | kabsch``, coefficient scheme, edge set), a
  callable ``loss_fn(pred, target, context)`` with a :class:`LossContext` (contract: :mod:`schnetpack_ext.losses`);
- :class:`StructureOutput`, :class:`DiffusionOutput`: ``ModelOutput`` subclasses calling it with the batch context;
- :class:`StructureTask`, :class:`DiffusionTask`: ``AtomisticTask`` subclasses (context, metrics, noising, sampling);
- :class:`PositionHead`: equivariant per-atom displacement on PaiNN/SO3net vector features;
- :class:`TimeEmbedding`: diffusion time as an embedding of PaiNN/SO3net;
- :class:`RotateTarget`: data transform rotating targets against inputs (arbitrary frames);
- :class:`PairSpringsTransform`, :class:`CompleteNeighborList`: data transforms resolving the energy
  loss's springs and the all-pairs neighbour list per molecule (the step then runs the loss kernel alone);
- :func:`predict_structures`: the core's (``energyloss_plugins.ase``), which runs ``best_model``/tasks/checkpoints
  of this adapter through :mod:`schnetpack_ext.adapter`.
- :class:`GenerationTask`, :class:`GenerationOutput`, :class:`TypeFeatureEmbedding`, :class:`TypeNoiseHead`:
  de novo molecule generation (types and positions), :func:`load_generation_model` to sample.

Shipped experiments (found by ``spktrain`` through the Hydra search-path plugin
``hydra_plugins.energyloss_plugins_searchpath``): ``experiment=energyloss_structure`` and
``experiment=energyloss_diffusion``, ``experiment=energyloss_generation`` (and ``energyloss_generation_paper``).
"""

from energyloss_plugins.optional import require

require("schnetpack", "schnetpack_ext (the SchNetPack adapter)", "schnetpack")

from energyloss_plugins.ase import predict_structures  # noqa: E402  (the one implementation; finds this adapter)
from schnetpack_ext.adapter import load_structure_model  # noqa: E402
from schnetpack_ext.checkpoint import SafeCheckpointIO, TrustedCheckpointIO  # noqa: E402
from schnetpack_ext.generation import (  # noqa: E402
    GenerationOutput,
    GenerationTask,
    TypeFeatureEmbedding,
    TypeNoiseHead,
    load_generation_model,
)
from schnetpack_ext.heads import PositionHead, TimeEmbedding  # noqa: E402
from schnetpack_ext.losses import EnergyLoss, LossContext  # noqa: E402
from schnetpack_ext.outputs import DiffusionOutput, StructureOutput  # noqa: E402
from schnetpack_ext.resolvers import register_resolvers  # noqa: E402
from schnetpack_ext.tasks import DiffusionTask, StructureTask, full_neighbor_list  # noqa: E402
from schnetpack_ext.transforms import CompleteNeighborList, PairSpringsTransform, RotateTarget  # noqa: E402

register_resolvers()

#: Package holding the YAML configs (``pkg://schnetpack_ext.configs``).
CONFIG_PACKAGE = "schnetpack_ext.configs"

__all__ = [
    "CONFIG_PACKAGE", "CompleteNeighborList", "DiffusionOutput", "DiffusionTask", "EnergyLoss", "GenerationOutput",
    "GenerationTask", "LossContext", "PairSpringsTransform", "PositionHead", "RotateTarget", "SafeCheckpointIO",
    "TypeFeatureEmbedding", "TypeNoiseHead", "load_generation_model", "StructureOutput", "StructureTask",
    "TimeEmbedding", "TrustedCheckpointIO", "full_neighbor_list", "load_structure_model", "predict_structures",
    "register_resolvers",
]
