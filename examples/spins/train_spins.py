"""Train a ResNet-style CNN to predict spin-glass ground states with each loss (SPEC §4).

Builds (or loads from the cache) L×L open-boundary spin glasses with couplings uniform in
[-1, 1] and exact ground states (transfer-matrix DP), trains one model per (loss, seed), prints the
test excess energy E(sign(z)) - E(ground) as mean ± std over seeds, and saves training curves.

    python examples/spins/train_spins.py --L 8 --n-train 500 --n-test 100 --epochs 5 --seeds 0 1
    python examples/spins/train_spins.py --L 16 --n-train 2000 --epochs 8 --flip-invariant

Outputs in ``--out``: ``curves.png`` and ``results.json``. The loop itself is in ``spin_training.py``
beside this file. The temperatures default to the values chosen on validation lattices by
``benchmarks/spins_ground_state.py`` (docs/spins.md); this script scores on the test lattices only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from energyloss_plugins.spins import make_spin_glass_dataset, spin_loss_names
from energyloss_plugins.spins.functional import canonical_loss_name
from spin_training import TrainConfig, plot_curves, train_spin_model  # sibling module (the script's folder)


def loss_kwargs(name: str, args: argparse.Namespace) -> dict:
    fi = {"flip_invariant": True} if args.flip_invariant else {}
    if name == "local_field":
        return {"T": args.T, "h0": args.h0, **fi}
    if name == "true_energy":
        return {"T": args.T_true}
    if name == "margin":
        return {"margin": args.margin, **fi}
    return fi


def summarize(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--L", type=int, default=8, help="lattice size (open boundaries)")
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (init + order)")
    p.add_argument("--losses", nargs="+", default=spin_loss_names(), help=f"any of {spin_loss_names()}")
    p.add_argument("--T", type=float, default=0.25, help="temperature of the local-field loss")
    p.add_argument("--h0", type=float, default=4.5, help="offset h0 of the local-field weights")
    p.add_argument("--T-true", type=float, default=0.1, help="temperature of the true-energy loss")
    p.add_argument("--margin", type=float, default=1.0, help="margin of the hinge loss")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument(
        "--flip-invariant",
        action="store_true",
        help="supervised losses take the min over the global flip {y, -y} (beyond the paper)",
    )
    p.add_argument(
        "--gauge",
        choices=["corner", "center"],
        default="corner",
        help="global-flip representative of the labels: spin (0,0) or the centre spin = +1",
    )
    p.add_argument("--no-coords", action="store_true", help="do not feed site coordinates to the CNN")
    p.add_argument("--data-seed", type=int, default=0, help="train couplings seed; test uses data-seed + 1")
    p.add_argument("--cache-dir", default=None, help="dataset cache (default ~/.cache/energyloss_plugins/spins)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default="outputs/spins", help="output directory (curves.png, results.json)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    losses = [canonical_loss_name(n) for n in args.losses]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train = make_spin_glass_dataset(args.L, args.n_train, seed=args.data_seed, cache_dir=args.cache_dir)
    test = make_spin_glass_dataset(args.L, args.n_test, seed=args.data_seed + 1, cache_dir=args.cache_dir)

    results = []
    for name in losses:
        cfg = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            width=args.width,
            n_blocks=args.blocks,
            coords=not args.no_coords,
            gauge=args.gauge,
            loss_kwargs=loss_kwargs(name, args),
        )
        for seed in args.seeds:
            r = train_spin_model(name, train, test, seed, cfg, log=not args.quiet)
            r["label"] = name
            results.append(r)
            print(
                f"{name:14s} seed {seed}: test excess energy {r['final']['excess_mean']:.3f} "
                f"(site accuracy {r['final']['accuracy']:.3f}, {r['seconds']:.0f} s)",
                flush=True,
            )

    summary = {}
    print(f"\nL={args.L}, n_train={args.n_train}, n_test={args.n_test}, epochs={args.epochs}, seeds={args.seeds}")
    print(f"{'loss':14s} {'test excess energy (mean ± std over seeds)':>44s}")
    for name in losses:
        vals = [r["final"]["excess_mean"] for r in results if r["label"] == name]
        mean, std = summarize(vals)
        summary[name] = {"mean": mean, "std": std, "per_seed": vals, "kwargs": loss_kwargs(name, args)}
        print(f"{name:14s} {mean:30.3f} ± {std:.3f}")

    plot_curves(results, out / "curves.png", f"L={args.L} spin glass, n_train={args.n_train}")
    with open(out / "results.json", "w") as fh:
        json.dump({"args": vars(args), "summary": summary, "runs": results}, fh, indent=1)
    print(f"saved {out / 'curves.png'} and {out / 'results.json'}")
    return summary


if __name__ == "__main__":
    main()
