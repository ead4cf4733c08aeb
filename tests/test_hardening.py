"""Issue 12 classes: user files kept, range checks, errors naming the argument, exact periodic images."""

from __future__ import annotations

import math
import os
import sqlite3

import numpy as np
import pytest
import torch

pytest.importorskip("ase")

from ase import Atoms  # noqa: E402
from ase.db import connect  # noqa: E402
from ase.geometry import get_distances  # noqa: E402

from energyloss_plugins import pair_energy_loss  # noqa: E402
from energyloss_plugins.coefficients import resolve_coefficients  # noqa: E402
from energyloss_plugins.data import find_split_file, read_split, split_file_for, split_molecules  # noqa: E402
from energyloss_plugins.diffusion import NoiseSchedule, diffusion_loss, noise_batch, sample  # noqa: E402
from energyloss_plugins.generation import AtomCountDistribution, GenerationObjective, TypeEncoding  # noqa: E402
from energyloss_plugins.graphs import build_pairs  # noqa: E402
from energyloss_plugins.periodic import MinimumImage  # noqa: E402

SMALL = ["--max-molecules", "2", "--max-heavy-atoms", "4", "--no-progress"]
SKEW = np.array([[5.0, 0, 0], [4.2, 4, 0], [3.1, 2.6, 3.5]])


def _cli(argv, capsys):
    from energyloss_plugins.data.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------ user data is kept


def _foreign(path, kind):
    if kind == "text":
        path.write_text("my notes\n")
    elif kind == "ase":
        with connect(str(path)) as db:
            db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), note="mine")
    elif kind == "sqlite":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE t (x)")
        con.commit()
        con.close()
    else:
        path.write_bytes(b"")
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["text", "ase", "sqlite", "empty"])
def test_build_refuses_to_replace_a_file_it_did_not_write(tmp_path, kind, capsys):
    out = tmp_path / "data.db"
    before = _foreign(out, kind)
    code, err = _cli(["build", "nci", "-o", str(out), *SMALL], capsys)
    assert code == 2 and "--overwrite" in err and "out=" in err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.db"]  # no .partial/.tmp/split left behind


def test_overwrite_replaces_a_foreign_file_and_own_database_is_rebuilt(tmp_path, capsys):
    out = tmp_path / "data.db"
    _foreign(out, "text")
    assert _cli(["build", "nci", "-o", str(out), *SMALL, "--overwrite"], capsys)[0] == 0
    assert connect(str(out)).metadata["energyloss"]["settings"]["seed"] == 0
    # its own database is replaced without --overwrite when the settings change
    assert _cli(["build", "nci", "-o", str(out), *SMALL, "--seed", "3"], capsys)[0] == 0
    assert connect(str(out)).metadata["energyloss"]["settings"]["seed"] == 3


def test_output_location_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    from energyloss_plugins.data import builder

    def no_work(*a, **k):
        raise AssertionError("the source was read before the output location was checked")

    monkeypatch.setattr(builder, "load_structures", no_work)
    (tmp_path / "dir.db").mkdir()
    code, err = _cli(["build", "nci", "-o", str(tmp_path / "dir.db"), *SMALL], capsys)
    assert code == 2 and "directory" in err and "out=" in err
    (tmp_path / "notes").write_text("x")
    code, err = _cli(["build", "nci", "-o", str(tmp_path / "notes" / "a.db"), *SMALL], capsys)
    assert code == 2 and "not a folder" in err
    user_csv = tmp_path / "results.csv"
    user_csv.write_text("a,b\n")
    code, err = _cli(["build", "nci", "-o", str(tmp_path / "a.db"), "--split-file", str(user_csv), *SMALL], capsys)
    assert code == 2 and "split_file" in err and "--overwrite" in err and user_csv.read_text() == "a,b\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".partial", ".tmp"))]


