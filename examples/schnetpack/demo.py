"""`make demo`: the energy loss against MSE in SchNetPack, end to end, in a few minutes on 2 CPU cores.

1. builds a small offline dataset with `energyloss-data` (RDKit's bundled NCI molecules; target:
   MMFF94 minimum; input: UFF relaxation started from the target: same basin, other force field),
2. trains PaiNN with `spktrain experiment=energyloss_structure` twice, for the same number of
   optimiser steps (wall time printed beside): `globals.loss=mse` and `globals.loss=energy`,
3. evaluates both best models on the test molecules with the core's metrics and prints a
   side-by-side table (the input geometry itself is the "no model" baseline), and saves a plot.

    python examples/schnetpack/demo.py [--out demo_out/schnetpack] [--steps 400] [--molecules 120]
"""

from __future__ import annotations

import argparse
import csv
import glob
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
from ase import Atoms

from energyloss_plugins.ase import predict_structures
from energyloss_plugins.data import build_dataset, collate_records, find_split_file, read_dataset, read_split
from energyloss_plugins.metrics import structure_metrics

COLUMNS = {"rmsd": "aligned RMSD (Å)", "bond_mae": "bond-length MAE (Å)", "angle_mae": "angle MAE (°)",
           "atom_stability": "atom stability", "molecule_stability": "molecule stability"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out/schnetpack")
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps per loss (default: 400)")
    parser.add_argument("--molecules", type=int, default=120)
    parser.add_argument("--losses", default="mse,energy")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()

    datapath = os.path.abspath(os.path.join(args.out, "nci_uff_to_mmff.db"))
    print(f"[1/3] building {args.molecules} molecules -> {datapath}", flush=True)
    print(build_dataset("nci", datapath, method="mmff", inputs="uff", max_molecules=args.molecules,
                        max_heavy_atoms=8, elements="C,N,O,F", seed=0, split=(0.7, 0.1, 0.2),
                        progress=True), flush=True)

    losses = args.losses.split(",")
    runs = {}
    for i, loss in enumerate(losses):
        print(f"\n[2/3] training PaiNN with globals.loss={loss} for {args.steps} steps ({i + 1}/{len(losses)})",
              flush=True)
        t0 = time.time()
        runs[loss] = train(datapath, loss, os.path.join(args.out, "runs"), args.steps)
        print(f"      {args.steps} steps in {time.time() - t0:.0f} s", flush=True)

    print("\n[3/3] evaluating on the test molecules", flush=True)
    split = read_split(find_split_file(datapath))
    records = read_dataset(datapath, indices=split["test_idx"])
    flat = collate_records(records)
    results = {"target itself (reference)": evaluate(flat["target_positions"], flat),
               "input geometry (no model)": evaluate(flat["positions"], flat)}
    inputs = [Atoms(numbers=r.numbers.numpy(), positions=r.positions.numpy()) for r in records]
    for loss, run_dir in runs.items():
        predicted = predict_structures(os.path.join(run_dir, "best_model"), inputs, trusted=True)  # trained above
        results[f"PaiNN + {loss}"] = evaluate(torch.as_tensor(np.concatenate([a.positions for a in predicted])), flat)
    text = table(results)
    print("\n" + text)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    _plot(results, runs, os.path.join(args.out, "demo.png"))
    print(f"\ntable: {os.path.join(args.out, 'results.md')}   plot: {os.path.join(args.out, 'demo.png')}   "
          f"total {time.time() - start:.0f} s")


def train(datapath: str, loss: str, run_path: str, steps: int) -> str:
    """``spktrain experiment=energyloss_structure`` for ``steps`` optimiser steps; returns the run directory."""
    run_id = f"painn_{loss}"
    cmd = train_command(datapath, loss, run_path, run_id, steps)
    print("$ " + " ".join(cmd), flush=True)
    os.makedirs(run_path, exist_ok=True)
    subprocess.run(cmd, cwd=run_path, check=True,
                   env=dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore"))
    return os.path.join(run_path, run_id)


def train_command(datapath: str, loss: str, run_path: str, run_id: str, steps: int) -> list[str]:
    """The demo's ``spktrain`` command line (also timed by ``benchmarks/demo_step_cost.py``)."""
    spktrain = shutil.which("spktrain") or os.path.join(os.path.dirname(sys.executable), "spktrain")
    return [spktrain, "experiment=energyloss_structure", f"data.datapath={datapath}", f"globals.loss={loss}",
            f"run.path={os.path.abspath(run_path)}", f"run.id={run_id}", "trainer.accelerator=cpu",
            f"++trainer.max_steps={steps}",
            "data.num_workers=0",
            "print_config=false", "data.batch_size=8", "globals.lr=1e-3", "model.representation.n_atom_basis=32",
            "model.representation.n_interactions=2", "globals.displacement_scale=0.1",
            "trainer.enable_model_summary=false",
            "+seed=0"]  # both losses start from the same weights and batches; the table is reproducible


def evaluate(positions: torch.Tensor, flat: dict) -> dict:
    """The core's structure metrics of ``positions`` against the targets of the collated test records."""
    values = structure_metrics(positions, flat["target_positions"], flat["batch"], flat["numbers"])
    return {key: float(values[key]) for key in COLUMNS if key in values}


def table(results: dict) -> str:
    """Markdown table, one row per model."""
    lines = ["| run | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, res in results.items():
        cells = [f"{100 * res[k]:.1f} %" if "stability" in k else f"{res[k]:.4f}" for k in COLUMNS if k in res]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def val_curve(run_dir: str, key: str = "val_rmsd") -> tuple[list, list]:
    """Epochs and validation aligned RMSD from the run's CSV log."""
    rows = []
    for path in glob.glob(os.path.join(run_dir, "csv", "version_*", "metrics.csv"))[:1]:
        with open(path) as f:
            rows = [r for r in csv.DictReader(f) if r.get(key)]
    return [int(r["epoch"]) + 1 for r in rows], [float(r[key]) for r in rows]


def _plot(results, runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    names = list(results)
    for ax, key, label in zip(axes[:3], ("rmsd", "bond_mae", "molecule_stability"),
                              ("aligned RMSD (Å)", "bond-length MAE (Å)", "molecule stability"), strict=True):
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
