"""Dataset-level structure metrics accumulated over an epoch, as a ``torchmetrics.Metric``.

Both adapters log the same figures per epoch (``val_rmsd``, ``val_bond_mae``, ...) through
:class:`StructureMetrics`. It keeps sums and counts, not batch means, so the epoch value does not
depend on how the data are batched or split over processes: molecule stability is the fraction of
all molecules seen, atom stability the fraction of all atoms (EDM's dataset-level definition), and
the RMSD / bond / angle errors are means over all structures. Under DDP, torchmetrics sums the
states of every process before :meth:`StructureMetrics.compute`.

Needs ``torchmetrics`` (installed with PyTorch Lightning, so with either adapter); importing
:mod:`energyloss_plugins.metrics` does not import this module.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from energyloss_plugins.layouts import checked_structure_index, structure_counts
from energyloss_plugins.metrics.summary import structure_metrics

#: The figures :class:`StructureMetrics` accumulates, in the order of its states.
STRUCTURE_METRICS = ("rmsd", "bond_mae", "angle_mae", "atom_stability", "molecule_stability")


class StructureMetrics(Metric):
    """Aligned RMSD (Å), bond-length MAE (Å), angle MAE (°), atom and molecule stability over an epoch.

    ``update(pred, target, batch, numbers=None, bonds=None)`` takes one flat batch (as
    :func:`energyloss_plugins.metrics.structure_metrics`: positions ``(N, 3)`` Å, ``batch`` ``(N,)``,
    ``numbers`` ``(N,)``, ``bonds`` ``(2, M)`` flat); ``compute()`` returns a dict of 0-d tensors.

    Structures without bonds (angles) are left out of the bond (angle) error, and structures of a
    batch holding an element without a valence rule out of the stabilities, as in
    :func:`~energyloss_plugins.metrics.structure_metrics`; a figure with no structure left is NaN.
    Figures never computed (stability without ``numbers``, bond errors without ``bonds`` or
    ``numbers``) are absent from the result.

    Keyword arguments go to ``torchmetrics.Metric`` (e.g. ``sync_on_compute``).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        n = len(STRUCTURE_METRICS)
        # float64 sums: exact atom and molecule counts far beyond any dataset size.
        self.add_state("sums", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("seen", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, batch: Tensor | None = None, numbers: Tensor | None = None,
               bonds: Tensor | None = None) -> None:
        """Add one batch of predicted and target positions ``(N, 3)`` Å."""
        per = structure_metrics(pred, target, batch, numbers, bonds=bonds, per_structure=True)
        n_structures = per["rmsd"].shape[0]
        # the structures of structure_metrics: the distinct ids of batch, renumbered 0..B-1
        n_atoms = structure_counts(checked_structure_index(batch, pred.shape[0], pred.device)[0], n_structures).double()
        for i, key in enumerate(STRUCTURE_METRICS):
            if key not in per:
                continue
            value = per[key].double()
            weight = torch.ones_like(value)
            if key == "atom_stability":  # per-structure fraction → stable atoms (an integer) out of all atoms
                value, weight = (value * n_atoms).round(), n_atoms
            finite = torch.isfinite(value)
            self.sums[i] += value[finite].sum()
            self.counts[i] += weight[finite].sum()
            self.seen[i] += 1

    def compute(self) -> dict[str, Tensor]:
        """Dataset-level figures of everything added since the last ``reset()``."""
        values = self.sums / self.counts  # 0 / 0 = NaN: nothing left to average
        return {key: values[i] for i, key in enumerate(STRUCTURE_METRICS) if self.seen[i] > 0}
