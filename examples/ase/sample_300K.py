"""(c) Boltzmann samples of the spring surrogate at 300 K: energy distribution against equipartition.

Langevin (BAOAB) MD on the surrogate with springs fitted to the true calculator's Hessian. For a
harmonic energy with f degrees of freedom the potential energy is Gamma-distributed with shape
f/2 and scale k_B T (mean f k_B T / 2: equipartition). The script plots the sampled histogram
against that density and, for reference, the true calculator's own 300 K distribution of
E_true − E_true(y) (optional, ``--no-true`` skips it), with the aligned RMSDs: what T means in Å.

    python examples/ase/sample_300K.py [--molecule CH3CH2OH] [--calc xtb|mmff] [--samples 1500]

Writes output/sample_300K_<molecule>.png and output/sample_300K_<molecule>.extxyz.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from ase import units  # noqa: E402
from scipy.stats import gamma  # noqa: E402

from _common import parser, relaxed_reference  # noqa: E402
from energyloss_plugins.ase import EnergyLossCalculator, boltzmann_sample  # noqa: E402


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--samples", type=int, default=1500)
    p.add_argument("--no-true", action="store_true", help="skip the MD on the true calculator")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ref, calc, label = relaxed_reference(args.molecule, args.calc)
    surrogate = EnergyLossCalculator.from_calculator(ref, calc, graph=args.graph, k_min=1e-2)
    print(surrogate.fit_report)
    t = args.temperature
    kw = dict(n_samples=args.samples, interval=5, timestep_fs=0.5, friction_per_fs=0.02, seed=0)
    samples = boltzmann_sample(ref, t, calc=surrogate, **kw)
    print("surrogate:", samples.summary())
    path = os.path.join(args.out, f"sample_{int(t)}K_{args.molecule}.extxyz")
    samples.write(path)

    true = None
    if not args.no_true:
        # The true calculator has no get_hessian: start at the minimum and equilibrate longer.
        true = boltzmann_sample(ref, t, calc=calc, equilibration=2000, **kw)
        e0 = ref.get_potential_energy()
        true.energies = true.energies - e0
        print(f"{label}:", true.summary())

    kt = units.kB * t
    f = samples.n_dof
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    ax.hist(samples.energies, bins=40, density=True, alpha=0.6, color="C0", label="surrogate (fitted springs)")
    if true is not None:
        ax.hist(true.energies, bins=40, density=True, histtype="step", lw=1.5, color="k", label=f"{label}: E − E(y)")
    x = np.linspace(0, max(samples.energies.max(), 1e-9) * 1.1, 300)
    ax.plot(x, gamma.pdf(x, f / 2, scale=kt), "C3-", lw=2, label=f"Gamma({f}/2, k_B T): harmonic")
    ax.axvline(samples.expected_energy, color="C3", ls=":", label=f"equipartition {samples.expected_energy:.3f} eV")
    ax.axvline(
        samples.mean_energy,
        color="C0",
        ls="--",
        label=f"sampled mean {samples.mean_energy:.3f} ± {samples.standard_error:.3f} eV",
    )
    ax.set(xlabel="potential energy [eV]", ylabel="density", title=f"{args.molecule} at {t:g} K ({f} harmonic dof)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.hist(samples.rmsd, bins=40, density=True, alpha=0.6, color="C0", label="surrogate")
    if true is not None:
        ax.hist(true.rmsd, bins=40, density=True, histtype="step", lw=1.5, color="k", label=label)
    ax.set(xlabel="Kabsch-aligned RMSD to y [Å]", ylabel="density", title="what the temperature means in Å")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(args.out, f"sample_{int(t)}K_{args.molecule}.png")
    fig.savefig(png, dpi=120)
    print(f"wrote {png} and {path}")


if __name__ == "__main__":
    main()
