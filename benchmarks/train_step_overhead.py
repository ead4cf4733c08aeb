"""What the pair energy loss adds to a PaiNN training step, against MSE (docs/benchmarks.md).

    python benchmarks/train_step_overhead.py                 # CPU, 1 thread: ~2-4 minutes
    python benchmarks/train_step_overhead.py --device cuda   # GPU
    python benchmarks/train_step_overhead.py --variants mse adapter-mse adapter-energy --rounds 6 --batches 2
        # the adapter's step only (springs from PairSpringsTransform), 16 and 128 molecules: a few minutes

One process, one run: a SchNetPack PaiNN (128 features, 3 interactions, cutoff 5 Å, 20 Gaussians)
with the package's equivariant position head, on QM9-size batches of 16 and of 128 random
molecules (10-29 atoms, H/C/N/O/F, atoms uniform in a ball at molecular density 0.1 Å^-3; the
target is the input geometry + 0.2 Å noise). SchNetPack's neighbour lists (MatScipyNeighborList)
are computed once, before timing, as a data loader does. A step is forward + loss + backward +
Adam step; each loss variant trains its own copy of the same initial model.

Loss variants (all exp springs, complete graph, energy per atom, mean over structures):

- ``mse``: :func:`energyloss_plugins.mse_loss` as users call it (validated);
- ``mse-lean``: the same with ``n_structures`` and ``validate_args=False`` (no host synchronisation);
- ``energy``: :func:`energyloss_plugins.pair_energy_loss` as users call it: the pairs and springs
  are resolved inside every call, with the input checks (``validate_args=True``);
- ``energy-resolve``: the lean path with springs resolved per batch inside the step
  (``resolve_springs(..., validate_args=False)`` then ``pair_energy_kernel(..., validate_args=False)``);
- ``energy-cached``: the lean path with springs resolved once per molecule and collated with the
  batch, outside the step, like the neighbour list (the collation time is reported beside);
- ``adapter-mse`` / ``adapter-energy``: what the SchNetPack adapter's step runs: the
  ``schnetpack_ext.EnergyLoss`` of a ``StructureOutput`` with the number of structures and
  ``validate_args=False``; for the energy, the springs of ``schnetpack_ext.PairSpringsTransform``
  (per molecule, concatenated as SchNetPack's collate does) offset in the step by
  ``schnetpack_ext.transforms.batch_springs``. ``adapter-energy`` against ``adapter-mse`` is the
  overhead a user of the shipped experiments sees. The transform's own time (per batch, the
  loader's work outside the step) is reported beside the collation.

``--variants`` times a subset (``mse`` always runs: the ratios are taken against it), so that
128-molecule batches (seconds per CPU step) fit a few minutes.

Timing: rounds of blocks; in each round every variant runs ``--steps`` consecutive steps (its
steady state; scaled by 16 / molecules per batch, at least 1, so that blocks take similar times),
the variants in a rotating order, so that a slow spell of the shared machine hits
all of them. Per round the ratio of each variant's block time to MSE's is taken; the median and
the range over rounds are reported. CPU: process CPU time with ``--threads`` intra-op threads
(the waits for a shared core do not count; wall time printed beside). CUDA: wall time between
synchronisations at the block ends.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import numpy as np
import torch

VARIANTS = ("mse", "mse-lean", "energy", "energy-resolve", "energy-cached", "adapter-mse", "adapter-energy")
DENSITY = 0.1  # atoms per Å^3
ELEMENTS = (1, 6, 7, 8, 9)
ELEMENT_P = (0.5, 0.35, 0.06, 0.08, 0.01)  # QM9-like mix


def molecules(n: int, seed: int):
    """``n`` random QM9-size molecules as ASE Atoms (positions) plus their targets (Å)."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        size = int(rng.integers(10, 30))
        radius = (3 * size / (4 * math.pi * DENSITY)) ** (1 / 3)
        u = rng.standard_normal((size, 3))
        pos = u / np.linalg.norm(u, axis=1, keepdims=True) * radius * rng.random((size, 1)) ** (1 / 3)
        target = pos + 0.2 * rng.standard_normal(pos.shape)
        out.append((Atoms(numbers=rng.choice(ELEMENTS, size, p=ELEMENT_P), positions=pos), target))
    return out


