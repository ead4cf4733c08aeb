"""The README's QM7 structure table from the two structure benchmarks' results (issue 21).

    python benchmarks/schnetpack_qm7.py --num-steps 500 --out OUT/spk
    python benchmarks/schnetpack_qm7.py --num-steps 500 --out OUT/spk --only mse,energy --seed 1
    python benchmarks/torchmdnet_structure.py --num-steps 500 --out OUT/tmd --db OUT/spk/qm7_mmff.db
    python benchmarks/structure_table.py OUT/spk/results.json OUT/tmd/results.json

One row per (frame, loss); one column group per model (PaiNN through SchNetPack, TensorNet and ET
through TorchMD-Net). Where a run has several seeds (``... seed1`` rows of the SchNetPack results)
a cell is the mean ± half-range over them. Prints Markdown; reads only the two JSON files.
"""

from __future__ import annotations

import argparse
import json
import statistics

LOSSES = ("mse", "kabsch", "energy")
FRAMES = (("same", "same", "same"), ("rotated", "rotated", "random"))  # label, SchNetPack name, TorchMD-Net name
MODELS = ("PaiNN", "TensorNet", "ET")
TMD_MODELS = {"tensornet": "TensorNet", "equivariant-transformer": "ET"}
METRICS = (("rmsd", "aligned RMSD (Å)", 1.0, 4), ("bond_mae", "bond-length MAE (Å)", 1.0, 4),
           ("molecule_stability", "molecule stability (%)", 100.0, 1))


def collect(spk: dict, tmd: list) -> dict:
    """{(model, frame label, loss): [result dicts over seeds]} from the two benchmarks' JSON."""
    runs: dict = {}
    for name, res in spk.items():
        if " | " not in name:
            continue
        frame, rest = name.split(" | ")
        loss = rest.split()[0]
        runs.setdefault(("PaiNN", frame, loss), []).append(res)
    tmd_frames = {tmd_name: label for label, _, tmd_name in FRAMES}
    for res in tmd:
        if res["model"] in TMD_MODELS:
            key = (TMD_MODELS[res["model"]], tmd_frames[res["setting"]], res["loss"].removesuffix("_loss"))
            runs.setdefault(key, []).append(res)
    return runs


def cell(results: list, key: str, scale: float, digits: int) -> str:
    values = [scale * r[key] for r in results]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    half = (max(values) - min(values)) / 2
    return f"{statistics.fmean(values):.{digits}f} ± {half:.{digits}f}"


def table(spk: dict, tmd: list) -> str:
    runs = collect(spk, tmd)
    head = ["frame", "loss"] + [f"{label}: {' / '.join(MODELS)}" for _, label, _, _ in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    refs = (("MMFF94 input, no model", spk["MMFF94 input (no model)"]),
            ("PBE0 target itself", spk["target itself (reference)"]))
    for label, res in refs:
        lines.append(f"| — | {label} | " + " | ".join(cell([res], k, s, d) for k, _, s, d in METRICS) + " |")
    for frame, _, _ in FRAMES:
        for loss in LOSSES:
            cells = []
            for key, _, scale, digits in METRICS:
                cells.append(" / ".join(cell(runs[(m, frame, loss)], key, scale, digits)
                                        if (m, frame, loss) in runs else "—" for m in MODELS))
            lines.append(f"| {frame} | {loss} | " + " | ".join(cells) + " |")
    steps = sorted({r["steps"] for rs in runs.values() for r in rs})
    seconds = {m: [r["seconds"] for (mm, _, _), rs in runs.items() if mm == m for r in rs] for m in MODELS}
    wall = ", ".join(f"{m} {min(s):.0f}–{max(s):.0f} s" for m, s in seconds.items() if s)
    seeds = {m: max(len(rs) for (mm, _, _), rs in runs.items() if mm == m) for m in MODELS if seconds[m]}
    return "\n".join(lines) + (f"\n\nOptimiser steps per run: {', '.join(map(str, steps))}; wall time per run: {wall}; "
                               f"most seeds per cell: {seeds}.")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spk", help="results.json of benchmarks/schnetpack_qm7.py")
    p.add_argument("tmd", help="results.json of benchmarks/torchmdnet_structure.py")
    a = p.parse_args(argv)
    with open(a.spk) as f, open(a.tmd) as g:
        print(table(json.load(f), json.load(g)))


if __name__ == "__main__":
    main()
