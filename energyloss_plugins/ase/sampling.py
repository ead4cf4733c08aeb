"""Boltzmann sampling around data: Langevin MD on the pair-energy surrogate at temperature T.

The loss treats a target y as a thermal sample of exp(−E(ŷ, y)/k_B T) (SPEC §1). Sampling that
distribution shows what a temperature means (typical displacements, aligned RMSD) and gives
augmented structures. For small displacements E is harmonic with 3n − r non-rigid degrees of
freedom (r = 6, 5 for linear molecules, 3 with periodic boundaries), so equipartition predicts
⟨E⟩ = ½ k_B T (3n − r); the anharmonicity of distances in Cartesian coordinates adds corrections
of relative order k_B T / (k d²), small for stiff springs (measured: ethanol, ``exp`` springs with
k0 = 20 eV/Å², 300 K: ⟨E⟩ / equipartition = 0.998 ± 0.005 over 50,000 BAOAB steps).

Planar and linear references are special: every out-of-plane (off-axis) displacement leaves all
distances unchanged to first order, so the pair energy is quartic, not quadratic, along those
n − 3 (2n − 4) directions and they do not carry ½ k_B T each. :class:`BoltzmannSamples` counts
the harmonic degrees of freedom from the rank of the surrogate's Hessian and reports the soft ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator

from energyloss_plugins import vibrations
from energyloss_plugins._checks import check_number
from energyloss_plugins.ase._utils import n_rigid_modes, rigid_basis, thermalize_momenta

#: Sampling stops with an error when the potential energy exceeds this many times equipartition:
#: a stable thermostatted run fluctuates by a few sqrt(dof) kT, a diverging one grows without bound.
_BLOW_UP_FACTOR = 1e3

INTEGRATORS = ("baoab", "langevin")


def n_nonrigid_dof(atoms: Atoms) -> int:
    """Non-rigid degrees of freedom 3n − r (r = 6 non-linear, 5 linear, 3 periodic)."""
    return 3 * len(atoms) - n_rigid_modes(atoms)


def equipartition_energy(atoms: Atoms, temperature_K: float) -> float:
    """Harmonic (equipartition) mean potential energy ½ k_B T (3n − r) in eV."""
    return 0.5 * units.kB * temperature_K * n_nonrigid_dof(atoms)


def integrated_autocorrelation_time(x: np.ndarray, c: float = 5.0) -> float:
    """Integrated autocorrelation time τ = 1 + 2 Σ_t ρ(t) in samples (Sokal's automatic window M ≥ c τ).

    The standard error of the mean of ``x`` is then std(x) · sqrt(τ / N).
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    if n < 4 or np.var(x) == 0:
        return 1.0
    f = np.fft.rfft(x - x.mean(), n=2 * n)
    acf = np.fft.irfft(f * np.conj(f))[:n]
    acf /= acf[0]
    taus = 2.0 * np.cumsum(acf) - 1.0
    window = np.arange(n) >= c * taus
    m = int(np.argmax(window)) if window.any() else n - 1
    return float(max(taus[m], 1.0))


@dataclass
class BoltzmannSamples:
    """Langevin samples of a surrogate.

    Attributes:
        structures: sampled ``Atoms`` (aligned onto the reference if requested), each with a
            ``SinglePointCalculator`` holding the surrogate energy (eV) and forces, so ``ase.io.write``
            stores them; ``atoms.info`` has ``surrogate_energy``, ``rmsd`` and ``step``.
        energies: ``(S,)`` surrogate potential energies in eV.
        rmsd: ``(S,)`` Kabsch-aligned RMSD to the reference in Å.
        temperature_K: thermostat temperature.
        n_dof: harmonic degrees of freedom: the rank of the surrogate's Hessian at the reference
            (3n − r for a rigid edge set and a non-planar reference), else 3n − r.
        n_soft: non-rigid directions with zero curvature (out-of-plane flexes of planar or linear
            references, floppy modes of a non-rigid edge set); they are not harmonic.
        timestep_fs, interval, friction_per_fs, integrator: run settings.
        kinetic_temperature: ``(S,)`` instantaneous kinetic temperatures in K (thermostat check).
    """

    structures: list[Atoms]
    energies: np.ndarray
    rmsd: np.ndarray
    temperature_K: float
    n_dof: int
    timestep_fs: float
    interval: int
    friction_per_fs: float
    integrator: str
    n_soft: int = 0
    kinetic_temperature: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def expected_energy(self) -> float:
        """Equipartition ⟨E⟩ = ½ k_B T per harmonic degree of freedom, in eV."""
        return 0.5 * units.kB * self.temperature_K * self.n_dof

    @property
    def mean_energy(self) -> float:
        return float(np.mean(self.energies))

    @property
    def autocorrelation_time(self) -> float:
        """Integrated autocorrelation time of the energies, in samples."""
        return integrated_autocorrelation_time(self.energies)

    @property
    def standard_error(self) -> float:
        """Standard error of :attr:`mean_energy` in eV, corrected for autocorrelation.

        Reliable only for runs much longer than the autocorrelation time (N ≳ 50 τ): soft modes
        (e.g. torsions of Hessian-fitted springs) decorrelate slowly and short runs underestimate τ.
        """
        n = self.energies.size
        return (
            float(np.std(self.energies, ddof=1) * math.sqrt(self.autocorrelation_time / n)) if n > 1 else float("inf")
        )

    def summary(self) -> str:
        return (
            f"{len(self.structures)} samples at {self.temperature_K:g} K "
            f"({self.integrator}, dt {self.timestep_fs:g} fs, every {self.interval} steps): "
            f"<E> = {self.mean_energy:.5f} ± {self.standard_error:.5f} eV "
            f"(τ = {self.autocorrelation_time:.1f} samples), equipartition {self.expected_energy:.5f} eV "
            f"({self.n_dof} dof); aligned RMSD mean {np.mean(self.rmsd):.4f} Å"
            + (f"; warning: {self.n_soft} soft (non-harmonic) modes" if self.n_soft else "")
            + (
                "; warning: run shorter than 50 τ, the standard error is unreliable"
                if len(self.energies) < 50 * self.autocorrelation_time
                else ""
            )
        )

    def write(self, filename: str, **kwargs) -> None:
        """Write the structures with ``ase.io.write`` (any format ASE supports: .xyz, .traj, .db, ...)."""
        from ase.io import write

        write(filename, self.structures, **kwargs)


def _check_timestep(hessian: np.ndarray, masses: np.ndarray, timestep_fs: float) -> None:
    """Refuse a time step beyond the stability limit of the fastest harmonic mode.

    Verlet-type integrators (BAOAB, ASE's Langevin) are unstable for ω Δt >= 2 (ω the largest
    angular frequency of the mass-weighted Hessian): the energy grows without bound.
    """
    lam_max = float(np.linalg.eigvalsh(vibrations.mass_weighted(hessian, masses)).max())
    if lam_max <= 0:
        return
    omega = math.sqrt(lam_max)  # 1 / ASE time unit
    limit_fs = 2.0 / omega / units.fs
    if timestep_fs >= limit_fs:
        raise ValueError(
            f"timestep_fs={timestep_fs} is beyond the stability limit 2/ω_max = {limit_fs:.3g} fs of this surrogate's "
            f"fastest vibration (period {2 * math.pi / omega / units.fs:.3g} fs); use at most ~1/20 of the period "
            f"(about {math.pi / 10 / omega / units.fs:.2g} fs)."
        )


def _check_run(integrator: str, temperature_K: float, timestep_fs: float, friction_per_fs: float, n_samples: int,
               interval: int, equilibration: int | None) -> None:
    """Clear ValueErrors for run settings out of range (before any MD)."""
    if integrator not in INTEGRATORS:
        raise ValueError(f"Unknown integrator {integrator!r}. Valid: {', '.join(INTEGRATORS)}.")
    check_number("temperature_K", temperature_K, low=0.0)
    check_number("timestep_fs", timestep_fs, low=0.0)
    check_number("friction_per_fs", friction_per_fs, low=0.0)
    check_number("n_samples", n_samples, low=1, low_inclusive=True, integer=True)
    check_number("interval", interval, low=1, low_inclusive=True, integer=True)
    if equilibration is not None:
        check_number("equilibration", equilibration, low=0, low_inclusive=True, integer=True)


def _hessian_dof(calc: Calculator, reference: Atoms, timestep_fs: float) -> tuple[np.ndarray | None, int]:
    """The calculator's Hessian at the reference (None without ``get_hessian``) and its harmonic degrees of
    freedom (the curved directions; 3n − r without a Hessian); refuses an unstable time step."""
    if not callable(getattr(calc, "get_hessian", None)):
        return None, n_nonrigid_dof(reference)
    hessian = np.asarray(calc.get_hessian(reference.copy()), dtype=float)
    n_dof = int(vibrations.curved(np.linalg.eigvalsh(0.5 * (hessian + hessian.T))).sum())
    _check_timestep(hessian, reference.get_masses(), timestep_fs)
    return hessian, n_dof


def _start(atoms: Atoms, hessian: np.ndarray | None, temperature_K: float, rng: np.random.Generator) -> None:
    """Initial state in place: a harmonic sample of exp(−½ xᵀHx / k_B T) if ``hessian`` is given (its flat
    directions stay at the reference), then Maxwell-Boltzmann momenta with no net translation or rotation."""
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    if hessian is not None:
        atoms.positions = vibrations.harmonic_samples(atoms.positions, hessian, temperature_K, 1, rng, k_min=0.0,
                                                      rigid=rigid_basis(atoms))[0]
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not any(atoms.pbc):
        ZeroRotation(atoms)


def _dynamics(atoms: Atoms, integrator: str, timestep_fs: float, friction_per_fs: float, temperature_K: float,
              rng: np.random.Generator):
    """The ASE Langevin integrator ``integrator`` on ``atoms``."""
    dt = timestep_fs * units.fs
    if integrator == "baoab":
        from ase.md.langevinbaoab import LangevinBAOAB

        return LangevinBAOAB(atoms, dt, temperature_K=temperature_K, T_tau=units.fs / friction_per_fs, rng=rng)
    from ase.md.langevin import Langevin

    return Langevin(atoms, dt, temperature_K=temperature_K, friction=friction_per_fs / units.fs, fixcm=False, rng=rng)


def _collect(dyn, atoms: Atoms, reference: Atoms, n_samples: int, interval: int, first_step: int, align: bool,
             timestep_fs: float, temperature_K: float) -> tuple[list[Atoms], list[float], list[float], list[float]]:
    """Run ``dyn`` ``interval`` steps per sample; the samples, their energies (eV), aligned RMSDs (Å) and
    kinetic temperatures (K).

    Raises:
        ValueError: the run diverged (energy not finite or far beyond equipartition).
    """
    ref_pos = torch.tensor(reference.positions, dtype=torch.float64)
    structures, energies, rmsds, kinetic = [], [], [], []
    blow_up = _BLOW_UP_FACTOR * max(equipartition_energy(reference, temperature_K), units.kB * temperature_K)
    for s in range(n_samples):
        dyn.run(interval)
        energy = float(atoms.get_potential_energy())
        if not math.isfinite(energy) or energy > blow_up:
            raise ValueError(
                f"The Langevin run diverged (potential energy {energy:.3g} eV, > {_BLOW_UP_FACTOR:g} x equipartition): "
                f"timestep_fs={timestep_fs} is too large for this potential; use about 1/20 of its fastest "
                "vibrational period (0.5 fs for C-H stretches)."
            )
        sample, rmsd = _snapshot(atoms, ref_pos, energy, align and not any(reference.pbc))
        sample.info.update(
            surrogate_energy=energy, rmsd=rmsd, step=first_step + (s + 1) * interval, temperature_K=temperature_K
        )
        structures.append(sample)
        energies.append(energy)
        rmsds.append(rmsd)
        kinetic.append(atoms.get_temperature())
    return structures, energies, rmsds, kinetic


def _snapshot(atoms: Atoms, ref_pos: torch.Tensor, energy: float, align: bool) -> tuple[Atoms, float]:
    """A copy of the current state (no momenta) holding ``energy`` and the forces in a
    ``SinglePointCalculator``, Kabsch-aligned onto ``ref_pos`` ``(n, 3)`` if ``align``; and its aligned RMSD in Å."""
    from energyloss_plugins.alignment import aligned_rmsd, kabsch_align, kabsch_rotation

    pos = torch.tensor(atoms.positions, dtype=torch.float64)
    forces = atoms.get_forces()
    rmsd = float(aligned_rmsd(pos, ref_pos)[0])
    sample = atoms.copy()
    sample.calc = None
    if "momenta" in sample.arrays:
        del sample.arrays["momenta"]
    if align:
        batch = torch.zeros(len(atoms), dtype=torch.long)
        rot = kabsch_rotation(pos, ref_pos, batch, 1)[0].numpy()  # aligned_i = R (y_i − ȳ) + ȳ_ref
        sample.positions = kabsch_align(pos, ref_pos).numpy()
        forces = forces @ rot.T
    sample.calc = SinglePointCalculator(sample, energy=energy, forces=forces)
    return sample, rmsd


def boltzmann_sample(
    reference: Atoms,
    temperature_K: float = 300.0,
    n_samples: int = 100,
    *,
    calc: Calculator | None = None,
    coefficients="exp",
    coefficient_kwargs: Mapping | None = None,
    graph: str = "complete",
    graph_kwargs: Mapping | None = None,
    edge_index=None,
    interval: int = 20,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.02,
    equilibration: int | None = None,
    integrator: str = "baoab",
    seed: int = 0,
    align: bool = True,
    harmonic_start: bool = True,
) -> BoltzmannSamples:
    """Langevin MD on the surrogate E(·, reference) at ``temperature_K``; returns ``n_samples`` structures.

    Args:
        reference: the reference structure y (starting point, alignment target).
        temperature_K: thermostat temperature in K.
        n_samples: structures returned, one every ``interval`` MD steps after ``equilibration`` steps.
        calc: the potential; default an :class:`EnergyLossCalculator` around ``reference`` with
            ``coefficients``, ``coefficient_kwargs``, ``graph``, ``graph_kwargs``, ``edge_index`` (pass
            per-pair springs, e.g. fitted ones, as ``coefficients=k, edge_index=pairs``). Any ASE
            calculator works (e.g. a SumCalculator restraint).
        timestep_fs: MD time step in fs; keep it below ~1/20 of the fastest vibrational period
            (C–H stretches: ~11 fs).
        friction_per_fs: Langevin friction γ in 1/fs (BAOAB: T_tau = 1/γ).
        equilibration: steps discarded first; default 5/γ (in steps) with a harmonic start, else 20/γ.
        integrator: ``baoab`` (``ase.md.langevinbaoab.LangevinBAOAB``, accurate configurational
            sampling) or ``langevin`` (``ase.md.langevin.Langevin``).
        seed: seeds velocities, the harmonic start and the thermostat noise (reproducible runs).
        align: Kabsch-align every sample onto the reference (the surrogate is invariant anyway).
        harmonic_start: if the calculator has ``get_hessian``, start from a sample of the harmonic
            approximation instead of the minimum (shortens equilibration).

    Returns:
        :class:`BoltzmannSamples` with the structures, their energies, aligned RMSDs and the
        equipartition reference value.
    """
    from energyloss_plugins.ase.calculator import EnergyLossCalculator

    _check_run(integrator, temperature_K, timestep_fs, friction_per_fs, n_samples, interval, equilibration)
    if calc is None:
        calc = EnergyLossCalculator(reference, coefficients, coefficient_kwargs=coefficient_kwargs, graph=graph,
                                    graph_kwargs=graph_kwargs, edge_index=edge_index)
    rng = np.random.default_rng(seed)
    atoms = reference.copy()
    atoms.calc = calc
    hessian, n_dof = _hessian_dof(calc, reference, timestep_fs)
    started_harmonic = harmonic_start and hessian is not None
    _start(atoms, hessian if started_harmonic else None, temperature_K, rng)
    dyn = _dynamics(atoms, integrator, timestep_fs, friction_per_fs, temperature_K, rng)
    if equilibration is None:
        equilibration = int(math.ceil((5.0 if started_harmonic else 20.0) / (friction_per_fs * timestep_fs)))
    if equilibration > 0:
        dyn.run(equilibration)
    structures, energies, rmsds, kinetic = _collect(
        dyn, atoms, reference, n_samples, interval, equilibration, align, timestep_fs, temperature_K
    )
    return BoltzmannSamples(
        structures=structures, energies=np.array(energies), rmsd=np.array(rmsds), temperature_K=temperature_K,
        n_dof=n_dof, n_soft=max(n_nonrigid_dof(reference) - n_dof, 0), timestep_fs=timestep_fs, interval=interval,
        friction_per_fs=friction_per_fs, integrator=integrator, kinetic_temperature=np.array(kinetic),
    )
