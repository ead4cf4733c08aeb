"""De novo generation on QM7 (issue 11, SPEC §7): energy loss vs MSE/Kabsch at equal optimiser steps.

    PYTHONPATH=$PWD python benchmarks/generation_qm7.py --out /work/bench/generation_qm7 --workers 2
    PYTHONPATH=$PWD python benchmarks/generation_qm7.py --out /work/bench/generation_qm7 --evaluate-only

1. builds the QM7 database with the CLI if missing (``energyloss-data build ... --method as-given
   --inputs thermal``: the PBE0 geometries are the targets; the thermal input rows are not used);
2. trains one ``spktrain experiment=energyloss_generation`` run per entry of ``--runs`` (PaiNN,
   identical settings except the positional loss / seed / data fraction), all for the same number
   of optimiser steps (``trainer.max_steps``; wall time recorded beside), ``--workers`` runs in
   parallel with one torch thread each;
3. samples ``--samples`` molecules per run from the EMA weights at the last step (saved as
   ``runs/<run>/samples.extxyz``) and evaluates them (atom/molecule stability, validity,
   uniqueness, novelty against the training split; connectivity; Wasserstein-1 distances of bond
   lengths, angles, dihedrals and radii of gyration to the training molecules, and FCD);
4. learning curves (molecule and atom stability against step) from the checkpoints every
   ``steps/4`` of the seed-0 energy and mse runs; the conformer-diffusion (atoms given) MSE vs
   energy at the same steps (benchmarks/schnetpack_diffusion_qm7.py); TorchMD-Net runs when
   ``energyloss-torchmd-train --task generation`` exists (skipped with a message otherwise).

Resumable run by run: each finished run writes ``runs/<run>/result.json`` and is skipped on a
rerun; an unfinished training resumes from its last epoch checkpoint (``spktrain`` does that).
Writes ``results.md`` (table), ``results.json`` and ``learning_curve.png`` in ``--out``.
Not a test: it reads ../shared/data/qm7 and trains for an hour or more on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
DEFAULT_SOURCE = os.path.join(ROOT, "..", "shared", "data", "qm7", "qm7_pbe0.extxyz.gz")
ELEMENTS = "[1,6,7,8,16]"

#: name -> (kind, positional loss, seed, extra spktrain overrides, training fraction)
RUNS = {
    "energy-s0": ("spk", "energy", 0, [], 1.0),
    "mse-s0": ("spk", "mse", 0, [], 1.0),
    "energy-s1": ("spk", "energy", 1, [], 1.0),
    "mse-s1": ("spk", "mse", 1, [], 1.0),
    "curve-energy-s0": ("curve", "energy", 0, [], 1.0),
    "curve-mse-s0": ("curve", "mse", 0, [], 1.0),
    "kabsch-s0": ("spk", "kabsch", 0, [], 1.0),
    "energy_sparse-s0": ("spk", "energy", 0, ["globals.graph=rigid_sparse"], 1.0),
    "energy_half-s0": ("spk", "energy", 0, [], 0.5),
    "mse_half-s0": ("spk", "mse", 0, [], 0.5),
    "torchmd_mse-s0": ("torchmd", "mse", 0, [], 1.0),
    "torchmd_energy-s0": ("torchmd", "energy", 0, [], 1.0),
    "diffusion_energy-s0": ("diffusion", "energy", 0, [], 1.0),
    "diffusion_mse-s0": ("diffusion", "mse", 0, [], 1.0),
}
#: Settings shared by every generation run (only the loss, seed and data fraction differ).
MODEL = ["model.representation.n_atom_basis=64", "model.representation.n_interactions=3",
         "data.batch_size=64", "globals.lr=1e-3", "task.warmup_steps=100", "trainer.gradient_clip_val=1.0"]


def _env():
    return dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _read_json(path, default=None):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


# --- data -----------------------------------------------------------------------------------------
def split_path(out: str) -> str:
    """The split file the builder writes beside the database (``<name>.split.npz``)."""
    return os.path.join(out, "qm7.split.npz")


def build_database(out: str, source: str) -> str:
    db = os.path.join(out, "qm7.db")
    if os.path.exists(db) and os.path.exists(split_path(out)):
        return db
    cmd = [os.path.join(BIN, "energyloss-data"), "build", source, "-o", db, "--method", "as-given",
           "--inputs", "thermal", "--no-progress", "--json"]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=_env())
    return db


def half_split(out: str) -> str:
    """split file with the first half (seeded permutation) of the training molecules, same val/test."""
    import numpy as np

    path = os.path.join(out, "half", "split.npz")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        split = np.load(split_path(out), allow_pickle=False)
        train = np.random.default_rng(0).permutation(split["train_idx"])[: len(split["train_idx"]) // 2]
        np.savez(path, train_idx=np.sort(train), val_idx=split["val_idx"], test_idx=split["test_idx"])
    return path


def training_atoms(db: str, split_file: str, subset: str = "train"):
    """The clean (target) molecules of a split as ``ase.Atoms``."""
    import numpy as np
    from ase import Atoms
    from ase.db import connect

    idx = set(int(i) + 1 for i in np.load(split_file, allow_pickle=False)[f"{subset}_idx"])
    with connect(db) as conn:
        return [Atoms(numbers=row.numbers, positions=row.data["target_positions"])
                for row in conn.select() if row.id in idx]


def train_smiles(out: str, db: str) -> list:
    """SMILES of the training molecules by the metrics' own pipeline (``molecule_smiles_set``: largest
    fragment of the EDM-bond molecule), else canonical SMILES of the whole molecule; cached per pipeline."""
    try:
        from energyloss_plugins.metrics import molecule_smiles_set
    except ImportError:
        molecule_smiles_set = None
    path = os.path.join(out, "train_smiles_edm.json" if molecule_smiles_set else "train_smiles.json")
    if not os.path.exists(path):
        molecules = training_atoms(db, split_path(out))
        if molecule_smiles_set is not None:
            smiles = sorted(molecule_smiles_set(molecules))
        else:
            from energyloss_plugins.metrics import molecule_smiles

            numbers, positions, batch = _flat(molecules)
            smiles = sorted({s for s in molecule_smiles(numbers, positions, batch) if s is not None})
        _write_json(path, smiles)
    return _read_json(path)


# --- evaluation -----------------------------------------------------------------------------------
def _flat(atoms_list):
    import numpy as np
    import torch

    numbers = torch.as_tensor(np.concatenate([a.numbers for a in atoms_list]), dtype=torch.long)
    positions = torch.as_tensor(np.concatenate([a.positions for a in atoms_list]), dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(len(atoms_list)), torch.tensor([len(a) for a in atoms_list]))
    return numbers, positions, batch


def reference_profile(db: str, split_file: str):
    """Geometry and SMILES profile of the training molecules, the reference of the distribution distances."""
    from energyloss_plugins.metrics import profile

    return profile(training_atoms(db, split_file))


def evaluate(atoms_list, smiles=None, reference=None) -> dict:
    """The metrics of the samples (:func:`energyloss_plugins.metrics.generation_metrics`: EDM's four and
    novelty, connectivity, and with ``reference`` the Wasserstein-1 geometry distances and FCD to it;
    molecules with non-finite positions from a diverged sampler count as unstable and invalid)."""
    from energyloss_plugins.metrics import generation_metrics

    values = generation_metrics(atoms_list, train_smiles=set(smiles) if smiles is not None else None,
                                reference=reference)
    return {k: float(v) if isinstance(v, int | float) else v for k, v in values.items()}


# --- one run --------------------------------------------------------------------------------------
def spktrain_command(args, name: str, loss: str, seed: int, extra, fraction: float, db: str) -> list:
    every = max(1, args.steps // 4)
    cmd = [os.path.join(BIN, "spktrain"), "experiment=energyloss_generation", f"data.datapath={db}",
           f"globals.elements={ELEMENTS}", "globals.clean_positions=target_positions",
           "data.load_properties=[target_positions]", f"globals.loss={loss}", f"+seed={seed}",
           f"run.path={os.path.join(args.out, 'runs')}", f"run.id={name}", "trainer.accelerator=cpu",
           f"++trainer.max_steps={args.steps}", "data.num_workers=0", "print_config=false",
           "trainer.enable_model_summary=false", "+trainer.enable_progress_bar=false",
           "+callbacks.every_steps._target_=pytorch_lightning.callbacks.ModelCheckpoint",
           "+callbacks.every_steps.dirpath=steps", "+callbacks.every_steps.filename='{step}'",
           f"+callbacks.every_steps.every_n_train_steps={every}", "+callbacks.every_steps.save_top_k=-1",
           *MODEL, *extra]
    if fraction != 1.0:
        if fraction != 0.5:
            raise ValueError(f"only the 50 % data fraction is prepared, got {fraction}.")
        cmd.append(f"data.split_file={half_split(args.out)}")
    return cmd


def final_checkpoint(run_dir: str, steps: int) -> str:
    return os.path.join(run_dir, "steps", f"step={steps}.ckpt")


def train(args, name, loss, seed, extra, fraction, db) -> dict:
    run_dir = os.path.join(args.out, "runs", name)
    timing_path = os.path.join(run_dir, "train_time.json")
    timing = _read_json(timing_path, {"segments": []})
    if not os.path.exists(final_checkpoint(run_dir, args.steps)):
        cmd = spktrain_command(args, name, loss, seed, extra, fraction, db)
        os.makedirs(run_dir, exist_ok=True)
        print(f"[{name}] training: $ " + " ".join(cmd), flush=True)
        start = time.time()
        with open(os.path.join(args.out, "runs", f"{name}.train.log"), "a") as log:
            proc = subprocess.run(cmd, cwd=os.path.join(args.out, "runs"), env=_env(), stdout=log,
                                  stderr=subprocess.STDOUT)
        timing["segments"].append(round(time.time() - start, 1))
        _write_json(timing_path, timing)
        if not os.path.exists(final_checkpoint(run_dir, args.steps)):
            missing = final_checkpoint(run_dir, args.steps)
            raise RuntimeError(f"[{name}] spktrain ended ({proc.returncode}) without {missing}; "
                               f"see {name}.train.log")
    return {"train_wall_s": round(sum(timing["segments"]), 1), "train_segments": len(timing["segments"])}


def sample_run(args, name: str, checkpoint: str, n: int, path: str, seed: int = 0,
               adapter: str = "schnetpack_ext") -> float:
    """Sample in a subprocess (one thread) with ``<adapter>.load_generation_model``; returns the wall time."""
    code = (f"import sys, torch, ase.io; torch.set_num_threads(1); from {adapter} import load_generation_model; "
            "task = load_generation_model(sys.argv[1]); "
            "mols = task.sample_molecules(int(sys.argv[2]), steps=int(sys.argv[3]), method=sys.argv[4], "
            "seed=int(sys.argv[5]), "
            "batch_size=int(sys.argv[6]), progress=False); ase.io.write(sys.argv[7] + '.tmp.extxyz', mols); "
            "import os; os.replace(sys.argv[7] + '.tmp.extxyz', sys.argv[7])")
    start = time.time()
    with open(os.path.join(args.out, "runs", f"{name}.sample.log"), "a") as log:
        subprocess.run([sys.executable, "-c", code, checkpoint, str(n), str(args.sample_steps), args.method, str(seed),
                        str(args.sample_batch), path], env=_env(), stdout=log, stderr=subprocess.STDOUT, check=True)
    return round(time.time() - start, 1)


def run_generation(args, name, spec, db, smiles, reference=None) -> dict:
    kind, loss, seed, extra, fraction = spec
    result = {"run": name, "loss": loss, "seed": seed, "fraction": fraction, "overrides": MODEL + list(extra),
              "steps": args.steps, **train(args, name, loss, seed, extra, fraction, db)}
    run_dir = os.path.join(args.out, "runs", name)
    samples = os.path.join(run_dir, "samples.extxyz")
    if not os.path.exists(samples):
        result["sampling_wall_s"] = sample_run(args, name, final_checkpoint(run_dir, args.steps), args.samples, samples)
    result.update(sampler=f"{args.method}, {args.sample_steps} steps", **evaluate(_read(samples), smiles, reference))
    return result


def run_curve(args, name, spec, db, smiles, reference=None) -> dict:
    """Stability against step from the every-steps/4 checkpoints of an already trained run."""
    base = name.removeprefix("curve-")
    run_dir = os.path.join(args.out, "runs", base)
    points = []
    for k in range(1, 5):
        step = k * max(1, args.steps // 4)
        ckpt = final_checkpoint(run_dir, step)
        if not os.path.exists(ckpt):
            raise RuntimeError(f"[{name}] missing {ckpt}: train {base} first.")
        path = os.path.join(run_dir, f"curve_samples_step{step}.extxyz")
        if not os.path.exists(path):
            sample_run(args, name, ckpt, args.curve_samples, path, seed=1)
        points.append({"step": step, **evaluate(_read(path), None)})
    return {"run": name, "of": base, "points": points, "steps": args.steps}


def torchmd_available() -> bool:
    exe = os.path.join(BIN, "energyloss-torchmd-train")
    if not os.path.exists(exe):
        return False
    text = subprocess.run([exe, "--help"], env=_env(), capture_output=True, text=True).stdout
    return "generation" in text


def run_torchmd(args, name, spec, db, smiles, reference=None) -> dict:
    kind, loss, seed, extra, fraction = spec
    if not torchmd_available():
        return {"run": name, "status": "skipped", "reason": "energyloss-torchmd-train has no '--task generation' yet "
                "(helper GEN-EVAL adds it); rerun this script once it exists."}
    try:
        from torchmdnet_ext import load_generation_model  # noqa: F401  (the sampler subprocess uses it)
    except ImportError:
        return {"run": name, "status": "skipped", "reason": "torchmdnet_ext.load_generation_model is missing."}
    run_dir = os.path.join(args.out, "runs", name)
    os.makedirs(run_dir, exist_ok=True)
    # TorchMD-Net trains whole epochs: the epoch count whose steps come closest to --steps (reported as run)
    import numpy as np

    with np.load(split_path(args.out), allow_pickle=False) as split:
        batches_per_epoch = math.ceil(len(split["train_idx"]) / 64)
    epochs = max(1, round(args.steps / batches_per_epoch))
    cmd = [os.path.join(BIN, "energyloss-torchmd-train"), "--task", "generation", "--dataset", "EnergyLossDB",
           "--dataset-root", db, "--elements", ELEMENTS.strip("[]"), "--model", "equivariant-transformer",
           "--embedding-dimension", "64", "--num-layers", "3", "--num-heads", "4", "--num-rbf", "32",
           "--cutoff-upper", "10.0", "--max-num-neighbors", "32", "--train-loss", f"{loss}_loss",
           "--train-loss-arg", "{coefficients: exp, coefficient_kwargs: {k0: 5.0}, graph: complete}",
           "--batch-size", "64", "--inference-batch-size", "128", "--lr", "1e-3", "--lr-warmup-steps", "100",
           "--num-epochs", str(epochs), "--save-interval", "1", "--num-workers", "0", "--seed", str(seed),
           "--log-dir", run_dir]
    timing_path = os.path.join(run_dir, "train_time.json")
    timing = _read_json(timing_path)
    if timing is None:  # TorchMD-Net restarts an interrupted training from scratch
        start = time.time()
        with open(os.path.join(args.out, "runs", f"{name}.train.log"), "a") as log:
            proc = subprocess.run(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        timing = {"segments": [round(time.time() - start, 1)], "returncode": proc.returncode}
        if proc.returncode == 0:
            _write_json(timing_path, timing)
    checkpoints = [os.path.join(run_dir, f) for f in os.listdir(run_dir) if f.endswith(".ckpt")]
    if timing.get("returncode") != 0 or not checkpoints:
        return {"run": name, "status": "failed", "reason": f"energyloss-torchmd-train exit {timing.get('returncode')}; "
                f"see {name}.train.log", "command": cmd}
    last = os.path.join(run_dir, "last.ckpt")
    checkpoint = last if os.path.exists(last) else max(checkpoints, key=os.path.getmtime)
    samples = os.path.join(run_dir, "samples.extxyz")
    result = {"run": name, "loss": loss, "seed": seed, "fraction": 1.0, "steps": epochs * batches_per_epoch,
              "train_wall_s": timing["segments"][0], "checkpoint": checkpoint}
    if not os.path.exists(samples):
        result["sampling_wall_s"] = sample_run(args, name, checkpoint, args.samples, samples, adapter="torchmdnet_ext")
    return {**result, "sampler": f"{args.method}, {args.sample_steps} steps",
            **evaluate(_read(samples), smiles, reference)}


def run_diffusion(args, name, spec, db, smiles, reference=None) -> dict:
    """Conformer diffusion (atoms given) at the same optimiser steps (benchmarks/schnetpack_diffusion_qm7.py)."""
    kind, loss, seed, extra, fraction = spec
    out = os.path.join(args.out, "runs", name)
    cmd = [sys.executable, os.path.join(HERE, "schnetpack_diffusion_qm7.py"), "--db", db, "--out", out, "--loss", loss,
           "--max-steps", str(args.steps), "--samples", "200", "--steps", str(args.sample_steps), "--seed", str(seed)]
    with open(os.path.join(args.out, "runs", f"{name}.log"), "a") as log:
        subprocess.run(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, check=True)
    report = _read_json(os.path.join(out, "report.json"))
    return {"run": name, "loss": loss, "seed": seed, "conformer_diffusion": True, **report}


KINDS = {"spk": run_generation, "curve": run_curve, "torchmd": run_torchmd, "diffusion": run_diffusion}


def _read(path):
    import ase.io

    return ase.io.read(path, index=":")


def do_run(args, name, db, smiles, reference=None):
    path = os.path.join(args.out, "runs", name, "result.json")
    done = _read_json(path)
    if done is not None and done.get("status") == "done":
        print(f"[{name}] done before: skipped", flush=True)
        return done
    spec = RUNS[name]
    try:
        result = KINDS[spec[0]](args, name, spec, db, smiles, reference)
    except Exception as exc:  # one failed run must not stop the others
        print(f"[{name}] FAILED: {exc}", flush=True)
        return {"run": name, "status": "failed", "reason": str(exc)}
    result.setdefault("status", "done")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _write_json(path, result)
    print(f"[{name}] {result['status']}: " + json.dumps({k: v for k, v in result.items() if k in (
        "atom_stability", "mol_stability", "validity", "uniqueness", "train_wall_s", "reason")}), flush=True)
    return result


# --- report ---------------------------------------------------------------------------------------
#: Table columns: (metrics key, header, scale, decimals): EDM's four and novelty in %, then whether the
#: samples are molecules at all (validity judges the largest fragment only) and how far their geometry
#: and chemistry are from the training molecules (Wasserstein-1 in Å / degrees; FCD unitless).
COLUMNS = (
    ("atom_stability", "atom stab. %", 100, 1), ("mol_stability", "mol stab. %", 100, 1),
    ("validity", "valid %", 100, 1), ("uniqueness", "unique %", 100, 1), ("novelty", "novel %", 100, 1),
    ("valid_and_connected", "valid & connected %", 100, 1), ("mean_fragments", "fragments", 1, 1),
    ("bond_length_distance", "bond W1 Å", 1, 3), ("bond_angle_distance", "angle W1 °", 1, 1),
    ("dihedral_distance", "dihedral W1 °", 1, 1), ("rg_distance", "Rg W1 Å", 1, 2), ("fcd", "FCD", 1, 1),
)  # fmt: skip


def _mean_spread(values, scale: float = 100, decimals: int = 1):
    values = [v for v in values if isinstance(v, int | float) and v == v]
    if not values:
        return "—"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{scale * mean:.{decimals}f}"
    return f"{scale * mean:.{decimals}f} ± {scale * (max(values) - min(values)) / 2:.{decimals}f}"


def _cells(rows: list[dict]) -> str:
    return " | ".join(_mean_spread([r.get(key) for r in rows], scale, dec) for key, _, scale, dec in COLUMNS)


def table(results: dict, data_row: dict | None) -> str:
    """Markdown table of the runs (mean ± half-range over seeds); distances are to the training molecules."""
    groups: dict[str, list] = {}
    for name, res in results.items():
        if res.get("status") != "done" or "points" in res or res.get("conformer_diffusion"):
            continue
        groups.setdefault(name.rsplit("-s", 1)[0], []).append(res)
    head = ["run", "seeds", *(header for _, header, _, _ in COLUMNS), "steps", "train wall (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if data_row:
        lines.append("| QM7 held-out molecules (val + test) | — | " + _cells([data_row]) + " | — | — |")
    for group, runs in groups.items():
        walls = [r.get("train_wall_s") for r in runs if r.get("train_wall_s")]
        wall = f"{sum(walls) / len(walls) / 60:.1f}" if walls else "—"
        lines.append(f"| {group} | {len(runs)} | " + _cells(runs) + f" | {runs[0].get('steps')} | {wall} |")
    diff = {n: r for n, r in results.items() if r.get("conformer_diffusion") and r.get("status") == "done"}
    if diff:
        lines += ["", "Conformer diffusion (atoms given, test compositions):", "",
                  "| run | atom stab. % | mol stab. % | steps | samples |", "|---|---|---|---|---|"]
        for n, r in diff.items():
            lines.append(f"| {n} | {100 * r['atom_stability']:.1f} | {100 * r['molecule_stability']:.1f} | "
                         f"{r.get('max_steps')} | {r.get('samples')} |")
    skipped = [f"- {n}: {r.get('status')}: {r.get('reason')}" for n, r in results.items() if r.get("status") != "done"]
    if skipped:
        lines += ["", *skipped]
    return "\n".join(lines)


def plot_curves(args, results: dict) -> str | None:
    curves = {r["of"]: r["points"] for r in results.values() if r.get("status") == "done" and "points" in r}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for run, points in curves.items():
        steps = [p["step"] for p in points]
        for ax, key in zip(axes, ("mol_stability", "atom_stability"), strict=True):
            ax.plot(steps, [100 * p[key] for p in points], marker="o", label=run)
    for ax, label in zip(axes, ("molecule stability (%)", "atom stability (%)"), strict=True):
        ax.set_xlabel("optimiser step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"QM7 generation, PaiNN, {args.curve_samples} samples per point "
                 f"({args.method}, {args.sample_steps} steps)")
    fig.tight_layout()
    path = os.path.join(args.out, "learning_curve.png")
    fig.savefig(path, dpi=120)
    return path


def report(args, db, smiles, results, reference=None):
    data_path = os.path.join(args.out, "data_metrics_heldout.json")
    data_row = _read_json(data_path)
    if data_row is None:  # what the data itself scores: molecules the model did not train on, against the training set
        split = split_path(args.out)
        heldout = training_atoms(db, split, "val") + training_atoms(db, split, "test")
        data_row = evaluate(heldout, None, reference)
        _write_json(data_path, data_row)
    text = table(results, data_row)
    png = plot_curves(args, results)
    header = (f"QM7 de novo generation, PaiNN 64x3, batch 64, {args.steps} optimiser steps per run, "
              f"{args.samples} samples per run ({args.method}, {args.sample_steps} steps); "
              "mean ± half-range over seeds; W1: Wasserstein-1 distance of the samples' distribution to the "
              "training molecules' (bond lengths per bond type, angles, |dihedrals|, radii of gyration), FCD: "
              "Fréchet ChemNet distance of the valid samples' SMILES to the training molecules'.\n"
              f"Command: PYTHONPATH=$PWD python benchmarks/generation_qm7.py --out {args.out} --workers {args.workers} "
              f"--steps {args.steps} --samples {args.samples} --sample-steps {args.sample_steps}\n\n")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(header + text + ("\n\nLearning curve: " + png if png else "") + "\n")
    _write_json(os.path.join(args.out, "results.json"), results)
    print(header + text, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "out", "generation_qm7"))
    p.add_argument("--source", default=DEFAULT_SOURCE, help="QM7 extxyz (../shared/data/qm7/qm7_pbe0.extxyz.gz)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, in priority order; from {', '.join(RUNS)}")
    p.add_argument("--steps", type=int, default=800, help="optimiser steps per run (equal for all runs)")
    p.add_argument("--samples", type=int, default=1000, help="molecules sampled per run")
    p.add_argument("--curve-samples", type=int, default=200, help="molecules per learning-curve point")
    p.add_argument("--sample-steps", type=int, default=50, help="denoising steps (EDM: 1000)")
    p.add_argument("--sample-batch", type=int, default=25,
                   help="molecules per network call (small batches run faster on CPU)")
    p.add_argument("--method", default="ancestral", choices=("ancestral", "ddim"))
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (one torch thread each)")
    p.add_argument("--evaluate-only", action="store_true", help="re-evaluate the saved samples of finished runs")
    args = p.parse_args(argv)
    args.out = os.path.abspath(args.out)
    names = [n.strip() for n in args.runs.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        p.error(f"unknown runs {unknown}; choose from {', '.join(RUNS)}")
    if not os.path.isfile(args.source):
        p.error(f"--source {args.source} not found: give the QM7 file (qm7_pbe0.extxyz.gz, made as docs/data.md says)")
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    db = build_database(args.out, os.path.abspath(args.source))
    smiles = train_smiles(args.out, db)
    reference = reference_profile(db, split_path(args.out))

    if args.evaluate_only:
        results = {}
        for name in names:
            res = _read_json(os.path.join(args.out, "runs", name, "result.json"))
            samples = os.path.join(args.out, "runs", name, "samples.extxyz")
            if res and os.path.exists(samples):
                res.update(evaluate(_read(samples), smiles, reference))
                _write_json(os.path.join(args.out, "runs", name, "result.json"), res)
            if res:
                results[name] = res
        report(args, db, smiles, results, reference)
        return

    # curve jobs need their base run: run them after it, in the same worker order
    results = {}
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = {}
        for name in names:
            base = name.removeprefix("curve-")
            if RUNS[name][0] == "curve" and base in futures:
                def after_base(n=name, b=futures[base]):  # a curve run starts when its base run is done
                    b.result()
                    return do_run(args, n, db, smiles, reference)

                futures[name] = pool.submit(after_base)
            else:
                futures[name] = pool.submit(do_run, args, name, db, smiles, reference)
        for name, future in futures.items():
            results[name] = future.result()
    report(args, db, smiles, results, reference)


if __name__ == "__main__":
    main()
