"""No host synchronisation from our code in a training step (forward, loss, backward), for every task ×
adapter × loss: each step runs under a dispatch mode recording the ops that make the host wait for the
device (``_local_scalar_dense``, ``nonzero``, ``unique``, ``masked_select``, ``repeat_interleave``
without an output size, ``equal``, ``is_nonzero``, ``bincount``, boolean-mask indexing) with their
Python frame. The host frameworks' own synchronisations are reported beside ours (run with ``-s``).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("schnetpack")
pytest.importorskip("torchmdnet")

from _steps import LOSSES, TASKS, molecule_db, schnetpack_batch, schnetpack_task, torchmd_batch, torchmd_module  # noqa: E402
from _sync import SyncRecorder  # noqa: E402

COUNTS: dict[str, tuple[int, int]] = {}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return molecule_db(str(tmp_path_factory.mktemp("sync_db")))


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    print("\nhost synchronisations per training step (ours / host framework's):")
    for key, (ours, host) in sorted(COUNTS.items()):
        print(f"  {key:32s} {ours:3d} / {host:3d}")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("adapter", ["schnetpack", "torchmdnet"])
def test_training_step_has_no_host_synchronisation_from_our_code(db, adapter, task, loss):
    if adapter == "schnetpack":
        module, batch = schnetpack_task(task, loss), schnetpack_batch(db, task, loss)
    else:
        module, batch = torchmd_module(task, loss), torchmd_batch(task, loss)
    module.train()
    with SyncRecorder() as recorder:
        value = module.training_step(batch, 0)
        value.backward()
    COUNTS[f"{adapter}/{task}/{loss}"] = (len(recorder.ours), len(recorder.host))
    assert torch.isfinite(value.detach())
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())
    assert not recorder.ours, "host synchronisations from our code:\n" + "\n".join(
        f"  {op} at {where}" for op, where in recorder.ours)
