"""SchNetPack data transforms of the adapter (usable in ``data.transforms`` of a YAML config)."""

from __future__ import annotations

import schnetpack.properties as properties
import torch
from schnetpack.transform.base import Transform

from energyloss_plugins.augment import seeded_rotation
from energyloss_plugins.graphs import complete_directed_pairs
from energyloss_plugins.layouts import first_atoms


class RotateTarget(Transform):
    """Rotate the target positions of each sample by a fixed random rotation about their centroid.

    Simulates data that arrives in arbitrary frames: the input geometry and the target no longer
    share a frame. The rotation depends only on ``seed`` and the sample's database index
    (:func:`energyloss_plugins.augment.seeded_rotation`), so every epoch (and every process) sees the
    same rotated target. A rotation-invariant loss (energy) does
    not care; MSE does (SPEC §6).

    Args:
        property: key of the target positions.
        seed: base seed of the rotations.
        enabled: False makes the transform a no-op (so a YAML flag can switch it).
    """

    is_preprocessor: bool = True
    is_postprocessor: bool = False

    def __init__(self, property: str = "target_positions", seed: int = 0, enabled: bool = True):
        super().__init__()
        self.enabled = bool(enabled)
        self.property = property
        self.seed = seed

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.enabled:
            return inputs
        index = int(inputs[properties.idx].reshape(-1)[0])
        inputs[self.property] = seeded_rotation(inputs[self.property], self.seed, index)
        return inputs


#: Batch keys of the springs a :class:`PairSpringsTransform` resolves per molecule: local pair atoms
#: ``(E,)`` long, reference distances ``(E,)`` Å, springs ``(E,)`` eV/Å², and the pair count ``(1,)``
#: per molecule. SchNetPack's collate concatenates them without offsets (it offsets only its own
#: neighbour-list keys); :func:`batch_springs` adds the atom offsets in the step, from ``_n_atoms``.
SPRING_I, SPRING_J, SPRING_DISTANCE, SPRING_K, SPRING_COUNT = (
    "_springs_i", "_springs_j", "_springs_distance", "_springs_k", "_springs_n")
#: Row-data keys of the springs :func:`energyloss_plugins.ase.add_springs_to_db` stores:
#: ``(E, 2)`` pairs, ``(E,)`` eV/Å².
STORED_SPRINGS = ("spring_pairs", "spring_k")
#: Marks a batch whose ``_idx_i``/``_idx_j`` are all ordered pairs of each molecule (:class:`CompleteNeighborList`).
COMPLETE_PAIRS = "_complete_pairs"


