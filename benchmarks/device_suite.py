"""The GPU suite in one command (issue 17): CUDA tests, loss cost, training-step overhead, and the
paper's generation pair (energy vs MSE, equal optimiser steps), within 9 minutes on one H100/H200.

    PYTHONPATH=$PWD python benchmarks/device_suite.py --out DIR --qm7 wheels/qm7_pbe0.extxyz.gz   # GPU
    PYTHONPATH=$PWD python benchmarks/device_suite.py --out DIR --smoke                           # CPU, < 3 min

Writes ``DIR/results.json`` (top-level keys ``device``, ``tests``, ``loss_cost``, ``step_overhead``,
``generation``) and ``DIR/results.md``, after every section, so a run cut short keeps what it measured.
A GPU machine without SchNetPack, ASE, Hydra, matscipy, vesin or RDKit gets them as wheels:
``benchmarks/device_wheels.sh`` (docs/benchmarks.md, "GPU suite").

Sections, each within its share of ``--budget-s`` (deadlines checked between cases; a section that
runs out records what it skipped):

- ``tests``: ``pytest tests/test_cuda.py`` in a subprocess; passed / failed / skipped from its junit XML.
- ``loss_cost``: forward + backward of MSE, Kabsch-MSE, the pair energy as users call it
  (``pair_energy_loss``: springs resolved and input checked in every call), the lean training path
  (``resolve_springs`` once, ``pair_energy_kernel`` unvalidated) and the dense padded references, on
  a QM9-size and a GEOM-size batch, and on single structures of 10^4 - 10^6 atoms (rigid-sparse)
  (``benchmarks/loss_cost_cuda.py``: CUDA events, candidates interleaved, ratios to MSE in one run).
- ``step_overhead``: a PaiNN training step with the energy loss against MSE, interleaved on the same
  batches (``benchmarks/train_step_overhead.py``); target: at most 2 % more.
- ``generation``: ``spktrain experiment=energyloss_generation`` on QM7 (built with ``energyloss-data
  build ... --method as-given --inputs thermal``, ``benchmarks/generation_qm7.py``) with
  ``globals.loss=energy`` and ``globals.loss=mse``, both at once on the one device, each with its own
  learning rate (the paper tuned them per loss: SPEC §7), for the same number of optimiser steps;
  checkpoints every quarter give the learning curve; the models of the last step both reached are
  sampled (ancestral, ``--sample-steps``, 1,000 by default as EDM) and scored with
  ``energyloss_plugins.metrics.generation_metrics`` (every key it returns is kept).

``--smoke`` runs the same code on the CPU with tiny sizes and a dataset built offline from ASE's g2
molecules (no ../shared), so ``tests/test_device_suite.py`` can run it.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import generation_qm7 as gq  # noqa: E402  (benchmarks/ is not a package)

SECTIONS = ("tests", "loss_cost", "step_overhead", "generation")
#: Seconds per section on a GPU (the generation pair gets what is left of --budget-s), and with --smoke.
BUDGETS = {"tests": 90, "loss_cost": 75, "step_overhead": 60}
#: Smoke budgets are ceilings for a slow shared machine, not targets: the tiny sections end well before.
SMOKE_BUDGETS = {"tests": 120, "loss_cost": 60, "step_overhead": 90}
#: Elements of QM7 (and of the g2 molecules the smoke dataset keeps).
QM7_SYMBOLS = ("H", "C", "N", "O", "S")
DEFAULT_QM7 = next((p for p in (os.path.join(ROOT, "wheels", "qm7_pbe0.extxyz.gz"), gq.DEFAULT_SOURCE)
                    if os.path.exists(p)), gq.DEFAULT_SOURCE)


class Deadline:
    """Wall-clock budget of the whole run."""

    def __init__(self, total_s: float):
        self.start = time.monotonic()
        self.total = total_s

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start)

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def _env(threads: int | None = None) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _write_json(path: str, data) -> None:
    """Atomically (a reader never sees half a file; the worker may be killed at the deadline)."""
    from energyloss_plugins.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1))


def _read_json(path: str, default):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


# --- device -------------------------------------------------------------------------------------------
def device_info(device: str, args) -> dict:
    info = {"kind": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "smoke": args.smoke, "budget_s": args.budget_s}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(name=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    else:
        info["name"] = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    return info


# --- tests --------------------------------------------------------------------------------------------
def run_tests(out: str, budget_s: float) -> dict:
    """``pytest tests/test_cuda.py`` in a subprocess; counts from its junit XML."""
    xml = os.path.join(out, "test_cuda.xml")
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", os.path.join(ROOT, "tests", "test_cuda.py"),
           f"--junitxml={xml}"]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=max(5.0, budget_s))
    except subprocess.TimeoutExpired as exc:  # no XML then: count the verbose lines printed so far
        text = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        found = {w: len(re.findall(rf"::\S+ {w.upper()}", text)) for w in ("passed", "failed", "skipped")}
        return {"error": f"pytest did not finish within {budget_s:.0f} s; counts are of the tests done by then",
                **found, "wall_s": round(time.monotonic() - start, 1)}
    result = {"returncode": proc.returncode, "wall_s": round(time.monotonic() - start, 1),
              "summary": (proc.stdout.strip().splitlines() or [""])[-1]}
    if not os.path.exists(xml):
        return {**result, "error": "pytest wrote no junit XML: " + (proc.stderr.strip().splitlines() or ["?"])[-1]}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in ET.parse(xml).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(case.get("name"))
    failed_n = counts["failures"] + counts["errors"]
    return {**result, "passed": counts["tests"] - failed_n - counts["skipped"], "failed": failed_n,
            "skipped": counts["skipped"], "failed_tests": failed}


# --- loss cost ----------------------------------------------------------------------------------------
def loss_cost(device: str, smoke: bool, deadline: float) -> dict:
    """``benchmarks/loss_cost_cuda.py``'s batch and single-structure cases (CPU timers off CUDA)."""
    from loss_cost import batch_sizes
    from loss_cost_cuda import batch_case, single_case

    out = {"method": ("CUDA events" if device == "cuda" else "perf_counter") + ", float32, forward + backward, "
           "median over calls, candidates interleaved in blocks; exp springs (k0 = 1, 1 Å)",
           "batches": {}, "single": {}, "skipped": []}
    reps = 2 if smoke else 50
    for case in ("qm9",) if smoke else ("qm9", "geom"):
        if time.monotonic() > deadline:
            out["skipped"].append(case)
            continue
        sizes = batch_sizes(case, None, 0)
        out["batches"][case] = {"molecules": len(sizes), "atoms": sum(sizes), "min_atoms": min(sizes),
                                "max_atoms": max(sizes), "losses": batch_case(case, 0, reps, device=device)}
    singles = [(1_000, True, True)] if smoke else [(10_000, True, True), (100_000, False, False),
                                                   (1_000_000, False, False)]
    for n, complete, dense in singles:
        if time.monotonic() > deadline:
            out["skipped"].append(f"single {n}")
            continue
        out["single"][str(n)] = single_case(n, 0, 2 if smoke else 10, complete, dense, device=device)
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