def test_each_database_owns_its_split_and_a_replaced_split_is_restored(tmp_path, capsys):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    user_tmp = tmp_path / "a.db.tmp"
    user_tmp.write_text("keep me")
    assert _cli(["build", "nci", "-o", str(a), *SMALL], capsys)[0] == 0
    assert _cli(["build", "nci", "-o", str(b), "--max-molecules", "3", "--max-heavy-atoms", "4", "--no-progress",
                 "--seed", "5"], capsys)[0] == 0
    assert user_tmp.read_text() == "keep me"
    assert find_split_file(a) == split_file_for(a) == str(tmp_path / "a.split.npz")
    # another build's split copied over a's: rebuilding a ("already built") restores a's own split
    os.replace(split_file_for(b), split_file_for(a))
    assert _cli(["build", "nci", "-o", str(a), *SMALL], capsys)[0] == 0
    ids = np.array([r.mol_id for r in connect(str(a)).select(sort="id")])
    want = split_molecules(ids, (0.8, 0.1, 0.1), 0)
    got = read_split(split_file_for(a))
    assert all(np.array_equal(want[k], got[k]) for k in want)


def test_legacy_split_npz_is_read_only_when_unambiguous(tmp_path):
    one = tmp_path / "one.db"
    one.write_bytes(b"")
    np.savez(tmp_path / "split.npz", train_idx=[0], val_idx=[], test_idx=[])
    assert find_split_file(one) == str(tmp_path / "split.npz")
    (tmp_path / "two.db").write_bytes(b"")
    assert find_split_file(one) is None  # shared by two databases: ambiguous


def test_reading_never_modifies_a_foreign_sqlite_file(tmp_path):
    from energyloss_plugins.data import read_dataset, read_metadata

    p = tmp_path / "other.db"
    before = _foreign(p, "sqlite")
    for fn in (read_metadata, read_dataset):
        with pytest.raises(ValueError, match="not an ASE database"):
            fn(p)
    assert p.read_bytes() == before


def test_spktrain_datapath_check_names_the_contract_and_creates_nothing(tmp_path):
    from schnetpack_ext.resolvers import split_file_beside

    missing = tmp_path / "missing" / "data.db"
    with pytest.raises(ValueError, match="data.datapath") as exc:
        split_file_beside(str(missing))
    assert "energyloss-data build" in str(exc.value) and "target_positions" in str(exc.value)
    assert not (tmp_path / "missing").exists()
    plain = tmp_path / "plain.db"
    with connect(str(plain)) as db:
        db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]))
    with pytest.raises(ValueError, match="target_positions") as exc:
        split_file_beside(str(plain))
    assert "energyloss-data build" in str(exc.value)


# ------------------------------------------------------------------------------ periodic images


def test_minimum_image_of_a_skewed_cell_matches_ase():
    rng = np.random.default_rng(0)
    pos = rng.random((30, 3)) @ SKEW
    i, j = np.triu_indices(30, 1)
    t = torch.tensor(pos)
    mic = MinimumImage(t, torch.zeros(30, dtype=torch.long), 1, torch.tensor(SKEW))
    pairs = torch.tensor(np.stack([i, j]))
    d = (t[pairs[1]] - t[pairs[0]] + mic.shifts(pairs)).norm(dim=1).numpy()
    vec_ase, d_ase = get_distances(pos, cell=SKEW, pbc=True)
    assert np.allclose(d, d_ase[i, j], atol=1e-10)
    # rounding fractional coordinates (the old method) is wrong here: the test can fail
    f = (pos[j] - pos[i]) @ np.linalg.inv(SKEW)
    assert np.abs(np.linalg.norm((f - np.round(f)) @ SKEW, axis=1) - d_ase[i, j]).max() > 0.1
    # constant springs: energy from ASE's minimum-image vectors
    pred = t + 0.05 * torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shift = vec_ase[i, j] - (pos[j] - pos[i])
    vp = pred.numpy()[j] - pred.numpy()[i] + shift
    want = 0.5 * ((np.linalg.norm(vp, axis=1) - d_ase[i, j]) ** 2).sum() / 30
    got = pair_energy_loss(pred, t, cell=torch.tensor(SKEW), coefficients="constant")
    assert math.isclose(float(got), want, rel_tol=1e-10)


