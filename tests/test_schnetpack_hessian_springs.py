"""``coefficients: hessian`` through SchNetPack: springs fitted to MMFF94's Hessian, stored with
``add_springs_to_db``, loaded by SchNetPack's ``ASEAtomsData`` (``load_properties``) and emitted by
``PairSpringsTransform``; the step's loss equals an independent evaluation on the stored springs, and
training without the springs fails before the first step with the fix named."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("schnetpack")
pytest.importorskip("rdkit")

import pytorch_lightning as pl  # noqa: E402

from _schnetpack_helpers import structure_task  # noqa: E402

LOAD = ["target_positions", "spring_pairs", "spring_k"]
HESSIAN = {"coefficients": "hessian"}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    from energyloss_plugins.ase import MMFFCalculator, add_springs_to_db
    from energyloss_plugins.data import build_dataset

    directory = tmp_path_factory.mktemp("hessian_db")
    smi = directory / "small.smi"
    smi.write_text("\n".join(["CCO", "CC=O", "CCN", "COC"]) + "\n")
    path = str(directory / "springs.db")
    build_dataset(str(smi), path, method="mmff", inputs=("thermal",), n_thermal=1, temperature=1000.0, seed=0,
                  progress=False)
    assert add_springs_to_db(path, MMFFCalculator, graph="complete", k_min=1e-2) == 4
    return path


def _loader(db, transforms_springs: bool = True, load=LOAD):
    import schnetpack as spk
    import schnetpack.transform as trn

    from schnetpack_ext import PairSpringsTransform

    transforms = [trn.MatScipyNeighborList(cutoff=5.0), trn.CastTo32()]
    if transforms_springs:
        transforms.append(PairSpringsTransform(**HESSIAN))
    dataset = spk.data.ASEAtomsData(db, load_properties=list(load), transforms=transforms)
    return spk.data.AtomsLoader(dataset, batch_size=4, shuffle=False, num_workers=0)


def _trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", **kwargs)


def _independent_loss(db, pred: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """mean_b (1/n_b) Σ_{i<j} ½ k_ij (|p_i − p_j| − |y_i − y_j|)² with the springs read straight from the rows
    as a dense (n_b, n_b) matrix per molecule (float64)."""
    from ase.db import connect

    from energyloss_plugins.ase import springs_from_data

    values, start = [], 0
    with connect(db) as conn:
        for i in idx.tolist():
            row = conn.get(id=i + 1)
            n = row.natoms
            pairs, k = springs_from_data(row.data)
            dense = torch.zeros(n, n, dtype=torch.float64)
            dense[pairs[0], pairs[1]] = k
            dense = torch.triu(dense + dense.T)  # each unordered pair once, whichever order it was stored in
            y = torch.tensor(np.array(row.data["target_positions"]), dtype=torch.float64)
            p = pred[start:start + n].double()
            stretch = torch.cdist(p, p) - torch.cdist(y, y)
            values.append((0.5 * dense * stretch**2).sum() / n)
            start += n
    return torch.stack(values).mean()


def test_step_loss_equals_independent_evaluation_on_stored_springs(db):
    from energyloss_plugins import pair_energy_loss
    from energyloss_plugins.ase import collate_springs, springs_from_data
    from schnetpack_ext.transforms import SPRING_K, STORED_SPRINGS

    batch = next(iter(_loader(db)))
    assert SPRING_K in batch and not set(STORED_SPRINGS) & set(batch)  # raw keys replaced by offset-free ones
    torch.manual_seed(0)
    task = structure_task(**HESSIAN)
    task.train()
    loss = task.training_step(dict(batch), 0)
    loss.backward()
    grads = [p.grad for p in task.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and loss > 0 and grads and all(torch.isfinite(g).all() for g in grads)

    with torch.no_grad():
        pred = task.model(dict(batch))["positions_pred"]
    expected = _independent_loss(db, pred, batch["_idx"])
    torch.testing.assert_close(loss.detach().double(), expected, rtol=1e-6, atol=0.0)
    # and the functional loss with the same stored springs collated by the core's helper
    from ase.db import connect

    with connect(db) as conn:
        stored = [springs_from_data(conn.get(id=i + 1).data) for i in batch["_idx"].tolist()]
    edge_index, k = collate_springs(stored, batch["_n_atoms"].tolist())
    functional = pair_energy_loss(pred.double(), batch["target_positions"].double(), batch["_idx_m"],
                                  edge_index=edge_index, coefficients=k)
    torch.testing.assert_close(loss.detach().double(), functional, rtol=1e-6, atol=0.0)


def test_trainer_fits_on_stored_springs(db):
    torch.manual_seed(0)
    task = structure_task(lr=3e-3, **HESSIAN)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(max_steps=2).fit(task, _loader(db))
    assert any(not torch.equal(before[k], v) for k, v in task.state_dict().items())


@pytest.mark.parametrize("case", ["no_transform", "not_loaded"])
def test_training_without_stored_springs_fails_before_the_first_step(db, case):
    loader = _loader(db, transforms_springs=False) if case == "no_transform" else _loader(db, load=["target_positions"])
    task = structure_task(**HESSIAN)
    expected = "PairSpringsTransform" if case == "no_transform" else "spring_pairs or spring_k in data.load_properties"
    with pytest.raises(ValueError, match=expected) as error, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(max_steps=1).fit(task, loader)
    assert "add_springs_to_db" in str(error.value)


def test_missing_springs_name_the_fix_in_the_transform_and_the_loss():
    from schnetpack_ext import EnergyLoss, PairSpringsTransform

    sample = {"_idx": torch.tensor([0]), "_atomic_numbers": torch.tensor([8, 1, 1]),
              "target_positions": torch.randn(3, 3)}
    with pytest.raises(KeyError, match="add_springs_to_db"):
        PairSpringsTransform(**HESSIAN)(sample)
    with pytest.raises(ValueError, match="PairSpringsTransform"):
        EnergyLoss(**HESSIAN)(torch.randn(3, 3), torch.randn(3, 3))
