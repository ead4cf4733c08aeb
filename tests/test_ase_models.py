"""Models from ASE scripts: TorchMD-Net / SchNetPack calculators in the spring fit, structure and
diffusion model helpers (issue 6, items 2 and 4)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("ase")

from ase.build import molecule  # noqa: E402
from ase.io import read  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from energyloss_plugins.ase import (  # noqa: E402
    TorchMDNetCalculator,
    coefficients_from_calculator,
    compute_hessian,
    fit_springs,
    predict_structures,
    sample_structures,
)

torch.set_num_threads(1)


def _tiny_torchmdnet():
    pytest.importorskip("torchmdnet")
    from torchmdnet.models.model import create_model

    args = dict(
        model="tensornet",
        embedding_dimension=16,
        num_layers=1,
        num_rbf=8,
        rbf_type="expnorm",
        trainable_rbf=False,
        activation="silu",
        cutoff_lower=0.0,
        cutoff_upper=5.0,
        max_z=20,
        max_num_neighbors=32,
        equivariance_invariance_group="O(3)",
        derivative=True,
        atom_filter=-1,
        prior_model=None,
        output_model="Scalar",
        reduce_op="add",
        precision=64,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_model(args)


def test_torchmdnet_calculator_forces_hessian_and_fit():
    model = _tiny_torchmdnet()
    atoms = molecule("H2O")
    calc = TorchMDNetCalculator(model)
    atoms.calc = calc
    forces = atoms.get_forces()
    # Forces are minus the gradient of the energy.
    d = 1e-4
    p = atoms.copy()
    p.calc = calc
    p.positions[1, 2] += d
    e_plus = p.get_potential_energy()
    p.positions[1, 2] -= 2 * d
    e_minus = p.get_potential_energy()
    assert forces[1, 2] == pytest.approx(-(e_plus - e_minus) / (2 * d), abs=1e-6)
    # Autograd Hessian (double backward) agrees with finite differences of the forces.
    analytic = calc.get_hessian(atoms)
    fd = compute_hessian(atoms, calc, method="finite_difference", delta=1e-3)
    np.testing.assert_allclose(analytic, fd, atol=1e-4 * max(1.0, np.abs(analytic).max()))
    pairs, k, report = coefficients_from_calculator(atoms, calc)
    assert report.hessian_method == "analytic" and report.n_pairs == 3
    np.testing.assert_allclose(k.numpy(), fit_springs(analytic, atoms, pairs), atol=1e-10)
    # Unit conversion: the same model read as kcal/mol.
    kcal = TorchMDNetCalculator(model, energy_unit="kcal/mol")
    assert kcal.get_potential_energy(atoms.copy()) == pytest.approx(atoms.get_potential_energy() * 0.0433641, rel=1e-5)


def test_schnetpack_calculator_in_spring_fit():
    spk = pytest.importorskip("schnetpack")
    import schnetpack.transform as trn

    cutoff = 5.0
    torch.manual_seed(0)
    rep = spk.representation.SchNet(
        n_atom_basis=16,
        n_interactions=1,
        radial_basis=spk.nn.GaussianRBF(n_rbf=8, cutoff=cutoff),
        cutoff_fn=spk.nn.CosineCutoff(cutoff),
    )
    model = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=16, output_key="energy"),
            spk.atomistic.Forces(energy_key="energy", force_key="forces"),
        ],
    )
    calc = spk.interfaces.SpkCalculator(
        model=model,
        neighbor_list=trn.ASENeighborList(cutoff=cutoff),
        energy_key="energy",
        force_key="forces",
        energy_unit="eV",
        position_unit="Ang",
        dtype=torch.float64,
    )
    atoms = molecule("NH3")
    hessian = compute_hessian(atoms, calc, delta=1e-3)
    assert np.abs(hessian - hessian.T).max() < 1e-8  # symmetrised
    pairs, k, report = coefficients_from_calculator(atoms, calc, delta=1e-3)
    assert report.hessian_method == "finite_difference" and report.n_calls == 6 * 4 + 1
    np.testing.assert_allclose(k.numpy(), fit_springs(hessian, atoms, pairs), atol=1e-8)
    assert np.isfinite(report.rel_frobenius_error) and report.max_force > 0  # a random model: not a minimum


def test_predict_structures_rigid_motion_model_is_undone(tmp_path):
    images = [molecule("CH3CH2OH"), molecule("NH3")]
    rot = torch.tensor(Rotation.random(random_state=0).as_matrix(), dtype=torch.float32)

    def model(positions, numbers):  # a "model" predicting the input in another frame
        assert positions.dtype == torch.float32 and numbers.dtype == torch.long
        return positions @ rot.T + 3.0

    path = tmp_path / "pred.extxyz"
    out = predict_structures(model, images, output=str(path))
    assert [a.get_chemical_formula() for a in out] == [a.get_chemical_formula() for a in images]
    for a, b in zip(out, images):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-5)  # aligned back onto the input
    assert len(read(path, index=":")) == 2
    raw = predict_structures(model, images[1], align_to_input=False)
    assert np.abs(raw[0].positions - images[1].positions).max() > 0.5

    calls = []

    def batched(positions, numbers, batch):
        calls.append(int(batch.max()) + 1)
        return positions

    predict_structures(batched, images * 3, batched=True, batch_size=4)
    assert calls == [4, 2]
    with pytest.raises(ValueError, match="shape"):
        predict_structures(lambda p, z: p[:-1], images)


def test_sample_structures_with_x0_denoiser(tmp_path):
    templates = [molecule("CH4"), molecule("H2O")]
    targets = [torch.tensor(t.positions - t.positions.mean(0), dtype=torch.float32) for t in templates]
    target = torch.cat(targets)

    def denoiser(x_t, t, batch, numbers):  # a perfect x0 model of two fixed structures
        assert x_t.shape == target.shape and numbers.shape == (8,)
        return target

    out = sample_structures(
        denoiser, templates, parameterization="x0", steps=10, method="ddim", output=str(tmp_path / "gen.xyz")
    )
    assert [a.get_chemical_formula() for a in out] == ["CH4", "H2O"]
    for a, t in zip(out, targets):
        np.testing.assert_allclose(a.positions, t.numpy(), atol=1e-5)
    assert len(read(tmp_path / "gen.xyz", index=":")) == 2
    # Element lists work as templates too.
    out2 = sample_structures(denoiser, [[6, 1, 1, 1, 1], [8, 1, 1]], parameterization="x0", steps=5)
    assert out2[1].get_chemical_symbols() == ["O", "H", "H"]
