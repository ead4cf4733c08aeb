"""CPU evidence for the generation pair (issue 17 item 7): settings chosen per loss, then 10,000 steps each.

    PYTHONPATH=$PWD python benchmarks/generation_long_qm7.py --out /work/bench/generation_long
    PYTHONPATH=$PWD python benchmarks/generation_long_qm7.py --out /work/bench/generation_long --report-only

Three phases, each resumable (finished pieces are skipped on a rerun):

1. **Learning rate per loss** (the paper tuned per loss, SPEC §7): ``energy`` and ``mse`` at
   ``--lrs`` (default 3e-4 and 1e-3) for ``--select-steps`` (1,000) optimiser steps; the rate with the
   higher atom stability of ``--samples`` molecules sampled from the EMA weights wins (these samples
   do not depend on the data split; the x̂ error below is measured on the validation split).
2. **Long pair**: each loss continues its chosen 1,000-step run to ``--steps`` (10,000), both in
   parallel (one thread each), with a step checkpoint every 1,000 steps.
3. **Radial basis** (beside the long pair): the chosen settings again with ``--fine-rbf`` Gaussians
   (default 50 over the 10 Å cutoff, 0.2 Å wide, instead of SchNetPack's 20, 0.5 Å) for
   ``--select-steps``; it becomes the shipped default only if it raises atom stability for *both*
   losses (the long pair keeps SchNetPack's basis, so that it need not wait for this trial). Every checkpoint is scored
   while training goes on: atom/molecule stability, validity, valid-and-unique (and every other key of
   :func:`energyloss_plugins.metrics.generation_metrics`) of ``--samples`` samples, and the x̂ error at
   low noise: the RMSD (Å, same frame, no alignment) between the clean validation molecule and the
   x̂ implied by the network's ε̂ at t ~ U(0, 0.05].

Writes ``results.json``, ``results.md`` and ``learning_curves.png`` in ``--out``. Settings shared by
every run are those of benchmarks/generation_qm7.py (PaiNN 64 × 3, batch 64, warm-up 100, gradient
clip 1, k0 = 5 exp springs); only the loss, the learning rate and the radial basis differ.
Not a test: it reads ../shared/data/qm7 and trains for hours on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import generation_qm7 as base  # noqa: E402  (same data, model and evaluation as the equal-step benchmark)

LOSSES = ("energy", "mse")
#: The generation benchmark's model settings without its shared learning rate (chosen per loss here).
MODEL = [o for o in base.MODEL if not o.startswith("globals.lr=")]


def _rbf_overrides(n_rbf: int | None) -> list[str]:
    return [] if n_rbf is None else [f"model.representation.radial_basis.n_rbf={n_rbf}"]


def spktrain_command(args, name: str, loss: str, lr: float, n_rbf: int | None, steps: int, db: str,
                     resume_from: str | None = None) -> list[str]:
    cmd = [os.path.join(base.BIN, "spktrain"), "experiment=energyloss_generation", f"data.datapath={db}",
           f"globals.elements={base.ELEMENTS}", "globals.clean_positions=target_positions",
           "data.load_properties=[target_positions]", f"globals.loss={loss}", f"globals.lr={lr}", "+seed=0",
           f"run.path={os.path.join(args.out, 'runs')}", f"run.id={name}", "trainer.accelerator=cpu",
           f"++trainer.max_steps={steps}", "data.num_workers=0", "print_config=false",
           "trainer.enable_model_summary=false", "+trainer.enable_progress_bar=false",
           "+callbacks.every_steps._target_=pytorch_lightning.callbacks.ModelCheckpoint",
           "+callbacks.every_steps.dirpath=steps", "+callbacks.every_steps.filename='{step}'",
           f"+callbacks.every_steps.every_n_train_steps={args.every}", "+callbacks.every_steps.save_top_k=-1",
           *MODEL, *_rbf_overrides(n_rbf)]
    if resume_from is not None:
        cmd.append(f"run.ckpt_path='{resume_from}'")  # quoted: Hydra's grammar has no '=' in a bare value
    return cmd


def checkpoint(args, name: str, step: int) -> str:
    return os.path.join(args.out, "runs", name, "steps", f"step={step}.ckpt")


def train(args, name, loss, lr, n_rbf, steps, db, resume_from=None, wait=True):
    """Start (or resume) one spktrain run; returns the Popen (wait=False) or None when already done."""
    _wait_for_earlier(args, name)
    if os.path.exists(checkpoint(args, name, steps)):
        return None
    run_dir = os.path.join(args.out, "runs", name)
    own_last = os.path.join(run_dir, "checkpoints", "last.ckpt")
    resume = resume_from if resume_from and not os.path.exists(own_last) else None
    cmd = spktrain_command(args, name, loss, lr, n_rbf, steps, db, resume)
    os.makedirs(run_dir, exist_ok=True)
    print(f"[{name}] $ " + " ".join(cmd), flush=True)
    log = open(os.path.join(args.out, "runs", f"{name}.train.log"), "a")  # noqa: SIM115 (closed by the process end)
    proc = subprocess.Popen(cmd, cwd=os.path.join(args.out, "runs"), env=base._env(), stdout=log,
                            stderr=subprocess.STDOUT)
    if wait:
        proc.wait()
        if not os.path.exists(checkpoint(args, name, steps)):
            raise RuntimeError(f"[{name}] spktrain ended ({proc.returncode}) without its step-{steps} checkpoint; "
                               f"see runs/{name}.train.log")
        return None
    return proc


def _wait_for_earlier(args, name: str) -> None:
    """Wait for a training of this run that an interrupted instance of this script left running."""
    pattern = f"run.path={os.path.join(args.out, 'runs')} run.id={name} "
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
        time.sleep(30)


# --- scoring one checkpoint -----------------------------------------------------------------------
SCORE_CODE = r"""
import json, sys, torch, ase.io
torch.set_num_threads(1)
import numpy as np
from schnetpack_ext import load_generation_model
from energyloss_plugins.diffusion import noise_batch, predicted_x0

