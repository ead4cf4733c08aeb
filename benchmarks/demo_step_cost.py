"""Per-step CPU time of ``make demo``'s training path, energy loss against MSE (docs/benchmarks.md).

    python benchmarks/demo_step_cost.py --out /tmp/demo_cost                 # ~5 minutes on 2 shared cores

Runs the demo's own ``spktrain`` command (``examples/schnetpack/demo.py``: PaiNN 32 x 2, batch 8,
``data.num_workers=0``, validation every epoch) on the demo's database (built in ``--out`` if absent)
for ``--short`` and ``--long`` optimiser steps per loss, the runs interleaved, and reports the
process CPU time (user + sys of the ``spktrain`` child) per step as
(CPU(long) − CPU(short)) / (long − short): start-up, the final test and the model export cancel,
and a shared machine's load, which moves wall times by several fold, moves CPU time less (still
±10 % from run to run on the 2 shared vCPUs of docs/benchmarks.md).

It also times, in this process and interleaved (10 rounds over the training molecules), the
per-molecule springs of the data pipeline (``PairSpringsTransform`` → ``LossConfig.structure_springs``)
against the flat-batch :func:`energyloss_plugins.resolve_springs` on one molecule: the part of the
energy run's extra cost that is ours, resolved to a few percent.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "schnetpack"))

LOSSES = ("energy", "mse")


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(datapath: str, loss: str, steps: int, out: str) -> tuple[float, float]:
    """CPU and wall seconds of one demo ``spktrain`` run of ``steps`` optimiser steps."""
    from demo import train_command

    run_path = os.path.join(out, "runs")
    os.makedirs(run_path, exist_ok=True)
    cmd = train_command(datapath, loss, run_path, f"{loss}_{steps}", steps)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    c0, w0 = child_cpu(), time.perf_counter()
    subprocess.run(cmd, cwd=run_path, check=True, capture_output=True, env=env)
    return child_cpu() - c0, time.perf_counter() - w0


def springs_per_molecule(datapath: str, rounds: int = 10) -> dict[str, list[float]]:
    """CPU ms per molecule of ``structure_springs`` and of ``resolve_springs`` on the demo's first 84 molecules."""
    import schnetpack as spk
    import schnetpack.transform as trn
    import torch

    from energyloss_plugins import resolve_springs
    from energyloss_plugins.config import LossConfig

    torch.set_num_threads(1)
    dataset = spk.data.ASEAtomsData(datapath, load_properties=["target_positions"], transforms=[trn.CastTo32()])
    samples = [dataset[i] for i in range(min(len(dataset), 84))]
    config = LossConfig(coefficient_kwargs={"k0": 1.0})  # the structure experiment's default springs
    paths = {"structure_springs": lambda s: config.structure_springs(s["target_positions"],
                                                                     numbers=s["_atomic_numbers"]),
             "resolve_springs": lambda s: resolve_springs(s["target_positions"], numbers=s["_atomic_numbers"],
                                                          **config.energy_kwargs())}
    times = {name: [] for name in paths}
    for r in range(rounds):
        for name in (list(paths) if r % 2 else list(paths)[::-1]):
            c0 = time.process_time()
            for sample in samples:
                paths[name](sample)
            times[name].append(1e3 * (time.process_time() - c0) / len(samples))
    return times


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for the demo database and the runs")
    p.add_argument("--short", type=int, default=20)
    p.add_argument("--long", type=int, default=320)
    p.add_argument("--springs-only", action="store_true", help="only the per-molecule springs (seconds)")
    args = p.parse_args(argv)
    from energyloss_plugins.data import build_dataset

    datapath = os.path.abspath(os.path.join(args.out, "nci_uff_to_mmff.db"))
    if not os.path.exists(datapath):  # the demo's dataset (examples/schnetpack/demo.py)
        os.makedirs(args.out, exist_ok=True)
        build_dataset("nci", datapath, method="mmff", inputs="uff", max_molecules=120, max_heavy_atoms=8,
                      elements="C,N,O,F", seed=0, split=(0.7, 0.1, 0.2), progress=False)
    for name, values in springs_per_molecule(datapath).items():
        print(f"springs of one molecule, {name}: CPU {statistics.median(values):.3f} ms "
              f"[{min(values):.3f}, {max(values):.3f}] over 10 rounds", flush=True)
    if args.springs_only:
        return
    cpu = {}
    for steps in (args.short, args.long):
        for loss in LOSSES:
            cpu[loss, steps], wall = timed_run(datapath, loss, steps, args.out)
            print(f"{loss} {steps} steps: CPU {cpu[loss, steps]:.1f} s, wall {wall:.1f} s", flush=True)
    per_step = {loss: (cpu[loss, args.long] - cpu[loss, args.short]) / (args.long - args.short) for loss in LOSSES}
    print(f"CPU ms per step: energy {1e3 * per_step['energy']:.1f}, mse {1e3 * per_step['mse']:.1f}; "
          f"energy / mse {per_step['energy'] / per_step['mse']:.3f}")


if __name__ == "__main__":
    main()
