"""Cost of the pair energy loss on CPU, every number measured in one run (docs/benchmarks.md).

    nice -n 10 python benchmarks/loss_cost.py            # full run: 2-10 min, depending on the load
    nice -n 10 python benchmarks/loss_cost.py --runs 3   # make bench: three runs, median [min-max]
    python benchmarks/loss_cost.py --quick               # smaller sizes, a minute

(a) Forward + backward time of each loss over MSE's, on a QM9-size flat batch (128 structures of
    10-29 atoms) and a GEOM-size one (64 structures of 10-180 atoms).
(b) The same energy written the reference way -- padded (B, N, N) dense tensors and autograd, as in
    the paper's EDM/JODO code -- over ours: time and peak memory. Two reference variants:
    ``dense-bcast`` (broadcast differences (B, N, N, 3) and ``torch.norm``, exactly the paper's
    code) and ``dense-cdist`` (``torch.cdist``, leaner).
(c) One structure of 10^3 .. 10^6 atoms: complete graph vs rigid-sparse graph, time and peak
    memory; the dense reference where it fits, and its exact tensor-memory requirement (traced on
    meta tensors, nothing allocated) where it does not.

Method. Times are process CPU time (``time.process_time``) with one intra-op thread unless
``--threads``: on a machine whose cores are shared with other jobs, CPU time is the work done and
does not count the waits for a free core that make wall-clock times noisy; wall-clock medians are
printed too. Each candidate is timed in blocks of consecutive calls, blocks of all candidates interleaved;
medians over calls.
Peak memory is measured in a fresh subprocess per case: the resident-set high-water mark is reset
just before the call (Linux ``/proc/self/clear_refs``) and the peak RSS during the call minus the
RSS before it is reported; see ``benchmarks/_memory.py``. Subprocesses run under an address-space
cap (``--mem-cap-gib``), so nothing here can allocate more than that.
Exp coefficients (k0 = 1, length 1 Å), energy per atom, mean over structures, float32, CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import MiB, cpu_count_note, limit_address_space, rss_peak_delta, tensor_peak_bytes  # noqa: E402
from energyloss_plugins import (  # noqa: E402
    kabsch_mse_loss,
    mse_loss,
    pair_energy_kernel,
    pair_energy_loss,
    resolve_springs,
)
from energyloss_plugins.graphs import rigid_sparse_graph  # noqa: E402
from energyloss_plugins.layouts import batch_from_counts  # noqa: E402

GiB = 2**30
DENSITY = 0.1  # atoms per Å^3, about that of organic molecules and liquids
OURS = ("energy", "sparse")
REFERENCES = ("dense-bcast", "dense-cdist")
LABELS = {
    "mse": "MSE", "kabsch": "Kabsch-MSE", "energy": "energy (complete)", "sparse": "energy (rigid-sparse)",
    "dense-bcast": "dense reference, broadcast", "dense-cdist": "dense reference, cdist",
    "lean": "energy, lean (complete)", "lean-sparse": "energy, lean (rigid-sparse)",
}


# ----------------------------------------------------------------------------- data


def batch_sizes(case: str, n: int | None, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    if case == "qm9":
        return torch.randint(10, 30, (128,), generator=g).tolist()
    if case == "geom":
        return torch.randint(10, 181, (64,), generator=g).tolist()
    if case == "single":
        return [int(n)]
    raise ValueError(f"unknown case {case!r}")


def make_batch(sizes: list[int], seed: int, device: str = "cpu") -> dict:
    """Flat and padded prediction/target: atoms uniform in a ball at molecular density, prediction
    = target + 0.2 Å noise."""
    g = torch.Generator().manual_seed(seed + 1)
    targets = []
    for n in sizes:
        radius = (3 * n / (4 * math.pi * DENSITY)) ** (1 / 3)
        u = torch.randn(n, 3, generator=g)
        u = u / u.norm(dim=1, keepdim=True) * radius * torch.rand(n, 1, generator=g) ** (1 / 3)
        targets.append(u)
    target = torch.cat(targets)
    pred = target + 0.2 * torch.randn(target.shape, generator=g)
    counts = torch.tensor(sizes)
    batch = batch_from_counts(counts)
    data = {"pred": pred.to(device), "target": target.to(device), "batch": batch.to(device), "sizes": sizes}
    return data


def add_padded(data: dict) -> dict:
    sizes = data["sizes"]
    counts = torch.tensor(sizes)
    b, n_max = len(sizes), max(sizes)
    starts = torch.cumsum(counts, 0) - counts
    batch = data["batch"]
    local = torch.arange(batch.shape[0]) - starts[batch]
    mask = torch.zeros(b, n_max, dtype=torch.bool)
    mask[batch, local] = True
    for key in ("pred", "target"):
        padded = torch.zeros(b, n_max, 3)
        padded[batch, local] = data[key]
        data[key + "_pad"] = padded
    data["mask"] = mask
    return data


# ----------------------------------------------------------------------------- the reference


def dense_reference(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, variant: str,
                    k0: float = 1.0, length_scale: float = 1.0) -> torch.Tensor:
    """The pair energy written as in the paper's EDM/JODO code: padded (B, N, N) tensors, autograd.

    Same value as ``pair_energy_loss(..., coefficients="exp")``: springs from the target only,
    divided by the atom count; ordered pairs counted twice, hence the extra ½.
    """
    n_atoms = mask.sum(1).to(pred.dtype)
    pair_mask = mask.unsqueeze(1) & mask.unsqueeze(2) & ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    if variant == "dense-bcast":
        dist_ref = torch.norm(target.unsqueeze(2) - target.unsqueeze(1), dim=-1)
        dist = torch.norm(pred.unsqueeze(2) - pred.unsqueeze(1), dim=-1)
    elif variant == "dense-cdist":
        dist_ref = torch.cdist(target, target)
        dist = torch.cdist(pred, pred)
    else:
        raise ValueError(variant)
    k = k0 * torch.exp(-dist_ref.detach() / length_scale) / n_atoms.view(-1, 1, 1)
    energy = 0.5 * 0.5 * pair_mask * k * (dist_ref.detach() - dist) ** 2
    return energy.sum((1, 2)).mean()


# ----------------------------------------------------------------------------- one loss call


def loss_call(name: str, data: dict):
    """A function running forward + backward of loss ``name`` on ``data`` (gradient w.r.t. pred).

    ``energy``/``sparse`` are :func:`pair_energy_loss` as users call it (springs resolved and input
    checked in every call); ``lean``/``lean-sparse`` are :func:`resolve_springs` once, then
    :func:`pair_energy_kernel` with ``validate_args=False`` in the call (no host synchronisation).
    """
    if name in REFERENCES:
        pred, target, mask = data["pred_pad"].clone().requires_grad_(), data["target_pad"], data["mask"]

        def run():
            pred.grad = None
            loss = dense_reference(pred, target, mask, name)
            loss.backward()
            return loss.detach()
        return run
    pred, target, batch = data["pred"].clone().requires_grad_(), data["target"], data["batch"]
    if name in ("lean", "lean-sparse"):
        # The training path: springs resolved once per batch, outside the timed call (as a data
        # pipeline does); the call is the kernel alone, unvalidated, with the structure count given.
        graph = {"graph": "rigid_sparse", "graph_kwargs": {"pool_size": 1}} if name == "lean-sparse" else {}
        s = resolve_springs(target, batch, coefficients="exp", n_structures=len(data["sizes"]), **graph)
        fn = lambda: pair_energy_kernel(pred, s.distances, s.pairs, s.springs, s.batch, s.n_structures,  # noqa: E731
                                        validate_args=False)
    elif name == "mse":
        fn = lambda: mse_loss(pred, target, batch)  # noqa: E731
    elif name == "kabsch":
        fn = lambda: kabsch_mse_loss(pred, target, batch)  # noqa: E731
    elif name == "energy":
        fn = lambda: pair_energy_loss(pred, target, batch, coefficients="exp")  # noqa: E731
    elif name == "sparse":
        # pool_size=1: one cached graph per atom count (the default pool of 8 only multiplies the
        # one-off generation; the per-call cost is the same).
        fn = lambda: pair_energy_loss(pred, target, batch, coefficients="exp", graph="rigid_sparse",  # noqa: E731
                                      graph_kwargs={"pool_size": 1})
    else:
        raise ValueError(name)

    def run():
        pred.grad = None
        loss = fn()
        loss.backward()
        return loss.detach()
    return run


def warm_graph_cache(sizes: list[int]) -> float:
    """Generate the rigid-sparse graph of every atom count (pool_size=1); returns seconds (one-off, cached)."""
    t0 = time.perf_counter()
    for n in sorted(set(sizes)):
        rigid_sparse_graph(n, 3, 0, 0)
    return time.perf_counter() - t0


def timed(fn) -> tuple[float, float, object]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - w0, out


# ----------------------------------------------------------------------------- subprocess worker


def worker(spec: dict) -> dict:
    """Peak RSS of one first call (after a tiny warm-up), then the median time of ``reps`` more calls."""
    limit_address_space(spec["mem_cap_gib"])
    torch.set_num_threads(spec["threads"])
    sizes = batch_sizes(spec["case"], spec.get("n"), spec["seed"])
    data = make_batch(sizes, spec["seed"])
    name = spec["loss"]
    if name in REFERENCES:
        add_padded(data)
    out = {}
    if name == "sparse":
        out["graph_s"] = warm_graph_cache(sizes)
    tiny = make_batch([12, 12], 99)  # warm-up: code paths, thread pool; leaves no large free heap
    if name in REFERENCES:
        add_padded(tiny)
    if name == "sparse":
        warm_graph_cache([12])
    loss_call(name, tiny)()
    run = loss_call(name, data)
    gc.collect()
    peak, value = rss_peak_delta(run)
    # Times from the calls after the measured one: its first touch of fresh pages is memory cost.
    cpu, wall = [], []
    for _ in range(spec["reps"]):
        c, w, _ = timed(run)
        cpu.append(c)
        wall.append(w)
    out.update(peak_bytes=peak, cpu_s=statistics.median(cpu), wall_s=statistics.median(wall),
               value=float(value), reps=spec["reps"])
    return out


def run_worker(spec: dict, args) -> dict:
    spec = dict(spec, threads=args.threads, seed=args.seed, mem_cap_gib=args.mem_cap_gib)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- (a) + (b)


def time_blocks(calls: dict, rounds: int, blocks: int = 5, warmup: int = 2) -> dict:
    """Median CPU and wall time per call. Each candidate runs in blocks of consecutive calls (its
    steady state: switching candidates after every call would let one's allocations and cache
    footprint perturb the next), and the blocks are interleaved to spread machine-load changes."""
    cpu = {k: [] for k in calls}
    wall = {k: [] for k in calls}
    per_block = max(1, rounds // blocks)
    for _ in range(blocks):
        for name, fn in calls.items():
            for r in range(warmup + per_block):
                c, w, _ = timed(fn)
                if r >= warmup:
                    cpu[name].append(c)
                    wall[name].append(w)
    return {k: (statistics.median(cpu[k]), statistics.median(wall[k])) for k in calls}


def batch_benchmarks(args, out: dict) -> None:
    names = ["mse", "kabsch", "energy", "sparse", *REFERENCES]
    for case, rounds in (("qm9", args.rounds), ("geom", max(10, args.rounds // 4))):
        sizes = batch_sizes(case, None, args.seed)
        data = add_padded(make_batch(sizes, args.seed))
        warm_graph_cache(sizes)
        calls = {name: loss_call(name, data) for name in names}
        values = {name: float(calls[name]()) for name in ("energy", *REFERENCES)}
        for name in REFERENCES:  # the reference computes the same number
            assert math.isclose(values[name], values["energy"], rel_tol=2e-3), (name, values)
        times = time_blocks(calls, rounds)
        mem = {
            name: run_worker({"case": case, "loss": name, "reps": 1}, args)
            for name in ("mse", "energy", "sparse", *REFERENCES)
        }
        out[case] = {"sizes": (len(sizes), min(sizes), max(sizes), sum(sizes)), "times": times, "mem": mem,
                     "pairs": sum(n * (n - 1) // 2 for n in sizes), "dense_pairs": len(sizes) * max(sizes) ** 2}


def print_batch_tables(out: dict) -> None:
    print("\n(a) forward + backward time per loss call, over MSE's")
    print("| batch | atoms | loss | CPU ms (median) | wall ms (median) | time / MSE |")
    print("|---|---|---|---|---|---|")
    for case in ("qm9", "geom"):
        b, lo, hi, total = out[case]["sizes"]
        t = out[case]["times"]
        for name in ("mse", "kabsch", "energy", "sparse"):
            print(f"| {case.upper()} {b}×({lo}-{hi}) | {total} | {LABELS[name]} | {t[name][0] * 1e3:.3f} | "
                  f"{t[name][1] * 1e3:.3f} | {t[name][0] / t['mse'][0]:.1f}× |")
    print("\n(b) the dense padded reference (autograd) against ours (complete graph, flat layout)")
    print("| batch | implementation | CPU ms | wall ms | peak memory MiB | reference / ours: time | memory |")
    print("|---|---|---|---|---|---|---|")
    for case in ("qm9", "geom"):
        t, mem = out[case]["times"], out[case]["mem"]
        ours_mem = mem["energy"].get("peak_bytes", float("nan"))
        for name in ("energy", *REFERENCES):
            m = mem[name].get("peak_bytes", float("nan"))
            ratio = "" if name == "energy" else f"{t[name][0] / t['energy'][0]:.1f}× | {m / ours_mem:.1f}×"
            print(f"| {case.upper()} | {LABELS[name]} | {t[name][0] * 1e3:.3f} | {t[name][1] * 1e3:.3f} | "
                  f"{m / MiB:.2f} | {ratio or '- | -'} |")
        print(f"| {case.upper()} | (MSE, for scale) | {t['mse'][0] * 1e3:.3f} | {t['mse'][1] * 1e3:.3f} | "
              f"{mem['mse'].get('peak_bytes', float('nan')) / MiB:.2f} | | |")
    for case in ("qm9", "geom"):
        print(f"{case.upper()}: {out[case]['pairs']:,} atom pairs (i<j); the padded reference evaluates "
              f"{out[case]['dense_pairs']:,} ordered slots.")


# ----------------------------------------------------------------------------- (c)

REPS = {1_000: 20, 3_000: 5, 10_000: 2, 30_000: 1, 100_000: 9, 300_000: 5, 1_000_000: 5}


def single_structure_benchmarks(args, out: dict) -> None:
    sizes = [n for n in (1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000) if n <= args.sparse_max]
    rows = []
    for n in sizes:
        row = {"n": n, "pairs": n * (n - 1) // 2}
        reps = max(1, REPS.get(n, 1) // (2 if args.quick else 1))
        if n <= args.complete_max:
            row["energy"] = run_worker({"case": "single", "n": n, "loss": "energy", "reps": reps}, args)
        row["sparse"] = run_worker({"case": "single", "n": n, "loss": "sparse", "reps": max(reps, 3)}, args)
        for name in REFERENCES:
            need = reference_tensor_bytes(n, name)
            row[name + "_need"] = need
            if need <= args.dense_max_gib * GiB:
                row[name] = run_worker({"case": "single", "n": n, "loss": name, "reps": min(reps, 3)}, args)
        rows.append(row)
        print(f"  n = {n:,} done", file=sys.stderr, flush=True)
    out["single"] = rows


def reference_tensor_bytes(n: int, variant: str) -> int:
    """Peak live tensor bytes of the dense reference on one n-atom structure, traced on meta tensors."""
    pred = torch.zeros(1, n, 3, device="meta", requires_grad=True)
    target = torch.zeros(1, n, 3, device="meta")
    mask = torch.ones(1, n, dtype=torch.bool, device="meta")
    return tensor_peak_bytes(lambda: dense_reference(pred, target, mask, variant).backward())


def print_single_table(out: dict, args) -> None:
    print("\n(c) one structure of n atoms: forward + backward time (CPU s) and peak memory (MiB)")
    print("| n atoms | complete: pairs | s | ns/pair | MiB | rigid-sparse: pairs | s | ns/pair | MiB | "
          "graph generation s (one-off) | dense-bcast: s / MiB | dense-cdist: s / MiB | "
          "dense-bcast needs | dense-cdist needs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in out["single"]:
        def cell(res, unit):
            if res is None:
                return "not run"
            if "error" in res:
                return "failed: " + res["error"]
            return f"{res['cpu_s']:.4g}" if unit == "s" else f"{res['peak_bytes'] / MiB:.1f}"
        comp, sp = row.get("energy"), row["sparse"]
        dense = []
        for name in REFERENCES:
            res = row.get(name)
            dense.append("infeasible" if res is None else f"{cell(res, 's')} / {cell(res, 'MiB')}")
        needs = [f"{row[name + '_need'] / GiB:.2f} GiB" for name in REFERENCES]
        comp_s = cell(comp, "s") if comp is not None else f"skipped (> --complete-max {args.complete_max:,})"
        comp_m = cell(comp, "MiB") if comp is not None else "-"
        sparse_pairs = 3 * row["n"]  # 6-regular graph
        comp_ns = f"{comp['cpu_s'] / row['pairs'] * 1e9:.0f}" if comp and "cpu_s" in comp else "-"
        sp_ns = f"{sp['cpu_s'] / sparse_pairs * 1e9:.0f}" if "cpu_s" in sp else "-"
        print(f"| {row['n']:,} | {row['pairs']:.3g} | {comp_s} | {comp_ns} | {comp_m} | {sparse_pairs:.3g} | "
              f"{cell(sp, 's')} | {sp_ns} | {cell(sp, 'MiB')} | {sp.get('graph_s', float('nan')):.2f} | "
              f"{dense[0]} | {dense[1]} | {needs[0]} | {needs[1]} |")
    print("'needs': peak tensor memory of the dense reference traced on meta tensors (no allocation); "
          f"'infeasible': not run because it needs more than --dense-max-gib {args.dense_max_gib:g}.")


# ----------------------------------------------------------------------------- verdicts


def verdicts(out: dict, args) -> list[tuple[bool, str]]:
    """``(met, description)`` per target, in a fixed order (so runs can be compared target by target)."""
    lines: list[tuple[bool, str]] = []

    def check(ok: bool, text: str):
        lines.append((bool(ok), text))

    if "qm9" in out:
        t = out["qm9"]["times"]
        for ref in REFERENCES:
            check(t["energy"][0] <= t[ref][0],
                  f"QM9 batch: ours {t['energy'][0] * 1e3:.3f} ms no slower than {ref} {t[ref][0] * 1e3:.3f} ms")
        t, mem = out["geom"]["times"], out["geom"]["mem"]
        for ref in REFERENCES:
            speed = t[ref][0] / t["energy"][0]
            mem_ratio = mem[ref].get("peak_bytes", float("nan")) / mem["energy"].get("peak_bytes", float("nan"))
            check(speed >= 3, f"GEOM batch: {speed:.2f}x faster than {ref} (target >= 3x)")
            check(mem_ratio >= 5, f"GEOM batch: {mem_ratio:.1f}x less peak memory than {ref} (target >= 5x)")
    if "single" in out:
        by_n = {row["n"]: row for row in out["single"]}
        if 100_000 in by_n and 1_000_000 in by_n and "cpu_s" in by_n[1_000_000]["sparse"]:
            ratio = by_n[1_000_000]["sparse"]["cpu_s"] / by_n[100_000]["sparse"]["cpu_s"]
            check(ratio <= 12, f"rigid-sparse: time(10^6 atoms) / time(10^5 atoms) = {ratio:.1f} (target <= 12)")
        if 30_000 in by_n and by_n[30_000].get("energy"):
            res = by_n[30_000]["energy"]
            ok = "peak_bytes" in res and res["peak_bytes"] < 24 * GiB
            peak = f"{res['peak_bytes'] / MiB:.0f} MiB peak, {res['cpu_s']:.1f} s" if ok else res.get("error", "")
            needs = ", ".join(f"{name} needs {by_n[30_000][name + '_need'] / GiB:.1f} GiB" for name in REFERENCES)
            check(ok, f"complete graph of one 30,000-atom structure computes ({peak}); dense reference: {needs}")
    return lines


def _spread(values: list[float], fmt: str = ".3g") -> str:
    """``median [min-max]`` of the values of one quantity over the runs."""
    values = [v for v in values if v == v]  # drop NaN (a case that failed in some run)
    if not values:
        return "-"
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def print_summary(outs: list[dict], args) -> None:
    """Median and range over runs of every figure the README quotes; targets met in every run."""
    k = len(outs)
    nan = float("nan")
    print(f"\n# Summary over {k} runs: median [min-max]")
    if all("qm9" in o for o in outs):
        print("\n| batch | loss | CPU ms | time / MSE | peak MiB |")
        print("|---|---|---|---|---|")
        for case in ("qm9", "geom"):
            for name in ("mse", "kabsch", "energy", "sparse", *REFERENCES):
                t = [o[case]["times"][name][0] for o in outs]
                r = [o[case]["times"][name][0] / o[case]["times"]["mse"][0] for o in outs]
                m = [o[case]["mem"].get(name, {}).get("peak_bytes", nan) / MiB for o in outs]
                print(f"| {case.upper()} | {LABELS[name]} | {_spread([v * 1e3 for v in t])} | {_spread(r)}× | "
                      f"{_spread(m)} |")
        print("\n| batch | reference | reference / ours: time | memory |")
        print("|---|---|---|---|")
        for case in ("qm9", "geom"):
            for name in REFERENCES:
                t = [o[case]["times"][name][0] / o[case]["times"]["energy"][0] for o in outs]
                m = [o[case]["mem"][name].get("peak_bytes", nan) / o[case]["mem"]["energy"].get("peak_bytes", nan)
                     for o in outs]
                print(f"| {case.upper()} | {LABELS[name]} | {_spread(t)}× | {_spread(m)}× |")
    if all("single" in o for o in outs):
        print("\n| n atoms | complete: s | MiB | rigid-sparse: s | MiB | dense-cdist: s | MiB |")
        print("|---|---|---|---|---|---|---|")
        for i, row in enumerate(outs[0]["single"]):
            cells = []
            for name in ("energy", "sparse", "dense-cdist"):
                res = [o["single"][i].get(name) or {} for o in outs]
                cells += [_spread([r.get("cpu_s", nan) for r in res]),
                          _spread([r.get("peak_bytes", nan) / MiB for r in res])]
            print(f"| {row['n']:,} | " + " | ".join(cells) + " |")
        by_n = [{row["n"]: row for row in o["single"]} for o in outs]
        if all(1_000_000 in b and 100_000 in b for b in by_n):
            ratio = [b[1_000_000]["sparse"].get("cpu_s", nan) / b[100_000]["sparse"].get("cpu_s", nan) for b in by_n]
            print(f"rigid-sparse time(10^6 atoms) / time(10^5 atoms): {_spread(ratio)}")
    print(f"\nTargets over {k} runs (met only if met in every run)")
    per_run = [verdicts(o, args) for o in outs]
    for i in range(len(per_run[0])):
        hits = sum(run[i][0] for run in per_run if i < len(run))
        print(f"[{'MET' if hits == k else 'NOT MET'}] in {hits}/{k} runs:")
        for j, run in enumerate(per_run, 1):
            print(f"    run {j}: {run[i][1]}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: the cores are shared)")
    p.add_argument("--rounds", type=int, default=100, help="timing rounds for the QM9 batch (GEOM: a quarter)")
    p.add_argument("--complete-max", type=int, default=30_000, help="largest single structure for the complete graph")
    p.add_argument("--sparse-max", type=int, default=1_000_000,
                   help="largest single structure for the rigid-sparse graph")
    p.add_argument("--dense-max-gib", type=float, default=4.0,
                   help="run the dense reference only below this traced need")
    p.add_argument("--mem-cap-gib", type=float, default=12.0, help="address-space cap of each measuring subprocess")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", default="ab,c", help="'ab' (batches), 'c' (single structures) or both")
    p.add_argument("--quick", action="store_true",
                   help="fewer rounds, single structures up to 10^5 atoms, complete up to 10^4")
    p.add_argument("--runs", type=int, default=1,
                   help="repeat the whole measurement; with > 1 also print median [min-max] over the runs, and a "
                        "target counts as met only if every run meets it")
    p.add_argument("--json", type=Path, help="also write the raw measurements here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.rounds = 30
        args.complete_max, args.sparse_max = min(args.complete_max, 10_000), min(args.sparse_max, 100_000)
    torch.set_num_threads(args.threads)
    print(f"# loss_cost.py: {cpu_count_note()}; CPU times, medians; float32")
    parts = args.parts.split(",")
    outs = []
    for run in range(1, args.runs + 1):
        out: dict = {}
        t0 = time.perf_counter()
        if args.runs > 1:
            print(f"\n## run {run} of {args.runs}")
        if "ab" in parts:
            batch_benchmarks(args, out)
            print_batch_tables(out)
        if "c" in parts:
            single_structure_benchmarks(args, out)
            print_single_table(out, args)
        print("\nTargets")
        for ok, text in verdicts(out, args):
            print(f"[{'MET' if ok else 'NOT MET'}] {text}")
        out["seconds"] = time.perf_counter() - t0
        print(f"\n(total {out['seconds']:.0f} s)")
        outs.append(out)
    if args.runs > 1:
        print_summary(outs, args)
    if args.json:
        args.json.write_text(json.dumps(outs[0] if args.runs == 1 else {"runs": outs}, indent=1, default=str))


if __name__ == "__main__":
    main()
