"""StructureMetrics: dataset-level structure metrics over an epoch (sums and counts, DDP-mergeable)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("torchmetrics")

from _molecules import dataset_metrics, noisy_molecules  # noqa: E402
from energyloss_plugins.metrics import structure_metrics  # noqa: E402
from energyloss_plugins.metrics.epoch import STRUCTURE_METRICS, StructureMetrics  # noqa: E402


def _flat(mols):
    pred = torch.cat([m[0] for m in mols])
    target = torch.cat([m[1] for m in mols])
    numbers = torch.cat([m[2] for m in mols])
    batch = torch.repeat_interleave(torch.arange(len(mols)), torch.tensor([len(m[2]) for m in mols]))
    return pred, target, batch, numbers


def test_epoch_value_is_the_dataset_value_whatever_the_batching():
    mols = noisy_molecules(11)
    reference = dataset_metrics(*_flat(mols))
    stab = reference["molecule_stability"]
    assert 0 < stab < 1, stab  # some molecules unstable: the test can tell a mean of batch means
    for sizes in ([11], [1, 10], [3, 3, 3, 2], [1] * 11):
        metric = StructureMetrics()
        start = 0
        batch_means = []  # what averaging batch means would log
        for size in sizes:
            part = mols[start : start + size]
            start += size
            metric.update(*_flat(part))
            batch_means.append(float(structure_metrics(*_flat(part))["molecule_stability"]))
        result = metric.compute()
        assert set(result) == set(STRUCTURE_METRICS)
        for key in STRUCTURE_METRICS:
            assert math.isclose(float(result[key]), reference[key], rel_tol=1e-12), (sizes, key)
        if sizes == [1, 10]:
            assert not math.isclose(sum(batch_means) / len(batch_means), stab)


def test_merged_states_equal_one_process():
    """DDP: torchmetrics sums the states of the processes; merging two halves gives the whole."""
    mols = noisy_molecules(8, seed=1)
    whole, rank0, rank1 = StructureMetrics(), StructureMetrics(), StructureMetrics()
    whole.update(*_flat(mols))
    rank0.update(*_flat(mols[:3]))
    rank1.update(*_flat(mols[3:]))
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), whole.compute()
    assert all(torch.allclose(merged[k], expected[k], rtol=1e-12) for k in expected)


def test_absent_and_undefined_figures():
    pred, target, batch, numbers = _flat(noisy_molecules(4))
    geometry_only = StructureMetrics()
    geometry_only.update(pred, target, batch)  # no numbers, no bonds: RMSD only
    assert set(geometry_only.compute()) == {"rmsd"}
    no_rule = StructureMetrics()
    lithium = numbers.clone()
    lithium[0] = 3  # no valence rule for Li: stability undefined, the rest unaffected
    no_rule.update(pred, target, batch, lithium)
    out = no_rule.compute()
    assert math.isnan(float(out["molecule_stability"])) and math.isfinite(float(out["rmsd"]))
    no_rule.reset()
    no_rule.update(pred, target, batch, numbers)
    assert math.isfinite(float(no_rule.compute()["molecule_stability"]))


def test_structure_ids_with_gaps_count_the_same_atoms():
    """The atom counts weighting ``atom_stability`` follow structure_metrics' structures: the distinct ids."""
    pred, target, batch, numbers = _flat(noisy_molecules(5, seed=2))
    dense, gapped = StructureMetrics(), StructureMetrics()
    dense.update(pred, target, batch, numbers)
    gapped.update(pred, target, batch * 3 + 7, numbers)
    expected, result = dense.compute(), gapped.compute()
    assert set(result) == set(expected)
    for key in expected:
        assert torch.allclose(result[key], expected[key], rtol=1e-12), key
