"""Connectivity and distances to a reference set (issue 22): Wasserstein-1 geometry distances, FCD, the CLI.

The data: MMFF94 minima of 120 small NCI molecules (tests/_conformers.py), split into two disjoint
halves. Checks: a half against the other is close; stretched bonds, isolated atoms and molecules
whose atoms' identities are shuffled across the set are far, and fragmented sets are not connected
although EDM's validity (largest fragment) calls them valid.

"Shuffled across molecules" for FCD: permuting which molecule holds which SMILES leaves the set of
SMILES, hence FCD (a function of the mean and covariance of per-SMILES activations), unchanged. The
tests instead permute the atomic numbers over all atoms of all molecules (same element counts and
geometries, destroyed chemistry, evaluated through the whole pipeline). Scrambling the characters
inside each SMILES is too weak a change at this size (FCD 8.5 for 40 scrambled SMILES against the
other half, 7 for the data's own): ChemNet's activations follow the character counts closely.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
Atoms = pytest.importorskip("ase").Atoms
ase_io = pytest.importorskip("ase.io")

from _conformers import nci_conformers  # noqa: E402
from energyloss_plugins import metrics as M  # noqa: E402
from energyloss_plugins.metrics import distributions as D  # noqa: E402
from energyloss_plugins.metrics.cli import main  # noqa: E402
from energyloss_plugins.metrics.frechet import frechet_distance  # noqa: E402

torch.set_num_threads(1)
try:
    import fcd  # noqa: F401

    HAS_FCD = True
except ImportError:
    HAS_FCD = False


@pytest.fixture(scope="module")
def halves():
    mols = list(nci_conformers(120))
    order = np.random.default_rng(0).permutation(len(mols))
    return [mols[i] for i in order[:60]], [mols[i] for i in order[60:]]


@pytest.fixture(scope="module")
def reference(halves):
    return M.profile(halves[1])  # made once: its ChemNet statistics are cached for every FCD below


def stretched(mol: Atoms, delta: float = 0.15) -> Atoms:
    """Heavy-atom frame scaled so that its bonds grow by ``delta`` on average; X-H bonds grow by exactly ``delta``."""
    z, x = mol.numbers, mol.positions
    heavy = np.flatnonzero(z > 1)
    bonds = M.covalent_bonds(torch.as_tensor(z), torch.as_tensor(x)).numpy()
    hh = bonds[:, (z[bonds[0]] > 1) & (z[bonds[1]] > 1)]
    mean = np.linalg.norm(x[hh[0]] - x[hh[1]], axis=1).mean() if hh.size else 1.5
    centre = x[heavy].mean(0)
    out = x.copy()
    out[heavy] = centre + (x[heavy] - centre) * (1 + delta / mean)
    for h in np.flatnonzero(z == 1):
        partner = bonds[1, bonds[0] == h].tolist() + bonds[0, bonds[1] == h].tolist()
        p = partner[0]
        u = (x[h] - x[p]) / np.linalg.norm(x[h] - x[p])
        out[h] = out[p] + (np.linalg.norm(x[h] - x[p]) + delta) * u
    return Atoms(numbers=z, positions=out)


def isolated(mol: Atoms, spacing: float = 3.0) -> Atoms:
    """The same atoms on a cubic grid ``spacing`` Å apart: no bond under any rule."""
    n = len(mol)
    side = math.ceil(n ** (1 / 3))
    grid = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:n], dtype=float)
    return Atoms(numbers=mol.numbers, positions=spacing * grid)


def shuffled_identities(mols: list[Atoms], seed: int = 0) -> list[Atoms]:
    """The atomic numbers of all atoms of all molecules permuted (positions and element counts kept)."""
    z = np.concatenate([m.numbers for m in mols])
    np.random.default_rng(seed).shuffle(z)
    out, start = [], 0
    for m in mols:
        out.append(Atoms(numbers=z[start:start + len(m)], positions=m.positions))
        start += len(m)
    return out


def test_typed_distance_is_the_reference_weighted_mean_of_scipy_wasserstein():
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    ref = {"C-H": rng.normal(1.09, 0.01, 300), "C-C": rng.normal(1.5, 0.05, 100), "O-O": np.array([1.45])}
    smp = {"C-H": rng.normal(1.19, 0.01, 50), "C-C": rng.normal(1.7, 0.05, 20), "H-H": np.array([0.74])}
    mean, per_type, missing = D.typed_distance(smp, ref)
    expected = {k: wasserstein_distance(smp[k], ref[k]) for k in ("C-H", "C-C")}
    assert per_type == {**expected, "O-O": None} and missing == ["O-O"]  # H-H: only in the samples, no weight
    assert math.isclose(mean, (300 * expected["C-H"] + 100 * expected["C-C"]) / 400)
    assert 0.09 < expected["C-H"] < 0.11  # the shift in Å
    assert D.typed_distance({}, ref)[0] is None


def test_geometry_of_staggered_ethane_by_hand():
    from test_generation_metrics import ethane

    lengths, angles, dihedrals, rg = D.chunk_geometry(*M.flat_molecules([ethane()]))
    np.testing.assert_allclose(lengths["C-C"], [1.53])
    np.testing.assert_allclose(lengths["C-H"], [1.09] * 6)
    assert sorted(angles) == ["C-C-H", "H-C-H"] and len(angles["C-C-H"]) == 6 and len(angles["H-C-H"]) == 6
    np.testing.assert_allclose(angles["C-C-H"], 109.47, atol=0.01)
    # staggered: each H-C-C-H dihedral is 60° (6 of them) or 180° (3)
    np.testing.assert_allclose(np.sort(dihedrals["H-C-C-H"]), [60.0] * 6 + [180.0] * 3, atol=1e-6)
    x = ethane().positions
    np.testing.assert_allclose(rg, [np.sqrt(((x - x.mean(0)) ** 2).sum(1).mean())])


def test_frechet_distance_agrees_with_sqrtm():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = a @ a.T, b @ b.T
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real)
    assert math.isclose(frechet_distance(mu1, c1, mu2, c2), expected, rel_tol=1e-8)
    assert abs(frechet_distance(mu1, c1, mu1, c1)) < 1e-8


def test_fragments_counted_and_validity_does_not_see_them():
    from test_generation_metrics import ethane, methane, water

    pair = methane()
    w = water()
    w.positions += [6.0, 0, 0]
    pair.extend(w)
    z, x, b = M.flat_molecules([ethane(), pair])
    assert M.fragment_counts(z, x, b).tolist() == [1, 2]
    out = M.generation_metrics([ethane(), pair])
    assert out["validity"] == 1.0  # EDM: the largest fragment (methane) is valid
    assert out["connected"] == 0.5 and out["valid_and_connected"] == 0.5 and out["mean_fragments"] == 1.5


def test_data_against_a_disjoint_half_is_close_and_distorted_sets_are_far(halves, reference):
    a, b = halves
    data = M.generation_metrics(b, fcd=False)
    same = M.generation_metrics(a, reference=reference, fcd=False)
    assert data["connected"] == 1.0 and same["connected"] == data["connected"] and same["mean_fragments"] == 1.0
    assert same["bond_length_distance"] < 0.01  # Å
    assert same["bond_angle_distance"] < 3.0 and same["dihedral_distance"] < 15.0  # degrees
    assert same["rg_distance"] < 0.12  # Å

    far = M.generation_metrics([stretched(m) for m in a], reference=reference, fcd=False)
    assert far["connected"] < 0.05 and far["valid_and_connected"] < 0.05  # hydrogens leave EDM's bonds
    assert 0.12 < far["bond_length_distance"] < 0.18  # the 0.15 Å stretch, measured
    assert far["bond_length_distance"] > 10 * same["bond_length_distance"]
    assert far["rg_distance"] > 2 * same["rg_distance"]

    atoms = M.generation_metrics([isolated(m) for m in a], reference=reference, fcd=False)
    assert atoms["connected"] == 0.0 and atoms["valid_and_connected"] == 0.0
    assert math.isclose(atoms["mean_fragments"], np.mean([len(m) for m in a]))
    assert atoms["validity"] == 1.0  # every single atom is a "valid" largest fragment under EDM's protocol
    for key in ("bond_length_distance", "bond_angle_distance", "dihedral_distance"):
        assert atoms[key] is None and "no" in atoms["notes"][key]  # nothing to compare: worse than any value
    assert atoms["rg_distance"] > far["rg_distance"]

    mixed = M.generation_metrics(shuffled_identities(a), reference=reference, fcd=False)
    assert mixed["bond_length_distance"] > 10 * same["bond_length_distance"]
    assert mixed["bond_angle_distance"] > 3 * same["bond_angle_distance"]
    assert math.isclose(mixed["rg_distance"], same["rg_distance"])  # same positions


def test_without_reference_the_distances_are_none_with_a_reason(halves):
    out = M.generation_metrics(halves[0][:5])
    assert all(out[k] is None for k in M.REFERENCE_METRICS[3:])
    assert "no reference" in out["notes"]["reference"]
    assert set(M.REFERENCE_METRICS) <= set(out) and set(M.GENERATION_METRICS) <= set(out)


@pytest.mark.skipif(not HAS_FCD, reason="fcd package not installed")
def test_fcd_near_zero_for_the_data_and_grows_when_shuffled(halves, reference):
    a, _ = halves
    same = M.generation_metrics(a, reference=reference)["fcd"]
    mixed = M.generation_metrics(shuffled_identities(a), reference=reference)["fcd"]
    isolated_atoms = M.generation_metrics([isolated(m) for m in a[:30]], reference=reference)["fcd"]
    assert 0 <= same < 0.5 * mixed and mixed < isolated_atoms, (same, mixed, isolated_atoms)


def _run(argv, capsys):
    code = main([*map(str, argv), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_reference_defaults_to_train_and_writes_every_key(tmp_path, capsys, halves, monkeypatch):
    a, b = halves
    ase_io.write(tmp_path / "a.extxyz", a[:20])
    ase_io.write(tmp_path / "b.extxyz", b[:20])
    code, out, _ = _run([tmp_path / "a.extxyz", "--train", tmp_path / "b.extxyz", "--no-fcd", "--json", "-"], capsys)
    assert code == 0 and "bond lengths W1" in out and "fcd=False" in out
    record = json.loads(out[out.index("{"):])
    for key in ("connected", "valid_and_connected", "mean_fragments", "bond_length_distance", "bond_angle_distance",
                "dihedral_distance", "rg_distance", "fcd"):
        assert key in record
    assert record["reference"] == record["train"] and record["n_reference"] == 20 and record["fcd"] is None
    expected = M.generation_metrics(a[:20], M.molecule_smiles_set(b[:20]), reference=b[:20], fcd=False)
    for key in ("bond_length_distance", "rg_distance", "novelty", "connected"):
        assert math.isclose(record[key], expected[key], rel_tol=1e-5)  # extxyz rounds positions
    # without the fcd package: the other metrics, and one line saying what to install
    monkeypatch.setitem(sys.modules, "fcd", None)
    code, out, _ = _run([tmp_path / "a.extxyz", "--reference", tmp_path / "b.extxyz"], capsys)
    assert code == 0 and 'pip install "energyloss-plugins[metrics]"' in out
    assert "FCD" in out and "n/a" in out.split("FCD")[1].splitlines()[0]
