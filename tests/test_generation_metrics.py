"""Metrics of generated molecules: EDM stability on hand-made molecules, validity, uniqueness, novelty."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
Atoms = pytest.importorskip("ase").Atoms

from energyloss_plugins import metrics as M  # noqa: E402
from energyloss_plugins.metrics.bonds import _SYMBOLS  # noqa: E402

torch.set_num_threads(1)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else q @ np.diag([-1.0, 1.0, 1.0])


def kekule_benzene(single: float = 1.46, double: float = 1.34, ch: float = 1.09) -> Atoms:
    """Planar C6H6 ring with alternating C–C lengths and 120° angles (closes for any two lengths)."""
    carbons, p = [], np.zeros(3)
    for k in range(6):
        carbons.append(p.copy())
        length = double if k % 2 == 0 else single
        p = p + length * np.array([math.cos(math.radians(60 * k)), math.sin(math.radians(60 * k)), 0.0])
    carbons = np.array(carbons)
    centre = carbons.mean(0)
    out = (carbons - centre) / np.linalg.norm(carbons - centre, axis=1, keepdims=True)
    return Atoms("C6H6", positions=np.concatenate([carbons, carbons + ch * out]))


def ethane(cc: float = 1.53, ch: float = 1.09) -> Atoms:
    """Staggered ethane with tetrahedral angles."""
    c = math.cos(math.radians(109.47 - 90))
    s = math.sin(math.radians(109.47 - 90))
    pos = [[0, 0, 0], [cc, 0, 0]]
    for k in range(3):
        phi = math.radians(120 * k)
        pos.append([-ch * s, ch * c * math.cos(phi), ch * c * math.sin(phi)])
        pos.append([cc + ch * s, ch * c * math.cos(phi + math.pi / 3), ch * c * math.sin(phi + math.pi / 3)])
    return Atoms("C2H6", positions=np.array(pos, dtype=float))


def water() -> Atoms:
    a = math.radians(104.5) / 2
    return Atoms("OH2", positions=[[0, 0, 0], [0.96 * math.sin(a), 0.96 * math.cos(a), 0],
                                   [-0.96 * math.sin(a), 0.96 * math.cos(a), 0]])


def methane() -> Atoms:
    d = 1.09 / math.sqrt(3)
    return Atoms("CH4", positions=[[0, 0, 0], [d, d, d], [-d, -d, d], [-d, d, -d], [d, -d, -d]])


def test_kekule_benzene_is_stable_and_valid():
    mol = kekule_benzene()
    z, x, b = M.flat_molecules([mol])
    assert bool(M.stable_atoms(z, x, b).all())
    out = M.generation_metrics([mol])
    assert out["atom_stability"] == 1.0 and out["mol_stability"] == 1.0 and out["validity"] == 1.0
    # the alternating bonds sanitise to the aromatic ring
    assert M.edm_smiles(z, x, b) == ["c1ccccc1"]


def test_stretched_bond_or_missing_hydrogen_is_unstable():
    assert M.generation_metrics([ethane()])["mol_stability"] == 1.0
    # C–C at 1.70 Å is beyond 1.54 + 0.10 Å: both carbons keep 3 bonds, the six hydrogens stay fine
    out = M.generation_metrics([ethane(cc=1.70)])
    assert out["mol_stability"] == 0.0 and math.isclose(out["atom_stability"], 6 / 8)
    # removing one hydrogen leaves its carbon with valence 3
    radical = ethane()
    del radical[2]
    out = M.generation_metrics([radical])
    assert out["mol_stability"] == 0.0 and math.isclose(out["atom_stability"], 6 / 7)
    # a C–C single bond shortened below 1.34 + 0.05 Å becomes a double bond: carbons over-valent
    assert M.generation_metrics([ethane(cc=1.30)])["mol_stability"] == 0.0


def test_stability_matches_a_plain_reading_of_the_tables():
    """Random C/H/N/O/S clusters: valences from the table read pair by pair in Python equal the batched ones."""
    rng = np.random.default_rng(0)
    symbols = ["H", "C", "N", "O", "S"]
    for _ in range(20):
        n = int(rng.integers(3, 9))
        syms = rng.choice(symbols, size=n).tolist()
        pos = rng.uniform(0, 2.6, size=(n, 3))
        z = torch.tensor([_SYMBOLS[s] for s in syms])
        got = M.atom_valences(z, torch.tensor(pos)).tolist()
        expected = [0] * n
        for i in range(n):
            for j in range(i + 1, n):
                lengths = M.BOND_LENGTHS_PM.get((syms[i], syms[j])) or M.BOND_LENGTHS_PM.get((syms[j], syms[i])) or ()
                d_pm = 100 * np.linalg.norm(pos[i] - pos[j])
                order = 0
                for k, (length, margin) in enumerate(zip(lengths, (10, 5, 3), strict=False)):
                    if d_pm < length + margin and order == k:
                        order = k + 1
                expected[i] += order
                expected[j] += order
        assert got == expected
        stable = [v in M.ALLOWED_VALENCES[s] for s, v in zip(syms, expected, strict=True)]
        assert M.stable_atoms(z, torch.tensor(pos)).tolist() == stable


def test_edm_valences_sulfur_only_four():
    """EDM's tables allow S only valence 4, so H2S (valence 2) is unstable."""
    h2s = Atoms("SH2", positions=[[0, 0, 0], [1.34, 0, 0], [0, 1.34, 0]])
    assert M.generation_metrics([h2s])["mol_stability"] == 0.0
    assert M.ALLOWED_VALENCES["S"] == (4,)


