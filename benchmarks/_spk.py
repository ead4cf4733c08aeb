"""Shared machinery of the SchNetPack benchmarks: run ``spktrain`` with the shipped
experiment, evaluate the best model on the test split with the core's metrics, print tables."""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
import time

import numpy as np
import torch

METRICS = ("rmsd", "bond_mae", "angle_mae", "atom_stability", "molecule_stability")
LABELS = {"rmsd": "aligned RMSD (Å)", "bond_mae": "bond-length MAE (Å)", "angle_mae": "angle MAE (°)",
          "atom_stability": "atom stability", "molecule_stability": "molecule stability"}


def spktrain_command(datapath: str, loss: str, run_path: str, run_id: str, max_time_s: int, overrides=()) -> list:
    spktrain = os.path.join(os.path.dirname(sys.executable), "spktrain")
    hh, rem = divmod(int(max_time_s), 3600)
    mm, ss = divmod(rem, 60)
    return [spktrain, "experiment=energyloss_structure", f"data.datapath={os.path.abspath(datapath)}",
            f"globals.loss={loss}", f"run.path={os.path.abspath(run_path)}", f"run.id={run_id}",
            "trainer.accelerator=cpu", f"+trainer.max_time=00:{hh:02d}:{mm:02d}:{ss:02d}", "data.num_workers=0",
            "print_config=false", *overrides]


def run_spktrain(datapath: str, loss: str, run_path: str, run_id: str, max_time_s: int, overrides=(),
                 quiet: bool = False, log_file: str | None = None) -> str:
    """Train with ``spktrain`` for a wall-clock budget; returns the run directory."""
    cmd = spktrain_command(datapath, loss, run_path, run_id, max_time_s, overrides)
    print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    os.makedirs(run_path, exist_ok=True)
    start = time.time()
    if quiet or log_file:
        with open(log_file or os.devnull, "w") as log:
            proc = subprocess.run(cmd, cwd=run_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    else:
        proc = subprocess.run(cmd, cwd=run_path, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"spktrain failed ({proc.returncode}); see {log_file or 'the output above'}")
    print(f"  done in {time.time() - start:.0f} s", flush=True)
    return os.path.join(run_path, run_id)


def read_split_rows(datapath: str, subset: str = "test"):
    """Input Atoms, target positions (Å) of the rows of a split (the database's split file)."""
    from ase.db import connect

    from energyloss_plugins.data.paths import find_split_file

    split = np.load(find_split_file(datapath), allow_pickle=False)
    idx = split[f"{subset}_idx"]
    atoms, targets = [], []
    with connect(datapath) as conn:
        for i in idx:
            row = conn.get(int(i) + 1)
            atoms.append(row.toatoms())
            targets.append(np.asarray(row.data["target_positions"], dtype=float))
    return atoms, targets


def evaluate_positions(pred_list, atoms, targets) -> dict:
    """Core metrics (``energyloss_plugins.metrics.structure_metrics``) over all structures."""
    from energyloss_plugins.layouts import flat_numbers
    from energyloss_plugins.metrics import structure_metrics

    numbers, batch, _ = flat_numbers([a.numbers for a in atoms])
    pred = torch.as_tensor(np.concatenate(pred_list), dtype=torch.float64)
    target = torch.as_tensor(np.concatenate(targets), dtype=torch.float64)
    values = structure_metrics(pred, target, batch, numbers)
    return {k: float(values[k]) for k in METRICS if k in values}


def evaluate_run(run_dir: str, datapath: str, subset: str = "test") -> dict:
    from schnetpack_ext import predict_structures

    atoms, targets = read_split_rows(datapath, subset)
    predicted = predict_structures(os.path.join(run_dir, "best_model"), atoms, trusted=True)  # this run's own file
    result = evaluate_positions([a.positions for a in predicted], atoms, targets)
    result["epochs"], result["steps"] = _progress(run_dir)
    return result


def evaluate_inputs(datapath: str, subset: str = "test") -> dict:
    atoms, targets = read_split_rows(datapath, subset)
    return evaluate_positions([a.positions for a in atoms], atoms, targets)


def evaluate_targets(datapath: str, subset: str = "test") -> dict:
    """The metrics of the targets themselves (RMSD 0; stability shows what the stability rule makes of the
    reference)."""
    atoms, targets = read_split_rows(datapath, subset)
    return evaluate_positions(targets, atoms, targets)


def _progress(run_dir: str):
    files = glob.glob(os.path.join(run_dir, "csv", "version_*", "metrics.csv"))
    if not files:
        return None, None
    with open(files[0]) as f:
        rows = list(csv.DictReader(f))
    epochs = len({r["epoch"] for r in rows if r.get("val_loss")})  # completed (validated) epochs
    steps = max((int(r["step"]) for r in rows if r.get("step")), default=0)
    return epochs, steps


def val_curve(run_dir: str, key: str = "val_rmsd"):
    files = glob.glob(os.path.join(run_dir, "csv", "version_*", "metrics.csv"))
    if not files:
        return [], []
    with open(files[0]) as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    return [int(r["epoch"]) + 1 for r in rows], [float(r[key]) for r in rows]


def table(results: dict, columns=METRICS, extra=("epochs", "steps")) -> str:
    """Markdown table: one row per run."""
    head = ["run", *[LABELS.get(c, c) for c in columns], *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        cells = [name.replace(" | ", " / ")]
        for c in columns:
            v = res.get(c)
            cells.append("—" if v is None or v != v else (f"{100 * v:.1f} %" if "stability" in c else f"{v:.4f}"))
        for c in extra:
            v = res.get(c)
            cells.append("—" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
