"""TorchMD-Net ``task: generation``: blind to clean types, equivariant, trains, samples, console script."""

from __future__ import annotations

import glob

import numpy as np
import pytest
import torch

pytest.importorskip("torchmdnet")
pytest.importorskip("ase")

import torchmdnet_ext  # noqa: E402
from _torchmdnet_args import tiny_model_args  # noqa: E402
from energyloss_plugins.alignment import random_rotations  # noqa: E402
from energyloss_plugins.generation import AtomCountDistribution  # noqa: E402
from torchmdnet_ext.generation import DUMMY_Z, FeatureEmbedding, denoise, feature_inputs  # noqa: E402

torch.set_num_threads(1)

ARCHS = ["tensornet", "equivariant-transformer"]
ELEMENTS = [1, 6, 7, 8]


def _module(arch: str, **overrides) -> torchmdnet_ext.PositionLNNP:
    torch.manual_seed(0)
    args = tiny_model_args(arch, "NoiseOutput", task="generation", elements=ELEMENTS, cutoff_upper=8.0,
                           train_loss="energy_loss", train_loss_arg={"coefficients": "exp", "graph": "complete"})
    args.update(overrides)
    return torchmdnet_ext.PositionLNNP(args)


def _molecules():
    """Two small molecules (H2O-like and NH3-like shapes) as a flat batch."""
    z = torch.tensor([8, 1, 1, 7, 1, 1, 1])
    pos = torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0],
                        [0.0, 0, 0], [1.01, 0, 0], [-0.34, 0.95, 0], [-0.34, -0.48, 0.82]])
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    return z, pos, batch


