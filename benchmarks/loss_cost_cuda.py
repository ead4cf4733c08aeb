"""Cost of the pair energy loss on a CUDA GPU, every number measured in one run (docs/benchmarks.md).

    python benchmarks/loss_cost_cuda.py                  # needs a CUDA device; about a minute
    python benchmarks/loss_cost_cuda.py --json out.json

The GPU counterpart of ``benchmarks/loss_cost.py`` (same data, same loss calls): forward + backward
time of each loss on a QM9-size batch (128 structures of 10-29 atoms) and a GEOM-size one (64 of
10-180 atoms), the paper's dense padded reference beside ours, and single structures from 10^3 to
10^6 atoms (complete graph, chunked, against rigid-sparse). Each energy is timed twice: as users
call ``pair_energy_loss`` (springs resolved and input checked in every call) and as the lean
training path (``resolve_springs`` once, then ``pair_energy_kernel`` unvalidated: ``lean*``).
The functions take ``device="cpu"`` too (perf_counter times, no memory), which
``benchmarks/device_suite.py --smoke`` uses.

Method. Each call is timed with CUDA events (device time, launch overhead included); candidates
run in interleaved blocks after a warm-up, and the median over calls is reported with the ratio to
MSE measured in the same run. Peak memory is ``torch.cuda.max_memory_allocated`` over one call,
minus what was allocated before it. Exp coefficients (k0 = 1, ℓ = 1 Å), energy per atom, float32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_cost import REFERENCES, add_padded, batch_sizes, loss_call, make_batch, warm_graph_cache  # noqa: E402

MiB = 2**20


def to_device(data: dict, device: str) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in data.items()}


def time_ms(fn, device: str) -> float:
    """Milliseconds of one call: CUDA events on a GPU (device time, launch overhead included), else
    ``time.perf_counter`` (the CPU path, for ``benchmarks/device_suite.py --smoke``)."""
    if device != "cuda":
        start = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - start)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def peak_mib(fn, device: str) -> float | None:
    """Peak allocated CUDA memory of one call above what was allocated before (None off CUDA)."""
    if device != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / MiB


def measure(calls: dict, reps: int, block: int = 5, device: str = "cuda") -> dict:
    """Median time (ms) and peak memory (MiB) per candidate, blocks of all candidates interleaved."""
    times = {name: [] for name in calls}
    memory = {name: peak_mib(fn, device) for name, fn in calls.items()}  # first call: also the warm-up
    for fn in calls.values():
        for _ in range(3):
            fn()
    if device == "cuda":
        torch.cuda.synchronize()
    for _ in range(max(1, reps // block)):
        for name, fn in calls.items():
            times[name].extend(time_ms(fn, device) for _ in range(block))
    return {name: {"ms": statistics.median(t), "peak_mib": memory[name]} for name, t in times.items()}


BATCH_LOSSES = ("mse", "kabsch", "energy", "lean", "sparse", "lean-sparse", *REFERENCES)


def batch_case(case: str, seed: int, reps: int, device: str = "cuda") -> dict:
    """Every loss of :data:`BATCH_LOSSES` on one QM9- or GEOM-size batch, with its time over MSE's."""
    sizes = batch_sizes(case, None, seed)
    data = add_padded(make_batch(sizes, seed))
    warm_graph_cache(sizes)
    data = to_device(data, device)
    result = measure({name: loss_call(name, data) for name in BATCH_LOSSES}, reps, device=device)
    base = result["mse"]["ms"]
    for value in result.values():
        value["over_mse"] = value["ms"] / base
    return result


def single_case(n: int, seed: int, reps: int, complete: bool, dense: bool, device: str = "cuda") -> dict:
    """One structure of ``n`` atoms: rigid-sparse (per call and lean), the complete graph and the
    dense cdist reference where asked."""
    sizes = [n]
    data = make_batch(sizes, seed)
    if dense:
        add_padded(data)
    graph_s = warm_graph_cache(sizes)
    data = to_device(data, device)
    names = (["energy", "lean"] if complete else []) + ["sparse", "lean-sparse"] + (["dense-cdist"] if dense else [])
    result = measure({name: loss_call(name, data) for name in names}, reps, block=2, device=device)
    result["sparse"]["graph_generation_s"] = graph_s
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=50, help="timed calls per candidate (batch cases)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("loss_cost_cuda: no CUDA device; run benchmarks/loss_cost.py for the CPU figures.", file=sys.stderr)
        return 2
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batches": {}, "single": {}}
    print(f"{out['device']}, torch {out['torch']}, float32, forward + backward, median of CUDA-event times")
    for case in ("qm9", "geom"):
        res = out["batches"][case] = batch_case(case, args.seed, args.reps)
        print(f"\n{case} batch")
        for name, v in res.items():
            print(f"  {name:12s} {v['ms']:9.3f} ms  {v['over_mse']:7.2f}x MSE  peak {v['peak_mib']:9.1f} MiB")
    for n, complete, dense in ((1_000, True, True), (10_000, True, True), (30_000, True, True),
                               (300_000, False, False), (1_000_000, False, False)):
        reps = 20 if n <= 30_000 else 10
        res = out["single"][n] = single_case(n, args.seed, reps, complete, dense)
        print(f"\none structure of {n} atoms")
        for name, v in res.items():
            print(f"  {name:12s} {v['ms']:10.3f} ms  peak {v['peak_mib']:10.1f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
