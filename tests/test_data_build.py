"""Dataset builder: NCI/MMFF build, g2 as-given, database contract, determinism, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("ase")

from _optional import importable  # noqa: E402
from energyloss_plugins import chem  # noqa: E402
from energyloss_plugins.alignment import aligned_rmsd  # noqa: E402
from energyloss_plugins.data import (  # noqa: E402
    TARGET_FMAX,
    build_dataset,
    collate_records,
    load_structures,
    read_dataset,
    read_metadata,
    read_split,
    split_file_for,
)

torch.set_num_threads(1)

QM9_LIKE = {"max_heavy_atoms": 9, "elements": "C,N,O,F"}


@pytest.fixture(scope="module")
def nci_db(tmp_path_factory):
    out = tmp_path_factory.mktemp("nci") / "data.db"
    report = build_dataset(
        "nci", out, inputs=("cheap", "thermal", "etkdg"), max_molecules=20, seed=3, progress=False, **QM9_LIKE
    )
    return out, report


@pytest.fixture(scope="module")
def g2_db(tmp_path_factory):
    out = tmp_path_factory.mktemp("g2") / "data.db"
    report = build_dataset("g2", out, method="as-given", inputs=("cheap", "thermal", "etkdg"), seed=0, progress=False)
    return out, report


def test_nci_targets_are_mmff_minima_and_inputs_differ(nci_db):
    out, report = nci_db
    assert report.n_molecules == 20
    assert report.rows_per_kind == {"uff": 20, "thermal": 20, "etkdg": 20}
    records = read_dataset(out)
    assert len(records) == 60
    seen = set()
    for r in records:
        # QM9-like: at most 9 heavy atoms of C, N, O, F (plus H)
        assert set(r.numbers.tolist()) <= {1, 6, 7, 8, 9}
        assert int((r.numbers != 1).sum()) <= 9
        # the target is an MMFF94 minimum: recompute the forces independently from the stored graph
        if r.mol_id not in seen:
            seen.add(r.mol_id)
            mol = chem.mol_from_bonds(
                r.numbers.numpy(), None, r.bonds.numpy(), r.bond_orders.numpy(), r.formal_charges.numpy()
            )
            ff = chem.force_field(mol, r.target_positions.numpy(), "mmff")
            fmax = np.linalg.norm(ff.forces(r.target_positions.numpy()), axis=1).max()
            assert fmax < TARGET_FMAX, (r.smiles, fmax)
            assert math.isclose(r.ref_energy, ff.energy(r.target_positions.numpy()), rel_tol=1e-9, abs_tol=1e-9)
        # every input differs from its target, also after optimal superposition
        rmsd = float(aligned_rmsd(r.positions, r.target_positions)[0])
        assert rmsd > 1e-3, (r.input_kind, rmsd)
        assert math.isclose(rmsd, r.input_rmsd, rel_tol=1e-9, abs_tol=1e-12)
        assert r.bonds.shape[1] == 2 and bool((r.bonds[:, 0] < r.bonds[:, 1]).all())
        assert r.method == "mmff" and r.source == "nci" and r.smiles
    assert seen == set(range(20))
    # the cheap UFF input stays in the basin; the fresh conformer does not
    med = report.median_input_rmsd
    assert med["uff"] < 0.5 and med["thermal"] < 0.5
    assert med["etkdg"] > med["uff"]


def test_database_contract_and_schnetpack(nci_db):
    out, _ = nci_db
    meta = read_metadata(out)
    assert meta["_distance_unit"] == "Ang"
    assert meta["_property_unit_dict"] == {"target_positions": "Ang", "ref_energy": "eV"}
    assert meta["atomrefs"] == {}
    el = meta["energyloss"]
    assert el["format_version"] == 1 and el["n_molecules"] == 20 and el["n_rows"] == 60
    assert el["settings"]["inputs"] == ["uff", "thermal", "etkdg"]
    from ase.db import connect

    db = connect(str(out))
    row = db.get(id=1)
    assert row.data["target_positions"].dtype == np.float64 and row.data["target_positions"].shape == (row.natoms, 3)
    assert row.data["ref_energy"].shape == (1,) and row.data["ref_energy"].dtype == np.float64
    assert row.data["bonds"].dtype == np.int64 and row.data["bond_orders"].dtype == np.float64
    assert not row.pbc.any()
    for key in ("mol_id", "input_kind", "smiles", "method", "source"):
        assert key in row.key_value_pairs
    spk = pytest.importorskip("schnetpack")
    ds = spk.data.ASEAtomsData(str(out))
    assert len(ds) == 60
    item = ds[5]
    assert item["target_positions"].shape == item["_positions"].shape
    assert item["ref_energy"].shape == (1,)
    rec = read_dataset(out, indices=[5])[0]
    assert torch.equal(item["_positions"].double(), rec.positions)


def test_split_is_by_molecule_and_complete(nci_db):
    out, report = nci_db
    split = read_split(split_file_for(out))
    all_idx = np.concatenate([split["train_idx"], split["val_idx"], split["test_idx"]])
    assert sorted(all_idx.tolist()) == list(range(60))
    records = read_dataset(out)
    mol_of = {r.row_index: r.mol_id for r in records}
    groups = [{mol_of[i] for i in split[k].tolist()} for k in ("train_idx", "val_idx", "test_idx")]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert (len(groups[0]), len(groups[1]), len(groups[2])) == (16, 2, 2)
    assert (report.n_train, report.n_val, report.n_test) == (48, 6, 6)


def test_g2_as_given_keeps_geometry(g2_db):
    out, report = g2_db
    from ase.collections import g2

    records = read_dataset(out)
    assert report.n_molecules > 100
    assert report.filtered.get("too_few_atoms") == 14  # the 14 single atoms of g2
    assert set(report.rows_per_kind) == {"mmff", "thermal", "etkdg"}
    for r in records:
        name = r.name.split(":", 1)[1]
        ref = g2[name]
        assert torch.equal(r.target_positions, torch.tensor(ref.positions))  # as given, bit for bit
        assert r.numbers.tolist() == ref.numbers.tolist()
        assert math.isnan(r.ref_energy) and r.method == "as-given"
    med = report.median_input_rmsd
    # MMFF from an MP2 geometry stays close; a fresh embedding is another conformer
    assert med["mmff"] < 0.1 < med["etkdg"]
    spk = pytest.importorskip("schnetpack")
    item = spk.data.ASEAtomsData(str(out))[0]
    assert torch.isnan(item["ref_energy"]).all()


def test_thermal_samples_follow_boltzmann():
    rng = np.random.default_rng(0)
    x0 = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    k = 20.0  # spring along the bond, eV/Å²
    b = np.array([-1.0, 0, 0, 1.0, 0, 0]) / math.sqrt(2)
    hess = k * np.outer(b, b) * 2  # E = ½ k (Δd)², Δd = √2 (b · Δx)
    s = chem.harmonic_samples(x0, hess, 300.0, 20000, rng, k_min=0.0)
    d = np.linalg.norm(s[:, 1] - s[:, 0], axis=1) - 1.0
    # <Δd²> = k_B T / k; the diatomic's only internal mode is the bond stretch
    assert abs(d.var() / (chem.BOLTZMANN_EV * 300 / k) - 1) < 0.05
    assert np.allclose(s.mean(1), x0.mean(0), atol=1e-12)  # no net translation
    # same draws, 4x the temperature: exactly twice the displacement
    a = chem.harmonic_samples(x0, hess, 300.0, 3, np.random.default_rng(1), k_min=0.0) - x0
    c = chem.harmonic_samples(x0, hess, 1200.0, 3, np.random.default_rng(1), k_min=0.0) - x0
    assert np.allclose(c, 2 * a, rtol=1e-10, atol=1e-14)


def test_build_is_deterministic_and_seed_dependent(tmp_path):
    kw = dict(inputs=("cheap", "thermal", "etkdg"), max_molecules=4, progress=False, **QM9_LIKE)
    build_dataset("nci", tmp_path / "a" / "d.db", seed=1, **kw)
    build_dataset("nci", tmp_path / "b" / "d.db", seed=1, **kw)
    build_dataset("nci", tmp_path / "c" / "d.db", seed=2, **kw)
    a, b, c = (read_dataset(tmp_path / x / "d.db") for x in "abc")
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.positions, y.positions) and torch.equal(x.target_positions, y.target_positions)
    thermal_a = [r.positions for r in a if r.input_kind == "thermal"]
    thermal_c = [r.positions for r in c if r.input_kind == "thermal"]
    assert not all(torch.equal(x, y) for x, y in zip(thermal_a, thermal_c, strict=True))


def test_bad_smiles_are_counted_not_fatal(tmp_path):
    smi = tmp_path / "mols.smi"
    smi.write_text("CCO ethanol\nC1CC broken_ring\nnot_a_smiles x\nCC(=O)O acetic\nCCO dup\n[Na+].[Cl-] salt\n")
    report = build_dataset(smi, tmp_path / "d.db", inputs="cheap", progress=False)
    assert report.n_molecules == 2
    assert report.filtered == {"duplicate": 1, "multiple_fragments": 1, "unparsable_smiles": 2}
    meta = read_metadata(tmp_path / "d.db")["energyloss"]
    assert meta["filtered"]["unparsable_smiles"] == 2
    names = [r.name for r in read_dataset(tmp_path / "d.db")]
    assert names == ["mols.smi:ethanol", "mols.smi:acetic"]


def test_structure_file_source_and_collate(tmp_path):
    import ase.io
    from ase.collections import g2

    frames = [g2[n] for n in ("CH3OH", "C2H6", "H2O")]
    path = tmp_path / "mols.extxyz"
    ase.io.write(path, frames)
    st = load_structures(path)
    assert len(st) == 3 and st.kind == "structures"
    # compressed files are read the same way (decompressed in memory)
    import gzip

    gz = tmp_path / "mols.extxyz.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    st_gz = load_structures(gz)
    assert [e.name.split(":")[1] for e in st_gz] == ["0", "1", "2"]
    for a, b in zip(st, st_gz, strict=True):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.numbers, b.numbers)
    report = build_dataset(path, tmp_path / "d.db", method="mmff", inputs=("cheap", "etkdg"), progress=False)
    assert report.rows_per_kind == {"uff": 3, "etkdg": 3}
    batch = collate_records(read_dataset(tmp_path / "d.db"))
    assert batch["positions"].shape == batch["target_positions"].shape == (2 * (6 + 8 + 3), 3)
    assert batch["bonds"].shape[0] == 2 and batch["ref_energy"].shape == (6,)
    assert bool((batch["batch"][batch["bonds"][0]] == batch["batch"][batch["bonds"][1]]).all())


@pytest.mark.skipif(not importable("tblite.ase"), reason="tblite not installed")
def test_xtb_targets(tmp_path):
    smi = tmp_path / "m.smi"
    smi.write_text("CO\nC#N\n")
    report = build_dataset(smi, tmp_path / "d.db", method="xtb", inputs=("cheap", "thermal"), progress=False)
    assert report.rows_per_kind == {"mmff": 2, "thermal": 2}
    for r in read_dataset(tmp_path / "d.db"):
        e = chem.xtb_energy(r.numbers.numpy(), r.target_positions.numpy())
        assert math.isclose(r.ref_energy, e, abs_tol=1e-6)
        assert r.input_rmsd > 1e-3


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="Valid sources: nci, g2"):
        build_dataset("qm9", tmp_path / "d.db")
    with pytest.raises(ValueError, match="Valid methods"):
        build_dataset("nci", tmp_path / "d.db", method="dft")
    with pytest.raises(ValueError, match="Valid input kinds"):
        build_dataset("nci", tmp_path / "d.db", inputs=("noise",))
    with pytest.raises(ValueError, match="return the target itself"):
        build_dataset("nci", tmp_path / "d.db", inputs=("mmff",))
    with pytest.raises(ValueError, match="as-given"):
        build_dataset("nci", tmp_path / "d.db", method="as-given")
    with pytest.raises(ValueError, match="split"):
        build_dataset("nci", tmp_path / "d.db", split=(0.9, 0.2, 0.1))
    with pytest.raises(ValueError, match=r"\.db"):
        build_dataset("nci", tmp_path / "d.sqlite")
    with pytest.raises(ValueError, match="Unknown element"):
        build_dataset("nci", tmp_path / "d.db", elements="C,Xx")