def build_batches(n_molecules: int, n_batches: int, device: str, seed: int) -> list[dict]:
    """SchNetPack input dicts with precomputed neighbour lists, targets and per-molecule springs."""
    from schnetpack.interfaces import AtomsConverter
    from schnetpack.transform import MatScipyNeighborList

    from energyloss_plugins import PairSprings, resolve_springs

    converter = AtomsConverter(neighbor_list=MatScipyNeighborList(cutoff=5.0), device=device, dtype=torch.float32)
    warm = molecules(1, seed - 1)  # the transform's first call pays one-off set-up, not per-molecule work
    _pipeline_springs(warm, [torch.as_tensor(t, dtype=torch.float32) for _, t in warm], device)
    batches = []
    for b in range(n_batches):
        mols = molecules(n_molecules, seed + b)
        inputs = converter([atoms for atoms, _ in mols])
        targets = [torch.as_tensor(t, dtype=torch.float32) for _, t in mols]
        cached = [resolve_springs(t) for t in targets]  # once per molecule, e.g. in the dataset
        start = time.perf_counter()
        springs = PairSprings.collate(cached).to(device)
        collate_s = time.perf_counter() - start
        start = time.perf_counter()
        inputs.update(_pipeline_springs(mols, targets, device))
        transform_s = time.perf_counter() - start
        batches.append({"inputs": inputs, "target": torch.cat(targets).to(device), "springs": springs,
                        "n_structures": n_molecules, "collate_s": collate_s, "transform_s": transform_s})
    return batches


def _pipeline_springs(mols, targets, device: str) -> dict:
    """The keys ``schnetpack_ext.PairSpringsTransform`` adds per molecule, concatenated as SchNetPack's collate does."""
    from schnetpack_ext import PairSpringsTransform
    from schnetpack_ext.transforms import SPRING_COUNT, SPRING_DISTANCE, SPRING_I, SPRING_J, SPRING_K

    transform = PairSpringsTransform(reference="target")
    samples = [transform({"_atomic_numbers": torch.as_tensor(atoms.numbers), "_idx": torch.tensor([i]),
                          "target": target}) for i, ((atoms, _), target) in enumerate(zip(mols, targets, strict=True))]
    return {key: torch.cat([s[key] for s in samples]).to(device)
            for key in (SPRING_I, SPRING_J, SPRING_DISTANCE, SPRING_K, SPRING_COUNT)}


def painn_model(seed: int):
    import schnetpack as spk

    from schnetpack_ext import PositionHead

    torch.manual_seed(seed)
    painn = spk.representation.PaiNN(n_atom_basis=128, n_interactions=3,
                                     radial_basis=spk.nn.GaussianRBF(n_rbf=20, cutoff=5.0),
                                     cutoff_fn=spk.nn.CosineCutoff(5.0))
    return spk.model.NeuralNetworkPotential(representation=painn, input_modules=[spk.atomistic.PairwiseDistances()],
                                            output_modules=[PositionHead(n_in=128, output_key="positions_pred")])


def loss_fn(variant: str):
    from energyloss_plugins import mse_loss, pair_energy_kernel, pair_energy_loss, resolve_springs

    if variant == "mse":
        return lambda pred, data, idx_m: mse_loss(pred, data["target"], idx_m)
    if variant == "mse-lean":
        return lambda pred, data, idx_m: mse_loss(pred, data["target"], idx_m, n_structures=data["n_structures"],
                                                  validate_args=False)
    if variant == "energy":
        return lambda pred, data, idx_m: pair_energy_loss(pred, data["target"], idx_m)
    if variant == "energy-resolve":
        def resolve_then_kernel(pred, data, idx_m):
            s = resolve_springs(data["target"], idx_m, n_structures=data["n_structures"], validate_args=False)
            return pair_energy_kernel(pred, s.distances, s.pairs, s.springs, s.batch, s.n_structures,
                                      validate_args=False)
        return resolve_then_kernel
    if variant == "energy-cached":
        return lambda pred, data, idx_m: data["springs"].loss(pred, validate_args=False)
    if variant.startswith("adapter-"):
        from schnetpack_ext import EnergyLoss, LossContext
        from schnetpack_ext.transforms import batch_springs

        loss = EnergyLoss(loss=variant.removeprefix("adapter-"))

        def adapter_step(pred, data, idx_m):  # as StructureOutput.calculate_loss in a step
            inputs = data["inputs"]
            context = LossContext(idx_m, len(inputs["_n_atoms"]), inputs["_atomic_numbers"], batch_springs(inputs),
                                  validate_args=False)
            return loss(pred, data["target"], context)
        return adapter_step
    raise ValueError(variant)


