"""QM7 diffusion report for the SchNetPack adapter: a short `spktrain experiment=energyloss_diffusion`
run, then 100 conformers sampled for the compositions of test molecules; reports that they are valid
ASE Atoms and their atom and molecule stability (core metrics), whatever they are.

    python benchmarks/schnetpack_diffusion_qm7.py --db benchmarks/out/schnetpack_qm7/qm7_mmff.db --budget 300

Not a test (reads a QM7 database built by benchmarks/schnetpack_qm7.py and trains for minutes).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np
import torch

from _spk import read_split_rows, run_spktrain

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=os.path.join(HERE, "out", "schnetpack_qm7", "qm7_mmff.db"))
    p.add_argument("--out", default=os.path.join(HERE, "out", "schnetpack_qm7_diffusion"))
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--loss", default="energy")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--method", default="ancestral")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    datapath = os.path.abspath(args.db)
    run_id = f"diffusion_{args.loss}"
    overrides = ["globals.clean_positions=target_positions", "data.load_properties=[target_positions]",
                 "data.batch_size=32", "globals.lr=1e-3", "model.representation.n_atom_basis=64",
                 "model.representation.n_interactions=2", "trainer.enable_model_summary=false",
                 "+trainer.enable_progress_bar=false", "+seed=0"]
    run_dir = os.path.join(args.out, "runs", run_id)
    if not glob.glob(os.path.join(run_dir, "checkpoints", "*.ckpt")):
        from _spk import spktrain_command

        cmd = spktrain_command(datapath, args.loss, os.path.join(args.out, "runs"), run_id, args.budget, overrides)
        cmd[1] = "experiment=energyloss_diffusion"
        import subprocess

        print("$ " + " ".join(cmd), flush=True)
        with open(os.path.join(args.out, f"{run_id}.log"), "w") as log:
            subprocess.run(cmd, cwd=os.path.join(args.out, "runs") if os.path.isdir(os.path.join(args.out, "runs"))
                           else _mk(os.path.join(args.out, "runs")), stdout=log, stderr=subprocess.STDOUT,
                           env=dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore"), check=True)

    from ase import Atoms

    from energyloss_plugins.layouts import flat_numbers
    from energyloss_plugins.metrics import molecule_stability, stable_atoms
    from schnetpack_ext import DiffusionTask

    ckpt = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "epoch=*.ckpt")))[-1]
    task = DiffusionTask.load_from_checkpoint(ckpt, map_location="cpu")
    atoms, targets = read_split_rows(datapath, "test")
    rng = np.random.default_rng(0)
    picks = rng.choice(len(atoms), size=args.samples, replace=len(atoms) < args.samples)
    chosen = [atoms[i] for i in picks]
    chosen_targets = [targets[i] for i in picks]
    start = time.time()
    samples = task.sample(chosen, steps=args.steps, method=args.method, seed=0, batch_size=50, progress=True)
    elapsed = time.time() - start
    valid = [isinstance(a, Atoms) and len(a) == len(c) and np.isfinite(a.positions).all()
             and (a.numbers == c.numbers).all() for a, c in zip(samples, chosen)]
    numbers, batch, _ = flat_numbers([a.numbers for a in samples])
    positions = torch.as_tensor(np.concatenate([a.positions for a in samples]))
    ref_positions = torch.as_tensor(np.concatenate(chosen_targets))
    report = {
        "checkpoint": ckpt, "loss": args.loss, "budget_s": args.budget, "samples": len(samples),
        "sampler": f"{args.method}, {args.steps} steps", "sampling_s": round(elapsed, 1),
        "valid_ase_atoms": int(sum(valid)),
        "atom_stability": float(stable_atoms(numbers, positions, batch).float().mean()),  # over all atoms (EDM)
        "molecule_stability": float(molecule_stability(numbers, positions, batch).float().mean()),
        "pbe0_targets_atom_stability": float(stable_atoms(numbers, ref_positions, batch).float().mean()),
        "pbe0_targets_molecule_stability": float(molecule_stability(numbers, ref_positions, batch).float().mean()),
    }
    import ase.io

    ase.io.write(os.path.join(args.out, "samples.extxyz"), samples)
    json.dump(report, open(os.path.join(args.out, "report.json"), "w"), indent=1)
    print(json.dumps(report, indent=1))


def _mk(path):
    os.makedirs(path, exist_ok=True)
    return path


if __name__ == "__main__":
    main()
