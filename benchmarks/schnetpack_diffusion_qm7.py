"""QM7 conformer diffusion (atoms given) for the SchNetPack adapter: one loss, a fixed number of
optimiser steps (so that energy and MSE runs are compute-matched), then conformers sampled for the
compositions of test molecules from the EMA weights at the last step; reports that they are valid
ASE Atoms and their atom and molecule stability (core metrics), whatever they are.

    python benchmarks/schnetpack_diffusion_qm7.py --db <qm7.db> --loss energy --max-steps 800
    python benchmarks/schnetpack_diffusion_qm7.py --db <qm7.db> --loss mse --max-steps 800

The database is one from ``energyloss-data build`` (``target_positions`` are diffused), e.g. the one
benchmarks/generation_qm7.py builds (which runs both losses through this script).
Not a test (reads a QM7 database and trains for minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

import numpy as np
import torch

from _spk import read_split_rows, spktrain_command

HERE = os.path.dirname(os.path.abspath(__file__))


def train(datapath: str, out: str, loss: str, max_steps: int, seed: int,
          budget: int | None = None) -> tuple[str, float]:
    """Train (resuming an interrupted run) for ``max_steps`` optimiser steps, or for ``budget`` seconds of
    wall time when given; returns the checkpoint at the end and the wall time."""
    runs = os.path.join(out, "runs")
    run_id = f"diffusion_{loss}"
    if budget is None:
        checkpoint = os.path.join(runs, run_id, "steps", f"step={max_steps}.ckpt")
        stop = [f"++trainer.max_steps={max_steps}",
                "+callbacks.every_steps._target_=pytorch_lightning.callbacks.ModelCheckpoint",
                "+callbacks.every_steps.dirpath=steps", "+callbacks.every_steps.filename='{step}'",
                f"+callbacks.every_steps.every_n_train_steps={max_steps}"]
    else:
        checkpoint, stop = os.path.join(runs, run_id, "checkpoints", "last.ckpt"), []
    if os.path.exists(checkpoint):
        return checkpoint, float("nan")
    overrides = ["globals.clean_positions=target_positions", "data.load_properties=[target_positions]",
                 "data.batch_size=32", "globals.lr=1e-3", "model.representation.n_atom_basis=64",
                 "model.representation.n_interactions=2", "trainer.enable_model_summary=false",
                 "+trainer.enable_progress_bar=false", f"+seed={seed}", *stop]
    cmd = spktrain_command(datapath, loss, runs, run_id, budget or 24 * 3600, overrides)
    cmd[1] = "experiment=energyloss_diffusion"
    os.makedirs(runs, exist_ok=True)
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    with open(os.path.join(out, f"{run_id}.log"), "a") as log:
        subprocess.run(cmd, cwd=runs, stdout=log, stderr=subprocess.STDOUT,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore"))
    if not os.path.exists(checkpoint):
        raise RuntimeError(f"spktrain ended without {checkpoint}; see {run_id}.log")
    return checkpoint, time.time() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=os.path.join(HERE, "out", "schnetpack_qm7", "qm7_mmff.db"))
    p.add_argument("--out", default=os.path.join(HERE, "out", "schnetpack_qm7_diffusion"))
    p.add_argument("--max-steps", type=int, default=800, help="optimiser steps (equal for every loss)")
    p.add_argument("--budget", type=int, default=None, help="seconds of training instead of --max-steps (no resume)")
    p.add_argument("--loss", default="energy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=100, help="denoising steps")
    p.add_argument("--method", default="ancestral")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    datapath = os.path.abspath(args.db)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ckpt, wall = train(datapath, args.out, args.loss, args.max_steps, args.seed, args.budget)

    from ase import Atoms

    from energyloss_plugins.layouts import flat_molecules
    from energyloss_plugins.metrics import molecule_stability, stable_atoms
    from schnetpack_ext import DiffusionTask
    from schnetpack_ext.checkpoint import apply_ema_weights

    task = DiffusionTask.load_from_checkpoint(ckpt, map_location="cpu")
    apply_ema_weights(task, ckpt)
    atoms, targets = read_split_rows(datapath, "test")
    rng = np.random.default_rng(0)
    picks = rng.choice(len(atoms), size=args.samples, replace=len(atoms) < args.samples)
    chosen = [atoms[i] for i in picks]
    chosen_targets = [targets[i] for i in picks]
    start = time.time()
    samples = task.sample(chosen, steps=args.steps, method=args.method, seed=0, batch_size=50, progress=False)
    elapsed = time.time() - start
    valid = [isinstance(a, Atoms) and len(a) == len(c) and np.isfinite(a.positions).all()
             and (a.numbers == c.numbers).all() for a, c in zip(samples, chosen, strict=True)]
    numbers, positions, batch = flat_molecules(samples)
    ref_positions = torch.as_tensor(np.concatenate(chosen_targets))
    report = {
        "checkpoint": ckpt, "loss": args.loss, "max_steps": None if args.budget else args.max_steps,
        "budget_s": args.budget, "train_wall_s": round(wall, 1),
        "samples": len(samples), "sampler": f"{args.method}, {args.steps} steps", "sampling_s": round(elapsed, 1),
        "valid_ase_atoms": int(sum(valid)),
        "atom_stability": float(stable_atoms(numbers, positions, batch).float().mean()),  # over all atoms (EDM)
        "molecule_stability": float(molecule_stability(numbers, positions, batch).float().mean()),
        "pbe0_targets_atom_stability": float(stable_atoms(numbers, ref_positions, batch).float().mean()),
        "pbe0_targets_molecule_stability": float(molecule_stability(numbers, ref_positions, batch).float().mean()),
    }
    import ase.io

    ase.io.write(os.path.join(args.out, "samples.extxyz"), samples)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
