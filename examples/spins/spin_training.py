"""Training and evaluation loop of the spin-glass example and benchmark.

Used by ``examples/spins/train_spins.py`` and ``benchmarks/spins_ground_state.py``; it needs only the
public API of :mod:`energyloss_plugins.spins`. The held-out set passed to :func:`train_spin_model` is
whatever the caller scores on: validation lattices while choosing hyper-parameters, test lattices
once they are chosen.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from energyloss_plugins.spins import (
    SpinGlassDataset,
    SpinResNet,
    canonicalize,
    get_spin_loss,
    ising_excess_energy,
    single_flip_descent,
)

__all__ = ["TrainConfig", "evaluate", "plot_curves", "train_spin_model"]


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (the loss's own parameters go in ``loss_kwargs``)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    cosine: bool = True  # cosine learning-rate decay to 0 over the run
    width: int = 32
    n_blocks: int = 3
    dilations: tuple[int, ...] | None = None
    coords: bool = False
    gauge: str = "corner"  # global-flip representative of the training labels (see canonicalize)
    eval_every: int = 1
    loss_kwargs: dict = field(default_factory=dict)


@torch.no_grad()
def evaluate(
    model: nn.Module, ds: SpinGlassDataset, batch_size: int = 256, gauge: str = "corner", descent: bool = False
) -> dict[str, float]:
    """Mean/std of the excess energy over ``ds``, mean per-site accuracy against the labels in
    ``gauge`` and the gauge-invariant overlap ``|mean_i y_i ŷ_i|``. With ``descent``, also the
    excess energy after single-spin-flip descent from the prediction (``excess_descent_mean``)."""
    was_training = model.training
    model.eval()
    exc, acc, ovl, desc = [], [], [], []
    spins = canonicalize(ds.spins, gauge)
    for i in range(0, len(ds), batch_size):
        J, y, e = ds.couplings[i : i + batch_size], spins[i : i + batch_size], ds.energies[i : i + batch_size]
        z = model(J)
        exc.append(ising_excess_energy(z, J, e))
        pred = torch.where(z >= 0, 1.0, -1.0)
        if descent:
            desc.append(ising_excess_energy(single_flip_descent(pred, J), J, e))
        agree = (pred * y).flatten(1).mean(1)
        acc.append((agree + 1) / 2)
        ovl.append(agree.abs())
    model.train(was_training)
    exc_t = torch.cat(exc)
    out = {
        "excess_mean": float(exc_t.mean()),
        "excess_std": float(exc_t.std()) if len(exc_t) > 1 else 0.0,
        "accuracy": float(torch.cat(acc).mean()),
        "overlap": float(torch.cat(ovl).mean()),
    }
    if descent:
        out["excess_descent_mean"] = float(torch.cat(desc).mean())
    return out


def train_spin_model(
    loss_name: str,
    train: SpinGlassDataset,
    held_out: SpinGlassDataset,
    seed: int,
    config: TrainConfig | None = None,
    log: bool = False,
    keep_model: bool = False,
) -> dict:
    """Train a ``SpinResNet`` with one loss; return curves and the final metrics on ``held_out``.

    Returns:
        dict with ``loss``, ``seed``, ``config``, ``curves`` (``epoch``, ``train_loss``,
        ``held_out_excess``, ``held_out_accuracy``; NaN on epochs not evaluated), ``final`` (metrics of
        :func:`evaluate` on ``held_out`` after the last epoch, with descent) and ``seconds``; with
        ``keep_model`` also ``model`` (the trained network, to score it later on another set).
    """
    cfg = config or TrainConfig()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    periodic = train.boundary == "periodic"
    model = SpinResNet(
        width=cfg.width, n_blocks=cfg.n_blocks, periodic=periodic, dilations=cfg.dilations, coords=cfg.coords
    )
    train_spins = canonicalize(train.spins, cfg.gauge)
    loss_fn = get_spin_loss(loss_name, **cfg.loss_kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, (lambda k: 0.5 * (1 + math.cos(math.pi * k / total))) if cfg.cosine else (lambda k: 1.0)
    )
    curves: dict[str, list[float]] = {"epoch": [], "train_loss": [], "held_out_excess": [], "held_out_accuracy": []}
    t0 = time.time()
    final: dict[str, float] = {}
    for epoch in range(1, cfg.epochs + 1):
        perm = torch.randperm(len(train), generator=gen)
        running, count = 0.0, 0
        for k in range(steps_per_epoch):
            idx = perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            J, y = train.couplings[idx], train_spins[idx]
            loss = loss_fn(model(J), y, J)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
            count += len(idx)
        curves["epoch"].append(epoch)
        curves["train_loss"].append(running / count)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            final = evaluate(model, held_out, gauge=cfg.gauge, descent=epoch == cfg.epochs)
            curves["held_out_excess"].append(final["excess_mean"])
            curves["held_out_accuracy"].append(final["accuracy"])
        else:
            curves["held_out_excess"].append(float("nan"))
            curves["held_out_accuracy"].append(float("nan"))
        if log:
            print(
                f"  [{loss_name} seed={seed}] epoch {epoch}/{cfg.epochs} train loss {running / count:.4g} "
                f"held-out excess {curves['held_out_excess'][-1]:.3f} acc {curves['held_out_accuracy'][-1]:.3f} "
                f"({time.time() - t0:.0f} s)",
                flush=True,
            )
    result = {
        "loss": loss_name,
        "seed": seed,
        "config": asdict(cfg),
        "curves": curves,
        "final": final,
        "seconds": time.time() - t0,
    }
    if keep_model:
        result["model"] = model
    return result


def plot_curves(results: list[dict], path: str | os.PathLike, title: str) -> None:
    """PNG of runs of :func:`train_spin_model` (dicts with ``label`` and ``curves``). Two panels: training
    progress (each loss rescaled to [0, 1]: (loss - min) / (first - min), since the losses live on different
    scales and signs) and the held-out excess energy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors: dict[str, str] = {}
    for r in results:
        first = r["label"] not in colors
        c = colors.setdefault(r["label"], f"C{len(colors) % 10}")
        ep = r["curves"]["epoch"]
        lab = r["label"] if first else None
        train = r["curves"]["train_loss"]
        lo, hi = min(train), train[0]
        scaled = [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in train]
        axes[0].plot(ep, scaled, color=c, label=lab, alpha=0.8)
        axes[1].plot(ep, r["curves"]["held_out_excess"], color=c, label=lab, alpha=0.8)
    axes[0].set(xlabel="epoch", ylabel="(loss - min) / (first - min)", title="training loss, rescaled per run")
    axes[1].set(xlabel="epoch", ylabel="held-out excess energy", title="E(sign z) - E(ground), held-out mean")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * ((len(labels) - 1) // 4), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
