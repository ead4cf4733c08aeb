"""Regular-shape prediction (paper Sec. 6.1 and App. C.1; SPEC §5).

An MLP (2 hidden layers of width 64, ReLU) maps a radius r ~ U[0.3, 5] to the N vertices (2D) of a
regular N-gon of that radius; each training target is rotated by a random angle in
U[-θ_aug, θ_aug]. Models are trained with MSE, Kabsch-aligned MSE, the pair energy loss (complete
graph, exp springs k = exp(-d/ℓ)) and the rigid-sparse energy (a random 4-regular graph, N > 4),
for each θ_aug, and every predicted test shape is scored with the paper's quality (App. C.1)

    quality = -ln(σ_Δangle / (2π) + σ_radius / r)

(vertex angles around the predicted centroid, sorted; σ_Δangle = standard deviation of the N
consecutive angular gaps, the wrap-around gap included; r = the prescribed radius; population
standard deviations). Above ~5 a shape looks perfect, below ~2 disordered. The radial variation
σ_radius is measured about the prescribed radius r (root-mean-square deviation of the vertices'
distances to the centroid from r), so that the score is that of the task, a regular N-gon *of
radius r*. The paper's text also allows the scale-free reading σ_radius = standard deviation of
those distances about their own mean; the two agree for shapes of the right size and are both
printed. They differ for MSE as θ_aug → π: its optimum, the average of the rotated targets, is
the target polygon scaled by sin(θ_aug)/θ_aug, a regular speck at θ_aug = π, which the
scale-free reading scores as near perfect (docs/shapes.md). The size ratio (mean predicted
radius / r) is printed as well.

All models train at once: the MLPs of every (loss, θ_aug, learning rate, restart) are stacked
into one batched MLP (``torch.baddbmm``), and each loss is evaluated on all its models' shapes in
one call, in the flat layout with a batch vector. Minibatches of 512, Adam, cosine decay to 0;
rotations are drawn afresh each time a sample is used (``--augment fixed``: once per sample).
Per (loss, θ_aug) the model with the best median validation quality among the learning rates
(``--lrs``) and initialisations (``--restarts``) is kept, as the paper keeps the best of a sweep;
test quality is reported on a separate grid of radii.

    python examples/shapes/shapes.py                      # `make shapes`: a few minutes on 2 cores
    python examples/shapes/shapes.py --n-vertices 12 --losses mse energy sparse --lrs 1e-3 3e-3 1e-2

Outputs in ``--out`` (default ``examples/shapes/out``): ``shapes.png`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch
from tqdm import tqdm

from energyloss_plugins import kabsch_mse_loss, mse_loss, pair_energy_loss

LOSS_NAMES = ("mse", "kabsch", "energy", "sparse")
LABELS = {"mse": "MSE", "kabsch": "Kabsch-aligned MSE", "energy": "energy (complete, exp)",
          "sparse": "energy (rigid-sparse, exp)"}


# ----------------------------------------------------------------------------- data and metric


def random_angles(size: int, theta_aug: float, generator: torch.Generator) -> torch.Tensor:
    """``(size,)`` float64 angles from U[-θ_aug, θ_aug]."""
    return (2 * torch.rand(size, generator=generator, dtype=torch.float64) - 1) * theta_aug


def regular_polygons(radius: torch.Tensor, n_vertices: int, phi: torch.Tensor) -> torch.Tensor:
    """``(S, N, 2)`` regular N-gons of the given radii, vertex k at angle φ + 2πk/N."""
    angles = phi.unsqueeze(1) + 2 * math.pi * torch.arange(n_vertices, dtype=torch.float64) / n_vertices
    return (radius.double().unsqueeze(1).unsqueeze(2) * torch.stack([angles.cos(), angles.sin()], -1)).float()


def size_ratio(shapes: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``(...,)`` mean distance of the vertices to their centroid over the true radius (1 = right size)."""
    x = shapes.double()
    return (x - x.mean(-2, keepdim=True)).norm(dim=-1).mean(-1) / radius.double()