def test_ase_bridge_pair_vectors_use_the_same_minimum_image():
    from energyloss_plugins.ase._utils import pair_vectors

    atoms = Atoms("H30", scaled_positions=np.random.default_rng(2).random((30, 3)), cell=SKEW, pbc=True)
    e = np.array(np.triu_indices(30, 1))
    got = np.linalg.norm(pair_vectors(atoms.positions, e, atoms), axis=1)
    assert np.allclose(got, atoms.get_all_distances(mic=True)[e[0], e[1]], atol=1e-10)


def test_mixed_pbc_minimum_image_matches_enumerated_images():
    rng = np.random.default_rng(3)
    pos = rng.random((20, 3)) @ SKEW
    i, j = np.triu_indices(20, 1)
    t = torch.tensor(pos)
    mic = MinimumImage(t, torch.zeros(20, dtype=torch.long), 1, torch.tensor(SKEW), torch.tensor([True, False, True]))
    d = (t[j] - t[i] + mic.shifts(torch.tensor(np.stack([i, j])))).norm(dim=1).numpy()
    grid = np.array([[a, 0, c] for a in range(-4, 5) for c in range(-4, 5)]) @ SKEW
    brute = np.linalg.norm((pos[j] - pos[i])[:, None] + grid[None], axis=2).min(1)
    assert np.allclose(d, brute, atol=1e-10)


# ------------------------------------------------------------------------------ range checks

X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
B2 = torch.tensor([0, 0, 0, 1, 1, 1])
ZEROS = lambda x, t, b: torch.zeros_like(x)  # noqa: E731

RANGE_CASES = [
    ("length_scale", lambda v: pair_energy_loss(X + 0.1, X, coefficient_kwargs={"length_scale": v}),
     (0.0, -1.0, math.nan)),
    ("k0", lambda v: pair_energy_loss(X + 0.1, X, coefficients="constant", coefficient_kwargs={"k0": v}),
     (0.0, -2.0, math.inf)),
    ("epsilon", lambda v: resolve_coefficients("lennard_jones", {"epsilon": v}), (-1.0, math.nan)),
    ("cutoff", lambda v: pair_energy_loss(X + 0.1, X, graph="radius", graph_kwargs={"cutoff": v}),
     (0.0, -1.0, math.nan)),
    ("t", lambda v: noise_batch(X, B2, t=torch.tensor([v, 0.5], dtype=torch.float64)), (-0.1, 1.5, math.nan)),
    ("steps", lambda v: sample(ZEROS, B2, steps=v), (0, -3, 2.5)),
    ("precision", lambda v: NoiseSchedule(precision=v), (0.0, 0.5, math.nan)),
    ("max_weight", lambda v: diffusion_loss(X, noise_batch(X, B2), B2, max_weight=v), (0.0, -1.0)),
    ("h0", lambda v: __import__("energyloss_plugins.spins", fromlist=["x"]).local_field_weights(
        torch.ones(1, 3, 3), torch.zeros(1, 2, 3, 3), v), (-1.0, math.nan)),
]


@pytest.mark.parametrize("name,call,values", RANGE_CASES, ids=[c[0] for c in RANGE_CASES])
def test_numeric_options_out_of_range_name_the_argument(name, call, values):
    for v in values:
        with pytest.raises(ValueError, match=name):
            call(v)


def test_infinite_cutoff_is_the_complete_graph():
    got = pair_energy_loss(X + 0.1 * X**2, X, graph="radius", graph_kwargs={"cutoff": math.inf})
    assert torch.allclose(got, pair_energy_loss(X + 0.1 * X**2, X))


