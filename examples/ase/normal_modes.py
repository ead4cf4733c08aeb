"""(b) Surrogate against true energies along the true normal modes of a molecule.

The springs are fitted to the true calculator's Hessian (GFN2-xTB or MMFF94) at its minimum y;
the script scans the structure along a few normal modes of the true Hessian and compares the
true energy E_true(y + a v) − E_true(y), its harmonic approximation ½ a² vᵀHv, the fitted spring
surrogate, and the default ``exp`` scheme (k0 = 1 eV/Å², unfitted). The lowest modes are
torsions, which central springs represent worst; stretches are represented well.

    python examples/ase/normal_modes.py [--molecule CH3CH2OH] [--calc xtb|mmff] [--energy 0.25]

Writes output/normal_modes_<molecule>.png.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from _common import parser, relaxed_reference  # noqa: E402
from energyloss_plugins.ase import EnergyLossCalculator, compute_hessian, normal_modes  # noqa: E402


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--energy", type=float, default=0.25, help="harmonic true energy at the scan ends, eV")
    p.add_argument(
        "--max-amplitude",
        type=float,
        default=0.3,
        help="cap of the scan amplitude in Å (a linear scan along a torsion soon breaks bonds)",
    )
    p.add_argument("--points", type=int, default=21)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ref, calc, label = relaxed_reference(args.molecule, args.calc)
    hessian = compute_hessian(ref, calc)
    fitted = EnergyLossCalculator.from_calculator(ref, calc, graph=args.graph, hessian=hessian)
    plain = EnergyLossCalculator(ref, "exp")
    print(fitted.fit_report)
    freqs, modes = normal_modes(hessian, ref)
    n = len(freqs)
    picks = sorted({0, 1, 2, n // 2, n - 4, n - 1})
    e0 = ref.get_potential_energy()

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    for ax, m in zip(axes.ravel(), picks, strict=False):
        v = modes[m]
        curvature = float(v.ravel() @ hessian @ v.ravel())  # eV/Å² along the unit Cartesian mode
        a_max = min(np.sqrt(2 * args.energy / curvature), args.max_amplitude)
        amps = np.linspace(-a_max, a_max, args.points)
        rows = {"true": [], "fitted": [], "exp": []}
        for a in amps:
            atoms = ref.copy()
            atoms.positions = ref.positions + a * v
            atoms.calc = calc
            rows["true"].append(atoms.get_potential_energy() - e0)
            rows["fitted"].append(fitted.get_potential_energy(atoms))
            rows["exp"].append(plain.get_potential_energy(atoms))
        ax.plot(amps, rows["true"], "k-", lw=2, label=f"{label} (true)")
        ax.plot(amps, 0.5 * curvature * amps**2, "k:", lw=1, label="true harmonic")
        ax.plot(amps, rows["fitted"], "C0--", lw=2, label="springs fitted to the Hessian")
        ax.plot(amps, rows["exp"], "C1-.", lw=1.5, label="exp scheme (unfitted)")
        fit_curv = float(v.ravel() @ fitted.get_hessian() @ v.ravel())
        ax.set_title(
            f"mode {m + 1}: {freqs[m]:.0f} cm⁻¹ (spring/true curvature {fit_curv / curvature:.2f})", fontsize=10
        )
        ax.set(xlabel="amplitude a [Å] (unit Cartesian mode)", ylabel="E − E(y) [eV]")
        print(
            f"mode {m + 1:2d} {freqs[m]:7.1f} cm⁻¹: curvature along the mode true {curvature:8.3f}, "
            f"fitted {fit_curv:8.3f} eV/Å²; E at +a_max true {rows['true'][-1]:.3f}, fitted {rows['fitted'][-1]:.3f} eV"
        )
    axes[0, 0].legend(fontsize=8)
    rep = fitted.fit_report
    fig.suptitle(
        f"{args.molecule}: surrogate vs {label} along normal modes "
        f"(Hessian fit error {rep.rel_frobenius_error:.2f}, {rep.n_active}/{rep.n_pairs} springs active)"
    )
    fig.tight_layout()
    png = os.path.join(args.out, f"normal_modes_{args.molecule}.png")
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
