"""End to end: Hessian-fitted springs stored in a dataset drive the training loss (issue 6).

MMFF references → springs fitted to the MMFF Hessian → stored per row of an ASE db → Boltzmann
samples of each row's surrogate at 300 K as noisy inputs → a small E(3)-equivariant denoiser
and the TorchMD-Net adapter's TensorNet position model, trained with
``pair_energy_loss(edge_index=pairs, coefficients=k)`` (the "hessian" coefficient scheme) in plain
PyTorch loops: the adapters' Lightning tasks do not carry per-structure springs through batches yet.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ase")
pytest.importorskip("rdkit")

import ase.db  # noqa: E402
from ase.build import molecule  # noqa: E402

from energyloss_plugins import aligned_rmsd  # noqa: E402
from energyloss_plugins.ase import (  # noqa: E402
    EnergyLossCalculator,
    MMFFCalculator,
    add_springs_to_db,
    boltzmann_sample,
    collate_springs,
    mmff_relax,
    springs_from_data,
)
from energyloss_plugins.losses import call_loss  # noqa: E402

torch.set_num_threads(1)

MOLECULES = ["CH3CH2OH", "CH3OCH3", "H3CNH2", "CH3OH", "NH3", "C3H8"]


class PairDenoiser(torch.nn.Module):
    """x̂_i = x_i + Σ_j φ(d_ij, z_i, z_j) (x_i − x_j)/d_ij: an E(3)-equivariant one-layer displacement model."""

    def __init__(self, hidden: int = 32, n_rbf: int = 16, cutoff: float = 4.0):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.5, cutoff, n_rbf))
        self.embed = torch.nn.Embedding(10, 8)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(n_rbf + 16, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden, 1),
        )
        torch.nn.init.zeros_(self.mlp[-1].weight)
        torch.nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        i, j = torch.nonzero((batch[:, None] == batch[None, :]) & ~torch.eye(len(x), dtype=torch.bool), as_tuple=True)
        vec = x[i] - x[j]
        d = vec.norm(dim=-1, keepdim=True)
        rbf = torch.exp(-4.0 * (d - self.centers) ** 2)
        elem = {1: 0, 6: 1, 7: 2, 8: 3}
        zi = torch.tensor([elem[int(a)] for a in z])
        phi = self.mlp(torch.cat([rbf, self.embed(zi[i]), self.embed(zi[j])], dim=-1))
        return x + torch.zeros_like(x).index_add(0, i, phi * vec / d)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """An ASE db of MMFF-relaxed molecules with springs fitted to the MMFF Hessian."""
    path = str(tmp_path_factory.mktemp("springs") / "refs.db")
    db = ase.db.connect(path)
    for name in MOLECULES:
        db.write(mmff_relax(molecule(name), fmax=1e-4))
    n = add_springs_to_db(path, lambda atoms: MMFFCalculator(atoms), graph="complete", k_min=1e-2)
    assert n == len(MOLECULES)
    return path


def _samples(db_path: str, n_per: int, seed: int) -> list[tuple]:
    """(input Atoms, reference Atoms, springs) triples: 300 K samples of each row's fitted surrogate."""
    out = []
    for row in ase.db.connect(db_path).select():
        ref = row.toatoms()
        springs = springs_from_data(row.data)
        # The harmonic start is already a Boltzmann sample of the surrogate's harmonic part: short runs suffice.
        samples = boltzmann_sample(
            ref,
            300.0,
            n_per,
            calc=EnergyLossCalculator.from_row(row),
            interval=4,
            timestep_fs=1.0,
            friction_per_fs=0.1,
            equilibration=10,
            seed=seed + row.id,
        )
        out += [(s, ref, springs) for s in samples.structures]
    return out