def _perturb(module):
    """Non-zero weights in the zero-initialised output layers, so the outputs depend on the inputs."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in module.model.output_model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("arch", ARCHS)
def test_network_cannot_read_clean_types(arch):
    module = _module(arch)
    _perturb(module)
    model = module.model
    # every atom-type table of the representation is replaced by the continuous-input embedding
    assert not any(isinstance(m, torch.nn.Embedding) for m in model.modules())
    assert any(isinstance(m, FeatureEmbedding) for m in model.modules())
    z, pos, batch = _molecules()
    noised = module.objective.noise(pos, z, batch, generator=torch.Generator().manual_seed(1))
    out_x, out_h = denoise(model, noised["x_t"], noised["h_t"], noised["t"], batch)
    # the same noisy state with other clean types: noise a batch of carbons with the same generator
    other = module.objective.noise(pos, torch.full_like(z, 6), batch, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other["h0"], noised["h0"]) and torch.equal(other["x_t"], noised["x_t"])
    other_x, other_h = denoise(model, noised["x_t"], noised["h_t"], other["t"], batch)
    assert torch.equal(other_x, out_x) and torch.equal(other_h, out_h)
    # whatever atomic numbers reach the representation, its features are the same
    features = torch.cat([noised["h_t"], noised["t"][batch, None]], dim=-1)
    with feature_inputs(model.representation_model, features):
        a = model.representation_model(torch.full_like(z, DUMMY_Z), noised["x_t"], batch)[0]
        b = model.representation_model(z, noised["x_t"], batch)[0]
    assert torch.equal(a, b)
    # ... while the noisy type features do reach it
    h_changed = noised["h_t"] + 0.5
    changed_x, changed_h = denoise(model, noised["x_t"], h_changed, noised["t"], batch)
    assert not torch.allclose(changed_h, out_h) and not torch.allclose(changed_x, out_x)
    with pytest.raises(RuntimeError, match="denoise"):
        model.representation_model(z, pos, batch)


@pytest.mark.parametrize("arch", ARCHS)
def test_denoiser_equivariant_and_com_free(arch):
    module = _module(arch)
    _perturb(module)
    z, pos, batch = _molecules()
    noised = module.objective.noise(pos, z, batch, generator=torch.Generator().manual_seed(2))
    x_t, h_t, t = noised["x_t"], noised["h_t"], noised["t"]
    out_x, out_h = denoise(module.model, x_t, h_t, t, batch)
    assert torch.allclose(out_x[:3].mean(0), torch.zeros(3), atol=1e-5)  # ε_x in the CoM-free subspace
    rot = random_rotations(1, generator=torch.Generator().manual_seed(3))[0]
    rot_x, rot_h = denoise(module.model, x_t @ rot.T, h_t, t, batch)
    assert torch.allclose(rot_x, out_x @ rot.T, atol=1e-4) and torch.allclose(rot_h, out_h, atol=1e-4)
    perm = torch.tensor([2, 0, 1, 6, 4, 3, 5])  # atoms permuted within their molecules
    perm_x, perm_h = denoise(module.model, x_t[perm], h_t[perm], t, batch)
    assert torch.allclose(perm_x, out_x[perm], atol=1e-5) and torch.allclose(perm_h, out_h[perm], atol=1e-5)


def test_short_training_lowers_the_loss():
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader

    module = _module("equivariant-transformer", lr=3e-3)
    z, pos, batch = _molecules()
    data = [Data(z=z[batch == b], pos=pos[batch == b], pos_target=pos[batch == b]) for b in (0, 1)] * 4
    loader = DataLoader(data, batch_size=8)
    fixed = next(iter(loader))

    def held_out_loss():  # the same 16 noise draws before and after (validation seeds by batch index)
        total = 0.0
        with torch.no_grad():
            for k in range(16):
                module._eval_batch_idx = k
                total += float(module.step(fixed, [("energy_loss", module.objective)], "val"))
        return total / 16

    before = held_out_loss()
    opt = torch.optim.Adam(module.model.parameters(), lr=3e-3)
    torch.manual_seed(1)
    for _ in range(60):
        for b in loader:
            opt.zero_grad()
            module.step(b, [("energy_loss", module.objective)], "train").backward()
            opt.step()
    after = held_out_loss()
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("arch", ARCHS)
def test_samples_are_atoms_with_training_elements(arch):
    module = _module(arch)
    with pytest.raises(ValueError, match="histogram"):
        module.sample_molecules(2, steps=2, progress=False)
    module.atom_counts = AtomCountDistribution.from_counts([3, 4, 4, 6])
    mols = module.sample_molecules(6, steps=4, seed=0, batch_size=4, progress=False)
    assert len(mols) == 6
    for m in mols:
        assert len(m) in (3, 4, 6) and set(m.numbers.tolist()) <= set(ELEMENTS)
        assert np.isfinite(m.positions).all() and np.allclose(m.positions.mean(0), 0, atol=1e-3)
    again = module.sample_molecules(6, steps=4, seed=0, batch_size=4, progress=False)
    assert all(np.array_equal(a.numbers, b.numbers) and np.allclose(a.positions, b.positions)
               for a, b in zip(mols, again, strict=True))
    other = module.sample_molecules(6, steps=4, seed=1, batch_size=4, progress=False)
    assert not all(len(a) == len(b) and np.allclose(a.positions, b.positions) for a, b in zip(mols, other, strict=True))


def test_generation_hparams_errors():
    from torchmdnet_ext.module import prepare_hparams

    with pytest.raises(ValueError, match="--elements"):
        prepare_hparams(tiny_model_args(output_model="NoiseOutput", task="generation"))
    h = prepare_hparams(tiny_model_args(output_model="NoiseOutput", task="generation", elements="8,1,6"))
    assert h["elements"] == [1, 6, 8] and h["max_weight"] is None  # generation: no clip, mse = exact ε-MSE
    assert prepare_hparams(tiny_model_args(output_model="NoiseOutput", task="diffusion"))["max_weight"] == 1000.0
    with pytest.raises(ValueError, match="representations"):
        _module("tensornet", model="tensornet2")


@pytest.mark.slow
def test_console_script_trains_on_a_builder_database_and_samples(tmp_path, capsys):
    pytest.importorskip("rdkit")
    from energyloss_plugins.data import build_dataset
    from energyloss_plugins.metrics import generation_metrics
    from torchmdnet_ext.cli import main

    smi = tmp_path / "mols.smi"
    smi.write_text("\n".join(["CCO", "CC=O", "CCN", "C=CC", "CC#N", "OCO", "NCO", "CCC", "COC", "CNC"]) + "\n")
    db = tmp_path / "data.db"
    build_dataset(str(smi), db, inputs=("uff",), seed=0, progress=False)
    argv = ["--conf", "generation_tensornet", "--dataset-root", str(db),
            "--dataset-arg", "{input_kinds: [uff]}", "--elements", "1,6,7,8", "--embedding-dimension", "16",
            "--num-layers", "1", "--num-rbf", "8", "--batch-size", "4", "--num-epochs", "2",
            "--log-dir", str(tmp_path / "run")]
    main(argv)
    ckpt = sorted(glob.glob(str(tmp_path / "run" / "epoch=1-*.ckpt")))[0]
    module = torchmdnet_ext.load_generation_model(ckpt)
    # the checkpoint alone samples: elements from the hyper-parameters, histogram of the train split
    assert module.hparams.elements == [1, 6, 7, 8]
    assert 6 <= module.atom_counts.max_atoms <= 12
    mols = module.sample_molecules(4, steps=3, seed=0, progress=False)
    assert len(mols) == 4 and all(set(m.numbers.tolist()) <= {1, 6, 7, 8} for m in mols)
    assert generation_metrics(mols)["n"] == 4
    # the adapter's loader (energyloss-sample) restores the histogram too, and samples the same
    from torchmdnet_ext import adapter

    loaded = adapter.load(ckpt)
    assert loaded.atom_counts.histogram == module.atom_counts.histogram
    again = loaded.sample_molecules(4, steps=3, seed=0, progress=False)
    assert all(np.allclose(a.positions, b.positions) for a, b in zip(mols, again, strict=True))
    # elements outside `elements` are refused at the start of training, in one line whose hint (from
    # every split, not only the training one) names the option
    capsys.readouterr()
    assert main([*argv[:-1], str(tmp_path / "run2"), "--elements", "1,6"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("energyloss-torchmd-train")]
    assert len(err) == 1 and "outside --elements 1,6" in err[0] and "pass --elements 1,6,7,8" in err[0], err
