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
    coefficients_from_calculator,
    compute_hessian,
    fit_springs,
    predict_structures,
    sample_structures,
)

torch.set_num_threads(1)


#: A tiny TensorNet potential (energy head, float64) in TorchMD-Net's hyper-parameter layout.
_TINY_ARGS = dict(
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


def _tiny_torchmdnet():
    pytest.importorskip("torchmdnet")
    from torchmdnet.models.model import create_model

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_model(dict(_TINY_ARGS))


def test_torchmdnet_calculator_forces_hessian_and_fit():
    model = _tiny_torchmdnet()
    atoms = molecule("H2O")
    from torchmdnet_ext import TorchMDNetCalculator

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


def test_torchmdnet_calculator_from_checkpoint_agrees_with_upstream_calculator(tmp_path):
    """A checkpoint path is read as TorchMD-Net's own TMDNETCalculator reads it: same energies and forces as
    upstream's calculator (float32) and as the module itself (float64)."""
    from torchmdnet.calculators import TMDNETCalculator

    from torchmdnet_ext import TorchMDNetCalculator

    model = _tiny_torchmdnet()
    path = tmp_path / "potential.ckpt"
    torch.save({"hyper_parameters": dict(_TINY_ARGS),
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    from_path = TorchMDNetCalculator(str(path))
    atoms = molecule("CH3OH")
    atoms.rotate(33, "y")
    neutral = atoms.copy()
    neutral.info["charge"] = 0  # upstream's calculator needs the charge entry
    upstream, ours32 = TMDNETCalculator(str(path)), TorchMDNetCalculator(str(path), dtype=torch.float32)
    assert ours32.get_potential_energy(neutral) == pytest.approx(upstream.get_potential_energy(neutral), rel=1e-5)
    np.testing.assert_allclose(ours32.get_forces(neutral), upstream.get_forces(neutral), rtol=1e-4, atol=1e-5)
    reference = TorchMDNetCalculator(model)
    assert from_path.get_potential_energy(atoms) == pytest.approx(reference.get_potential_energy(atoms), abs=1e-8)
    np.testing.assert_allclose(from_path.get_forces(atoms), reference.get_forces(atoms), atol=1e-8)
    charged = atoms.copy()
    charged.info["charge"] = 0  # upstream's state check: a changed info entry means a new calculation
    assert from_path.check_state(charged) == ["info"]


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
    for a, b in zip(out, images, strict=True):
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
    for a, t in zip(out, targets, strict=True):
        np.testing.assert_allclose(a.positions, t.numpy(), atol=1e-5)
    assert len(read(tmp_path / "gen.xyz", index=":")) == 2
    # Element lists work as templates too.
    out2 = sample_structures(denoiser, [[6, 1, 1, 1, 1], [8, 1, 1]], parameterization="x0", steps=5)
    assert out2[1].get_chemical_symbols() == ["O", "H", "H"]


# ----------------------------------------------------------------------------- adapter models


def _tmd_position_model(output_model: str = "PositionOutput", task: str = "structure", perturb: bool = True):
    pytest.importorskip("torchmdnet_ext")
    from torchmdnet.models.model import create_model

    from _torchmdnet_args import tiny_model_args
    from torchmdnet_ext.module import prepare_hparams

    hparams = prepare_hparams(tiny_model_args(output_model=output_model, task=task))
    torch.manual_seed(0)
    model = create_model(dict(hparams))
    if perturb:  # the position head is the identity at initialisation; make it move atoms
        with torch.no_grad():
            for p in model.output_model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model, hparams


def test_run_structure_model_torchmdnet_object_and_checkpoint(tmp_path):
    from energyloss_plugins.ase import run_structure_model

    model, hparams = _tmd_position_model()
    images = [molecule("CH3CH2OH"), molecule("NH3")]
    out = run_structure_model(model, images, output=str(tmp_path / "pred.xyz"))
    assert [a.get_chemical_formula() for a in out] == ["C2H6O", "H3N"]
    moved = max(np.abs(a.positions - b.positions).max() for a, b in zip(out, images, strict=True))
    assert moved > 1e-3  # the model moved atoms
    # Equivariance end to end: a rotated, shifted input gives the same aligned prediction.
    turned = images[0].copy()
    turned.positions = turned.positions @ Rotation.random(random_state=2).as_matrix().T + 1.0
    again = run_structure_model(model, [turned])[0]
    ref_frame = run_structure_model(model, [images[0]], align_to_input=False)[0]
    from energyloss_plugins import aligned_rmsd

    rmsd = float(aligned_rmsd(torch.tensor(again.positions), torch.tensor(ref_frame.positions))[0])
    assert rmsd < 1e-4
    # A checkpoint in the layout Lightning writes (hyper_parameters + "model."-prefixed state dict).
    path = tmp_path / "position.ckpt"
    torch.save(
        {"hyper_parameters": dict(hparams), "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
        path,
    )
    from_ckpt = run_structure_model(str(path), images, framework="torchmdnet")
    detected = run_structure_model(str(path), images)  # the adapter is found from the checkpoint
    for a, b, c in zip(from_ckpt, out, detected, strict=True):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-5)
        np.testing.assert_allclose(c.positions, b.positions, atol=1e-5)
    with pytest.raises(ValueError, match="schnetpack adapter does not handle"):
        run_structure_model(str(path), images, framework="schnetpack")


def test_run_diffusion_model_torchmdnet():
    from energyloss_plugins.ase import run_diffusion_model
    from torchmdnet_ext.module import make_objective

    model, hparams = _tmd_position_model("NoiseOutput", "diffusion", perturb=False)
    out = run_diffusion_model(model, [molecule("H2O"), [6, 1, 1, 1, 1]], objective=make_objective(hparams), steps=3)
    assert [a.get_chemical_formula() for a in out] == ["H2O", "CH4"]
    for a in out:
        assert np.all(np.isfinite(a.positions)) and np.abs(a.positions.mean(0)).max() < 1e-4
    with pytest.raises(ValueError, match="objective"):
        run_diffusion_model(model, [molecule("H2O")])


def test_run_structure_and_diffusion_models_schnetpack():
    pytest.importorskip("schnetpack_ext")
    import schnetpack as spk

    from _schnetpack_helpers import small_painn, structure_task
    from energyloss_plugins.ase import run_diffusion_model, run_structure_model
    from schnetpack_ext import DiffusionOutput, DiffusionTask, EnergyLoss, PositionHead, TimeEmbedding

    torch.manual_seed(0)
    task = structure_task()
    images = [molecule("CH3OH"), molecule("NH3")]
    out = run_structure_model(task, images)
    assert [len(a) for a in out] == [6, 4] and all(np.all(np.isfinite(a.positions)) for a in out)
    rep = small_painn(electronic_embeddings=[TimeEmbedding(16)], cutoff=10.0)
    model = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[PositionHead(16, output_key="diffusion_output", add_positions=False, remove_mean=True)],
    )
    diffusion = DiffusionTask(model=model, outputs=[DiffusionOutput(name="diffusion_output", loss_fn=EnergyLoss())])
    gen = run_diffusion_model(diffusion, [molecule("H2O")], steps=3, seed=1)
    assert gen[0].get_chemical_formula() == "H2O" and np.all(np.isfinite(gen[0].positions))
