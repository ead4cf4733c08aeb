"""The energy loss's springs resolved per molecule in the TorchMD-Net data pipeline (SPEC §2).

Pairs of the chosen edge set, reference distances and spring constants depend on the reference only.
:class:`PairSpringsTransform` computes them once per molecule as PyG ``Data`` attributes:

- ``loss_pair_index`` ``(2, E)`` long local atom pairs ("index" in the name: PyG's collate offsets
  them by the atoms of the preceding molecules, so a batch holds flat atom indices),
- ``loss_pair_distance`` ``(E,)`` reference distances in Å, ``loss_pair_k`` ``(E,)`` springs in eV/Å²,

and :func:`batch_springs` reads them back from a batch as a :class:`~energyloss_plugins.PairSprings`,
so that :class:`torchmdnet_ext.PositionLNNP`'s step runs the kernel alone. Switched on by
``data_springs: true`` in a conf file (``--data-springs true``): :class:`torchmdnet_ext.data.PositionDataModule`
then sets the transform on its dataset.
"""

from __future__ import annotations

import zlib

import torch

from energyloss_plugins.config import LossConfig
from energyloss_plugins.graphs import complete_pairs
from energyloss_plugins.losses import PairSprings

PAIRS, DISTANCES, SPRINGS = "loss_pair_index", "loss_pair_distance", "loss_pair_k"
#: All pairs i < j of a molecule ``(2, n(n-1)/2)``, for the position heads' pair term
#: (:func:`torchmdnet_ext.heads.given_pairs`).
COMPLETE_PAIRS = "complete_pair_index"


class CompletePairs:
    """A PyG transform adding all atom pairs i < j of each molecule (``complete_pair_index``).

    The position heads (:mod:`torchmdnet_ext.heads`) sum over all pairs of each structure; listed
    here, per molecule (PyG's collate offsets them), the step need not list them (which reads the
    pair counts back to the host).
    """

    def __call__(self, data):
        setattr(data, COMPLETE_PAIRS, complete_pairs(torch.zeros(data.num_nodes, dtype=torch.long), 1))
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def pipeline_transform(config: LossConfig, task: str = "structure"):
    """What ``data_springs: true`` sets as the dataset's transform: :class:`CompletePairs`, then
    :class:`PairSpringsTransform` of the training loss."""
    from torch_geometric.transforms import Compose

    return Compose([CompletePairs(), PairSpringsTransform(config, task)])


def reference_key(task: str, data) -> str:
    """The attribute holding the reference positions: ``pos_target`` (else ``pos`` for diffusion/generation)."""
    return "pos_target" if "pos_target" in data or task == "structure" else "pos"


class PairSpringsTransform:
    """A PyG transform adding the springs of :class:`LossConfig` ``config`` to each molecule.

    Args:
        config: the training loss (for a baseline the transform does nothing).
        task: ``structure``, ``diffusion`` or ``generation`` (which positions are the reference).

    A ``rigid_sparse`` graph is drawn per molecule from its ``row`` (else from its atomic numbers
    and reference positions), so each molecule keeps one graph in every epoch and process.
    """

    def __init__(self, config: LossConfig, task: str = "structure"):
        self.config = config
        self.task = task

    def __call__(self, data):
        if not self.config.is_energy:
            return data
        target = getattr(data, reference_key(self.task, data))
        stored = (data.spring_index, data.spring_k) if "spring_index" in data else None
        if "row" in data:
            key = int(data.row.reshape(-1)[0])
        else:
            key = zlib.crc32(data.z.numpy().tobytes() + target.numpy().tobytes())
        springs = self.config.structure_springs(target, numbers=data.z, bonds=getattr(data, "bond_index", None),
                                                stored=stored, key=key)
        setattr(data, PAIRS, springs.pairs)
        setattr(data, DISTANCES, springs.distances.to(target.dtype))
        setattr(data, SPRINGS, springs.springs.to(target.dtype))
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, task={self.task!r})"


def batch_springs(batch) -> PairSprings | None:
    """The springs of a collated PyG batch with :class:`PairSpringsTransform` attributes (None without them).

    B is ``batch.num_graphs`` (a Python int kept by PyG's collate): no host synchronisation.
    """
    if PAIRS not in batch:
        return None
    return PairSprings(getattr(batch, PAIRS), getattr(batch, SPRINGS), getattr(batch, DISTANCES), batch.batch,
                       batch.num_graphs)


__all__ = ["COMPLETE_PAIRS", "DISTANCES", "PAIRS", "SPRINGS", "CompletePairs", "PairSpringsTransform", "batch_springs",
           "pipeline_transform", "reference_key"]
