"""Boltzmann sampling on the surrogate (issue 6, item 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ase")

from ase import Atoms, units  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.io import read  # noqa: E402

from energyloss_plugins import aligned_rmsd  # noqa: E402
from energyloss_plugins.ase import (
    BoltzmannSamples,
    EnergyLossCalculator,
    boltzmann_sample,
    equipartition_energy,
)  # noqa: E402
from energyloss_plugins.ase.sampling import integrated_autocorrelation_time, n_nonrigid_dof  # noqa: E402

torch.set_num_threads(1)


def test_mean_energy_matches_equipartition():
    """⟨E⟩ = ½ k_B T per non-rigid degree of freedom (ethanol: 3·9 − 6 = 21) within 4 standard errors.

    Stiff springs (exp, k0 = 20 eV/Å²) keep the anharmonic bias of distances in Cartesian
    coordinates small (measured 0.998 ± 0.005 of equipartition over 50,000 steps); BAOAB samples a
    harmonic configuration space exactly at any stable step. The standard error accounts for the
    autocorrelation (integrated autocorrelation time); with 700 samples it is ≈ 2 % of ⟨E⟩, while
    a wrong degree-of-freedom count (3n = 27) would be off by 29 %.
    """
    ref = molecule("CH3CH2OH")
    samples = boltzmann_sample(
        ref, 300.0, 700, coefficient_kwargs={"k0": 20.0}, interval=5, timestep_fs=2.0, friction_per_fs=0.05, seed=11
    )
    assert samples.n_dof == 21 and samples.n_soft == 0
    expected = 0.5 * units.kB * 300.0 * 21
    assert samples.expected_energy == pytest.approx(expected)
    assert equipartition_energy(ref, 300.0) == pytest.approx(expected)
    se = samples.standard_error
    assert 0 < se < 0.03 * expected  # the run is long enough to be a real test
    assert abs(samples.mean_energy - expected) < 4 * se, samples.summary()
    # The spread is the harmonic one too: Var E = (f/2) (k_B T)² for f harmonic dof.
    assert np.std(samples.energies) == pytest.approx(np.sqrt(21 / 2) * units.kB * 300.0, rel=0.2)


def test_samples_are_reproducible_aligned_and_writable(tmp_path):
    ref = molecule("NH3")
    kw = dict(coefficient_kwargs={"k0": 10.0}, interval=5, timestep_fs=1.0, seed=3)
    a = boltzmann_sample(ref, 100.0, 20, **kw)
    b = boltzmann_sample(ref, 100.0, 20, **kw)
    np.testing.assert_array_equal(a.energies, b.energies)
    assert isinstance(a, BoltzmannSamples) and len(a.structures) == 20
    calc = EnergyLossCalculator(ref, "exp", coefficient_kwargs={"k0": 10.0})
    for s in a.structures:
        pos, r = torch.tensor(s.positions), torch.tensor(ref.positions)
        # Aligned onto the reference: the plain RMSD is already the aligned one.
        plain = float(((pos - r) ** 2).sum(-1).mean().sqrt())
        assert plain == pytest.approx(float(aligned_rmsd(pos, r)[0]), abs=1e-8)
        assert plain == pytest.approx(s.info["rmsd"], abs=1e-8)
        # The attached energy and forces are the surrogate's at the stored (aligned) positions.
        check = s.copy()
        check.calc = calc
        assert check.get_potential_energy() == pytest.approx(s.get_potential_energy(), rel=1e-9)
        np.testing.assert_allclose(check.get_forces(), s.get_forces(), atol=1e-9)
    path = tmp_path / "samples.extxyz"
    a.write(str(path))
    back = read(path, index=":")
    assert len(back) == 20
    np.testing.assert_allclose([x.get_potential_energy() for x in back], a.energies, rtol=1e-7)
    # Higher temperature, larger displacements: RMSD grows like sqrt(T).
    hot = boltzmann_sample(ref, 400.0, 20, **kw)
    assert np.mean(hot.rmsd) > 1.5 * np.mean(a.rmsd)


def test_degree_of_freedom_counting():
    assert n_nonrigid_dof(molecule("CH4")) == 9
    assert n_nonrigid_dof(molecule("CO2")) == 4  # linear: 3n − 5
    assert n_nonrigid_dof(bulk("Cu", "fcc", a=3.6, cubic=True)) == 9  # periodic: 3n − 3
    assert n_nonrigid_dof(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])) == 1


def test_planar_reference_reports_soft_modes():
    samples = boltzmann_sample(molecule("H2CO"), 50.0, 3, interval=2, equilibration=0)
    # Formaldehyde is planar: its 1 out-of-plane mode is a first-order flex of the pair energy.
    assert samples.n_dof == 5 and samples.n_soft == 1
    assert "soft" in samples.summary()


def test_autocorrelation_time():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(20000)
    assert integrated_autocorrelation_time(white) == pytest.approx(1.0, abs=0.2)
    # AR(1) with coefficient φ has τ = (1 + φ) / (1 − φ) = 9 for φ = 0.8.
    ar = np.zeros(20000)
    for i in range(1, ar.size):
        ar[i] = 0.8 * ar[i - 1] + white[i]
    assert integrated_autocorrelation_time(ar) == pytest.approx(9.0, rel=0.2)


def test_sampling_errors():
    ref = molecule("H2O")
    with pytest.raises(ValueError, match="integrator"):
        boltzmann_sample(ref, 300.0, 2, integrator="verlet")
    with pytest.raises(ValueError, match="temperature_K"):
        boltzmann_sample(ref, -1.0, 2)