ckpt, n, steps, out_samples, out_json, db, split = sys.argv[1:8]
task = load_generation_model(ckpt)
mols = task.sample_molecules(int(n), steps=int(steps), seed=1, batch_size=50, progress=False)
ase.io.write(out_samples + ".tmp.extxyz", mols)
import os; os.replace(out_samples + ".tmp.extxyz", out_samples)

# x-hat error at low noise on validation molecules (same frame: x-hat is in x_t's frame)
from ase.db import connect
val = set(int(i) + 1 for i in np.load(split)["val_idx"][:256])
with connect(db) as conn:
    rows = [(r.numbers, r.data["target_positions"]) for r in conn.select() if r.id in val]
obj = task.objective
gen = torch.Generator().manual_seed(7)
errors = []
with torch.no_grad():
    for start in range(0, len(rows), 64):
        chunk = rows[start:start + 64]
        numbers = torch.as_tensor(np.concatenate([z for z, _ in chunk]), dtype=torch.long)
        x0 = torch.as_tensor(np.concatenate([x for _, x in chunk]), dtype=torch.float32)
        batch = torch.repeat_interleave(torch.arange(len(chunk)), torch.tensor([len(z) for z, _ in chunk]))
        t = 0.05 * (1 - torch.rand(len(chunk), generator=gen))
        noised = noise_batch(x0, batch, obj.schedule, t=t, generator=gen)
        a, s = noised["alpha"][batch].unsqueeze(1), noised["sigma"][batch].unsqueeze(1)
        h0 = obj.encoding.encode(numbers, x0.dtype)
        h_t = a * h0 + s * torch.randn(h0.shape, generator=gen)
        out_x, _ = task.denoiser()(noised["x_t"], h_t, t, batch)
        x_hat, _ = predicted_x0(out_x, noised["x_t"], batch, noised["alpha"], noised["sigma"], "eps")
        sq = ((x_hat - noised["x0"]) ** 2).sum(-1)
        per = torch.zeros(len(chunk)).index_add_(0, batch, sq) / torch.bincount(batch, minlength=len(chunk))
        errors += per.sqrt().tolist()