def make_step(model, optimizer, loss):
    def step(data: dict) -> None:
        # SchNetPack's model writes into its input dict: a shallow copy per step (as the loader yields new dicts).
        inputs = dict(data["inputs"])
        out = model(inputs)
        value = loss(out["positions_pred"], data, inputs["_idx_m"])
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
    return step


def measure(n_molecules: int, args) -> dict:
    batches = build_batches(n_molecules, args.batches, args.device, seed=1000 * n_molecules)
    base = painn_model(0).to(args.device)
    variants = tuple(getattr(args, "variants", VARIANTS))  # device_suite passes no subset
    steps = {}
    for variant in variants:
        model = copy.deepcopy(base)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        steps[variant] = make_step(model, optimizer, loss_fn(variant))
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for variant in variants:  # warm-up: allocator pools, lazy caches, Adam state
        for data in batches:
            steps[variant](data)
    sync()
    times = {v: [] for v in variants}
    walls = {v: [] for v in variants}
    k = 0
    n_steps = max(1, round(args.steps * 16 / n_molecules))
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[: r % len(variants)]
        for variant in order:
            sync()
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(n_steps):
                steps[variant](batches[k % len(batches)])
                k += 1
            sync()
            c1, w1 = time.process_time(), time.perf_counter()
            times[variant].append((w1 - w0) if cuda else (c1 - c0))
            walls[variant].append(w1 - w0)
    loss_times = _loss_only(batches, steps, base, args, sync)
    n_atoms = [int(b["inputs"]["_n_atoms"].sum()) for b in batches]
    n_pairs = [int(b["inputs"]["_idx_i"].shape[0]) for b in batches]
    return {"n_molecules": n_molecules, "times": times, "walls": walls, "loss_times": loss_times,
            "atoms": statistics.mean(n_atoms), "nbh_pairs": statistics.mean(n_pairs),
            "loss_pairs": statistics.mean(int(b["springs"].pairs.shape[1]) for b in batches),
            "collate_ms": 1e3 * statistics.median(b["collate_s"] for b in batches),
            "transform_ms": 1e3 * statistics.median(b["transform_s"] for b in batches), "steps": n_steps}


def _loss_only(batches: list[dict], steps: dict, model, args, sync) -> dict:
    """Seconds per forward + backward of each loss alone, on the network's predictions (interleaved).

    The step-time ratios above carry the machine's noise; the loss's own cost, timed alone over
    many calls, bounds the overhead more tightly: the rest of the step is the same for every loss.
    """
    cuda = args.device.startswith("cuda")
    preds = []
    with torch.no_grad():
        for data in batches:
            preds.append(model(dict(data["inputs"]))["positions_pred"].detach())
    variants = tuple(getattr(args, "variants", VARIANTS))  # device_suite passes no subset
    fns = {v: loss_fn(v) for v in variants}
    out = {v: [] for v in variants}
    reps = 20
    for r in range(args.rounds):
        for variant in variants[r % len(variants):] + variants[: r % len(variants)]:
            data, pred = batches[r % len(batches)], preds[r % len(batches)]
            sync()
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(reps):
                p = pred.clone().requires_grad_()
                fns[variant](p, data, data["inputs"]["_idx_m"]).backward()
            sync()
            out[variant].append(((time.perf_counter() - w0) if cuda else (time.process_time() - c0)) / reps)
    return out