def test_flow_matching_at_the_ends_without_a_weight_cap_is_refused():
    fm = noise_batch(X, B2, t=torch.tensor([0.0, 1.0], dtype=torch.float64), flow_matching=True)
    with pytest.raises(ValueError, match="max_weight"):
        diffusion_loss(X, fm, B2, parameterization="velocity", max_weight=None)
    assert torch.isfinite(diffusion_loss(X, fm, B2, parameterization="velocity"))


def test_langevin_time_step_beyond_the_stability_limit_is_refused():
    from ase import units

    from energyloss_plugins.ase import boltzmann_sample

    k = 20.0  # eV/Å², one constant spring: ω = sqrt(k / μ), μ = m_H / 2
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    omega = math.sqrt(k / (h2.get_masses()[0] / 2))
    limit_fs = 2 / omega / units.fs
    with pytest.raises(ValueError, match="timestep_fs") as exc:
        boltzmann_sample(h2, n_samples=1, interval=1, coefficients="constant", coefficient_kwargs={"k0": k},
                         timestep_fs=1.01 * limit_fs)
    assert f"{limit_fs:.3g}" in str(exc.value)
    out = boltzmann_sample(h2, n_samples=2, interval=2, coefficients="constant", coefficient_kwargs={"k0": k},
                           timestep_fs=0.1 * limit_fs)
    assert np.isfinite(out.energies).all()


# ------------------------------------------------------------------------------ errors name the cause


def test_nan_cell_and_nan_reference_are_named():
    with pytest.raises(ValueError, match="cell"):
        pair_energy_loss(X + 0.1, X, cell=torch.full((3, 3), math.nan))
    from energyloss_plugins.ase import EnergyLossCalculator

    ref = Atoms("H3", positions=[[0, 0, 0], [0, 0, 0.74], [0, 0.8, 0]])
    ref.positions[1, 0] = math.nan
    with pytest.raises(ValueError, match="reference.positions"):
        EnergyLossCalculator(ref)


def test_nan_diffusion_inputs_blame_what_was_passed():
    noised = noise_batch(X, B2)
    bad = X.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="output"):
        diffusion_loss(bad, noised, B2)
    with pytest.raises(ValueError, match="x0"):
        noise_batch(bad, B2)


def test_bonds_in_database_layout_and_springs_as_list():
    bonds = torch.tensor([[0, 1], [1, 2], [3, 4]])  # (M, 2), as stored in row.data["bonds"]
    b = torch.zeros(6, dtype=torch.long)
    pairs = build_pairs("bonds", X, b, 1, bonds=bonds).materialize()
    assert sorted(map(tuple, pairs.T.tolist())) == [(0, 1), (1, 2), (3, 4)]
    with pytest.raises(ValueError, match="bonds"):
        build_pairs("bonds", X, b, 1, bonds=torch.tensor([[0, 9]]))
    with pytest.raises(ValueError, match="coefficients") as exc:
        resolve_coefficients([1.0, 2.0])
    assert "edge_index" in str(exc.value) and "Unknown" not in str(exc.value)
    with pytest.raises(ValueError, match="lengthscale"):
        resolve_coefficients("exp", {"lengthscale": 1.0})


# ------------------------------------------------------------------------------ review findings


def test_calculator_set_refuses_what_it_cannot_change():
    from energyloss_plugins.ase import EnergyLossCalculator

    ref = Atoms("H3", positions=[[0, 0, 0], [0, 0, 0.74], [0, 0.8, 0]])
    calc = EnergyLossCalculator(ref)
    moved = ref.copy()
    moved.positions[0, 0] += 0.1
    moved.calc = calc
    e0 = moved.get_potential_energy()
    with pytest.raises(ValueError, match="coefficients"):
        calc.set(coefficients="constant")
    with pytest.raises(ValueError, match="foo"):
        calc.set(foo=1)
    calc.set(graph="complete")  # unchanged value: accepted
    assert calc.parameters["coefficients"] == "exp" and moved.get_potential_energy() == e0