class PairSpringsTransform(Transform):
    """The energy loss's springs of each molecule, resolved once in the data pipeline (SPEC §2).

    Pairs of the chosen edge set, reference distances and spring constants depend on the reference
    only, so they are computed here, per molecule (in the loader's workers), and the training step
    runs the kernel alone (:func:`energyloss_plugins.pair_energy_kernel`). Give it the options of the
    task's :class:`schnetpack_ext.EnergyLoss` (the shipped experiments interpolate both from
    ``globals``) and list it after ``CastTo32``, so that the springs are computed in the step's
    precision. For any loss but ``energy`` it does nothing. Without it, the step resolves the springs
    itself (same values).

    Args:
        loss, coefficients, coefficient_kwargs, graph, graph_kwargs: as :class:`schnetpack_ext.EnergyLoss`.
        reference: batch key of the reference positions: ``target_positions`` for structure
            prediction; the clean geometry (None: ``_positions``) for diffusion and generation.

    A ``rigid_sparse`` graph is drawn per molecule from its dataset index (``_idx``), so each
    molecule keeps one graph in every epoch and process.

    ``coefficients: hessian`` takes the springs stored with each row
    (:func:`energyloss_plugins.ase.add_springs_to_db`: ``spring_pairs`` ``(E, 2)``, ``spring_k``
    ``(E,)`` eV/Å²), which the dataset loads when ``data.load_properties`` lists them; the raw keys are
    replaced by the batch keys above (SchNetPack's collate would not offset the stored pairs).
    """

    is_preprocessor: bool = True
    is_postprocessor: bool = False

    def __init__(self, loss: str = "energy", coefficients="exp", coefficient_kwargs=None, graph: str = "complete",
                 graph_kwargs=None, reference: str | None = "target_positions"):
        from energyloss_plugins.config import LossConfig
        from schnetpack_ext.losses import plain_config

        super().__init__()
        self.config = LossConfig(loss, plain_config(coefficients), plain_config(coefficient_kwargs), graph,
                                 plain_config(graph_kwargs))
        self.reference = reference or properties.R

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.config.is_energy:
            return inputs
        if self.reference not in inputs:
            raise KeyError(f"PairSpringsTransform: no {self.reference!r} in the sample; load it "
                           f"(data.load_properties) or set reference to the key of the reference positions.")
        springs = self.config.structure_springs(inputs[self.reference], numbers=inputs[properties.Z],
                                                stored=self._stored(inputs),
                                                key=int(inputs[properties.idx].reshape(-1)[0]))
        inputs[SPRING_I], inputs[SPRING_J] = springs.pairs[0], springs.pairs[1]
        inputs[SPRING_DISTANCE], inputs[SPRING_K] = springs.distances, springs.springs
        inputs[SPRING_COUNT] = torch.tensor([springs.pairs.shape[1]], dtype=torch.long)
        return inputs

    def _stored(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The row's stored springs ``(pairs (2, E) long, k (E,))``, popped from ``inputs`` (hessian only)."""
        from schnetpack_ext.losses import HESSIAN_FIX

        if not self.config.uses_data_springs:
            return None
        missing = [key for key in STORED_SPRINGS if key not in inputs]
        if missing:
            raise KeyError(f"PairSpringsTransform(coefficients='hessian'): no {' or '.join(map(repr, missing))} in the "
                           f"sample; {HESSIAN_FIX}")
        pairs, k = (inputs.pop(key) for key in STORED_SPRINGS)
        # SchNetPack multiplies every loaded property by a unit factor (1.0), which turns the int64 pairs into floats.
        return pairs.reshape(-1, 2).round().long().T.contiguous(), k.reshape(-1)


def batch_springs(batch: dict[str, torch.Tensor]):
    """The :class:`~energyloss_plugins.PairSprings` of a collated batch with :class:`PairSpringsTransform`
    keys (None without them): local pairs shifted by their molecule's first atom, no host synchronisation."""
    from energyloss_plugins.losses import PairSprings

    if SPRING_COUNT not in batch:
        return None
    n_atoms, counts = batch[properties.n_atoms], batch[SPRING_COUNT]
    # output_size from a shape: repeat_interleave would otherwise read the total back to the host.
    offset = torch.repeat_interleave(first_atoms(n_atoms), counts, output_size=batch[SPRING_I].shape[0])
    pairs = torch.stack([batch[SPRING_I] + offset, batch[SPRING_J] + offset])
    return PairSprings(pairs, batch[SPRING_K], batch[SPRING_DISTANCE], batch[properties.idx_m], n_atoms.shape[0])


class CompleteNeighborList(Transform):
    """All ordered atom pairs (i ≠ j) of each molecule as SchNetPack's neighbour list (no cutoff).

    For diffusion and generation, whose tasks list every pair of the noisy molecule (``cutoff:
    null``): the pairs depend on the atom count only, so the loader lists them (SchNetPack's collate
    offsets ``_idx_i``/``_idx_j``) and the step does not rebuild them (which reads the pair count back
    to the host). Same pairs, in the same order, as :func:`schnetpack_ext.full_neighbor_list`.
    """

    is_preprocessor: bool = True
    is_postprocessor: bool = False

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pairs = complete_directed_pairs(torch.zeros(inputs[properties.Z].shape[0], dtype=torch.long), 1)
        inputs[properties.idx_i], inputs[properties.idx_j] = pairs[0], pairs[1]
        inputs[properties.offsets] = torch.zeros(pairs.shape[1], 3, dtype=inputs[properties.R].dtype)
        inputs[COMPLETE_PAIRS] = torch.ones(1, dtype=torch.bool)
        return inputs
