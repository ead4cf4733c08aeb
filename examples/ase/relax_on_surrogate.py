"""(a) Perturb a molecule and relax it back on the spring surrogate with ASE's BFGS.

The surrogate is the pair energy loss E(·, y) as an ASE calculator, with springs fitted to the
true calculator's Hessian at y (GFN2-xTB or MMFF94) and, for comparison, the default ``exp``
scheme. Both relax a 0.2 Å-perturbed, randomly rotated copy back onto y (up to a rigid motion).

    python examples/ase/relax_on_surrogate.py [--molecule CH3CH2OH] [--calc xtb|mmff]

Writes output/relax_<molecule>.png and output/relax_<molecule>.traj (open with ``ase gui``).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase.io import Trajectory  # noqa: E402
from ase.optimize import BFGS  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from _common import parser, relaxed_reference  # noqa: E402
from energyloss_plugins import aligned_rmsd  # noqa: E402
from energyloss_plugins.ase import EnergyLossCalculator  # noqa: E402


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    os.makedirs(args.out, exist_ok=True)
    ref, calc, label = relaxed_reference(args.molecule, args.calc)
    fitted = EnergyLossCalculator.from_calculator(ref, calc, graph=args.graph)
    print(fitted.fit_report)

    rng = np.random.default_rng(0)
    start = ref.copy()
    start.positions = (start.positions + 0.2 * rng.standard_normal(start.positions.shape)) @ Rotation.random(
        random_state=1
    ).as_matrix().T + 5.0

    curves = {}
    traj_path = os.path.join(args.out, f"relax_{args.molecule}.traj")
    for name, surrogate in [
        (f"springs fitted to {label}", fitted),
        ("exp scheme (k0 = 1 eV/Å², ℓ = 1 Å)", EnergyLossCalculator(ref, "exp")),
    ]:
        atoms = start.copy()
        atoms.calc = surrogate
        energies, rmsds = [], []

        def record(atoms=atoms, energies=energies, rmsds=rmsds):
            energies.append(atoms.get_potential_energy())
            rmsds.append(float(aligned_rmsd(torch.tensor(atoms.positions), torch.tensor(ref.positions))[0]))

        opt = BFGS(atoms, logfile=None, trajectory=Trajectory(traj_path, "w", atoms) if surrogate is fitted else None)
        opt.attach(record, interval=1)
        opt.run(fmax=1e-5, steps=500)
        true_check = atoms.copy()
        true_check.calc = calc
        print(
            f"{name}: {opt.nsteps} BFGS steps, final aligned RMSD {rmsds[-1]:.2e} Å, "
            f"surrogate E {energies[-1]:.1e} eV, "
            f"max |F_true| at the result {np.abs(true_check.get_forces()).max():.1e} eV/Å"
        )
        curves[name] = (np.array(energies), np.array(rmsds))

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, (e, r) in curves.items():
        axes[0].semilogy(np.maximum(e, 1e-16), label=name)
        axes[1].semilogy(np.maximum(r, 1e-16), label=name)
    axes[0].set(
        xlabel="BFGS step",
        ylabel="surrogate energy E(ŷ, y) [eV]",
        title=f"{args.molecule}: relaxation on the surrogate",
    )
    axes[1].set(xlabel="BFGS step", ylabel="Kabsch-aligned RMSD to y [Å]", title="distance to the reference")
    axes[1].axhline(1e-3, color="gray", ls=":", lw=1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(args.out, f"relax_{args.molecule}.png")
    fig.savefig(png, dpi=120)
    print(f"wrote {png} and {traj_path}")


if __name__ == "__main__":
    main()