def _batch(items):
    x = torch.tensor(np.concatenate([s.positions for s, _, _ in items]), dtype=torch.float32)
    y = torch.tensor(np.concatenate([r.positions for _, r, _ in items]), dtype=torch.float32)
    z = torch.tensor(np.concatenate([r.numbers for _, r, _ in items]))
    batch = torch.repeat_interleave(torch.arange(len(items)), torch.tensor([len(r) for _, r, _ in items]))
    edge_index, k = collate_springs([sp for _, _, sp in items], [len(r) for _, r, _ in items])
    return x, y, z, batch, edge_index, k.float()


def test_springs_are_fitted_and_stored(dataset):
    for row in ase.db.connect(dataset).select():
        pairs, k = springs_from_data(row.data)
        n = row.natoms
        assert pairs.shape == (2, n * (n - 1) // 2) and float(k.min()) >= 1e-2 - 1e-12
        fit = row.data["spring_fit"]
        assert fit["rel_frobenius_error"] < 0.35 and fit["n_negative_modes"] == 0
        # Stiffest springs are bonds to H (MMFF C–H / N–H / O–H stretches: tens of eV/Å²).
        assert 15 < float(k.max()) < 80


def test_training_with_fitted_springs_reduces_the_loss(dataset):
    torch.manual_seed(0)
    train = _samples(dataset, 8, seed=0)
    test = _samples(dataset, 4, seed=100)
    x, y, z, batch, edge_index, k = _batch(train)
    xt, yt, zt, bt, et, kt = _batch(test)
    options = dict(edge_index=edge_index, coefficients=k)  # the "hessian" coefficient scheme

    model = PairDenoiser()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        opt.zero_grad()
        loss = call_loss("energy", model(x, z, batch), y, batch, **options)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # The model starts as the identity (zero last layer): the first loss is the inputs' energy.
    # A pair model can restore bond lengths (the stiff, element-determined springs), not the
    # thermal bending it cannot see; measured ≈ 0.7 of the initial loss after 300 steps.
    assert losses[0] > 0
    assert np.mean(losses[-10:]) < 0.8 * losses[0], losses[::30]
    with torch.no_grad():
        pred = model(xt, zt, bt)
        test_loss = float(call_loss("energy", pred, yt, bt, edge_index=et, coefficients=kt))
        input_loss = float(call_loss("energy", xt, yt, bt, edge_index=et, coefficients=kt))
        n = int(bt.max()) + 1
        rmsd_pred = aligned_rmsd(pred.double(), yt.double(), bt, n).mean()
        rmsd_in = aligned_rmsd(xt.double(), yt.double(), bt, n).mean()
    # Held-out thermal samples are denoised: lower spring energy and lower aligned RMSD than the inputs.
    assert test_loss < 0.8 * input_loss
    assert rmsd_pred < rmsd_in


def test_torchmdnet_position_model_trains_on_fitted_springs(dataset):
    """The TorchMD-Net adapter's TensorNet + PositionOutput model, trained in a plain loop on the
    stored springs (the adapter's Lightning module does not pass per-structure springs yet)."""
    pytest.importorskip("torchmdnet_ext")
    from torchmdnet.models.model import create_model

    from _torchmdnet_args import tiny_model_args
    from torchmdnet_ext.module import prepare_hparams

    torch.manual_seed(0)
    model = create_model(prepare_hparams(tiny_model_args(num_rbf=16, cutoff_upper=5.0, task="structure")))
    x, y, z, batch, edge_index, k = _batch(_samples(dataset, 8, seed=0))
    xt, yt, zt, bt, et, kt = _batch(_samples(dataset, 4, seed=100))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        pred, _ = model(z, x, batch=batch)
        loss = call_loss("energy", pred, y, batch, edge_index=edge_index, coefficients=k)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Measured: 0.62 of the initial loss after 100 steps, held-out 0.60 of the inputs' energy.
    assert np.mean(losses[-10:]) < 0.8 * losses[0], losses[::10]
    with torch.no_grad():
        pred, _ = model(zt, xt, batch=bt)
        test_loss = float(call_loss("energy", pred, yt, bt, edge_index=et, coefficients=kt))
    assert test_loss < 0.8 * float(call_loss("energy", xt, yt, bt, edge_index=et, coefficients=kt))
