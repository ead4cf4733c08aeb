"""DDP: 2 optimiser steps with 2 CPU processes (gloo) equal the same 2 steps in one process.

Each rank sees half of every global batch (structures r, r+2, ... in order); the
per-structure mean loss averaged over the two ranks equals the single-process loss on the whole
batch, and DDP's gradient averaging gives the same Adam updates.
"""

import copy
import json
import os

import pytest
import torch

pytest.importorskip("schnetpack")
pytest.importorskip("rdkit")
pl = pytest.importorskip("pytorch_lightning")

from _schnetpack_helpers import InterleavedSampler, RecordSteps, loader, structure_task, tiny_structure_db  # noqa: E402

PER_RANK = 3  # structures per rank and step


def _fit(task, datapath, directory, devices):
    from pytorch_lightning.strategies import DDPStrategy

    os.makedirs(directory, exist_ok=True)
    # Rank r takes structures r, r+2, ... in order (Lightning's own DistributedSampler would reshuffle).
    data = loader(datapath, indices=range(4 * PER_RANK), batch_size=PER_RANK * (2 if devices == 1 else 1),
                  sampler=InterleavedSampler(4 * PER_RANK))
    strategy = DDPStrategy(start_method="spawn", process_group_backend="gloo") if devices > 1 else "auto"
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[RecordSteps(directory)],
                         use_distributed_sampler=False)
    trainer.fit(task, train_dataloaders=data)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["energy"])
def test_ddp_two_processes_match_one_process(tmp_path_factory, loss):
    datapath = tiny_structure_db(str(tmp_path_factory.mktemp("spk_ddp_db")))
    out = tmp_path_factory.mktemp("spk_ddp")
    torch.manual_seed(0)
    task = structure_task(loss, lr=1e-2)
    initial = {k: v.clone() for k, v in task.state_dict().items()}

    _fit(copy.deepcopy(task), datapath, str(out / "single"), devices=1)
    _fit(copy.deepcopy(task), datapath, str(out / "ddp"), devices=2)

    single = json.loads((out / "single" / "losses_rank0.json").read_text())
    rank0 = json.loads((out / "ddp" / "losses_rank0.json").read_text())
    rank1 = json.loads((out / "ddp" / "losses_rank1.json").read_text())
    assert len(single) == len(rank0) == len(rank1) == 2
    for s, a, b in zip(single, rank0, rank1, strict=True):
        assert abs(s - (a + b) / 2) <= 1e-5 * abs(s) + 1e-8, (single, rank0, rank1)

    p_single = torch.load(out / "single" / "params_rank0.pt")
    p0 = torch.load(out / "ddp" / "params_rank0.pt")
    p1 = torch.load(out / "ddp" / "params_rank1.pt")
    moved = 0
    for key, value in p_single.items():
        assert torch.allclose(p0[key], p1[key], atol=0, rtol=0), key  # ranks stay in sync
        assert torch.allclose(p0[key], value, atol=2e-6, rtol=1e-4), (key, (p0[key] - value).abs().max())
        moved += int(not torch.equal(value, initial[key]))
    assert moved > 0
