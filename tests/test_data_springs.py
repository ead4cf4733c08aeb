"""Springs from the data pipeline (SchNetPack ``PairSpringsTransform``, TorchMD-Net ``data_springs``) give the
same training loss as resolving them in the step; rigid-sparse graphs are fixed per molecule; the loss
configuration is validated once, with errors that list the valid names."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

pytest.importorskip("schnetpack")
pytest.importorskip("torchmdnet")

from _steps import TASKS, molecule_db, schnetpack_batch, schnetpack_task, torchmd_batch, torchmd_module  # noqa: E402
from energyloss_plugins.config import LossConfig  # noqa: E402

GRAPHS = [{"graph": "complete"}, {"graph": "radius", "graph_kwargs": {"cutoff": 1.5}},
          {"coefficients": "inverse_square", "graph": "complete"}]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return molecule_db(str(tmp_path_factory.mktemp("springs_db")))


def _step_loss(module, batch) -> torch.Tensor:
    torch.manual_seed(1)  # the same noise for diffusion and generation
    module.train()
    return module.training_step(batch, 0).detach()


@pytest.mark.parametrize("energy", GRAPHS, ids=["complete", "radius", "inverse_square"])
@pytest.mark.parametrize("task", TASKS)
def test_schnetpack_pipeline_springs_give_the_in_step_loss(db, task, energy):
    from schnetpack_ext.transforms import SPRING_K

    module = schnetpack_task(task, "energy", **energy)
    piped = schnetpack_batch(db, task, "energy", **energy)
    plain = schnetpack_batch(db, task, "energy", springs=False)
    assert SPRING_K in piped and SPRING_K not in plain
    if task != "structure":  # as a config without the transforms: the step lists the pairs itself
        plain = {k: v for k, v in plain.items() if not k.startswith("_idx_i") and not k.startswith("_idx_j")
                 and k not in ("_offsets", "_complete_pairs")}
    with_pipeline, in_step = _step_loss(module, piped), _step_loss(module, plain)
    assert torch.isfinite(in_step) and in_step > 0
    torch.testing.assert_close(with_pipeline, in_step, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("energy", GRAPHS, ids=["complete", "radius", "inverse_square"])
@pytest.mark.parametrize("task", TASKS)
def test_torchmdnet_pipeline_springs_give_the_in_step_loss(task, energy):
    from torchmdnet_ext.springs import PAIRS

    module = torchmd_module(task, "energy", **energy)
    piped, plain = torchmd_batch(task, "energy", **energy), torchmd_batch(task, "energy", springs=False)
    assert PAIRS in piped and PAIRS not in plain
    with_pipeline, in_step = _step_loss(module, piped), _step_loss(module, plain)
    assert torch.isfinite(in_step) and in_step > 0
    torch.testing.assert_close(with_pipeline, in_step, rtol=1e-6, atol=0.0)


def test_pipeline_springs_equal_resolve_springs_of_the_batch(db):
    """Collated per-molecule springs (offsets added in the step) are those of the whole batch at once."""
    from energyloss_plugins import resolve_springs
    from schnetpack_ext.transforms import batch_springs

    batch = schnetpack_batch(db, "structure", "energy")
    springs = batch_springs(batch)
    direct = resolve_springs(batch["target_positions"], batch["_idx_m"], numbers=batch["_atomic_numbers"])
    key = springs.pairs[0] * 1000 + springs.pairs[1]
    order, direct_order = torch.argsort(key), torch.argsort(direct.pairs[0] * 1000 + direct.pairs[1])
    assert torch.equal(springs.pairs[:, order], direct.pairs[:, direct_order])
    torch.testing.assert_close(springs.springs[order], direct.springs[direct_order])
    torch.testing.assert_close(springs.distances[order], direct.distances[direct_order])


def test_rigid_sparse_graph_is_fixed_per_molecule_whatever_its_batch_position():
    """Reversing the batch order permutes the per-molecule losses: each molecule keeps its own graph."""
    from torch_geometric.data import Batch

    from _steps import torchmd_data
    from torchmdnet_ext.springs import PAIRS, batch_springs

    options = {"graph": "rigid_sparse", "graph_kwargs": {"seed": 3, "pool_size": 8}}
    first, again = torchmd_data("structure", "energy", **options), torchmd_data("structure", "energy", **options)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(getattr(a, PAIRS), getattr(b, PAIRS))
    config = LossConfig("energy", graph="rigid_sparse", graph_kwargs=options["graph_kwargs"])
    big = torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    members = {tuple(map(tuple, config.structure_springs(big, key=k).pairs.T.tolist())) for k in range(16)}
    assert len(members) > 1  # different molecules draw different pool members

    forward, backward = Batch.from_data_list(first), Batch.from_data_list(first[::-1])
    per_molecule = [batch_springs(b).loss(b.pos, reduction="none") for b in (forward, backward)]
    torch.testing.assert_close(per_molecule[0], per_molecule[1].flip(0))


def test_shipped_experiments_list_the_pipeline_transforms():
    import schnetpack_ext

    root = os.path.join(os.path.dirname(schnetpack_ext.__file__), "configs", "experiment")
    for name in ("energyloss_structure", "energyloss_diffusion", "energyloss_generation"):
        with open(os.path.join(root, f"{name}.yaml")) as f:
            targets = [t["_target_"] for t in yaml.safe_load(f)["data"]["transforms"]]
        assert targets.index("schnetpack_ext.PairSpringsTransform") > targets.index("schnetpack.transform.CastTo32")
        if name != "energyloss_structure":
            assert "schnetpack_ext.CompleteNeighborList" in targets


def test_loss_config_is_validated_once_with_the_valid_names():
    with pytest.raises(ValueError, match="Valid names: energy, kabsch, mae, mse"):
        LossConfig("enrgy")
    with pytest.raises(ValueError, match="Valid: coefficients, coefficient_kwargs, graph"):
        LossConfig.from_options("energy", {"graf": "complete"})
    with pytest.raises(ValueError, match="graph_kwargs: unknown option"):
        LossConfig(graph="rigid_sparse", graph_kwargs={"sed": 1})
    with pytest.raises(ValueError, match="Valid: k0, length_scale"):
        LossConfig(coefficient_kwargs={"k": 1.0})
    config = LossConfig.from_options("mse", {"coefficients": "exp", "reduction": "sum"})
    assert config.call_kwargs() == {"reduction": "sum", "normalize": True}  # energy options unused by baselines
    assert LossConfig.from_options(config.name, config.options()) == config