def test_metrics_invariant_under_rigid_motions_and_atom_order():
    rng = np.random.default_rng(1)
    mols = [kekule_benzene(), ethane(), ethane(cc=1.7), water(), methane()]
    ref = M.generation_metrics(mols)
    moved = []
    for m in mols:
        m = m.copy()
        m.positions = m.positions @ _rotation(rng).T + rng.normal(size=3) * 5
        perm = rng.permutation(len(m))
        moved.append(m[perm])
    assert M.generation_metrics(moved) == ref


def test_validity_uniqueness_novelty():
    ch5 = methane()
    ch5.append("H")
    ch5.positions[-1] = [0, 0, -1.09]  # a fifth hydrogen: carbon valence 5 cannot sanitise
    mols = [ethane(), ethane(cc=1.50), methane(), water(), ch5]
    out = M.generation_metrics(mols, train_smiles=M.molecule_smiles_set([methane()]))
    assert out["n"] == 5
    assert math.isclose(out["validity"], 4 / 5)
    assert math.isclose(out["uniqueness"], 3 / 4)  # two ethanes
    assert math.isclose(out["valid_unique"], 3 / 5)
    assert math.isclose(out["novelty"], 2 / 3)  # methane is in the training set
    assert M.generation_metrics(mols)["novelty"] is None
    # chunking does not change anything
    assert M.generation_metrics(mols, chunk_size=2) == M.generation_metrics(mols, chunk_size=500)


def test_smiles_of_largest_fragment():
    both = methane()
    w = water()
    w.positions += [8.0, 0, 0]
    both.extend(w)
    z, x, b = M.flat_molecules([both])
    assert M.edm_smiles(z, x, b) == ["C"]
    # a molecule with valid atoms but disconnected fragments is still valid (EDM)
    assert M.generation_metrics([both])["validity"] == 1.0


def test_nothing_valid_gives_nan_uniqueness_and_novelty():
    lone = Atoms("CH5", positions=np.concatenate([[[0, 0, 0]], 1.09 * np.eye(3), -1.09 * np.eye(3)[:2]]))
    out = M.generation_metrics([lone], train_smiles={"CCO"})
    assert out["validity"] == 0.0 and math.isnan(out["uniqueness"]) and math.isnan(out["novelty"])
    # an empty training set gives no novelty at all (not NaN, not 100 %)
    assert M.generation_metrics([lone], train_smiles=set())["novelty"] is None


def test_non_finite_molecules_count_as_unstable_and_invalid():
    good = kekule_benzene()
    diverged = good.copy()
    diverged.positions[0] = np.nan  # what a diverged sampler leaves
    out = M.generation_metrics([good, diverged])
    assert out["non_finite"] == 1 and out["n"] == 2
    assert out["mol_stability"] == 0.5 and out["validity"] == 0.5 and out["atom_stability"] == 0.5


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="No molecules"):
        M.generation_metrics([])
    with pytest.raises(ValueError, match="no atoms"):
        M.generation_metrics([methane(), Atoms()])
    with pytest.raises(ValueError, match="No valence rule"):
        M.generation_metrics([Atoms("LiH", positions=[[0, 0, 0], [1.6, 0, 0]])])
    with pytest.raises(ValueError, match="chunk_size"):
        M.generation_metrics([methane()], chunk_size=0)
