"""`make demo`: the energy loss against MSE in SchNetPack, end to end, in a few minutes on 2 CPU cores.

1. builds a small offline dataset with `energyloss-data` (RDKit's bundled NCI molecules; target:
   MMFF94 minimum; input: UFF relaxation started from the target: same basin, other force field),
2. trains PaiNN with `spktrain experiment=energyloss_structure` twice, with the same wall-clock
   budget: `globals.loss=mse` and `globals.loss=energy`,
3. evaluates both best models on the test molecules with the core's metrics and prints a
   side-by-side table (the input geometry itself is the "no model" baseline), and saves a plot.

    python examples/schnetpack/demo.py [--out demo_out/schnetpack] [--budget 60] [--molecules 120]
"""

from __future__ import annotations

import argparse
import os
import time

from schnetpack_ext._bench import evaluate_inputs, evaluate_run, evaluate_targets, run_spktrain, table, val_curve


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out/schnetpack")
    parser.add_argument("--budget", type=int, default=60, help="training seconds per loss (default: 60)")
    parser.add_argument("--molecules", type=int, default=120)
    parser.add_argument("--losses", default="mse,energy")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()

    from energyloss_plugins.data import build_dataset

    datapath = os.path.abspath(os.path.join(args.out, "nci_uff_to_mmff.db"))
    print(f"[1/3] building {args.molecules} molecules -> {datapath}", flush=True)
    print(build_dataset("nci", datapath, method="mmff", inputs="uff", max_molecules=args.molecules,
                        max_heavy_atoms=8, elements="C,N,O,F", seed=0, split=(0.7, 0.1, 0.2),
                        progress=True), flush=True)

    losses = args.losses.split(",")
    runs = {}
    for i, loss in enumerate(losses):
        print(f"\n[2/3] training PaiNN with globals.loss={loss} for {args.budget} s ({i + 1}/{len(losses)})", flush=True)
        runs[loss] = run_spktrain(datapath, loss, os.path.join(args.out, "runs"), f"painn_{loss}", args.budget,
                                  overrides=["data.batch_size=8", "globals.lr=1e-3",
                                             "model.representation.n_atom_basis=32",
                                             "model.representation.n_interactions=2",
                                             "globals.displacement_scale=0.1",
                                             "trainer.enable_model_summary=false"])

    print("\n[3/3] evaluating on the test molecules", flush=True)
    results = {"target itself (reference)": evaluate_targets(datapath),
               "input geometry (no model)": evaluate_inputs(datapath)}
    for loss, run_dir in runs.items():
        results[f"PaiNN + {loss}"] = evaluate_run(run_dir, datapath)
    text = table(results)
    print("\n" + text)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    _plot(results, runs, os.path.join(args.out, "demo.png"))
    print(f"\ntable: {os.path.join(args.out, 'results.md')}   plot: {os.path.join(args.out, 'demo.png')}   "
          f"total {time.time() - start:.0f} s")


def _plot(results, runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    names = list(results)
    for ax, key, label in zip(axes[:3], ("rmsd", "bond_mae", "molecule_stability"),
                              ("aligned RMSD (Å)", "bond-length MAE (Å)", "molecule stability")):
        shown = [n for n in names if not n.startswith("target")]
        values = [results[n].get(key, float("nan")) for n in shown]
        ax.bar(range(len(shown)), values, color=["0.6", "tab:blue", "tab:red", "tab:green"][: len(shown)])
        ax.set_xticks(range(len(shown)), [n.replace(" (no model)", "\n(no model)") for n in shown], fontsize=7)
        ax.set_title(label)
    for loss, run_dir in runs.items():
        x, y = val_curve(run_dir)
        axes[3].plot(x, y, marker="o", label=loss)
    axes[3].set_xlabel("epoch")
    axes[3].set_title("validation aligned RMSD (Å)")
    axes[3].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