RADIAL = ("target", "spread")


def shape_quality(shapes: torch.Tensor, radius: torch.Tensor, radial: str = "target") -> torch.Tensor:
    """``(...,)`` quality -ln(σ_Δangle/(2π) + σ_radius/r) of predicted shapes ``(..., N, 2)``.

    ``radius`` ``(...,)``: the prescribed radii r. σ_radius is the root-mean-square deviation of
    the vertices' distances to the centroid from r (``radial="target"``: a shape of the wrong size,
    e.g. collapsed to a point, scores low), or their standard deviation about their own mean
    (``"spread"``: the scale-free reading, blind to the size).
    """
    if radial not in RADIAL:
        raise ValueError(f"radial must be one of {RADIAL}, got {radial!r}.")
    x = shapes.double()
    rel = x - x.mean(-2, keepdim=True)
    angles = torch.sort(torch.atan2(rel[..., 1], rel[..., 0]), dim=-1).values
    gaps = torch.diff(angles, dim=-1, append=angles[..., :1] + 2 * math.pi)
    sigma_angle = gaps.std(-1, correction=0)
    rho = rel.norm(dim=-1)
    r = radius.double()
    if radial == "target":
        sigma_radius = (rho - r.unsqueeze(-1)).pow(2).mean(-1).sqrt()
    else:
        sigma_radius = rho.std(-1, correction=0)
    return -torch.log(sigma_angle / (2 * math.pi) + sigma_radius / r)


# ----------------------------------------------------------------------------- batched MLPs


class StackedMLP(torch.nn.Module):
    """M independent MLPs 1 → width → width → 2N (ReLU), evaluated together with baddbmm."""

    def __init__(self, n_models: int, n_out: int, width: int = 64, generator: torch.Generator | None = None):
        super().__init__()

        def layer(fan_in, fan_out):  # PyTorch's nn.Linear initialisation, per model
            bound = 1 / math.sqrt(fan_in)
            w = (2 * torch.rand(n_models, fan_in, fan_out, generator=generator) - 1) * bound
            b = (2 * torch.rand(n_models, 1, fan_out, generator=generator) - 1) * bound
            return torch.nn.Parameter(w), torch.nn.Parameter(b)

        self.w1, self.b1 = layer(1, width)
        self.w2, self.b2 = layer(width, width)
        self.w3, self.b3 = layer(width, n_out)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """``r`` ``(M, B, 1)`` or ``(B, 1)`` → ``(M, B, 2N)``."""
        if r.dim() == 2:
            r = r.unsqueeze(0).expand(self.w1.shape[0], -1, -1)
        h = torch.relu(torch.baddbmm(self.b1, r, self.w1))
        h = torch.relu(torch.baddbmm(self.b2, h, self.w2))
        return torch.baddbmm(self.b3, h, self.w3)


class StackedAdam:
    """Adam with one learning rate per stacked model (dimension 0 of every parameter)."""

    def __init__(self, params, lrs: torch.Tensor, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lrs, self.betas, self.eps, self.t = list(params), lrs, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self, scale: float = 1.0) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            lr = (self.lrs * scale / c1).view(-1, *([1] * (p.dim() - 1)))
            p.sub_(lr * m / (v / c2).sqrt_().add_(self.eps))
            p.grad = None


def loss_values(name: str, pred: torch.Tensor, target: torch.Tensor, length_scale: float) -> torch.Tensor:
    """``(M,)`` mean loss of each model; ``pred``/``target`` ``(M, B, N, 2)``, passed to the losses in the
    padded layout ``(M·B, N, 2)`` (every slot an atom)."""
    n_models, b, n, _ = pred.shape
    padded_p, padded_t = pred.reshape(-1, n, 2), target.reshape(-1, n, 2)
    if name == "mse":
        per = mse_loss(padded_p, padded_t, reduction="none")
    elif name == "kabsch":
        per = kabsch_mse_loss(padded_p, padded_t, reduction="none")
    else:
        per = pair_energy_loss(padded_p, padded_t, coefficients="exp", reduction="none",
                               coefficient_kwargs={"length_scale": length_scale},
                               graph="rigid_sparse" if name == "sparse" else "complete")
    return per.view(n_models, b).mean(1)


