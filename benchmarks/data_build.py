"""Dataset builder benchmark: build times and input -> target gaps, measured in one run.

    nohup .venv/bin/python benchmarks/data_build.py --workers 2 > data_build.log 2>&1 &

1. RDKit's bundled NCI SMILES, QM9-like filter (<= 9 heavy atoms of C, N, O, F), MMFF94 targets,
   inputs uff + thermal (300 K) + etkdg: wall time, and every target's max force.
   first_5K.smi holds only ~420 distinct QM9-like molecules, so the 500-molecule timing run uses
   <= 10 heavy atoms (same elements).
2. QM7 (PBE0 geometries, ../shared/data/qm7/qm7_pbe0.extxyz.gz) and ase.collections.g2 (MP2), as
   given, with MMFF94-relaxed, thermal and ETKDG inputs: median aligned RMSD input -> target per input
   kind, with all atoms, heavy atoms only, and symmetry-aware (RDKit GetBestRMS) for the conformers.
3. Metrics of the inputs against the targets (bond/angle MAE, MMFF94 excess energy, stability).

Prints a Markdown summary at the end (copied into docs/data.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from energyloss_plugins.data import build_dataset, collate_records, read_dataset
from energyloss_plugins.layouts import structure_counts
from energyloss_plugins.metrics import (
    aligned_rmsd,
    angle_mae,
    bond_length_mae,
    excess_energy,
    molecule_stability,
    stable_atoms,
    symmetric_rmsd,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QM7_DEFAULT = os.path.join(os.path.dirname(REPO), "shared", "data", "qm7", "qm7_pbe0.extxyz.gz")


def _median(x):
    x = [v for v in x if np.isfinite(v)]
    return statistics.median(x) if x else float("nan")


def input_gaps(path, sym_kinds=("etkdg",), energies=False, chunk=256):
    """Per input kind: median RMSD (all atoms, heavy atoms, symmetry-aware), bond/angle MAE, excess energy."""
    records = read_dataset(path)
    by_kind = defaultdict(list)
    for r in records:
        by_kind[r.input_kind].append(r)
    out = {}
    for kind, recs in by_kind.items():
        stats = defaultdict(list)
        for start in range(0, len(recs), chunk):
            part = recs[start : start + chunk]
            b = collate_records(part)
            x, y, z, batch = b["positions"], b["target_positions"], b["numbers"], b["batch"]
            stats["rmsd"] += aligned_rmsd(x, y, batch).tolist()
            heavy = z != 1
            hb = batch[heavy]
            n_heavy = structure_counts(hb, len(part))
            rh = aligned_rmsd(x[heavy], y[heavy], hb, len(part))
            stats["rmsd_heavy"] += torch.where(n_heavy >= 2, rh, torch.nan).tolist()  # undefined below 2 heavy atoms
            stats["bond_mae"] += bond_length_mae(x, y, b["bonds"], batch).tolist()
            stats["angle_mae"] += angle_mae(x, y, b["bonds"], batch).tolist()
            ruled = [r for r in part if _has_valence_rules(r)]
            if ruled:
                c = collate_records(ruled)
                stats["mol_stable_input"] += (
                    molecule_stability(c["numbers"], c["positions"], c["batch"]).float().tolist()
                )
            if kind in sym_kinds:
                stats["rmsd_sym"] += symmetric_rmsd(x, y, z, batch, bonds=b["bonds"]).tolist()
                stats["rmsd_sym_heavy"] += symmetric_rmsd(x, y, z, batch, bonds=b["bonds"], heavy_only=True).tolist()
            if energies:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    stats["excess_mmff"] += excess_energy(
                        z, x, y, batch, "mmff", b["bonds"], b["bond_orders"], b["formal_charges"]
                    ).tolist()
        out[kind] = {k: (_median(v) if k != "mol_stable_input" else float(np.mean(v))) for k, v in stats.items()}
        out[kind].setdefault("mol_stable_input", float("nan"))
        out[kind]["n"] = len(recs)
    return out


def _has_valence_rules(record):
    from energyloss_plugins.metrics.bonds import HAS_RULE

    return bool(HAS_RULE[record.numbers.long()].all())


def target_stability(path):
    """Atom and molecule stability of the targets (molecules of elements with valence rules)."""
    records = read_dataset(path)
    first = {}
    for r in records:  # one row per molecule
        first.setdefault(r.mol_id, r)
    recs = [r for r in first.values() if _has_valence_rules(r)]
    b = collate_records(recs)
    st = stable_atoms(b["numbers"], b["target_positions"], b["batch"])
    mol = molecule_stability(b["numbers"], b["target_positions"], b["batch"])
    return float(st.float().mean()), float(mol.float().mean())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default="/tmp/energyloss_data_bench")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--n-nci", type=int, default=500)
    ap.add_argument("--qm7", default=QM7_DEFAULT)
    ap.add_argument("--qm7-max", type=int, default=None, help="limit QM7 molecules (default: all 7,101)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: nci,nci10,qm7,g2")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    skip = set(args.skip.split(","))
    if "qm7" not in skip and not os.path.isfile(args.qm7):
        ap.error(f"--qm7 {args.qm7} not found: give the QM7 file (qm7_pbe0.extxyz.gz, made as docs/data.md "
                 "says), or --skip qm7")
    os.makedirs(args.out_dir, exist_ok=True)
    lines = [f"# energyloss-data benchmark ({args.workers} worker processes, {os.cpu_count()} CPUs)", ""]
    common = dict(workers=args.workers, resume=False, progress=True, seed=0)

    def log(msg=""):
        print(msg, flush=True)
        lines.append(msg)

    builds = []
    if "nci" not in skip:
        builds.append(("NCI QM9-like (<= 9 heavy C,N,O,F), MMFF94", "nci9", "nci",
                       dict(method="mmff", inputs="uff,thermal,etkdg", max_heavy_atoms=9, elements="C,N,O,F",
                            max_molecules=args.n_nci), True))  # fmt: skip
    if "nci10" not in skip:
        builds.append(("NCI (<= 10 heavy C,N,O,F), MMFF94", "nci10", "nci",
                       dict(method="mmff", inputs="uff,thermal,etkdg", max_heavy_atoms=10, elements="C,N,O,F",
                            max_molecules=args.n_nci), True))  # fmt: skip
    if "qm7" not in skip:
        if os.path.exists(args.qm7):
            builds.append(("QM7 (PBE0) as given", "qm7", args.qm7,
                           dict(method="as-given", inputs="mmff,thermal,etkdg", max_molecules=args.qm7_max),
                           False))  # fmt: skip
        else:
            log(f"QM7 file not found at {args.qm7}: skipped")
    if "g2" not in skip:
        builds.append(("g2 (MP2) as given", "g2", "g2", dict(method="as-given", inputs="mmff,thermal,etkdg"), False))

    for title, tag, source, kw, energies in builds:
        out = os.path.join(args.out_dir, tag, "data.db")
        t0 = time.perf_counter()
        report = build_dataset(source, out, **common, **kw)
        wall = time.perf_counter() - t0
        print(report, flush=True)
        log(f"## {title}")
        log(f"- command: `energyloss-data build {source if tag != 'qm7' else 'qm7_pbe0.extxyz.gz'} -o {tag}/data.db "
            f"--method {kw['method']} --inputs {kw['inputs']}"
            + (f" --max-heavy-atoms {kw['max_heavy_atoms']} --elements {kw['elements']}" if "elements" in kw else "")
            + (f" --max-molecules {kw['max_molecules']}" if kw.get("max_molecules") else "")
            + f" --workers {args.workers}`")  # fmt: skip
        log(f"- {report.n_molecules} molecules, {report.n_rows} rows in {wall:.1f} s "
            f"({wall / max(report.n_molecules, 1) * 1000:.0f} ms per molecule, {args.workers} workers)")  # fmt: skip
        log(f"- filtered: {report.filtered}; skipped: {report.skipped}; failed inputs: {report.input_failures}")
        if kw["method"] == "mmff":
            fmax = [
                r.key_value_pairs["target_fmax"]
                for r in __import__("ase.db", fromlist=["connect"]).connect(out).select()
            ]
            log(f"- target max force: max {max(fmax):.1e} eV/Å, median {statistics.median(fmax):.1e} eV/Å")
        a_st, m_st = target_stability(out)
        log(f"- targets: atom stability {100 * a_st:.1f} %, molecule stability {100 * m_st:.1f} %")
        t1 = time.perf_counter()
        gaps = input_gaps(out, energies=energies)
        log("")
        log("| input kind | n | RMSD (Å) | heavy-atom RMSD (Å) | symmetric RMSD (Å) | sym. heavy RMSD (Å) "
            "| bond MAE (Å) | angle MAE (°) | mol. stable input"
            + (" | MMFF excess energy (eV) |" if energies else " |"))  # fmt: skip
        log("|---|---|---|---|---|---|---|---|---|" + ("---|" if energies else ""))
        for kind, g in gaps.items():
            row = (f"| {kind} | {g['n']} | {g['rmsd']:.3f} | {g['rmsd_heavy']:.3f} | "
                   f"{g.get('rmsd_sym', float('nan')):.3f} | {g.get('rmsd_sym_heavy', float('nan')):.3f} | "
                   f"{g['bond_mae']:.4f} | {g['angle_mae']:.2f} | {100 * g['mol_stable_input']:.1f} %")  # fmt: skip
            if energies:
                row += f" | {g['excess_mmff']:.3f}"
            log(row + " |")
        log(f"(medians over inputs; metrics took {time.perf_counter() - t1:.1f} s)")
        log("")
    print("\n" + "=" * 80 + "\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
