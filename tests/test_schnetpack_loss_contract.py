"""The SchNetPack outputs call their loss one way: ``loss_fn(pred, target, context)`` (schnetpack_ext.losses).

Each output's value, computed through the task's own hooks (``_prepare``, ``apply_constraints``), must
agree with the core objective configured with the same loss (an independent path: the objective
resolves the springs from the reference itself), and a custom callable must receive what the
contract promises (x̂ and the clean x per structure for diffusion and generation, the clean atomic
numbers for generation, whose network sees dummy ones).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("schnetpack")

import schnetpack.properties as P  # noqa: E402

from _steps import ELEMENTS, N_MOLECULES, molecule_db, schnetpack_batch, schnetpack_task  # noqa: E402
from energyloss_plugins.generation import GenerationObjective  # noqa: E402
from energyloss_plugins.tasks import DiffusionObjective, StructureObjective  # noqa: E402
from schnetpack_ext import DiffusionOutput, EnergyLoss, GenerationOutput, LossContext  # noqa: E402


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return molecule_db(str(tmp_path_factory.mktemp("contract_db")))


def _output_and_targets(task, batch):
    """The task's output, the model's predictions and the ``targets`` its loss sees in a validation step."""
    output = task.outputs[0]
    new, extra = task._prepare(batch, 0, "val")  # seeded noise (diffusion, generation); the batch itself otherwise
    with task._context(new, extra):
        pred = task.predict_without_postprocessing(dict(new))
        pred, targets = task.apply_constraints(pred, {output.target_property: new[output.target_property]})
    return output, pred, targets


@pytest.mark.parametrize("loss", ["energy", "mse"])
def test_structure_output_agrees_with_the_core_objective(db, loss):
    task = schnetpack_task("structure", loss)
    output, pred, targets = _output_and_targets(task, schnetpack_batch(db, "structure", loss))
    with torch.no_grad():
        value = output.calculate_loss(pred, targets)
        expected = StructureObjective(loss).loss(pred[output.name], targets["target_positions"], targets[P.idx_m])
    assert torch.allclose(value, output.loss_weight * expected, rtol=1e-5)


@pytest.mark.parametrize("loss", ["energy", "mse"])
def test_diffusion_output_hands_x_hat_and_x_to_its_loss(db, loss):
    task = schnetpack_task("diffusion", loss)
    output, pred, targets = _output_and_targets(task, schnetpack_batch(db, "diffusion", loss))
    noised = targets["_noised"]
    calls = []

    def recording(x_hat, x, context):
        calls.append((x, context))
        return EnergyLoss(loss)(x_hat, x, context)

    with torch.no_grad():
        value = output.calculate_loss(pred, targets)
        core = DiffusionObjective(loss, output.objective.parameterization, max_weight=output.objective.max_weight)
        expected = core.loss(pred[output.name], noised, targets[P.idx_m])
        custom = DiffusionOutput(output.name, loss_fn=recording, parameterization=output.objective.parameterization,
                                 max_weight=output.objective.max_weight)
        assert torch.equal(custom.calculate_loss(pred, targets), value)
    assert torch.allclose(value, expected, rtol=1e-5)
    (x, context), = calls
    assert torch.equal(x, noised["x0"]) and torch.equal(context.idx_m, targets[P.idx_m])
    assert context.reduction == "none" and context.n_structures == N_MOLECULES and not context.validate_args


@pytest.mark.parametrize("loss", ["energy", "mse"])
def test_generation_output_hands_the_clean_atomic_numbers(db, loss):
    task = schnetpack_task("generation", loss)
    batch = schnetpack_batch(db, "generation", loss)
    output, pred, targets = _output_and_targets(task, batch)
    assert not bool(targets[P.Z].any())  # the network's input: dummy atomic numbers
    noised = targets["_noised"]
    seen = []

    def recording(x_hat, x, context):
        seen.append(context.numbers)
        return EnergyLoss(loss)(x_hat, x, context)

    with torch.no_grad():
        value = output.calculate_loss(pred, targets)
        core = GenerationObjective(ELEMENTS, loss, position_weight=output.objective.position_weight,
                                   max_weight=output.objective.positions.max_weight)
        expected = core.loss(pred[output.name], pred[output.type_name], noised, targets[P.idx_m])
        custom = GenerationOutput(ELEMENTS, output.name, output.type_name, loss_fn=recording,
                                  position_weight=output.objective.position_weight,
                                  max_weight=output.objective.positions.max_weight)
        assert torch.equal(custom.calculate_loss(pred, targets), value)
    assert torch.allclose(value, expected, rtol=1e-5)
    assert torch.equal(seen[0], batch[P.Z])


def test_energy_loss_without_context_is_one_structure():
    torch.manual_seed(0)
    pred, target = torch.randn(5, 3), torch.randn(5, 3)
    one = LossContext(torch.zeros(5, dtype=torch.long), 1)
    split = LossContext(torch.tensor([0, 0, 0, 1, 1]), 2)
    loss = EnergyLoss()
    assert torch.equal(loss(pred, target), loss(pred, target, one))
    assert not torch.allclose(loss(pred, target), loss(pred, target, split))  # pairs across structures count