# --- step overhead ------------------------------------------------------------------------------------
def step_overhead(device: str, smoke: bool, deadline: float) -> dict:
    """``benchmarks/train_step_overhead.py``: PaiNN steps per loss variant, interleaved, same batches."""
    import train_step_overhead as tso

    args = SimpleNamespace(device=device, batches=2 if smoke else 4, rounds=2 if smoke else 12,
                           steps=1 if smoke else 8)
    out = {"model": "SchNetPack PaiNN 128 features x 3 interactions, cutoff 5 Å, equivariant position head; "
           "forward + loss + backward + Adam", "variants": "see benchmarks/train_step_overhead.py; energy-cached is "
           "the lean path with springs from the data pipeline, energy-resolve resolves them in the step, energy is "
           "pair_energy_loss as users call it",
           "clock": "wall between synchronisations" if device == "cuda" else "process CPU time",
           "target": "energy step at most 2 % over MSE's (met: energy-cached's median step ratio <= 1.02 and its "
           "loss's own extra cost < 2 % of MSE's step)", "batches": {}, "skipped": []}
    for n in ([4] if smoke else [16, 128]):
        if time.monotonic() > deadline:
            out["skipped"].append(n)
            continue
        res = tso.measure(n, args)
        t, lt = res["times"], res["loss_times"]
        mse_step = statistics.median(t["mse"]) / res["steps"]
        rows = {}
        for v in tso.VARIANTS:
            ratios = [a / b for a, b in zip(t[v], t["mse"], strict=True)]
            rows[v] = {"step_ms": 1e3 * statistics.median(t[v]) / res["steps"],
                       "over_mse": statistics.median(ratios), "over_mse_min": min(ratios), "over_mse_max": max(ratios),
                       "loss_ms": 1e3 * statistics.median(lt[v]),
                       "loss_extra_pct": 100 * (statistics.median(lt[v]) - statistics.median(lt["mse"])) / mse_step}
        out["batches"][str(n)] = {"atoms": res["atoms"], "loss_pairs": res["loss_pairs"], "rounds": args.rounds,
                                  "steps_per_block": res["steps"], "collate_ms": res["collate_ms"], "variants": rows,
                                  "met": rows["energy-cached"]["over_mse"] <= 1.02
                                  and rows["energy-cached"]["loss_extra_pct"] < 2}
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