# ----------------------------------------------------------------------------- experiment


def parse_angle(text: str | float) -> float:
    """Angle in radians from ``0.5``, ``pi``, ``pi/4``, ``3pi/4`` or ``π/2``."""
    if not isinstance(text, str):
        return float(text)
    t = text.replace("π", "pi").replace("*", "").replace(" ", "")
    m = re.fullmatch(r"([0-9.]*)pi(?:/([0-9.]+))?", t)
    if m:
        return float(m.group(1) or 1) * math.pi / float(m.group(2) or 1)
    return float(t)


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    n = args.n_vertices
    thetas = [parse_angle(t) for t in args.thetas]
    # One stacked model per (loss, θ_aug, learning rate, restart); the best by validation quality is kept.
    models = [(name, ti, lr) for name in args.losses for ti in range(len(thetas)) for lr in args.lrs
              for _ in range(args.restarts)]
    n_models = len(models)

    # Training radii are a fixed data set. The rotation is an augmentation: drawn afresh each time
    # a sample is used (--augment online), or once per sample (fixed). Validation and test need radii only.
    r_train = 0.3 + 4.7 * torch.rand(args.n_train, generator=gen)
    phi_fixed = torch.stack([random_angles(args.n_train, th, gen) for th in thetas])  # (T, n_train)
    r_val = 0.3 + 4.7 * torch.rand(args.n_test, generator=gen)
    r_test = torch.linspace(0.3, 5.0, args.n_test)
    theta_index = torch.tensor([ti for _, ti, _ in models])
    groups = {name: torch.tensor([m for m, (nm, _, _) in enumerate(models) if nm == name]) for name in args.losses}

    net = StackedMLP(n_models, 2 * n, args.width, generator=gen)
    opt = StackedAdam(net.parameters(), torch.tensor([lr for _, _, lr in models]))
    steps_per_epoch = max(1, args.n_train // args.batch_size)
    total = args.epochs * steps_per_epoch
    started = time.perf_counter()
    bar = tqdm(range(total), desc=f"training {n_models} models (N={n})", unit="step", mininterval=1.0)
    for step in bar:
        if step % steps_per_epoch == 0:
            perm = torch.randperm(args.n_train, generator=gen)
        idx = perm[(step % steps_per_epoch) * args.batch_size : (step % steps_per_epoch + 1) * args.batch_size]
        pred = net(r_train[idx].unsqueeze(1)).view(n_models, -1, n, 2)
        phi = phi_fixed[:, idx] if args.augment == "fixed" else torch.stack(
            [random_angles(idx.shape[0], th, gen) for th in thetas])
        target = torch.stack([regular_polygons(r_train[idx], n, ph) for ph in phi])[theta_index]  # (M, B, N, 2)
        values = {name: loss_values(name, pred[g], target[g], args.length_scale) for name, g in groups.items()}
        torch.stack([v.sum() for v in values.values()]).sum().backward()
        opt.step(scale=0.5 * (1 + math.cos(math.pi * step / total)) if args.schedule == "cosine" else 1.0)
        if step % 50 == 0:
            bar.set_postfix({name: f"{float(v.detach().mean()):.2e}" for name, v in values.items()})
    train_s = time.perf_counter() - started

    with torch.no_grad():
        q_val = shape_quality(net(r_val.unsqueeze(1)).view(n_models, -1, n, 2), r_val).median(1).values
        pred_test = net(r_test.unsqueeze(1)).view(n_models, -1, n, 2)
        q_test = shape_quality(pred_test, r_test)
        q_spread_test = shape_quality(pred_test, r_test, radial="spread")
        size_test = size_ratio(pred_test, r_test)
    results = {"n_vertices": n, "thetas": thetas, "epochs": args.epochs, "n_train": args.n_train,
               "batch_size": args.batch_size, "length_scale": args.length_scale, "seed": args.seed,
               "lrs": args.lrs, "restarts": args.restarts, "schedule": args.schedule, "augment": args.augment,
               "n_models": n_models, "train_seconds": train_s, "losses": {}}
    chosen = {}
    for name in args.losses:
        rows = []
        for ti, theta in enumerate(thetas):
            cands = [m for m, (nm, t, _) in enumerate(models) if nm == name and t == ti]
            best = max(cands, key=lambda m: float(q_val[m]))
            chosen[(name, ti)] = best
            rows.append({"theta": theta, "lr": models[best][2], "median_quality": float(q_test[best].median()),
                         "q25": float(q_test[best].quantile(0.25)), "q75": float(q_test[best].quantile(0.75)),
                         "val_median_quality": float(q_val[best]), "median_size_ratio": float(size_test[best].median()),
                         "median_quality_spread": float(q_spread_test[best].median())})
        results["losses"][name] = rows
    results["_examples"] = {name: pred_test[chosen[(name, len(thetas) - 1)]].tolist() for name in args.losses}
    results["_r_test"] = r_test.tolist()
    return results


def theta_label(theta: float) -> str:
    for num, den, text in ((0, 1, "0"), (1, 4, "π/4"), (1, 2, "π/2"), (3, 4, "3π/4"), (1, 1, "π")):
        if abs(theta - num * math.pi / den) < 1e-9:
            return text
    return f"{theta:.3g}"


def print_table(results: dict) -> str:
    thetas = results["thetas"]
    header = [
        "| loss | " + " | ".join(f"θ_aug = {theta_label(t)}" for t in thetas) + " |",
        "|---|" + "---|" * len(thetas),
    ]
    lines = []
    for title, key, fmt in (
        ("Median quality -ln(σ_Δangle/2π + σ_radius/r), σ_radius = RMS deviation of the vertex radii from r",
         "median_quality", "{:.2f}"),
        ("Median quality, scale-free reading: σ_radius = std of the vertex radii about their mean (blind to size)",
         "median_quality_spread", "{:.2f}"),
        ("Median size ratio (mean vertex distance to the centroid / true r; 1 = right size)",
         "median_size_ratio", "{:.3f}"),
    ):
        lines += [title, "", *header]
        for name, rows in results["losses"].items():
            lines.append(f"| {LABELS[name]} | " + " | ".join(fmt.format(row[key]) for row in rows) + " |")
        lines.append("")
    lines.append("learning rate kept (best validation quality): " + "; ".join(
        f"{name}: " + ", ".join(f"{row['lr']:g}" for row in rows) for name, rows in results["losses"].items()))
    text = "\n".join(lines)
    print(text)
    return text


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thetas = results["thetas"]
    names = list(results["losses"])
    show = [name for name in ("mse", "energy") if name in names] or names[:2]
    radii = results["_r_test"]
    picks = [int(round(f * (len(radii) - 1))) for f in (0.15, 0.5, 0.98)]
    fig = plt.figure(figsize=(13, 4.8))
    grid = fig.add_gridspec(len(show), 1 + len(picks), width_ratios=[2.4] + [1] * len(picks), wspace=0.3, hspace=0.3)
    ax = fig.add_subplot(grid[:, 0])
    for name in names:
        rows = results["losses"][name]
        q = [row["median_quality"] for row in rows]
        lo = [row["median_quality"] - row["q25"] for row in rows]
        hi = [row["q75"] - row["median_quality"] for row in rows]
        line = ax.errorbar(thetas, q, yerr=[lo, hi], marker="o", capsize=3, label=LABELS[name])
        ax.plot(thetas, [row["median_quality_spread"] for row in rows], "--", marker="x",
                color=line[0].get_color(), alpha=0.6)
    ax.plot([], [], "k--", marker="x", alpha=0.6, label="(dashed: scale-free reading)")
    bottom, top = ax.get_ylim()
    ax.axhspan(bottom, 2, color="0.9", zorder=0)
    ax.set_ylim(bottom, top)
    ax.set_xticks(thetas, [theta_label(t) for t in thetas])
    ax.set(xlabel="augmentation angle θ_aug", ylabel="median shape quality (test; bars: quartiles)",
           title=f"Regular {results['n_vertices']}-gons from the radius")
    ax.legend(fontsize=8, loc="lower left")
    for row_i, name in enumerate(show):
        shapes = torch.tensor(results["_examples"][name])
        for col, k in enumerate(picks):
            sub = fig.add_subplot(grid[row_i, 1 + col])
            pts = shapes[k]
            c = pts.mean(0)
            order = torch.argsort(torch.atan2(pts[:, 1] - c[1], pts[:, 0] - c[0]))
            closed = torch.cat([pts[order], pts[order][:1]]).numpy()
            r = radii[k]
            t = torch.linspace(0, 2 * math.pi, 100)
            cx, cy = float(c[0]), float(c[1])
            sub.plot((cx + r * t.cos()).numpy(), (cy + r * t.sin()).numpy(), ":", color="0.6", lw=0.8)
            sub.plot(closed[:, 0], closed[:, 1], "-", color="C0" if name == "mse" else "C2", lw=1)
            sub.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=10, c=range(len(pts)), cmap="viridis", zorder=3)
            q = float(shape_quality(pts.unsqueeze(0), torch.tensor([r]))[0])
            size = float(size_ratio(pts.unsqueeze(0), torch.tensor([r]))[0])
            sub.set_title(f"{LABELS[name].split(' (')[0]}, r={r:.1f}: q={q:.1f}, size {size:.3g}", fontsize=8)
            lim = 1.25 * r
            sub.set(xlim=(cx - lim, cx + lim), ylim=(cy - lim, cy + lim), aspect="equal", xticks=[], yticks=[])
    fig.suptitle(f"θ_aug = {theta_label(thetas[-1])} test predictions (dotted: true radius around the predicted "
                 "centroid; colour: vertex index; size: mean radius / r)",
                 x=0.68, y=0.99, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-vertices", type=int, default=8, help="N (rigid-sparse differs from complete for N > 4)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--n-train", type=int, default=4096)
    p.add_argument("--n-test", type=int, default=1000, help="test radii (a grid) and validation radii (random)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--thetas", nargs="+", default=["0", "pi/4", "pi/2", "pi"], help="θ_aug values, e.g. 0 pi/4 pi")
    p.add_argument("--losses", nargs="+", default=list(LOSS_NAMES), choices=LOSS_NAMES)
    p.add_argument("--lrs", type=float, nargs="+", default=[3e-3], help="learning rates tried for every loss")
    p.add_argument("--restarts", type=int, default=2, help="initialisations per (loss, θ_aug, lr); best by validation")
    p.add_argument("--length-scale", type=float, default=2.0,
                   help="ℓ of the exp springs k = exp(-d/ℓ) (shapes span 0.6-10)")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine", help="learning-rate schedule")
    p.add_argument("--augment", choices=("online", "fixed"), default="online",
                   help="rotation drawn each time a sample is used, or once per sample")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (small tensors: 1 is fastest)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    print(f"\nMedian test quality, N = {args.n_vertices}, {args.epochs} epochs × {args.n_train} samples "
          f"(training {results['train_seconds']:.0f} s)")
    results["table"] = print_table(results)
    plot(results, args.out / "shapes.png")
    saved = {k: v for k, v in results.items() if not k.startswith("_")}
    (args.out / "results.json").write_text(json.dumps(saved, indent=1))
    print(f"\nwrote {args.out / 'shapes.png'} and {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
