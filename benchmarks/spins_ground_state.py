"""Benchmark: spin-glass ground-state prediction with each loss (SPEC §4, issue 21).

Trains the CPU-sized ResNet CNN (6 hidden 3x3 conv layers of width 32) on open-boundary L x L
spin glasses (default L = 12, 1,000 training lattices, 4 epochs; couplings uniform in [-1, 1],
exact ground states from the transfer-matrix DP) and scores E(sign z) - E(ground), the excess
Ising energy, in two stages that never share lattices:

1. **Validation sweep** (``--sweep-seeds``, default 0 and 1, mean over them): every loss with a
   temperature is trained on the training lattices (data seed 0) for each setting of its grid and scored on
   *validation* lattices (data seed 2): the local-field loss over T x h0, with the labels as given
   and flip-invariant, and the true-energy loss over T. The setting with the lowest validation
   excess energy is chosen per loss. Cross-entropy and margin have no temperature (the margin only
   sets the logit scale, and the prediction is sign z), so they are not swept.
2. **Test** (``--seeds``, default 0 1 2): the seven variants with the chosen settings, scored once
   on the *test* lattices (data seed 1). Sweep models of the chosen settings are reused for their
   seed (training is deterministic on one thread), so nothing is selected on the test set.

References: a random configuration and single-spin-flip descent from a random start.

    python benchmarks/spins_ground_state.py --out outputs/spins_benchmark    # ~20 min on one loaded thread

Writes ``results.json``, ``table.md`` and ``validation_sweep.png`` into ``--out``. Each finished
run is also stored in ``--out/runs/`` and reused by a restarted command with the same settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "spins"))
from energyloss_plugins.io import atomic_write_text  # noqa: E402
from energyloss_plugins.spins import (  # noqa: E402
    ising_excess_energy,
    make_spin_glass_dataset,
    single_flip_descent,
)
from spin_training import TrainConfig, evaluate, train_spin_model  # noqa: E402

TRAIN_SEED, TEST_SEED, VAL_SEED = 0, 1, 2


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(kw: dict) -> str:
    shown = {k: v for k, v in kw.items() if k != "flip_invariant"}
    return ", ".join(f"{k}={v:g}" for k, v in shown.items())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--L", type=int, default=12)
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-val", type=int, default=200)
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of the test stage")
    p.add_argument("--sweep-seeds", type=int, nargs="+", default=[0, 1], help="training seeds of the sweep")
    p.add_argument("--T-grid", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0, 2.0, 4.0], help="local-field T")
    p.add_argument("--h0-grid", type=float, nargs="+", default=[1.0, 4.5], help="local-field h0")
    p.add_argument("--T-true-grid", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0, 3.0], help="true-energy T")
    p.add_argument("--cache-dir", default=".cache/spins")
    p.add_argument("--out", default="outputs/spins_benchmark")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    train = make_spin_glass_dataset(args.L, args.n_train, seed=TRAIN_SEED, cache_dir=args.cache_dir)
    val = make_spin_glass_dataset(args.L, args.n_val, seed=VAL_SEED, cache_dir=args.cache_dir)
    test = make_spin_glass_dataset(args.L, args.n_test, seed=TEST_SEED, cache_dir=args.cache_dir)
    t_data = time.time() - t_start
    print(f"data ready in {t_data:.0f} s", flush=True)

    base = dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        width=32,
        n_blocks=3,
        coords=True,
        gauge="corner",
        eval_every=args.epochs,  # score once, after the last epoch
    )
    data_key = f"L{args.L}_n{args.n_train}_e{args.epochs}_b{args.batch_size}_lr{args.lr:g}"

    def run_path(stage: str, loss: str, kw: dict, seed: int) -> Path:
        setting = "_".join(f"{k}{v}" for k, v in sorted(kw.items()))
        return out / "runs" / f"{stage}_{data_key}_{loss}_{setting}_s{seed}.json"

    def run(loss: str, kw: dict, seed: int, held_out, stage: str) -> dict:
        """Train (or reload) one run; return its metrics on ``held_out``, plus the model when trained now."""
        path = run_path(stage, loss, kw, seed)
        if path.exists():
            return json.loads(path.read_text())
        r = train_spin_model(loss, train, held_out, seed, TrainConfig(loss_kwargs=kw, **base), keep_model=True)
        model = r.pop("model")
        atomic_write_text(path, json.dumps(r))  # reloaded on a rerun: never half a file
        r["model"] = model
        print(
            f"[{stage}] {loss} {kw} seed {seed}: excess {r['final']['excess_mean']:7.2f} "
            f"({r['seconds']:.0f} s, total {time.time() - t_start:.0f} s)",
            flush=True,
        )
        return r

    # 1. validation sweep
    families = {  # family -> (loss, list of loss kwargs)
        "local field": ("local_field", [{"T": T, "h0": h0} for h0 in args.h0_grid for T in args.T_grid]),
        "local field, flip-invariant": (
            "local_field",
            [{"T": T, "h0": h0, "flip_invariant": True} for h0 in args.h0_grid for T in args.T_grid],
        ),
        "true energy": ("true_energy", [{"T": T} for T in args.T_true_grid]),
    }
    sweep: dict[str, list[dict]] = {}
    models: dict[tuple[str, str, int], torch.nn.Module] = {}
    for family, (loss, grid) in families.items():
        sweep[family] = []
        for kw in grid:
            vals = []
            for seed in args.sweep_seeds:
                r = run(loss, kw, seed, val, "val")
                vals.append(r["final"]["excess_mean"])
                if "model" in r:
                    models[(family, json.dumps(kw, sort_keys=True), seed)] = r["model"]
            sweep[family].append({"kwargs": kw, "val_excess": statistics.mean(vals), "per_seed": vals})
    chosen = {family: min(rows, key=lambda r: r["val_excess"])["kwargs"] for family, rows in sweep.items()}
    t_sweep = time.time() - t_start - t_data
    print(f"chosen on validation lattices: {chosen} (sweep {t_sweep / 60:.1f} min)", flush=True)

    # 2. test, once, with the chosen settings
    variants = [  # (label, family or None, loss, kwargs)
        ("cross-entropy", None, "cross_entropy", {}),
        ("margin", None, "margin", {}),
        ("local field", "local field", "local_field", chosen["local field"]),
        ("true energy", "true energy", "true_energy", chosen["true energy"]),
        ("cross-entropy, flip-invariant", None, "cross_entropy", {"flip_invariant": True}),
        ("margin, flip-invariant", None, "margin", {"flip_invariant": True}),
        (
            "local field, flip-invariant",
            "local field, flip-invariant",
            "local_field",
            chosen["local field, flip-invariant"],
        ),
    ]
    rows = []
    for label, family, loss, kw in variants:
        finals = []
        for seed in args.seeds:
            path = run_path("test", loss, kw, seed)
            reuse = models.get((family, json.dumps(kw, sort_keys=True), seed)) if family else None
            if reuse is not None and not path.exists():  # the sweep's model of the chosen setting
                final = evaluate(reuse, test, gauge=base["gauge"], descent=True)
                atomic_write_text(path, json.dumps({"final": final, "reused_from_sweep": True}))
                finals.append(final)
            else:
                finals.append(run(loss, kw, seed, test, "test")["final"])
        m, s = mean_std([f["excess_mean"] for f in finals])
        dm, ds_ = mean_std([f["excess_descent_mean"] for f in finals])
        name = f"{label} ({_fmt(kw)})" if family else label
        rows.append(
            {
                "label": name,
                "mean": m,
                "std": s,
                "per_seed": [f["excess_mean"] for f in finals],
                "descent_mean": dm,
                "descent_std": ds_,
                "overlap": statistics.mean(f["overlap"] for f in finals),
            }
        )
        print(f"[test] {name}: {m:.1f} ± {s:.1f}", flush=True)

    g = torch.Generator().manual_seed(0)
    rand = (torch.randint(0, 2, test.spins.shape, generator=g) * 2 - 1).double()
    ref = {
        "random configuration": float(ising_excess_energy(rand, test.couplings, test.energies).mean()),
        "single-spin-flip descent from a random start": float(
            ising_excess_energy(single_flip_descent(rand, test.couplings), test.couplings, test.energies).mean()
        ),
    }

    total = time.time() - t_start
    cmd = "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    lines = [
        f"Command: `{cmd}`  ",
        f"L={args.L} open boundaries; lattices: {args.n_train} training (data seed {TRAIN_SEED}), {args.n_val} "
        f"validation (seed {VAL_SEED}), {args.n_test} test (seed {TEST_SEED}); {args.epochs} epochs, batch "
        f"{args.batch_size}, Adam lr {args.lr:g} with cosine decay, ResNet CNN 6x32 (+ coordinate channels); labels "
        f"in the gauge spin(0,0)=+1. Wall time {total / 60:.1f} min on one thread (data {t_data:.0f} s, sweep "
        f"{t_sweep / 60:.1f} min).",
        "",
        f"Validation sweep (training seeds {args.sweep_seeds}; validation excess energy, lower is better):",
        "",
        "| loss | setting | validation excess energy |",
        "|---|---|---|",
    ]
    for family, srows in sweep.items():
        for r in srows:
            mark = " **(chosen)**" if r["kwargs"] == chosen[family] else ""
            lines.append(f"| {family} | {_fmt(r['kwargs'])}{mark} | {r['val_excess']:.1f} |")
    lines += [
        "",
        f"Test, chosen settings, training seeds {args.seeds} (reported once, after the choice):",
        "",
        "| loss | test excess energy (mean ± std) | per seed | after single-flip descent | overlap |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['mean']:.1f} ± {r['std']:.1f} | {', '.join(f'{v:.1f}' for v in r['per_seed'])} "
            f"| {r['descent_mean']:.1f} ± {r['descent_std']:.1f} | {r['overlap']:.3f} |"
        )
    for k, v in ref.items():
        lines.append(f"| reference: {k} | {v:.1f} | | | |")
    table = "\n".join(lines)
    print("\n" + table)
    (out / "table.md").write_text(table + "\n")
    with open(out / "results.json", "w") as fh:
        json.dump(
            {"args": vars(args), "sweep": sweep, "chosen": chosen, "test": rows, "references": ref, "seconds": total},
            fh,
            indent=1,
        )
    plot_sweep(sweep, chosen, out / "validation_sweep.png", f"L={args.L}, {args.n_val} validation lattices")
    print(f"saved {out}/table.md, results.json, validation_sweep.png")
    return {"sweep": sweep, "chosen": chosen, "test": rows, "references": ref}


def plot_sweep(sweep: dict[str, list[dict]], chosen: dict[str, dict], path: Path, title: str) -> None:
    """Validation excess energy against T: local field per (gauge handling, h0), true energy alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for family, rows in sweep.items():
        ax = axes[1] if family == "true energy" else axes[0]
        for h0 in sorted({r["kwargs"].get("h0") for r in rows}, key=lambda v: -1 if v is None else v):
            sel = sorted((r for r in rows if r["kwargs"].get("h0") == h0), key=lambda r: r["kwargs"]["T"])
            label = family if h0 is None else f"{family}, h0={h0:g}"
            ax.plot([r["kwargs"]["T"] for r in sel], [r["val_excess"] for r in sel], "o-", label=label)
        best = min(rows, key=lambda r: r["val_excess"])
        ax.plot(best["kwargs"]["T"], best["val_excess"], "k*", ms=14, zorder=5)
    axes[0].set(xscale="log", xlabel="T", ylabel="validation excess energy", title="local field (★ chosen)")
    axes[1].set(xscale="log", xlabel="T", ylabel="validation excess energy", title="true energy (★ chosen)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Spin-glass temperature sweep scored on validation lattices ({title})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
