"""RDKit-based metrics and excess energy (need rdkit; xtb parts need tblite)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")
pytest.importorskip("ase")

from _optional import importable  # noqa: E402
from energyloss_plugins import chem  # noqa: E402
from energyloss_plugins import metrics as M  # noqa: E402

torch.set_num_threads(1)


def _mmff_molecule(smiles: str, seed: int = 0):
    mol = chem.mol_from_smiles(smiles)
    pos, _, fmax = chem.ff_relax(mol, chem.embed(mol, seed), "mmff")
    assert fmax < chem.TARGET_FMAX
    z = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()])
    bonds, orders = chem.bond_arrays(mol)
    return (
        mol,
        z,
        torch.tensor(pos),
        torch.tensor(bonds).T,
        torch.tensor(orders),
        torch.tensor(chem.formal_charges(mol)),
    )


@pytest.fixture(scope="module")
def batch2():
    """Ethanol and nitromethane (formal charges) at their MMFF94 minima, as one flat batch."""
    mols = [_mmff_molecule("CCO"), _mmff_molecule("C[N+](=O)[O-]")]
    z = torch.cat([m[1] for m in mols])
    x = torch.cat([m[2] for m in mols])
    n0 = len(mols[0][1])
    bonds = torch.cat([mols[0][3], mols[1][3] + n0], 1)
    orders = torch.cat([m[4] for m in mols])
    fc = torch.cat([m[5] for m in mols])
    batch = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(len(mols[1][1]), dtype=torch.long)])
    return z, x, batch, bonds, orders, fc


def test_excess_energy_zero_at_target_positive_when_perturbed(batch2):
    z, x, batch, bonds, orders, fc = batch2
    rigid = x @ torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64).T + 2.0
    e0 = M.excess_energy(z, rigid, x, batch, "mmff", bonds, orders, fc)
    assert e0.shape == (2,) and bool((e0.abs() < 1e-9).all())
    noisy = x + 0.05 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    e1 = M.excess_energy(z, noisy, x, batch, "mmff", bonds, orders, fc)
    assert bool((e1 > 1e-3).all())
    # without a bond list the graph is perceived from the target: same numbers
    e2 = M.excess_energy(z, noisy, x, batch, "mmff")
    assert torch.allclose(e1, e2, atol=1e-9)
    with pytest.raises(ValueError, match="Valid names: mmff, xtb"):
        M.excess_energy(z, x, x, batch, "dft")


@pytest.mark.skipif(not importable("tblite.ase"), reason="tblite not installed")
def test_excess_energy_xtb():
    mol = chem.mol_from_smiles("CO")
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    pos, _, _ = chem.xtb_relax(z, chem.ff_relax(mol, chem.embed(mol, 0), "mmff")[0])
    x = torch.tensor(pos)
    zt = torch.tensor(z)
    assert abs(float(M.excess_energy(zt, x, x, method="xtb")[0])) < 1e-9
    noisy = x + 0.05 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert float(M.excess_energy(zt, noisy, x, method="xtb")[0]) > 1e-3


def test_symmetric_rmsd_undoes_permutations(batch2):
    z, x, batch, bonds, _, _ = batch2
    # ethanol: swap two methyl hydrogens (atoms 3 and 4 after C, C, O) in the prediction
    perm = torch.arange(len(z))
    h_methyl = [i for i in range(9) if int(z[i]) == 1 and int(batch[i]) == 0][:2]
    perm[h_methyl[0]], perm[h_methyl[1]] = h_methyl[1], h_methyl[0]
    pred = x[perm]
    fixed = M.aligned_rmsd(pred, x, batch)
    sym = M.symmetric_rmsd(pred, x, z, batch, bonds)
    assert float(fixed[0]) > 0.3 and float(sym[0]) < 1e-6
    assert float(sym[1]) < 1e-6  # nitromethane untouched
    # no bond list: connectivity perceived from the target
    assert torch.allclose(M.symmetric_rmsd(pred, x, z, batch), sym, atol=1e-6)
    # symmetric RMSD never exceeds the fixed-order RMSD
    noisy = pred + 0.1 * torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert bool((M.symmetric_rmsd(noisy, x, z, batch, bonds) <= M.aligned_rmsd(noisy, x, batch) + 1e-9).all())
    heavy = M.symmetric_rmsd(noisy, x, z, batch, bonds, heavy_only=True)
    assert heavy.shape == (2,) and bool(torch.isfinite(heavy).all())


def test_validity_connectivity_uniqueness(batch2):
    z, x, batch, _, _, _ = batch2
    assert M.validity(z, x, batch).tolist() == [True, True]
    assert M.validity(z, x, batch, bonds="determine").tolist() == [True, True]
    assert M.connectivity(z, x, batch).tolist() == [True, True]
    smiles = M.molecule_smiles(z, x, batch, bonds="determine")
    assert smiles == ["CCO", "C[N+](=O)[O-]"]
    # two copies of ethanol and nitromethane: 2 distinct of 4 valid
    z4 = torch.cat([z, z])
    x4 = torch.cat([x, x + 10])
    b4 = torch.cat([batch, batch + 2])
    assert M.uniqueness(z4, x4, b4) == 0.5
    # pull the OH group of ethanol 3 Å away: two fragments -> valid but not connected
    far = x.clone()
    o_idx = [i for i in range(len(z)) if int(z[i]) == 8 and int(batch[i]) == 0][0]
    moved = [o_idx] + [i for i in range(len(z)) if int(batch[i]) == 0 and int(z[i]) == 1
                       and float((x[i] - x[o_idx]).norm()) < 1.1]  # fmt: skip
    far[moved] += torch.tensor([3.0, 0, 0], dtype=torch.float64)
    assert M.connectivity(z, far, batch).tolist() == [False, True]
    # squeeze a molecule: over-valent atoms -> invalid
    squeezed = x.clone()
    squeezed[batch == 0] *= 0.6
    assert M.validity(z, squeezed, batch).tolist() == [False, True]
    eth = batch == 0
    assert math.isnan(M.uniqueness(z[eth], squeezed[eth]))  # no valid molecule: undefined
    with pytest.raises(ValueError, match="Valid names: determine, edm"):
        M.validity(z, x, batch, bonds="xyz")
    # Structure ids are taken by their distinct values (docs/losses.md): a gap is no empty structure.
    assert M.validity(z, x, torch.where(batch == 1, 10**9, batch)).tolist() == [True, True]
