"""QM7 structure benchmark for the SchNetPack adapter (SPEC §6): MMFF94 input -> PBE0 target.

Builds (once) a structure database from the QM7 PBE0 geometries with `energyloss-data` (targets
as given; inputs: MMFF94 relaxations started from the PBE0 structure: same basin, same atom order),
then trains PaiNN with `spktrain experiment=energyloss_structure` for the same number of optimiser
steps (`trainer.max_steps`) with each loss, so that a busy machine changes the wall time (reported
beside) but not the comparison, in two settings:

- same frame: input and target as they come from the builder;
- rotated: every target randomly rotated against its input (`globals.rotate_targets=true`), as a
  user's data arrives in arbitrary frames.

Runs already in ``<out>/results.json`` are skipped, so a rerun resumes. Evaluates each best model on
the test molecules with the core's metrics (aligned RMSD, bond-length and angle MAE, atom/molecule
stability) and writes a markdown table.

    python benchmarks/schnetpack_qm7.py --num-steps 1500 --molecules 1500
    python benchmarks/schnetpack_qm7.py --num-steps 1500 --only mse,energy --seed 1   # a second seed
    python benchmarks/schnetpack_qm7.py --only energy --settings same --tag lr2e-3 --extra globals.lr=2e-3

Not a test: it reads /work/shared/data/qm7 (or --source) and takes tens of minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from _spk import evaluate_inputs, evaluate_run, evaluate_targets, run_spktrain, table

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SOURCE = os.path.join(HERE, "..", "..", "shared", "data", "qm7", "qm7_pbe0.extxyz.gz")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=DEFAULT_SOURCE)
    p.add_argument("--out", default=os.path.join(HERE, "out", "schnetpack_qm7"))
    p.add_argument("--db", default=None, help="existing database (default: <out>/qm7_mmff.db, built if missing)")
    p.add_argument("--molecules", type=int, default=1500)
    p.add_argument("--first", type=int, default=1700,
                   help="copy the first N frames of the source to <out>/source_head.extxyz before building "
                        "(ASE parses all 7,101 QM7 frames slowly; the builder works in source order, so the result "
                        "is the same as with the whole file as long as N covers --molecules)")
    p.add_argument("--num-steps", type=int, default=1500, help="optimiser steps per run (the same for every loss)")
    p.add_argument("--budget", help=argparse.SUPPRESS)  # the former wall-clock budget: a clear error below
    p.add_argument("--max-hours", type=float, default=24.0,
                   help="safety limit of the wall time per run (a run that reaches it fails the comparison)")
    p.add_argument("--only", default="mse,kabsch,energy", help="losses to train")
    p.add_argument("--settings", default="same,rotated")
    p.add_argument("--tag", default="", help="suffix of the run names (for tuning variants)")
    p.add_argument("--extra", nargs="*", default=[], help="extra spktrain overrides for these runs")
    p.add_argument("--seed", type=int, default=0, help="training seed (initial weights, batches, rotations)")
    args = p.parse_args(argv)
    if args.budget is not None:
        p.error("--budget (a wall-clock limit per run) was replaced by --num-steps: every loss trains for the same "
                "number of optimiser steps and the wall time is reported beside, e.g. --num-steps 1500.")
    os.makedirs(args.out, exist_ok=True)

    datapath = os.path.abspath(args.db or os.path.join(args.out, "qm7_mmff.db"))
    from energyloss_plugins.data import find_split_file

    if find_split_file(datapath) is None:
        from energyloss_plugins.data import build_dataset

        if not os.path.isfile(args.source):
            raise SystemExit(f"schnetpack_qm7.py: --source {args.source} not found: give the QM7 file "
                             "(qm7_pbe0.extxyz.gz, made as docs/data.md says), or --db PATH to a built database")
        source = args.source
        if args.first:
            source = _head(args.source, args.first, os.path.join(args.out, "source_head.extxyz"))
        print(build_dataset(source, datapath, method="as-given", inputs="mmff", max_molecules=args.molecules,
                            seed=0, split=(0.8, 0.1, 0.1), progress=True), flush=True)

    results_file = os.path.join(args.out, "results.json")
    results = json.load(open(results_file)) if os.path.exists(results_file) else {}
    results.setdefault("target itself (reference)", evaluate_targets(datapath))
    results.setdefault("MMFF94 input (no model)", evaluate_inputs(datapath))
    common = ["data.batch_size=16", "globals.lr=1e-3", "model.representation.n_atom_basis=32",
              "model.representation.n_interactions=2", "globals.displacement_scale=0.1",
              "trainer.enable_model_summary=false", "+trainer.enable_progress_bar=false", f"+seed={args.seed}"]
    suffix = "".join(f"_{t}" for t in ([args.tag] if args.tag else []) + ([f"seed{args.seed}"] if args.seed else []))
    for setting in args.settings.split(","):
        for loss in args.only.split(","):
            run_id = f"{setting}_{loss}{suffix}"
            name = f"{setting} | {loss}{suffix.replace('_', ' ')}"
            if name in results:  # finished in an earlier call: rerunning the script resumes
                continue
            overrides = [*common, f"globals.rotate_targets={'true' if setting == 'rotated' else 'false'}", *args.extra]
            start = time.time()
            run_dir = run_spktrain(datapath, loss, os.path.join(args.out, "runs"), run_id, round(3600 * args.max_hours),
                                   overrides=[f"++trainer.max_steps={args.num_steps}", *overrides],
                                   log_file=os.path.join(args.out, f"{run_id}.log"))
            res = evaluate_run(run_dir, datapath)
            res.update(seconds=round(time.time() - start), overrides=" ".join(overrides[len(common):]))
            results[name] = res
            json.dump(results, open(results_file, "w"), indent=1)
            print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}, flush=True)
    text = table(results, extra=("epochs", "steps", "seconds"))
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)


def _head(path: str, n: int, out: str) -> str:
    """The first ``n`` frames of an (ext)xyz(.gz) file, copied line by line (no parsing)."""
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f, open(out, "w") as g:
        for _ in range(n):
            line = f.readline()
            if not line.strip():
                break
            g.write(line)
            g.write(f.readline())
            for _ in range(int(line)):
                g.write(f.readline())
    return out


if __name__ == "__main__":
    main()