def report(results: list[dict], args) -> None:
    clock = "wall" if args.device.startswith("cuda") else "CPU"
    print(f"\n| batch | atoms | PaiNN neighbour pairs | loss pairs | loss | {clock} ms / step (median) "
          f"| wall ms / step | step time / MSE's: median [min, max] over {args.rounds} rounds |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        t, w = res["times"], res["walls"]
        for variant in args.variants:
            ratios = [a / b for a, b in zip(t[variant], t["mse"], strict=True)]
            per_step = 1e3 * statistics.median(t[variant]) / res["steps"]
            wall = 1e3 * statistics.median(w[variant]) / res["steps"]
            ratio = "1" if variant == "mse" else (f"{statistics.median(ratios):.4f} "
                                                   f"[{min(ratios):.4f}, {max(ratios):.4f}]")
            print(f"| {res['n_molecules']} molecules | {res['atoms']:.0f} | {res['nbh_pairs']:.0f} | "
                  f"{res['loss_pairs']:.0f} | {variant} | {per_step:.2f} | {wall:.2f} | {ratio} |")
    print("\nThe loss alone (forward + backward on the network's predictions, median over rounds of 20 calls), and "
          "what it adds to a step over MSE, as a share of MSE's step time:")
    print("\n| batch | loss | ms per loss call | (loss - MSE's) / MSE step |")
    print("|---|---|---|---|")
    for res in results:
        lt, t = res["loss_times"], res["times"]
        step = statistics.median(t["mse"]) / res["steps"]
        for variant in args.variants:
            extra = statistics.median(lt[variant]) - statistics.median(lt["mse"])
            print(f"| {res['n_molecules']} molecules | {variant} | {1e3 * statistics.median(lt[variant]):.3f} | "
                  f"{100 * extra / step:+.3f} % |")
    print("\ncollation of per-molecule springs (outside the step, with the batch): "
          + ", ".join(f"{r['n_molecules']} molecules {r['collate_ms']:.2f} ms" for r in results))
    print("PairSpringsTransform on every molecule of a batch (the loader's work, outside the step): "
          + ", ".join(f"{r['n_molecules']} molecules {r['transform_ms']:.1f} ms" for r in results))
    print("\nTarget: a step with the energy loss costs at most 2 % more than with MSE "
          "(median step ratio <= 1.02, and the loss's own extra cost < 2 % of the step); adapter-energy against "
          "adapter-mse")
    for res in results:
        t, lt = res["times"], res["loss_times"]
        for variant in args.variants[1:]:
            base = "adapter-mse" if variant == "adapter-energy" and "adapter-mse" in t else "mse"
            step = statistics.median(t[base]) / res["steps"]
            med = statistics.median(a / b for a, b in zip(t[variant], t[base], strict=True))
            extra = (statistics.median(lt[variant]) - statistics.median(lt[base])) / step
            met = med <= 1.02 and extra < 0.02
            print(f"[{'MET' if met else 'NOT MET'}] {res['n_molecules']} molecules, {variant} vs {base}: step ratio "
                  f"{100 * (med - 1):+.2f} %, loss's own extra cost {100 * extra:+.3f} % of the step")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (CPU)")
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 128], help="molecules per batch")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=8, help="consecutive steps per variant and round (at 16 molecules)")
    p.add_argument("--batches", type=int, default=4, help="distinct batches per size, cycled")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="loss variants to time (mse always runs: the ratios are taken against it)")
    args = p.parse_args(argv)
    args.variants = tuple(["mse"] + [v for v in VARIANTS if v in args.variants and v != "mse"])
    torch.set_num_threads(args.threads)
    import schnetpack

    cuda = args.device.startswith("cuda")
    dev = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"# train_step_overhead.py: {dev}, torch {torch.__version__}, schnetpack {schnetpack.__version__}; "
          f"PaiNN 128 features x 3 interactions, cutoff 5 Å; {args.rounds} rounds of blocks of "
          f"{args.steps} x 16 / molecules steps per variant; variants {', '.join(args.variants)}")
    start = time.perf_counter()
    results = [measure(n, args) for n in args.sizes]
    report(results, args)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