json.dump({"xhat_rmsd_low_noise": float(np.mean(errors)), "xhat_molecules": len(errors)}, open(out_json, "w"))
"""


def _point(args, name: str, step: int) -> dict:
    """What identifies one learning-curve point: the run, its step and how it was sampled."""
    return {"run": name, "step": step, "samples": args.samples, "sampler": f"ancestral, {args.sample_steps} steps"}


def score(args, name: str, step: int, db: str, smiles) -> dict:
    """Metrics of one step checkpoint (cached in ``runs/<name>/score_step<step>.json``)."""
    run_dir = os.path.join(args.out, "runs", name)
    path = os.path.join(run_dir, f"score_step{step}.json")
    done = base._read_json(path)
    if done is not None:
        return done
    samples = os.path.join(run_dir, f"samples_step{step}.extxyz")
    xhat = os.path.join(run_dir, f"xhat_step{step}.json")
    start = time.time()
    with open(os.path.join(args.out, "runs", f"{name}.score.log"), "a") as log:
        subprocess.run([sys.executable, "-c", SCORE_CODE, checkpoint(args, name, step), str(args.samples),
                        str(args.sample_steps), samples, xhat, db, base.split_path(args.out)],
                       env=base._env(), stdout=log, stderr=subprocess.STDOUT, check=True)
    result = {**_point(args, name, step), "score_wall_s": round(time.time() - start, 1), **base._read_json(xhat),
              **base.evaluate(base._read(samples), smiles)}
    base._write_json(path, result)
    print(f"[{name}] step {step}: " + json.dumps({k: result.get(k) for k in (
        "atom_stability", "mol_stability", "validity", "xhat_rmsd_low_noise")}), flush=True)
    return result


# --- phases ---------------------------------------------------------------------------------------
def _lr_name(lr: float) -> str:
    return f"{lr:g}".replace("-0", "-")


def select(args, db, smiles) -> dict:
    """Phase 1: the learning rate per loss (higher atom stability of the samples at ``--select-steps``)."""
    runs = [(f"lr{_lr_name(lr)}-{loss}", loss, lr) for loss in LOSSES for lr in args.lrs]
    _parallel(args, [(name, loss, lr, None) for name, loss, lr in runs], db)
    scores = {name: score(args, name, args.select_steps, db, smiles) for name, _, _ in runs}
    chosen = {}
    for loss in LOSSES:
        mine = [(name, lr) for name, lo, lr in runs if lo == loss]
        name, lr = max(mine, key=lambda item: scores[item[0]]["atom_stability"])
        chosen[loss] = {"lr": lr, "run": name, "n_rbf": None}
    return {"selection_scores": scores, "chosen": chosen}


#: A setting "helps" when it raises the samples' atom stability by more than this (fraction): about two
#: standard errors over the ~7,000 atoms of 400 QM7-size samples, so that noise decides nothing.
HELPS_MARGIN = 0.01


def radial_basis_trial(args, db, smiles, chosen) -> dict:
    """Phase 2: the chosen settings with the finer radial basis (scores of ``--select-steps`` runs)."""
    fine = [(f"rbf{args.fine_rbf}-{loss}", loss, chosen[loss]["lr"], args.fine_rbf) for loss in LOSSES]
    _parallel(args, fine, db)
    return {"rbf_scores": {name: score(args, name, args.select_steps, db, smiles) for name, _, _, _ in fine}}


def rbf_helps_both(args, results) -> bool | None:
    """Whether the finer radial basis raised atom stability by more than :data:`HELPS_MARGIN` for both losses."""
    if "rbf_scores" not in results:
        return None
    base_scores = results["selection_scores"]
    return all(results["rbf_scores"][f"rbf{args.fine_rbf}-{loss}"]["atom_stability"]
               > base_scores[results["chosen"][loss]["run"]]["atom_stability"] + HELPS_MARGIN for loss in LOSSES)


def _parallel(args, runs, db):
    procs = [(name, train(args, name, loss, lr, n_rbf, args.select_steps, db, wait=False))
             for name, loss, lr, n_rbf in runs]
    for name, proc in procs:
        if proc is not None:
            proc.wait()  # spktrain's final test may fail on a run too short to validate: the checkpoint decides
        if not os.path.exists(checkpoint(args, name, args.select_steps)):
            raise RuntimeError(f"[{name}] training failed; see runs/{name}.train.log")


def start_long_pair(args, db, chosen) -> dict:
    """Phase 3: each loss continues its chosen run to ``--steps`` (both in parallel)."""
    return {loss: train(args, f"long-{loss}", loss, chosen[loss]["lr"], chosen[loss]["n_rbf"], args.steps, db,
                        resume_from=checkpoint(args, chosen[loss]["run"], args.select_steps), wait=False)
            for loss in LOSSES}


def watch_long_pair(args, db, smiles, chosen, procs) -> dict:
    """Score every step checkpoint of the long pair as it appears (EDM's metrics and the x̂ error; the
    distances to the data are added by :func:`rescore`); returns the curves."""
    curves = {loss: [] for loss in LOSSES}
    pending = {loss: list(range(args.every, args.steps + 1, args.every)) for loss in LOSSES}
    while any(pending.values()):
        progressed = False
        for loss in LOSSES:
            while pending[loss]:
                step = pending[loss][0]
                source = chosen[loss]["run"] if step <= args.select_steps else f"long-{loss}"
                if not os.path.exists(checkpoint(args, source, step)):
                    break
                curves[loss].append(score(args, source, step, db, smiles))
                pending[loss].pop(0)
                progressed = True
        running = [p for p in procs.values() if p is not None and p.poll() is None]
        if not progressed:
            if not running:
                missing = {loss: steps[0] for loss, steps in pending.items() if steps}
                raise RuntimeError(f"training ended before the checkpoints {missing}; see runs/long-*.train.log")
            time.sleep(30)
    return curves


def rescore(args, db, smiles, results) -> dict:
    """Every sampled point, with the metrics its saved samples lack (or all, if scoring was cut short) computed now."""
    reference, curves = None, {}
    for loss in LOSSES:
        curves[loss] = []
        for step in range(args.every, args.steps + 1, args.every):
            source = results["chosen"][loss]["run"] if step <= args.select_steps else f"long-{loss}"
            run_dir = os.path.join(args.out, "runs", source)
            path = os.path.join(run_dir, f"score_step{step}.json")
            samples = os.path.join(run_dir, f"samples_step{step}.extxyz")
            xhat = base._read_json(os.path.join(run_dir, f"xhat_step{step}.json"))
            point = base._read_json(path)
            if point is None and xhat is not None and os.path.exists(samples):  # sampled, scoring interrupted
                point = {**_point(args, source, step), **xhat}
            if point is None:
                continue
            if "bond_length_distance" not in point:
                if reference is None:
                    reference = base.reference_profile(db, base.split_path(args.out))
                point.update(base.evaluate(base._read(samples), smiles, reference))
                base._write_json(path, point)
            curves[loss].append(point)
    return curves


# --- report ---------------------------------------------------------------------------------------
CURVE_KEYS = (("atom_stability", "atom stability (%)", 100), ("validity", "validity (%)", 100),
              ("valid_and_connected", "valid & connected (%)", 100),
              ("xhat_rmsd_low_noise", "x̂ RMSD at t ≤ 0.05 (Å)", 1))


def plot(args, curves) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_KEYS), figsize=(4 * len(CURVE_KEYS), 3.5))
    for loss, points in curves.items():
        for ax, (key, label, scale) in zip(axes, CURVE_KEYS, strict=True):
            shown = [p for p in points if p.get(key) is not None]
            ax.plot([p["step"] for p in shown], [scale * p[key] for p in shown], marker="o", label=loss)
            ax.set_xlabel("optimiser step")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"QM7 generation, PaiNN 64×3, batch 64, per-loss settings; {args.samples} samples per point")
    fig.tight_layout()
    path = os.path.join(args.out, "learning_curves.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


TABLE = (("atom_stability", "atom stab. %", 100), ("mol_stability", "mol stab. %", 100),
         ("validity", "valid %", 100), ("valid_unique", "valid & unique %", 100),
         ("valid_and_connected", "valid & connected %", 100), ("mean_fragments", "fragments", 1),
         ("bond_length_distance", "W1 bonds (Å)", 1), ("bond_angle_distance", "W1 angles (°)", 1),
         ("rg_distance", "W1 Rg (Å)", 1), ("fcd", "FCD", 1), ("xhat_rmsd_low_noise", "x̂ RMSD t≤0.05 (Å)", 1))


def markdown(args, results) -> str:
    head = ["loss", "step"] + [label for _, label, _ in TABLE]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for loss, points in results.get("curves", {}).items():
        for p in points:
            cells = [("—" if p.get(k) is None else f"{scale * p[k]:.1f}" if scale == 100 else f"{p[k]:.3g}")
                     for k, _, scale in TABLE]
            lines.append(f"| {loss} | {p['step']} | " + " | ".join(cells) + " |")
    chosen = results.get("chosen", {})
    sel = "\n".join(f"- {run}: atom stability {100 * s['atom_stability']:.1f} %, validity {100 * s['validity']:.1f} %"
                    for run, s in results.get("selection_scores", {}).items())
    rbf = "\n".join(f"- {run}: atom stability {100 * s['atom_stability']:.1f} %, validity {100 * s['validity']:.1f} %"
                    for run, s in results.get("rbf_scores", {}).items())
    return (f"Chosen settings: {json.dumps(chosen)}\n\n"
            f"Finer radial basis ({args.select_steps} steps; raises atom stability by > {100 * HELPS_MARGIN:g} "
            f"points for both losses: {rbf_helps_both(args, results)}):\n{rbf}\n\n"
            f"Selection runs ({args.select_steps} steps each):\n{sel}\n\n" + "\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(HERE, "out", "generation_long"))
    p.add_argument("--source", default=base.DEFAULT_SOURCE, help="QM7 extxyz (see ../shared/data/qm7/README.md)")
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 1e-3], help="learning rates tried per loss")
    p.add_argument("--fine-rbf", type=int, default=50, help="Gaussians of the finer radial basis (SchNetPack: 20)")
    p.add_argument("--select-steps", type=int, default=1000, help="optimiser steps of each selection run")
    p.add_argument("--steps", type=int, default=10000, help="optimiser steps of the long pair")
    p.add_argument("--every", type=int, default=1000, help="steps between learning-curve points")
    p.add_argument("--samples", type=int, default=400, help="molecules sampled per point")
    p.add_argument("--sample-steps", type=int, default=100, help="ancestral denoising steps per sample")
    p.add_argument("--report-only", action="store_true", help="write the report from what is finished")
    args = p.parse_args(argv)
    args.out = os.path.abspath(args.out)
    if args.select_steps % args.every:
        p.error("--select-steps must be a multiple of --every")
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    db = base.build_database(args.out, os.path.abspath(args.source))
    smiles = base.train_smiles(args.out, db)
    results_path = os.path.join(args.out, "results.json")
    results = base._read_json(results_path, {})
    if not args.report_only:
        if "chosen" not in results:
            results.update(select(args, db, smiles))
            base._write_json(results_path, results)
        # the long pair starts first: the radial-basis trial decides the shipped default, not these runs
        procs = start_long_pair(args, db, results["chosen"])
        if "rbf_scores" not in results:
            results.update(radial_basis_trial(args, db, smiles, results["chosen"]))
            base._write_json(results_path, results)
        watch_long_pair(args, db, smiles, results["chosen"], procs)
    results["curves"] = rescore(args, db, smiles, results)
    base._write_json(results_path, results)
    text = markdown(args, results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    print(text + "\nPlot: " + plot(args, results["curves"]), flush=True)


if __name__ == "__main__":
    main()