def test_diffusion_task_sample_without_seed_draws_fresh_noise():
    pytest.importorskip("schnetpack")
    from _schnetpack_helpers import diffusion_task

    torch.manual_seed(0)
    task = diffusion_task()
    mols = [[6, 1, 1, 1, 1]]
    a, b = (task.sample(mols, steps=2)[0].positions for _ in range(2))
    assert not np.allclose(a, b)
    c, d = (task.sample(mols, steps=2, seed=7)[0].positions for _ in range(2))
    assert np.array_equal(c, d)


# ------------------------------------------------------------------------------ issue 18: round two

T18 = torch.tensor(np.random.default_rng(18).random((6, 3)) * 4.0)
P18 = T18 + 0.05


@pytest.mark.parametrize("kind", [np.float32, np.float64, np.int64])
def test_numpy_scalars_are_numbers(kind):
    expected = pair_energy_loss(P18, T18, coefficient_kwargs={"k0": 2.0, "length_scale": 3.0},
                                graph="radius", graph_kwargs={"cutoff": 3.0})
    got = pair_energy_loss(P18, T18, coefficient_kwargs={"k0": kind(2), "length_scale": kind(3)},
                           graph="radius", graph_kwargs={"cutoff": kind(3)}, chunk_size=np.int64(4))
    assert torch.allclose(got, expected, rtol=1e-6)
    from energyloss_plugins.spins import greedy_descent, random_couplings

    assert greedy_descent(random_couplings(3, 1, seed=0)[0], n_starts=np.int64(2))[0].shape[0] == 2


@pytest.mark.parametrize("call, name", [
    (lambda: TypeEncoding([1, 6.7]), "elements"),
    (lambda: GenerationObjective([1, 10**9]), "elements"),
    (lambda: AtomCountDistribution.from_counts([3.7, 5.2]), "counts"),
    (lambda: AtomCountDistribution.from_counts([3, 10**9]), "counts"),
    (lambda: pair_energy_loss(P18, T18, coefficients="morse", numbers=torch.tensor([1.0, 6.7, 6, 1, 1, 1])),
     "numbers"),
])
def test_non_integers_and_out_of_range_counts_are_refused_not_truncated(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_whole_floats_are_the_integers_they_spell():
    assert TypeEncoding([6.0, 1.0]).elements == (1, 6)
    assert AtomCountDistribution.from_counts(np.array([3.0, 5.0])).histogram == [0, 0, 0, 1, 0, 1]


@pytest.mark.parametrize("height", [0.01, 1e-6])
def test_a_thin_cell_is_refused_before_the_image_search(height):
    from energyloss_plugins.ase import EnergyLossCalculator

    cell = torch.diag(torch.tensor([5.0, 5.0, height], dtype=torch.float64))
    with pytest.raises(ValueError, match="cell"):
        pair_energy_loss(P18, T18, cell=cell)
    atoms = Atoms("H6", positions=T18.numpy(), cell=cell.numpy(), pbc=True)
    with pytest.raises(ValueError, match="cell"):
        EnergyLossCalculator(atoms).get_potential_energy(atoms)
    # the same thin direction without periodicity is an ordinary slab
    assert torch.isfinite(pair_energy_loss(P18, T18, cell=cell, pbc=torch.tensor([True, True, False])))


def test_string_pbc_is_refused():
    with pytest.raises(ValueError, match="pbc"):
        pair_energy_loss(P18, T18, cell=torch.eye(3, dtype=torch.float64) * 5, pbc="TTF")


@pytest.mark.parametrize("scheme", ["exp", "inverse_square", "lennard_jones"])
def test_coincident_reference_atoms_are_refused(scheme):
    target = T18.clone()
    target[2] = target[4]
    numbers = torch.tensor([6, 6, 8, 1, 1, 1])
    with pytest.raises(ValueError, match="coincide"):
        pair_energy_loss(P18, target, coefficients=scheme, numbers=numbers)


def test_springs_keep_their_dimension_and_float_dtype():
    from energyloss_plugins.losses import resolve_springs

    springs = resolve_springs(T18)
    with pytest.raises(ValueError, match="pred"):
        springs.loss(P18[:, :2])
    with pytest.raises(ValueError, match="dtype"):
        springs.to(dtype=torch.long)
    assert torch.allclose(springs.to(dtype=torch.float32).loss(P18.float()).double(),
                          pair_energy_loss(P18, T18), rtol=1e-4)


def test_double_backward_is_an_error_not_a_zero_hessian():
    pred = P18.clone().requires_grad_()
    with pytest.raises(NotImplementedError, match="create_graph"):
        torch.autograd.functional.hessian(lambda x: pair_energy_loss(x, T18), pred)
    pair_energy_loss(pred, T18).backward()  # the first derivative is unaffected
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(6, 1), (1, 3)])
def test_samplers_refuse_denoiser_outputs_of_the_wrong_shape(shape):
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="denoiser"):
        sample(lambda x, t, b: torch.zeros(shape), batch, steps=2)
    with pytest.raises(ValueError, match="denoiser"):
        GenerationObjective([1, 6]).sample(lambda x, h, t, b: (torch.zeros(shape), h), torch.tensor([3, 3]), steps=2)