# --- generation ---------------------------------------------------------------------------------------
def smoke_source(path: str) -> str:
    """An extxyz of the g2 molecules (ASE, offline) with QM7's elements and at least 3 atoms."""
    import ase.io
    from ase.collections import g2

    mols = [g2[name] for name in g2.names
            if len(g2[name]) >= 3 and set(g2[name].get_chemical_symbols()) <= set(QM7_SYMBOLS)]
    ase.io.write(path, mols, format="extxyz")
    return path


def _set(cmd: list, key: str, value) -> list:
    """``cmd`` with the Hydra override of ``key`` replaced (``key=...``, ``+key=...``), else appended as
    ``++key=...`` (sets the key whether or not the composed config has it)."""
    keys = (f"{key}=", f"+{key}=", f"++{key}=")
    if any(a.startswith(keys) for a in cmd):
        return [f"{a.split('=', 1)[0]}={value}" if a.startswith(keys) else a for a in cmd]
    return [*cmd, f"++{key}={value}"]


def generation_command(args, gen_dir: str, loss: str, db: str, device: str, max_time_s: float) -> list:
    """``benchmarks/generation_qm7.py``'s spktrain composition, with this suite's device, model, learning rate,
    batch and a wall-clock guard (``trainer.max_time``) that stops a run which would overrun the budget."""
    cmd = gq.spktrain_command(SimpleNamespace(out=gen_dir, steps=args.gen_steps), loss, loss, 0, [], 1.0, db)
    hh, rem = divmod(max(60, int(max_time_s)), 3600)
    for key, value in (("trainer.accelerator", "gpu" if device == "cuda" else "cpu"),
                       ("data.num_workers", args.loader_workers), ("data.batch_size", args.batch_size),
                       ("globals.lr", args.lr_energy if loss == "energy" else args.lr_mse),
                       ("model.representation.n_atom_basis", args.width),
                       ("model.representation.n_interactions", args.interactions),
                       ("task.warmup_steps", min(100, max(1, args.gen_steps // 10))),
                       ("trainer.check_val_every_n_epoch", args.val_every_epochs),
                       ("trainer.max_time", f"00:{hh:02d}:{rem // 60:02d}:{rem % 60:02d}")):
        cmd = _set(cmd, key, value)
    return cmd


def _checkpoints(run_dir: str) -> dict:
    out = {}
    for path in glob.glob(os.path.join(run_dir, "steps", "step=*.ckpt")):
        m = re.search(r"step=(\d+)\.ckpt$", path)
        if m:
            out[int(m.group(1))] = path
    return out


def _train_smiles(db: str) -> list | None:
    """SMILES of the training split by the metrics' own pipeline (for novelty); None without RDKit."""
    try:
        from energyloss_plugins.data.paths import find_split_file
        from energyloss_plugins.metrics import molecule_smiles_set

        return sorted(molecule_smiles_set(gq.training_atoms(db, find_split_file(db))))
    except ImportError:
        return None


def generation(args, device: str, gen_dir: str, db_build: dict, deadline: float) -> dict:
    """Train energy and MSE at once, then sample and score both at the last step both reached."""
    start = time.monotonic()
    db_build["thread"].join(timeout=max(1.0, deadline - time.monotonic()))
    if db_build.get("error") or not db_build.get("db"):
        raise RuntimeError(f"the QM7 database was not built: {db_build.get('error', 'timed out')}")
    db = db_build["db"]
    sample_reserve = 25 if args.smoke else 150  # sampling + scoring, started after training
    train_s = deadline - time.monotonic() - sample_reserve
    if train_s < (20 if args.smoke else 60):
        raise RuntimeError(f"only {train_s:.0f} s left for training; give --budget-s more")
    runs_dir = os.path.join(gen_dir, "runs")
    procs, commands, t0 = {}, {}, {}
    for loss in ("energy", "mse"):
        shutil.rmtree(os.path.join(runs_dir, loss), ignore_errors=True)
        os.makedirs(os.path.join(runs_dir, loss), exist_ok=True)
        commands[loss] = generation_command(args, gen_dir, loss, db, device, train_s - 30)
        log = open(os.path.join(runs_dir, f"{loss}.train.log"), "w")  # noqa: SIM115  (closed after wait)
        t0[loss] = time.monotonic()
        procs[loss] = (subprocess.Popen(commands[loss], cwd=runs_dir, env=_env(args.threads), stdout=log,
                                        stderr=subprocess.STDOUT), log)
    smiles = _train_smiles(db)  # meanwhile, on the host
    smiles_path = os.path.join(gen_dir, "train_smiles.json")
    with open(smiles_path, "w") as f:
        json.dump(smiles, f)
    train = {}
    while len(train) < len(procs):  # poll both, so that each run's own wall time is recorded
        for loss, (proc, log) in procs.items():
            if loss in train:
                continue
            if proc.poll() is None and time.monotonic() > t0[loss] + train_s:
                proc.kill()  # the trainer's max_time guard should have stopped it before
                proc.wait()
            if proc.poll() is not None:
                log.close()
                train[loss] = {"returncode": proc.returncode, "train_wall_s": round(time.monotonic() - t0[loss], 1)}
        time.sleep(0.5)
    ckpts = {loss: _checkpoints(os.path.join(runs_dir, loss)) for loss in procs}
    common = sorted(set(ckpts["energy"]) & set(ckpts["mse"]))
    if not common:
        raise RuntimeError(f"no step checkpoint reached by both runs (return codes "
                           f"{ {k: v['returncode'] for k, v in train.items()} }); see {runs_dir}/*.train.log")
    final = common[-1]
    workers = {}
    for loss in procs:
        spec = {"final": ckpts[loss][final], "final_step": final,
                "curve": {str(s): ckpts[loss][s] for s in common[:-1]}, "samples": args.samples,
                "curve_samples": args.curve_samples, "sample_steps": args.sample_steps,
                "sample_batch": args.sample_batch, "device": device, "smiles": smiles_path,
                "deadline_epoch": time.time() + deadline - time.monotonic(),
                "out": os.path.join(runs_dir, loss, "suite_metrics.json")}
        with open(os.path.join(runs_dir, loss, "suite_sample.json"), "w") as f:
            json.dump(spec, f)
        log = open(os.path.join(runs_dir, f"{loss}.sample.log"), "w")  # noqa: SIM115
        workers[loss] = (subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sample-worker",
                                           os.path.join(runs_dir, loss, "suite_sample.json")],
                                          env=_env(args.threads), stdout=log, stderr=subprocess.STDOUT), log, spec)
    result = {"wall_s": None, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "model": {
        "representation": "SchNetPack PaiNN", "n_atom_basis": args.width, "n_interactions": args.interactions,
        "batch_size": args.batch_size, "cutoff_A": 10.0,
        "choice": "smoke: tiny model" if args.smoke else "the paper's width (256 features) with 6 of its 9 "
                  "interactions, so that a 3-minute training budget still gives thousands of optimiser steps (an "
                  "estimate: not yet timed on a GPU)" if (args.width, args.interactions) == (256, 6) else
                  "set by --width / --interactions"},
        "dataset": os.path.basename(db_build["source"]), "requested_steps": args.gen_steps, "steps": final,
        "checkpoint_steps": common, "time_guard_hit": final < args.gen_steps,
        "sampler": f"ancestral, {args.sample_steps} steps", "samples": args.samples,
        "curve_samples": args.curve_samples, "train_smiles": None if smiles is None else len(smiles),
        "commands": {k: " ".join(v) for k, v in commands.items()}}
    for loss, (proc, log, spec) in workers.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        metrics = _read_json(spec["out"], {})
        if "final" not in metrics:
            raise RuntimeError(f"[{loss}] sampling did not finish; see {runs_dir}/{loss}.sample.log")
        final_metrics = metrics["final"]
        curve = [*metrics.get("curve", []), {"step": final, **final_metrics}]
        result[loss] = {"steps": final, "lr": args.lr_energy if loss == "energy" else args.lr_mse, **final_metrics,
                        **train[loss], "sampling_wall_s": metrics.get("sampling_wall_s"), "curve": curve}
    result["wall_s"] = round(time.monotonic() - start, 1)
    return result


def sample_worker(spec_path: str) -> None:
    """Subprocess: sample the final checkpoint (then the curve checkpoints while time is left) and score."""
    import ase.io

    from schnetpack_ext import load_generation_model

    with open(spec_path) as f:
        spec = json.load(f)
    smiles = _read_json(spec["smiles"], None)
    out = {"curve": []}

    def sample(ckpt: str, n: int, seed: int, name: str) -> dict:
        task = load_generation_model(ckpt, map_location=spec["device"])
        start = time.time()
        mols = task.sample_molecules(n, steps=spec["sample_steps"], method="ancestral", seed=seed,
                                     batch_size=spec["sample_batch"], progress=False)
        wall = time.time() - start
        ase.io.write(os.path.join(os.path.dirname(spec["out"]), name), mols, format="extxyz")
        return {**gq.evaluate(mols, smiles), "sampling_wall_s": round(wall, 1)}

    final = sample(spec["final"], spec["samples"], 0, "samples.extxyz")
    out["sampling_wall_s"] = final.pop("sampling_wall_s")
    out["final"] = final
    _write_json(spec["out"], out)
    per_point = out["sampling_wall_s"] * spec["curve_samples"] / spec["samples"] + 15
    for step, ckpt in sorted(spec["curve"].items(), key=lambda kv: int(kv[0])):
        if time.time() + per_point > spec["deadline_epoch"]:
            break
        point = sample(ckpt, spec["curve_samples"], 1, f"curve_step{step}.extxyz")
        point.pop("sampling_wall_s")
        out["curve"].append({"step": int(step), **point})
        _write_json(spec["out"], out)


# --- report -------------------------------------------------------------------------------------------
def _pct(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{100 * x:.1f} %"


def _cell(key: str, value) -> str:
    """Fractions as percentages; counts (``n``, ``non_finite``, ``n_*``) and means (``mean_*``) as numbers."""
    if key in ("n", "non_finite") or key.startswith(("n_", "mean_")) or not 0 <= value <= 1:
        return f"{value:.4g}"
    return _pct(value)


def markdown(results: dict) -> str:
    """results.md: the device, then one part per section that ran, then the sections' errors."""
    dev = results.get("device", {})
    lines = [f"# Device suite: {dev.get('name', '?')}" + (" (smoke run: tiny sizes, CPU)" if dev.get("smoke") else ""),
             "", f"torch {dev.get('torch')}, CUDA {dev.get('cuda', '—')}; total wall {dev.get('wall_s', '—')} s "
             f"of a {dev.get('budget_s')} s budget.", ""]
    lines += _tests_markdown(results.get("tests", {}))
    lines += _loss_cost_markdown(results.get("loss_cost", {}))
    lines += _step_overhead_markdown(results.get("step_overhead", {}))
    lines += _generation_markdown(results.get("generation", {}))
    for section in SECTIONS:
        if "error" in results.get(section, {}) and section != "tests":
            lines += [f"{section}: error: {results[section]['error']}", ""]
    return "\n".join(lines)


def _tests_markdown(t: dict) -> list[str]:
    lines = ["## tests/test_cuda.py", "", f"passed {t.get('passed')}, failed {t.get('failed')}, skipped "
              f"{t.get('skipped')} ({t.get('wall_s')} s)" + (f"; failed: {', '.join(t['failed_tests'])}"
                                                             if t.get("failed_tests") else ""), ""]
    if "error" in t:
        lines += [f"error: {t['error']}", ""]
    return lines


def _loss_cost_markdown(lc: dict) -> list[str]:
    lines: list[str] = []
    if lc.get("batches") or lc.get("single"):
        lines += ["## Loss cost (forward + backward)", "", lc.get("method", ""), "",
                  "| batch | loss | ms | × MSE | peak MiB |", "|---|---|---|---|---|"]
        for case, res in lc.get("batches", {}).items():
            for name, v in res["losses"].items():
                peak = "—" if v["peak_mib"] is None else f"{v['peak_mib']:.1f}"
                lines.append(f"| {case.upper()} {res['molecules']}×({res['min_atoms']}-{res['max_atoms']}) | {name} | "
                             f"{v['ms']:.3f} | {v['over_mse']:.2f} | {peak} |")
        lines += ["", "| one structure, atoms | loss | ms | peak MiB |", "|---|---|---|---|"]
        for n, res in lc.get("single", {}).items():
            for name, v in res.items():
                peak = "—" if v["peak_mib"] is None else f"{v['peak_mib']:.1f}"
                lines.append(f"| {int(n):,} | {name} | {v['ms']:.3f} | {peak} |")
        lines.append("")
    return lines


def _step_overhead_markdown(so: dict) -> list[str]:
    lines: list[str] = []
    if so.get("batches"):
        lines += ["## Training-step overhead (PaiNN, energy vs MSE, interleaved)", "",
                  f"{so['clock']}; {so['target']}.", "",
                  "| molecules/batch | variant | ms/step | step / MSE [min, max] | loss ms | loss extra, % of step |",
                  "|---|---|---|---|---|---|"]
        for n, res in so["batches"].items():
            for v, r in res["variants"].items():
                lines.append(f"| {n} | {v} | {r['step_ms']:.2f} | {r['over_mse']:.4f} [{r['over_mse_min']:.3f}, "
                             f"{r['over_mse_max']:.3f}] | {r['loss_ms']:.3f} | {r['loss_extra_pct']:+.2f} |")
        lines.append("")
        for n, res in so["batches"].items():
            r = res["variants"]["energy-cached"]
            lines.append(f"[{'MET' if res['met'] else 'NOT MET'}] {n} molecules, energy-cached: step "
                         f"{100 * (r['over_mse'] - 1):+.2f} %, loss's own extra cost {r['loss_extra_pct']:+.2f} %")
        lines.append("")
    return lines


def _generation_markdown(gen: dict) -> list[str]:
    lines: list[str] = []
    if "energy" in gen:
        keys = [k for k in gen["energy"] if isinstance(gen["energy"][k], (int, float)) and k not in (
            "steps", "lr", "returncode", "train_wall_s", "sampling_wall_s")]
        m = gen["model"]
        lines += ["## Generation pair (QM7)", "",
                  f"{m['representation']} {m['n_atom_basis']}×{m['n_interactions']}, batch {m['batch_size']}; "
                  f"{gen['steps']} optimiser steps each (requested {gen['requested_steps']}); {gen['samples']} "
                  f"samples, {gen['sampler']}; section wall {gen['wall_s']} s.", "",
                  "| loss | lr | " + " | ".join(keys) + " | train s |", "|---|---|" + "---|" * (len(keys) + 1)]
        for loss in ("energy", "mse"):
            r = gen[loss]
            cells = [_cell(k, r[k]) for k in keys]
            lines.append(f"| {loss} | {r['lr']:g} | " + " | ".join(cells) + f" | {r['train_wall_s']} |")
        lines += ["", "Learning curve (atom stability / molecule stability / validity):", "",
                  "| step | energy | mse |", "|---|---|---|"]
        points = {loss: {p["step"]: p for p in gen[loss]["curve"]} for loss in ("energy", "mse")}
        for step in sorted(set(points["energy"]) | set(points["mse"])):
            cells = []
            for loss in ("energy", "mse"):
                p = points[loss].get(step)
                cells.append("—" if p is None else " / ".join(_pct(p.get(k)) for k in
                                                             ("atom_stability", "mol_stability", "validity")))
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def write(out: str, results: dict) -> None:
    _write_json(os.path.join(out, "results.json"), results)
    from energyloss_plugins.io import atomic_write_text

    atomic_write_text(os.path.join(out, "results.md"), markdown(results))


# --- main ---------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder (results.json, results.md, runs); required")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, g2 molecules: the same code in < 3 min")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget, s (540; smoke: 600)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ", ".join(SECTIONS))
    p.add_argument("--qm7", default=DEFAULT_QM7, help="QM7 extxyz (wheels/ or ../shared/data/qm7/qm7_pbe0.extxyz.gz)")
    g = p.add_argument_group("generation pair (smoke mode replaces the defaults by tiny ones)")
    g.add_argument("--gen-steps", type=int, help="optimiser steps per loss (default 2000; checkpoints every quarter)")
    # chosen per loss on the CPU (benchmarks/generation_long_qm7.py: 3e-4 vs 1e-3 at 1,000 steps, by the
    # samples' atom stability; docs/generation.md): 1e-3 won for both; the paper's EDM energy rate was 3x smaller
    g.add_argument("--lr-energy", type=float, default=1e-3, help="learning rate of the energy run")
    g.add_argument("--lr-mse", type=float, default=1e-3, help="learning rate of the MSE run")
    g.add_argument("--width", type=int, help="PaiNN features (default 256, the paper's)")
    g.add_argument("--interactions", type=int, help="PaiNN interaction blocks (default 6)")
    g.add_argument("--batch-size", type=int, help="molecules per batch (default 128)")
    g.add_argument("--samples", type=int, help="molecules sampled from each final model (default 1000)")
    g.add_argument("--curve-samples", type=int, help="molecules per learning-curve point (default 250)")
    g.add_argument("--sample-steps", type=int, help="denoising steps (default 1000, EDM's)")
    g.add_argument("--sample-batch", type=int, help="molecules per network call when sampling (default 1000)")
    g.add_argument("--loader-workers", type=int, help="data-loader workers per training run (default 4)")
    g.add_argument("--val-every-epochs", type=int,
                   help="validate every so many epochs (default 10: each validation respawns the loader workers)")
    g.add_argument("--threads", type=int, help="torch threads per subprocess (default 2; smoke 1)")
    p.add_argument("--sample-worker", help=argparse.SUPPRESS)
    return p


FULL = {"gen_steps": 2000, "width": 256, "interactions": 6, "batch_size": 128, "samples": 1000,
        "curve_samples": 250, "sample_steps": 1000, "sample_batch": 1000, "loader_workers": 4, "val_every_epochs": 10,
        "threads": 2}
SMOKE = {"gen_steps": 8, "width": 16, "interactions": 1, "batch_size": 16, "samples": 6, "curve_samples": 3,
         "sample_steps": 4, "sample_batch": 6, "loader_workers": 0, "val_every_epochs": 1, "threads": 1}


def _usage_error(args: argparse.Namespace, sections: list[str], device: str) -> str | None:
    """What is wrong with the command line (one line), or None."""
    if not args.out:
        return "--out DIR is required (results.json and results.md go there)"
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        return f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}"
    if device == "cpu" and not args.smoke:
        return "no CUDA device; run with --smoke for the CPU check of the same code paths"
    if "generation" in sections and not args.smoke and not os.path.exists(args.qm7):
        return f"no QM7 file at {args.qm7}; pass --qm7 (benchmarks/device_wheels.sh copies it into wheels/)"
    return None


def _run_section(section: str, args: argparse.Namespace, device: str, out: str, gen_dir: str, db_build: dict,
                 deadline: float) -> dict:
    if section == "tests":
        return run_tests(out, deadline - time.monotonic())
    if section == "loss_cost":
        return loss_cost(device, args.smoke, deadline)
    if section == "step_overhead":
        return step_overhead(device, args.smoke, deadline)
    return generation(args, device, gen_dir, db_build, deadline)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.sample_worker:
        sample_worker(args.sample_worker)
        return 0
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.budget_s = args.budget_s or (600.0 if args.smoke else 540.0)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    problem = _usage_error(args, sections, device)
    if problem:
        print(f"device_suite: {problem}", file=sys.stderr)
        return 2
    if args.smoke:  # CPU times of one thread: spinning OpenMP threads on a shared machine would count too
        torch.set_num_threads(1)
    source = None
    out = os.path.abspath(args.out)
    gen_dir = os.path.join(out, "generation")
    os.makedirs(gen_dir, exist_ok=True)
    clock = Deadline(args.budget_s)
    results = {"device": device_info(device, args)}
    for section in SECTIONS:
        results[section] = {"skipped": "not requested"} if section not in sections else {}
    write(out, results)

    # The database is built by the CLI in a subprocess while the GPU sections run.
    db_build: dict = {}
    if "generation" in sections:
        source = smoke_source(os.path.join(gen_dir, "g2_qm7_elements.extxyz")) if args.smoke else args.qm7
        db_build["source"] = source

        def build():
            try:
                db_build["db"] = gq.build_database(gen_dir, os.path.abspath(source))
            except Exception as exc:  # reported by the generation section
                db_build["error"] = repr(exc)

        db_build["thread"] = threading.Thread(target=build, daemon=True)
        db_build["thread"].start()

    budgets = SMOKE_BUDGETS if args.smoke else BUDGETS
    for section in SECTIONS:
        if section not in sections:
            continue
        later = sum(budgets.get(s, 0) for s in SECTIONS[SECTIONS.index(section) + 1:] if s in sections)
        own = budgets.get(section, clock.left() - 5)
        deadline = time.monotonic() + max(1.0, min(own, clock.left() - later - 5))
        print(f"[device_suite] {section} (until +{clock.elapsed() + deadline - time.monotonic():.0f} s)", flush=True)
        start = time.monotonic()
        try:
            results[section] = _run_section(section, args, device, out, gen_dir, db_build, deadline)
        except Exception as exc:  # one failed section must not cost the others' figures
            results[section] = {"error": f"{type(exc).__name__}: {exc}"}
        results[section].setdefault("section_wall_s", round(time.monotonic() - start, 1))
        results["device"]["wall_s"] = round(clock.elapsed(), 1)
        write(out, results)
    print(markdown(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