@pytest.mark.parametrize("bad", [-1.0, math.nan])
def test_calculator_hessian_refuses_springs_the_energy_refuses(bad):
    from ase.build import molecule

    from energyloss_plugins.ase import EnergyLossCalculator

    with pytest.raises(ValueError, match="coefficients"):
        EnergyLossCalculator(molecule("H2O"), [bad, 1.0, 1.0], edge_index=np.array(np.triu_indices(3, 1))).get_hessian()


@pytest.mark.parametrize("value", [-1, 0, 2.5])
def test_chunk_size_and_meta_tensors_name_the_argument(value):
    with pytest.raises(ValueError, match="chunk_size"):
        pair_energy_loss(P18, T18, chunk_size=value)
    with pytest.raises(ValueError, match="meta"):
        pair_energy_loss(P18.to("meta"), T18.to("meta"))


def test_predict_structures_never_replaces_a_file_and_checks_before_the_work(tmp_path):
    from ase.build import molecule

    from energyloss_plugins.ase import predict_structures

    calls = []
    out = tmp_path / "pred.extxyz"
    out.write_text("my notes\n")
    for path in (out, tmp_path / "no" / "p.extxyz", tmp_path / "p.qqq"):
        with pytest.raises(ValueError):
            predict_structures(lambda p, z: calls.append(1) or p, [molecule("H2O")], output=str(path))
    assert out.read_text() == "my notes\n" and not calls
    predict_structures(lambda p, z: p, [molecule("H2O")], output=str(out), overwrite=True)
    assert out.read_text() != "my notes\n"


def test_spktrain_refuses_a_split_without_validation_molecules_at_config_resolution(tmp_path):
    pytest.importorskip("rdkit")
    pytest.importorskip("schnetpack")
    from energyloss_plugins.data import build_dataset
    from schnetpack_ext.resolvers import split_file_beside

    smi = tmp_path / "three.smi"
    smi.write_text("CCO\nCCN\nCCC\n")
    db = tmp_path / "three.db"
    build_dataset(str(smi), db, inputs=("uff",), split=(1.0, 0.0, 0.0), seed=0, progress=False)
    with pytest.raises(ValueError, match="0 validation"):
        split_file_beside(str(db))
    build_dataset(str(smi), db, inputs=("uff",), split=(0.34, 0.33, 0.33), seed=0, progress=False)
    assert split_file_beside(str(db)) == split_file_for(str(db))
