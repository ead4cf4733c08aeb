"""Catalogue of bad and edge inputs across the public surfaces, each classified by what happens.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bad_inputs.py [--verbose] [--only SURFACE]

Every case states its expected outcome:

- ``Error(names)``: the right answer is an exception (``ValueError``/``TypeError``/``FileNotFoundError``,
  ``NotImplementedError`` for a second derivative the loss does not have) whose message names every
  string in ``names`` (the argument the user passed).
- ``Result(check)``: the right answer is a value; ``check(value)`` compares it with an independent
  computation (a brute-force formula, ASE's minimum image, a second route through the API).
- ``Either(names, check)``: both are acceptable (e.g. directed edge lists: reduce or refuse).
- ``Kept(names)``: a console script; the user's files must be unchanged, and a refusal must be one
  line on stderr (``energyloss-...: ...``, no traceback) naming ``names`` (e.g. ``--overwrite``) with a
  non-zero exit status.

Outcomes: **clear error** (expected error, message names the argument), **correct result**,
**unclear error** (another exception, a message not naming the argument, or an error where a result
is right), **silent wrong result** (a value where an error is right, or a value failing its check),
**crash** (out of memory, recursion, allocation failure: the address space is capped at 6 GiB so a
runaway allocation fails here instead of being killed), **data lost** (a user's file changed).
Cases marked ``[KERNEL...]`` need a change in losses.py/modules.py/layouts.py (another branch's files).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import resource
import sqlite3
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

OUTCOMES = ("clear error", "correct result", "unclear error", "silent wrong result", "crash", "data lost")
ERRORS = (ValueError, TypeError, FileNotFoundError, NotImplementedError)


@dataclass
class Error:
    names: tuple[str, ...]


@dataclass
class Result:
    check: Callable[[Any], bool]


@dataclass
class Either:
    names: tuple[str, ...]
    check: Callable[[Any], bool]


@dataclass
class Kept:
    """``run`` returns ``(exit_code, stderr, files_unchanged)``."""

    names: tuple[str, ...] = ()
    must_fail: bool = True


@dataclass
class Case:
    surface: str
    name: str
    run: Callable[[], Any]
    expect: Error | Result | Either | Kept
    owner: str = ""
    outcome: str = ""
    detail: str = ""


CASES: list[Case] = []
#: Cases whose fix is a line at the entry of losses.py/modules.py (files owned by the KERNEL branch):
#: they use the helpers of this branch (_checks.check_tensor, _checks.as_pair_index).
LOSSES_PY = "KERNEL: entry check in losses.py/modules.py"


def case(surface: str, name: str, expect, owner: str = ""):
    def deco(fn):
        CASES.append(Case(surface, name, fn, expect, owner))
        return fn

    return deco


def add(surface: str, name: str, run: Callable[[], Any], expect, owner: str = "") -> None:
    CASES.append(Case(surface, name, run, expect, owner))


def err(*names: str) -> Error:
    return Error(tuple(names))


# ----------------------------------------------------------------------------------------- fixtures

G = torch.Generator().manual_seed(0)
N = 6
T = torch.randn(N, 3, generator=G, dtype=torch.float64) * 1.5
P = T + 0.1 * torch.randn(N, 3, generator=G, dtype=torch.float64)
Z = torch.tensor([6, 6, 8, 1, 1, 1])
BONDS = torch.tensor([[0, 0, 1, 1, 2], [1, 3, 2, 4, 5]])


def close(a, b, rtol=1e-8, atol=1e-10) -> bool:
    return bool(torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               rtol=rtol, atol=atol))


def brute_energy(pred, target, pairs, k, n_atoms) -> float:
    """Σ ½ k (|ŷ_i − ŷ_j| − |y_i − y_j|)² / n over explicit pairs (independent of the library)."""
    e = 0.0
    for (i, j), kk in zip(np.asarray(pairs).T.tolist(), np.asarray(k).tolist(), strict=True):
        e += 0.5 * kk * (float((pred[i] - pred[j]).norm()) - float((target[i] - target[j]).norm())) ** 2
    return e / n_atoms


ALL_PAIRS = np.array(np.triu_indices(N, 1))
D_REF = np.linalg.norm(T.numpy()[ALL_PAIRS[1]] - T.numpy()[ALL_PAIRS[0]], axis=1)


def pel(*args, **kw):
    from energyloss_plugins import pair_energy_loss

    return lambda: pair_energy_loss(*args, **kw)


# -------------------------------------------------------------------------------------- core losses


def _core_cases() -> None:
    from energyloss_plugins import kabsch_mse_loss, mae_loss, mse_loss, pair_energy_loss
    from energyloss_plugins.alignment import random_rotations

    s = "losses"
    add(s, "pred as numpy array", pel(P.numpy(), T), err("pred"), owner=LOSSES_PY)
    add(s, "target as numpy array", pel(P, T.numpy()), err("target"))
    add(s, "pred as nested list", pel(P.tolist(), T), err("pred"), owner=LOSSES_PY)
    bad = P.clone()
    bad[2, 1] = math.nan
    add(s, "NaN in pred", pel(bad, T), err("pred"))
    bad_t = T.clone()
    bad_t[0, 0] = math.inf
    add(s, "Inf in target", pel(P, bad_t), err("target"))
    add(s, "pred/target shape mismatch", pel(P, T[:5]), err("pred", "target"))
    add(s, "integer positions", pel(P.long(), T.long()), err("pred"))
    add(s, "1-D positions", pel(P.reshape(-1), T.reshape(-1)), err("pred"))
    add(s, "4-D coordinates", pel(torch.randn(6, 4), torch.randn(6, 4)), err("pred"))
    add(s, "float batch", pel(P, T, torch.zeros(N)), err("batch"))
    add(s, "batch of wrong length", pel(P, T, torch.zeros(N - 1, dtype=torch.long)), err("batch"))
    add(s, "negative batch ids", pel(P, T, torch.tensor([-1, -1, -1, 0, 0, 0])), err("batch"))
    add(s, "2-D batch", pel(P, T, torch.zeros(1, N, dtype=torch.long)), err("batch"))
    add(s, "mask with flat layout", pel(P, T, mask=torch.ones(N, dtype=torch.bool)), err("mask"))
    add(s, "mask of wrong shape", pel(P[None], T[None], mask=torch.ones(1, 5, dtype=torch.bool)), err("mask"))
    add(s, "batch with padded layout", pel(P[None], T[None], torch.zeros(N, dtype=torch.long)), err("batch"))
    add(s, "unknown reduction", pel(P, T, reduction="avg"), err("reduction", "mean"))
    add(s, "unknown scheme name", pel(P, T, coefficients="expo"), err("coefficient", "expo", "exp"))
    add(s, "per-pair springs as Python list", pel(P, T, coefficients=[1.0] * 15, edge_index=torch.tensor(ALL_PAIRS)),
        Either(("coefficients",), lambda v: close(v, brute_energy(P, T, ALL_PAIRS, np.ones(15), N))))
    add(s, "per-pair springs as numpy array", pel(P, T, coefficients=np.ones(15), edge_index=torch.tensor(ALL_PAIRS)),
        Either(("coefficients",), lambda v: close(v, brute_energy(P, T, ALL_PAIRS, np.ones(15), N))))
    add(s, "springs tensor without edge_index", pel(P, T, coefficients=torch.ones(15)), err("edge_index"))
    add(s, "springs tensor of wrong length",
        pel(P, T, coefficients=torch.ones(14), edge_index=torch.tensor(ALL_PAIRS)), err("coefficients"))
    add(s, "negative per-pair springs",
        pel(P, T, coefficients=-torch.ones(15), edge_index=torch.tensor(ALL_PAIRS)), err("coefficients"))
    add(s, "NaN per-pair springs",
        pel(P, T, coefficients=torch.full((15,), math.nan), edge_index=torch.tensor(ALL_PAIRS)), err("coefficients"))
    for scheme, key in [("exp", "k0"), ("exp", "length_scale"), ("constant", "k0"), ("inverse", "k0"),
                        ("inverse_square", "k0")]:
        for value in (0.0, -1.0, math.nan, math.inf):
            add(s, f"{scheme} {key}={value}", pel(P, T, coefficients=scheme, coefficient_kwargs={key: value}), err(key))
    for scheme, kwargs, key in [("morse", {"D": -1.0}, "D"), ("morse", {"a": 0.0}, "a"), ("morse", {"r0": -1.0}, "r0"),
                                ("morse", {"k_min": -1.0}, "k_min"), ("lennard_jones", {"epsilon": -1.0}, "epsilon"),
                                ("lennard_jones", {"r_min": 0.0}, "r_min"),
                                ("lennard_jones", {"k_min": math.nan}, "k_min")]:
        add(s, f"{scheme} {kwargs}", pel(P, T, coefficients=scheme, coefficient_kwargs=kwargs, numbers=Z), err(key))
    add(s, "bond_aware k_bond=-1",
        pel(P, T, coefficients="bond_aware", coefficient_kwargs={"k_bond": -1.0}, bonds=BONDS), err("k_bond"))
    add(s, "morse element-pair D<0",
        pel(P, T, coefficients="morse", coefficient_kwargs={"params": {(6, 1): {"D": -2.0}}}, numbers=Z), err("D"))
    add(s, "misspelt scheme parameter", pel(P, T, coefficient_kwargs={"lengthscale": 2.0}),
        err("lengthscale", "length_scale"))
    add(s, "coefficient_kwargs as string", pel(P, T, coefficient_kwargs="k0=2"), err("coefficient_kwargs"))
    add(s, "scheme 'hessian' without stored springs", pel(P, T, coefficients="hessian"), err("hessian"))
    add(s, "morse without numbers", pel(P, T, coefficients="morse"), err("numbers"))
    add(s, "bond_aware without bonds", pel(P, T, coefficients="bond_aware"), err("bonds"))
    add(s, "numbers of wrong length", pel(P, T, coefficients="morse", numbers=Z[:5]), err("numbers"))
    add(s, "unknown graph", pel(P, T, graph="full"), err("graph", "complete"))
    add(s, "radius without cutoff", pel(P, T, graph="radius"), err("cutoff"))
    for value in (0.0, -1.0, math.nan):
        add(s, f"radius cutoff={value}", pel(P, T, graph="radius", graph_kwargs={"cutoff": value}), err("cutoff"))
    add(s, "radius cutoff=inf equals complete", pel(P, T, graph="radius", graph_kwargs={"cutoff": math.inf}),
        Result(lambda v: close(v, pair_energy_loss(P, T))))
    add(s, "misspelt graph_kwargs", pel(P, T, graph="radius", graph_kwargs={"cutof": 2.0}), err("cutof"))
    add(s, "rigid_sparse pool_size=0", pel(P, T, graph="rigid_sparse", graph_kwargs={"pool_size": 0}), err("pool_size"))
    add(s, "graph=bonds with (M, 2) bonds", pel(P, T, graph="bonds", bonds=BONDS.T),
        Either(("bonds",), lambda v: close(v, pair_energy_loss(P, T, graph="bonds", bonds=BONDS))), owner=LOSSES_PY)
    add(s, "graph=bonds with out-of-range bonds", pel(P, T, graph="bonds", bonds=torch.tensor([[0], [9]])),
        err("bonds"))
    add(s, "graph=bonds without bonds", pel(P, T, graph="bonds"), err("bonds"))
    add(s, "bond_aware with (M, 2) bonds", pel(P, T, coefficients="bond_aware", bonds=BONDS.T),
        Either(("bonds",), lambda v: close(v, pair_energy_loss(P, T, coefficients="bond_aware", bonds=BONDS))),
        owner=LOSSES_PY)
    add(s, "edge_index out of range", pel(P, T, edge_index=torch.tensor([[0], [6]])), err("edge_index"))
    add(s, "edge_index self-pair", pel(P, T, edge_index=torch.tensor([[1], [1]])), err("edge_index"))
    add(s, "float edge_index", pel(P, T, edge_index=torch.tensor([[0.0], [1.0]])), err("edge_index"))
    add(s, "edge_index as (E, 2)", pel(P, T, edge_index=torch.tensor(ALL_PAIRS).T, coefficients="constant"),
        Either(("edge_index",), lambda v: close(v, brute_energy(P, T, ALL_PAIRS, np.ones(15), N))))
    both = torch.tensor(np.concatenate([ALL_PAIRS, ALL_PAIRS[::-1]], axis=1))
    add(s, "edge_index with (i, j) and (j, i)", pel(P, T, edge_index=both, coefficients="constant"),
        Either(("edge_index",), lambda v: close(v, brute_energy(P, T, ALL_PAIRS, np.ones(15), N))), owner="KERNEL")
    twice = torch.tensor(np.concatenate([ALL_PAIRS, ALL_PAIRS[:, :3]], axis=1))
    add(s, "edge_index with a pair twice", pel(P, T, edge_index=twice, coefficients="constant"),
        Either(("edge_index",), lambda v: close(v, brute_energy(P, T, ALL_PAIRS, np.ones(15), N))), owner="KERNEL")
    b2 = torch.tensor([0, 0, 0, 1, 1, 1])
    add(s, "edge_index across structures", pel(P, T, b2, edge_index=torch.tensor([[0], [4]])), err("edge_index"))
    gap = torch.tensor([0, 0, 0, 3, 3, 3])
    add(s, "batch with gaps (energy)", pel(P, T, gap),
        Either(("batch",), lambda v: close(v, pair_energy_loss(P, T, b2))), owner="KERNEL")
    add(s, "batch with gaps (mse)", lambda: mse_loss(P, T, gap),
        Either(("batch",), lambda v: close(v, mse_loss(P, T, b2))), owner="KERNEL")
    add(s, "batch with gaps (kabsch)", lambda: kabsch_mse_loss(P, T, gap),
        Either(("batch",), lambda v: close(v, kabsch_mse_loss(P, T, b2))), owner="KERNEL")
    huge = torch.tensor([0, 0, 0, 10**9, 10**9, 10**9])
    add(s, "huge structure id (energy)", pel(P, T, huge),
        Either(("batch",), lambda v: close(v, pair_energy_loss(P, T, b2))), owner="KERNEL")
    add(s, "huge structure id (mse)", lambda: mse_loss(P, T, huge),
        Either(("batch",), lambda v: close(v, mse_loss(P, T, b2))), owner="KERNEL")
    add(s, "mse numpy pred", lambda: mse_loss(P.numpy(), T), err("pred"), owner=LOSSES_PY)
    add(s, "mae shape mismatch", lambda: mae_loss(P, T[:4]), err("pred", "target"))
    add(s, "mse NaN pred", lambda: mse_loss(bad, T), err("pred"))
    # correct results against independent formulas
    add(s, "pred == target gives 0", pel(T, T), Result(lambda v: float(v) == 0.0))
    R = random_rotations(1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[0]
    add(s, "rigid motion gives 0", pel(T @ R.T + 3.0, T), Result(lambda v: abs(float(v)) < 1e-20))
    k_exp = np.exp(-D_REF)
    add(s, "exp energy = brute-force formula", pel(P, T),
        Result(lambda v: close(v, brute_energy(P, T, ALL_PAIRS, k_exp, N))))
    add(s, "constant k0=3 = brute-force", pel(P, T, coefficients="constant", coefficient_kwargs={"k0": 3.0}),
        Result(lambda v: close(v, brute_energy(P, T, ALL_PAIRS, 3 * np.ones(15), N))))
    add(s, "inverse_square = brute-force", pel(P, T, coefficients="inverse_square"),
        Result(lambda v: close(v, brute_energy(P, T, ALL_PAIRS, 1 / D_REF**2, N))))
    add(s, "padded equals flat", pel(P[None], T[None]), Result(lambda v: close(v, pair_energy_loss(P, T))))
    add(s, "empty edge_index gives 0", pel(P, T, edge_index=torch.zeros(2, 0, dtype=torch.long)),
        Result(lambda v: float(v) == 0.0))
    add(s, "normalize=False is n times larger", pel(P, T, normalize=False),
        Result(lambda v: close(v, N * pair_energy_loss(P, T))))
    add(s, "reduction=none per structure", pel(P, T, b2, reduction="none"),
        Result(lambda v: v.shape == (2,) and close(v[0], pair_energy_loss(P[:3], T[:3]))))
    add(s, "single-atom structure gives 0", pel(P[:1], T[:1]), Result(lambda v: float(v) == 0.0))
    add(s, "float32 close to float64", pel(P.float(), T.float()),
        Result(lambda v: close(v, pair_energy_loss(P, T), rtol=1e-4, atol=1e-7)))
    add(s, "2-D positions = brute-force", pel(P[:, :2], T[:, :2], coefficients="constant"),
        Result(lambda v: close(v, brute_energy(P[:, :2], T[:, :2], ALL_PAIRS, np.ones(15), N))))
    add(s, "kabsch loss of a rotation is 0", lambda: kabsch_mse_loss(T @ R.T, T), Result(lambda v: float(v) < 1e-20))


def _module_cases() -> None:
    from energyloss_plugins import PairEnergyLoss, make_loss
    from energyloss_plugins.coefficients import resolve_coefficients
    from energyloss_plugins.losses import get_loss
    from energyloss_plugins.modules import MSELoss

    s = "modules"
    add(s, "PairEnergyLoss unknown scheme", lambda: PairEnergyLoss(coefficients="nope"), err("nope"))
    add(s, "PairEnergyLoss unknown graph", lambda: PairEnergyLoss(graph="nope"), err("graph"))
    add(s, "PairEnergyLoss unknown reduction", lambda: PairEnergyLoss(reduction="x"), err("reduction"))
    add(s, "PairEnergyLoss('hessian') at construction", lambda: PairEnergyLoss(coefficients="hessian"), err("hessian"),
        owner="KERNEL")
    add(s, "PairEnergyLoss length_scale=0 (construct + call)",
        lambda: PairEnergyLoss(coefficient_kwargs={"length_scale": 0.0})(P, T), err("length_scale"))
    add(s, "make_loss unknown", lambda: make_loss("nope"), err("nope"))
    add(s, "get_loss unknown", lambda: get_loss("l2"), err("loss", "l2"))
    add(s, "MSELoss unknown reduction", lambda: MSELoss(reduction="x"), err("reduction"), owner=LOSSES_PY)

    s = "coefficients"
    add(s, "resolve unknown name", lambda: resolve_coefficients("nope"), err("nope"))
    add(s, "resolve list", lambda: resolve_coefficients([1.0, 2.0]), err("coefficients"))
    add(s, "resolve exp length_scale=-2", lambda: resolve_coefficients("exp", {"length_scale": -2.0}),
        err("length_scale"))
    add(s, "resolve exp bad key", lambda: resolve_coefficients("exp", {"k": 1.0}), err("'k'", "k0"))
    from energyloss_plugins.coefficients import PairContext

    ctx = PairContext(torch.tensor([1.0, 2.0], dtype=torch.float64))
    add(s, "custom scheme wrong shape", lambda: resolve_coefficients(lambda c: torch.ones(3))(ctx), err("shape"))
    add(s, "custom scheme negative", lambda: resolve_coefficients(lambda c: -torch.ones(2))(ctx), err("negative"))
    add(s, "custom scheme NaN", lambda: resolve_coefficients(lambda c: torch.full((2,), math.nan))(ctx),
        err("non-finite"))
    add(s, "exp scheme = formula", lambda: resolve_coefficients("exp", {"k0": 2.0, "length_scale": 0.5})(ctx),
        Result(lambda v: close(v, 2 * torch.exp(-ctx.distance / 0.5))))


def _graph_cases() -> None:
    from energyloss_plugins.graphs import build_pairs, unique_pairs

    s = "graphs"
    b = torch.zeros(N, dtype=torch.long)
    add(s, "build_pairs radius cutoff NaN", lambda: build_pairs("radius", T, b, 1, cutoff=math.nan), err("cutoff"))
    add(s, "build_pairs radius cutoff string", lambda: build_pairs("radius", T, b, 1, cutoff="5"), err("cutoff"))
    add(s, "build_pairs unknown option", lambda: build_pairs("complete", T, b, 1, radius=2.0), err("radius"))
    add(s, "build_pairs bonds (M, 2)", lambda: build_pairs("bonds", T, b, 1, bonds=BONDS.T).materialize(),
        Either(("bonds",), lambda v: sorted(map(tuple, v.T.tolist())) == sorted(map(tuple, BONDS.T.tolist()))))
    add(s, "build_pairs bonds as list", lambda: build_pairs("bonds", T, b, 1, bonds=BONDS.tolist()).materialize(),
        Either(("bonds",), lambda v: v.shape[1] == BONDS.shape[1]))
    add(s, "radius pairs = brute force", lambda: build_pairs("radius", T, b, 1, cutoff=2.0).materialize(),
        Result(lambda v: sorted(map(tuple, v.T.tolist())) == sorted(
            (int(i), int(j)) for i, j in ALL_PAIRS.T if float((T[i] - T[j]).norm()) < 2.0)))
    add(s, "unique_pairs of a directed list", lambda: unique_pairs(torch.tensor([[0, 1, 2, 1], [1, 0, 1, 2]])),
        Result(lambda v: v.tolist() == [[0, 1], [1, 2]]))


def _periodic_cases() -> None:
    from ase.geometry import get_distances

    from energyloss_plugins import pair_energy_loss
    from energyloss_plugins.periodic import MinimumImage

    s = "periodic"
    rng = np.random.default_rng(0)
    skew = np.array([[5.0, 0, 0], [4.2, 4, 0], [3.1, 2.6, 3.5]])
    pos = rng.random((30, 3)) @ skew
    i, j = np.triu_indices(30, 1)

    def mic_distances(cell, pbc, points=pos):
        mic = MinimumImage(torch.tensor(points), torch.zeros(len(points), dtype=torch.long), 1, torch.tensor(cell), pbc)
        pairs = torch.tensor(np.stack([i, j]))
        return (torch.tensor(points)[pairs[1]] - torch.tensor(points)[pairs[0]] + mic.shifts(pairs)).norm(dim=1).numpy()

    def ase_d(cell, pbc, points=pos):
        return get_distances(points, cell=cell, pbc=pbc)[1][i, j]

    add(s, "skewed cell: minimum image = ASE", lambda: mic_distances(skew, True),
        Result(lambda v: np.allclose(v, ase_d(skew, True), atol=1e-10)))
    cubic = np.eye(3) * 4.0
    pc = rng.random((30, 3)) @ cubic
    add(s, "cubic cell: minimum image = ASE", lambda: mic_distances(cubic, True, pc),
        Result(lambda v: np.allclose(v, ase_d(cubic, True, pc), atol=1e-10)))
    mixed = torch.tensor([True, False, True])
    # ASE's get_distances is not exact for a skewed cell with mixed pbc: enumerate images instead
    grid = np.array([[a, 0, c] for a in range(-4, 5) for c in range(-4, 5)]) @ skew
    brute = np.linalg.norm((pos[j] - pos[i])[:, None, :] + grid[None], axis=2).min(1)
    add(s, "mixed pbc: minimum image = enumerated images", lambda: mic_distances(skew, mixed),
        Result(lambda v: np.allclose(v, brute, atol=1e-10)))
    tgt = torch.tensor(pos)
    pred = tgt + 0.05 * torch.randn(30, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def ase_energy():
        # constant springs: ½ Σ (|ŷ_ij + S| − |y_ij + S|)² / n with S the reference's ASE minimum-image shift
        vec_t = get_distances(pos, cell=skew, pbc=True)[0][i, j]
        shift = vec_t - (pos[j] - pos[i])
        vec_p = pred.numpy()[j] - pred.numpy()[i] + shift
        return 0.5 * float(((np.linalg.norm(vec_p, axis=1) - np.linalg.norm(vec_t, axis=1)) ** 2).sum()) / 30

    add(s, "skewed cell: constant-spring energy = ASE minimum image",
        pel(pred, tgt, cell=torch.tensor(skew), coefficients="constant"), Result(lambda v: close(v, ase_energy())))
    wrap = torch.tensor(rng.integers(-2, 3, (30, 3)), dtype=torch.float64) @ torch.tensor(skew)
    add(s, "wrapped prediction = unwrapped", pel(pred + wrap, tgt, cell=torch.tensor(skew)),
        Result(lambda v: close(v, pair_energy_loss(pred, tgt, cell=torch.tensor(skew)))))
    add(s, "cell as nested list", pel(pred, tgt, cell=skew.tolist()),
        Either(("cell",), lambda v: close(v, pair_energy_loss(pred, tgt, cell=torch.tensor(skew)))))
    nan_cell = torch.tensor(skew)
    nan_cell[1, 1] = math.nan
    add(s, "NaN in cell", pel(pred, tgt, cell=nan_cell), err("cell"))
    add(s, "cell of wrong shape", pel(pred, tgt, cell=torch.eye(2)), err("cell"))
    add(s, "singular cell", pel(pred, tgt, cell=torch.zeros(3, 3)), err("cell"))
    add(s, "pbc of wrong length", pel(pred, tgt, cell=torch.tensor(skew), pbc=torch.tensor([True, False])), err("pbc"))
    p2 = rng.random((8, 2)) @ np.array([[3.0, 0], [2.5, 2.0]])
    add(s, "2-D skewed cell: energy = ASE (padded to 3-D)", lambda: MinimumImage(
        torch.tensor(p2), torch.zeros(8, dtype=torch.long), 1, torch.tensor([[3.0, 0], [2.5, 2.0]])).shifts(
        torch.tensor(np.array(np.triu_indices(8, 1)))),
        Result(lambda v: np.allclose(np.linalg.norm(
            (p2[np.triu_indices(8, 1)[1]] - p2[np.triu_indices(8, 1)[0]]) + v.numpy(), axis=1),
            get_distances(np.c_[p2, np.zeros(8)], cell=np.array([[3.0, 0, 0], [2.5, 2.0, 0], [0, 0, 1]]),
                          pbc=[True, True, False])[1][np.triu_indices(8, 1)], atol=1e-10)))


def _diffusion_cases() -> None:
    from energyloss_plugins.diffusion import NoiseSchedule, diffusion_loss, noise_batch, sample

    s = "diffusion"
    b = torch.tensor([0, 0, 0, 1, 1, 1])
    for t in (-0.1, 1.5, math.nan):
        add(s, f"noise_batch t={t}", lambda t=t: noise_batch(T, b, t=torch.tensor([t, 0.5], dtype=torch.float64)),
            err("t"))
    bad = T.clone()
    bad[0, 0] = math.nan
    add(s, "noise_batch NaN x0", lambda: noise_batch(bad, b), err("x0"))
    noised = noise_batch(T, b, t=torch.tensor([0.3, 0.7], dtype=torch.float64))
    add(s, "diffusion_loss NaN output", lambda: diffusion_loss(bad, noised, b), err("output"))
    nx = dict(noised)
    nx["x_t"] = bad
    add(s, "diffusion_loss NaN x_t", lambda: diffusion_loss(T, nx, b), err("x_t"))
    fm = noise_batch(T, b, t=torch.tensor([0.0, 1.0], dtype=torch.float64), flow_matching=True)
    add(s, "flow matching t in {0,1}, max_weight=None",
        lambda: diffusion_loss(T, fm, b, parameterization="velocity", max_weight=None), err("max_weight"))
    add(s, "flow matching t in {0,1}, max_weight=1e3 finite",
        lambda: diffusion_loss(T, fm, b, parameterization="velocity"), Result(lambda v: bool(torch.isfinite(v))))
    for mw in (0.0, -1.0, math.nan):
        add(s, f"max_weight={mw}", lambda mw=mw: diffusion_loss(T, noised, b, max_weight=mw), err("max_weight"))
    add(s, "unknown parameterization", lambda: diffusion_loss(T, noised, b, parameterization="epsilon"),
        err("parameterization"))
    den = lambda x, t, batch: torch.zeros_like(x)  # noqa: E731
    for steps in (0, -1, 2.5):
        add(s, f"sample steps={steps}", lambda steps=steps: sample(den, b, steps=steps), err("steps"))
    add(s, "sample unknown method", lambda: sample(den, b, method="heun"), err("sampler", "heun"))
    add(s, "sample dim=4", lambda: sample(den, b, dim=4, steps=2), err("dim"))
    add(s, "schedule unknown kind", lambda: NoiseSchedule("linear"), err("schedule", "linear"))
    for prec in (0.0, 0.7, math.nan):
        add(s, f"schedule precision={prec}", lambda prec=prec: NoiseSchedule(precision=prec), err("precision"))

    def exact_eps_loss():
        out = noised["eps"]  # the true noise: x̂ = x exactly, loss 0
        return diffusion_loss(out, noised, b)

    add(s, "exact eps prediction gives ~0", exact_eps_loss, Result(lambda v: float(v) < 1e-12))
    add(s, "t=0 keeps x0", lambda: noise_batch(T, b, t=torch.zeros(2, dtype=torch.float64)),
        Result(lambda v: close(v["x_t"], v["x0"], rtol=0, atol=0.05)))
    add(s, "sample is centred", lambda: sample(den, b, steps=3, generator=torch.Generator().manual_seed(0)),
        Result(lambda v: float(v[:3].mean(0).abs().max()) <= 1e-5 * float(v.abs().max())))


def _spin_cases() -> None:
    from energyloss_plugins import spins as S

    s = "spins"
    J = S.random_couplings(3, 2, seed=0, dtype=torch.float64)
    y = torch.ones(2, 3, 3, dtype=torch.float64)
    z = torch.zeros(2, 3, 3, dtype=torch.float64)
    for h0 in (-1.0, math.nan):
        add(s, f"h0={h0}", lambda h0=h0: S.local_field_weights(y, J, h0), err("h0"))
    for T_ in (0.0, -1.0, math.nan):
        add(s, f"local_field T={T_}", lambda T_=T_: S.local_field_free_energy_loss(z, y, J, T=T_), err("T"))
        add(s, f"true_energy T={T_}", lambda T_=T_: S.true_energy_free_energy_loss(z, J, T=T_), err("T"))
    for m in (0.0, -1.0):
        add(s, f"margin={m}", lambda m=m: S.margin_spin_loss(z, y, J, margin=m), err("margin"))
    Jn = J.clone()
    Jn[0, 0, 0, 0] = math.nan
    add(s, "NaN couplings", lambda: S.local_field_free_energy_loss(z, y, Jn), err("couplings"))
    add(s, "spins not ±1", lambda: S.local_field_free_energy_loss(z, y * 0.5, J), err("spins"))
    add(s, "spins shape mismatch", lambda: S.cross_entropy_spin_loss(z, y[:, :2]), err("spins"))
    add(s, "random_couplings low > high", lambda: S.random_couplings(3, 1, low=1.0, high=-1.0), err("low", "high"))
    add(s, "random_couplings high=inf", lambda: S.random_couplings(3, 1, high=math.inf), err("high"))
    add(s, "greedy_descent n_starts=0", lambda: S.greedy_descent(J[0], n_starts=0), err("n_starts"))
    add(s, "unknown spin loss", lambda: S.get_spin_loss("nope"), err("nope"))
    add(s, "unknown reduction", lambda: S.cross_entropy_spin_loss(z, y, reduction="avg"), err("reduction"))
    add(s, "unknown gauge", lambda: S.canonicalize(y, "x"), err("gauge"))
    add(s, "dataset L=1", lambda: S.make_spin_glass_dataset(1, 2, seed=0, cache_dir=False, progress=False), err("L"))
    add(s, "dataset n=2.5", lambda: S.make_spin_glass_dataset(3, 2.5, seed=0, cache_dir=False, progress=False),
        err("n"))
    add(s, "SpinResNet width=0", lambda: S.SpinResNet(width=0), err("width"))
    add(s, "exact ground state = brute force", lambda: S.ground_state(J[0]),
        Result(lambda v: abs(float(S.ising_energy(v[0].double()[None], J[:1])[0]) -
                             S.brute_force_ground_state(J[0])[1]) < 1e-9))


def _ase_cases() -> None:
    from ase import Atoms
    from ase.build import molecule
    from ase.geometry import get_distances

    from energyloss_plugins import pair_energy_loss
    from energyloss_plugins.ase import EnergyLossCalculator, boltzmann_sample
    from energyloss_plugins.periodic import minimum_image_shifts

    s = "ase"
    eth = molecule("CH3CH2OH")
    n = len(eth)
    pairs = np.array(np.triu_indices(n, 1))
    nan_ref = eth.copy()
    nan_ref.positions[0, 0] = math.nan
    add(s, "NaN in reference positions", lambda: EnergyLossCalculator(nan_ref), err("reference.positions"))
    cell_ref = eth.copy()
    cell_ref.cell = [[10, 0, 0], [0, math.nan, 0], [0, 0, 10]]
    cell_ref.pbc = True
    add(s, "NaN in reference cell", lambda: EnergyLossCalculator(cell_ref), err("reference.cell"))
    add(s, "reference not Atoms", lambda: EnergyLossCalculator(eth.positions), err("reference"))
    add(s, "one-atom reference", lambda: EnergyLossCalculator(Atoms("H")), err("reference"))
    add(s, "per-pair list without edge_index", lambda: EnergyLossCalculator(eth, [1.0] * pairs.shape[1]),
        err("edge_index"))

    def energy_of(calc, atoms):
        a = atoms.copy()
        a.calc = calc
        return a.get_potential_energy()

    moved = eth.copy()
    moved.positions += np.random.default_rng(0).normal(scale=0.05, size=moved.positions.shape)
    tp, tt = torch.tensor(moved.positions), torch.tensor(eth.positions)
    add(s, "per-pair list with (E, 2) edge_index = formula",
        lambda: energy_of(EnergyLossCalculator(eth, [2.0] * pairs.shape[1], edge_index=pairs.T.tolist()), moved),
        Result(lambda v: close(v, n * brute_energy(tp, tt, pairs, 2 * np.ones(pairs.shape[1]), n))))
    add(s, "wrong number of per-pair springs", lambda: EnergyLossCalculator(eth, [1.0] * 3, edge_index=pairs),
        err("coefficients"))
    add(s, "edge_index out of range", lambda: EnergyLossCalculator(eth, edge_index=[[0], [n]]), err("edge_index"))
    add(s, "bonds out of range", lambda: EnergyLossCalculator(eth, "bond_aware", bonds=[[0], [n]]), err("bonds"))
    add(s, "bond_aware with (M, 2) bonds = (2, M)",
        lambda: energy_of(EnergyLossCalculator(eth, "bond_aware", bonds=[[0, 1], [1, 2]]), moved),
        Result(lambda v: close(v, float(pair_energy_loss(tp, tt, coefficients="bond_aware",
                                                          bonds=torch.tensor([[0, 1], [1, 2]]),
                                                          reduction="sum", normalize=False)))))
    add(s, "radius cutoff=-1", lambda: EnergyLossCalculator(eth, graph="radius", graph_kwargs={"cutoff": -1.0}),
        err("cutoff"))
    add(s, "length_scale=0", lambda: EnergyLossCalculator(eth, coefficient_kwargs={"length_scale": 0.0}),
        err("length_scale"))
    add(s, "unknown graph", lambda: EnergyLossCalculator(eth, graph="knn"), err("graph"))

    def set_then_energy(**kw):
        calc = EnergyLossCalculator(eth)
        calc.set(**kw)
        return energy_of(calc, moved), kw

    def set_check(v):  # accepted only if the energy follows the new setting
        e, kw = v
        return close(e, energy_of(EnergyLossCalculator(eth, **kw), moved))

    add(s, "set(coefficients='constant')", lambda: set_then_energy(coefficients="constant"),
        Either(("coefficients",), set_check))
    add(s, "set(graph='radius')", lambda: set_then_energy(graph="radius", graph_kwargs={"cutoff": 2.0}),
        Either(("graph",), set_check))
    add(s, "set(coefficient_kwargs={'k0': 5})", lambda: set_then_energy(coefficient_kwargs={"k0": 5.0}),
        Either(("coefficient_kwargs",), set_check))
    add(s, "set(unknown=1)", lambda: EnergyLossCalculator(eth).set(foo=1), err("foo"))
    add(s, "set(graph=current) accepted", lambda: set_then_energy(graph="complete"), Result(set_check))
    nan_atoms = moved.copy()
    nan_atoms.positions[1, 2] = math.nan
    add(s, "NaN in evaluated atoms", lambda: energy_of(EnergyLossCalculator(eth), nan_atoms), err("atoms.positions"))
    other = moved.copy()
    other.numbers[0] = 7
    add(s, "evaluated atoms of other elements", lambda: energy_of(EnergyLossCalculator(eth), other),
        err("atomic numbers"))
    add(s, "evaluated atoms with fewer atoms", lambda: energy_of(EnergyLossCalculator(eth), eth[:5]), err("atoms"))

    def fd_forces():
        calc = EnergyLossCalculator(eth)
        a = moved.copy()
        a.calc = calc
        f = a.get_forces()
        h = 1e-5
        num = np.zeros(3)
        for c in range(3):
            ap, am = a.copy(), a.copy()
            ap.positions[2, c] += h
            am.positions[2, c] -= h
            num[c] = -(energy_of(calc, ap) - energy_of(calc, am)) / (2 * h)
        return f[2], num

    add(s, "forces = finite differences", fd_forces, Result(lambda v: np.allclose(v[0], v[1], atol=1e-6)))
    for kw, name in [({"timestep_fs": 50.0}, "timestep_fs"), ({"temperature_K": -1.0}, "temperature_K"),
                     ({"temperature_K": math.nan}, "temperature_K"), ({"n_samples": 0}, "n_samples"),
                     ({"interval": 0}, "interval"), ({"friction_per_fs": 0.0}, "friction_per_fs"),
                     ({"integrator": "verlet"}, "integrator"), ({"equilibration": -1}, "equilibration"),
                     ({"timestep_fs": math.inf}, "timestep_fs")]:
        add(s, f"boltzmann_sample {kw}", lambda kw=kw: boltzmann_sample(eth, n_samples=2, interval=2, **kw), err(name))
    from energyloss_plugins.ase import coefficients_from_calculator, compute_hessian

    calc0 = EnergyLossCalculator(eth)
    fd = {"method": "finite_difference"}
    for kw, name in [({**fd, "delta": 0.0}, "delta"), ({**fd, "delta": math.nan}, "delta"), ({"ridge": -1.0}, "ridge"),
                     ({"k_min": math.nan}, "k_min"), ({"weighting": "heavy"}, "weighting"),
                     ({"method": "exact"}, "method")]:
        add(s, f"coefficients_from_calculator {kw}", lambda kw=kw: coefficients_from_calculator(eth, calc0, **kw),
            err(name))
    add(s, "compute_hessian: finite differences = exact",
        lambda: compute_hessian(eth, calc0, method="finite_difference"),
        Result(lambda v: np.allclose(v, calc0.get_hessian(), atol=1e-4)))
    skew = np.array([[5.0, 0, 0], [4.2, 4, 0], [3.1, 2.6, 3.5]])
    crystal = Atoms("H30", scaled_positions=np.random.default_rng(0).random((30, 3)), cell=skew, pbc=True)
    cp = np.array(np.triu_indices(30, 1))

    def mic_lengths():
        shifts = minimum_image_shifts(crystal.positions, skew, np.ones(3, bool), cp)
        return np.linalg.norm(crystal.positions[cp[1]] - crystal.positions[cp[0]] + shifts @ skew, axis=1)

    add(s, "minimum image, skewed cell = ASE", mic_lengths,
        Result(lambda v: np.allclose(v, get_distances(crystal.positions, cell=skew, pbc=True)[1][cp[0], cp[1]],
                                     atol=1e-10)))


# --------------------------------------------------------------------------------------- data files


def _write_text(path: str, text: str = "my notes\n") -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _bad_file(tmp: str, content: bytes | None, name: str) -> str:
    """``name`` in a fresh folder under ``tmp``, holding ``content`` (a directory of that name if None)."""
    p = os.path.join(tempfile.mkdtemp(dir=tmp), name)
    if content is None:
        os.makedirs(p)
    else:
        with open(p, "wb") as fh:
            fh.write(content)
    return p


def _snapshot(paths) -> dict[str, bytes | None]:
    return {p: open(p, "rb").read() if os.path.isfile(p) else None for p in paths}


def _cli(argv: list[str], protect: list[str]) -> tuple[int, str, bool]:
    """`energyloss-data ARGV` through :func:`_run_main`."""
    from energyloss_plugins.data.cli import main

    return _run_main(main, argv, protect)


#: Options of a small, quick `energyloss-data build` (two molecules of at most four heavy atoms).
SMALL_BUILD = ["--max-molecules", "2", "--max-heavy-atoms", "4", "--no-progress"]


def _foreign_file(tmp: str, kind: str) -> str:
    """A ``data.db`` in a fresh folder that the builder did not write: ``text``, ``ase`` (a user's ASE
    database), ``sqlite`` (another program's) or ``empty``."""
    from ase import Atoms
    from ase.db import connect

    p = os.path.join(tempfile.mkdtemp(dir=tmp), "data.db")
    if kind == "text":
        _write_text(p)
    elif kind == "ase":
        with connect(p) as db:
            db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), note="mine")
    elif kind == "sqlite":
        con = sqlite3.connect(p)
        con.execute("CREATE TABLE t (x)")
        con.execute("INSERT INTO t VALUES (1)")
        con.commit()
        con.close()
    elif kind == "empty":
        open(p, "w").close()
    return p


def _data_output_cases(tmp: str) -> None:
    """`energyloss-data build`: output locations that would lose a user's file or cannot be written."""
    s = "data"
    small = SMALL_BUILD
    for kind in ("text", "ase", "sqlite", "empty"):
        add(s, f"-o an existing {kind} file",
            lambda kind=kind: (lambda p: _cli(["build", "nci", "-o", p, *small], [p]))(_foreign_file(tmp, kind)),
            Kept(("--overwrite",)))

    def into_directory():
        d = tempfile.mkdtemp(dir=tmp)
        code, err_, kept = _cli(["build", "nci", "-o", d + "/sub.db", *small], [])
        os.makedirs(os.path.join(d, "x.db"))
        code, err_, _ = _cli(["build", "nci", "-o", os.path.join(d, "x.db"), *small], [])
        stray = [f for f in os.listdir(d) if f.endswith((".partial", ".tmp"))]
        return code, err_, not stray

    add(s, "-o a directory named x.db", into_directory, Kept(("directory",)))

    def parent_is_file():
        d = tempfile.mkdtemp(dir=tmp)
        f = os.path.join(d, "notes")
        _write_text(f)
        return _cli(["build", "nci", "-o", os.path.join(f, "x.db"), *small], [f])

    add(s, "-o under a regular file", parent_is_file, Kept(("notes",)))
    add(s, "-o without .db", lambda: _cli(["build", "nci", "-o", os.path.join(tmp, "x.txt"), *small], []),
        Kept((".db",)))

    def split_over_user_file():
        d = tempfile.mkdtemp(dir=tmp)
        f = os.path.join(d, "results.csv")
        _write_text(f, "a,b\n1,2\n")
        return _cli(["build", "nci", "-o", os.path.join(d, "a.db"), "--split-file", f, *small], [f])

    add(s, "--split-file over a user file", split_over_user_file, Kept(("--overwrite",)))
    add(s, "--split-file equal to -o", lambda: _cli(["build", "nci", "-o", os.path.join(tmp, "s.db"), "--split-file",
                                                       os.path.join(tmp, "s.db"), *small], []), Kept(("split_file",)))

    def user_tmp_file_kept():
        d = tempfile.mkdtemp(dir=tmp)
        out = os.path.join(d, "a.db")
        user = [out + ".tmp", os.path.join(d, "a.split.npz.tmp")]
        for u in user:
            _write_text(u)
        code, err_, kept = _cli(["build", "nci", "-o", out, *small], user)
        return code, err_, kept and os.path.exists(out)

    add(s, "user's <out>.tmp beside the output", user_tmp_file_kept, Kept(must_fail=False))


def _data_cases(tmp: str) -> None:
    """`energyloss-data` and the data API: splits, rebuilds, option values, sources and readers."""
    from ase.db import connect

    s = "data"
    small = SMALL_BUILD

    def two_datasets_one_folder():
        from energyloss_plugins.data import find_split_file, read_split, split_molecules

        d = tempfile.mkdtemp(dir=tmp)
        a, b = os.path.join(d, "a.db"), os.path.join(d, "b.db")
        _cli(["build", "nci", "-o", a, *small, "--seed", "0"], [])
        _cli(["build", "nci", "-o", b, "--max-molecules", "3", "--max-heavy-atoms", "4", "--no-progress",
              "--seed", "5"], [])
        _cli(["build", "nci", "-o", a, *small, "--seed", "0"], [])  # "already built"
        ok = True
        for path, seed in ((a, 0), (b, 5)):
            ids = np.array([r.mol_id for r in connect(path).select(sort="id")])
            want = split_molecules(ids, (0.8, 0.1, 0.1), seed)
            got = read_split(find_split_file(path))
            ok &= all(np.array_equal(want[k], got[k]) for k in want)
        return ok

    add(s, "two datasets in one folder keep their own splits", two_datasets_one_folder, Result(bool))

    def rebuild_own():
        d = tempfile.mkdtemp(dir=tmp)
        out = os.path.join(d, "a.db")
        _cli(["build", "nci", "-o", out, *small], [])
        code, err_, _ = _cli(["build", "nci", "-o", out, *small, "--seed", "1"], [])
        return code == 0 and connect(out).metadata["energyloss"]["settings"]["seed"] == 1

    add(s, "rebuilding its own database with new settings", rebuild_own, Result(bool))
    for argv, name in [(["--max-molecules", "0"], "max_molecules"), (["--temperature", "-5"], "temperature"),
                       (["--split", "0.9,0.9,0"], "split"), (["--split", "a,b"], "--split"),
                       (["--inputs", "bogus"], "bogus"), (["--n-thermal", "0"], "n_thermal"),
                       (["--workers", "0"], "workers"), (["--method", "as-given"], "as-given"),
                       (["--temperature", "nan"], "temperature"), (["--elements", "Xx"], "Xx"),
                       (["--seed", "-1"], "seed"), (["--max-heavy-atoms", "0"], "max_heavy_atoms")]:
        add(s, f"build {' '.join(argv)}", lambda argv=argv: _cli(["build", "nci", "-o", os.path.join(tmp, "v.db"),
                                                                   "--max-molecules", "2", "--no-progress", *argv]
                                                                  if "--max-molecules" not in argv else
                                                                  ["build", "nci", "-o", os.path.join(tmp, "v.db"),
                                                                   "--no-progress", *argv], []), Kept((name,)))
    from energyloss_plugins.data import build_dataset

    for kw, name in [({"n_thermal": 1.5}, "n_thermal"), ({"max_molecules": 2.5}, "max_molecules"),
                     ({"n_etkdg": 0, "inputs": "etkdg"}, "n_etkdg"), ({"workers": 0.5}, "workers")]:
        add(s, f"build_dataset {kw}", lambda kw=kw: build_dataset("nci", os.path.join(tmp, "py.db"), progress=False,
                                                                  **{"max_molecules": 2, **kw}), err(name))
    add(s, "build from a missing source file", lambda: _cli(["build", os.path.join(tmp, "nope.xyz"), "-o",
                                                             os.path.join(tmp, "w.db")], []), Kept(("nope.xyz",)))
    add(s, "info on a missing path", lambda: _cli(["info", os.path.join(tmp, "nope.db")], []), Kept(("nope.db",)))

    def info_foreign_sqlite():
        p = _foreign_file(tmp, "sqlite")
        return _cli(["info", p], [p])

    add(s, "info on a foreign SQLite file", info_foreign_sqlite, Kept(("ASE database",)))

    def read_foreign():
        from energyloss_plugins.data import read_dataset

        p = _foreign_file(tmp, "sqlite")
        before = _snapshot([p])
        try:
            read_dataset(p)
        finally:
            assert _snapshot([p]) == before, "read_dataset modified a foreign file"

    add(s, "read_dataset on a foreign SQLite file", read_foreign, err("ASE database"))

    def read_split_bad():
        from energyloss_plugins.data import read_split

        f = os.path.join(tmp, "bad.npz")
        np.savez(f, a=np.arange(3))
        return read_split(f)

    add(s, "read_split with other keys", read_split_bad, err("train_idx"))


def _adapter_cases(tmp: str) -> None:
    from ase.db import connect

    s = "adapters"

    def spk_missing():
        from schnetpack_ext.resolvers import split_file_beside

        p = os.path.join(tmp, "missing", "data.db")
        try:
            split_file_beside(p)
        finally:
            assert not os.path.exists(p), "the check created a file"

    add(s, "spktrain resolver: missing datapath", spk_missing, err("data.datapath", "energyloss-data build"))

    def spk_no_targets():
        from ase import Atoms

        from schnetpack_ext.resolvers import split_file_beside

        p = os.path.join(tempfile.mkdtemp(dir=tmp), "plain.db")
        with connect(p) as db:
            db.write(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]))
        return split_file_beside(p)

    add(s, "spktrain resolver: db without target_positions", spk_no_targets,
        err("target_positions", "energyloss-data build"))

    def legacy_split():
        from energyloss_plugins.data import find_split_file

        d = tempfile.mkdtemp(dir=tmp)
        open(os.path.join(d, "one.db"), "w").close()
        np.savez(os.path.join(d, "split.npz"), train_idx=[0], val_idx=[], test_idx=[])
        first = find_split_file(os.path.join(d, "one.db"))
        open(os.path.join(d, "two.db"), "w").close()
        second = find_split_file(os.path.join(d, "one.db"))
        return first, second, d

    add(s, "legacy split.npz: used when unambiguous, not with two dbs", legacy_split,
        Result(lambda v: v[0] == os.path.join(v[2], "split.npz") and v[1] is None))

    def spk_loss():
        from schnetpack_ext import EnergyLoss

        return EnergyLoss(loss="l2")

    add(s, "schnetpack EnergyLoss unknown loss", spk_loss, err("l2"))

    def spk_no_validation(split):
        from energyloss_plugins.data import build_dataset
        from schnetpack_ext.resolvers import split_file_beside

        d = tempfile.mkdtemp(dir=tmp)
        smi = os.path.join(d, "three.smi")
        _write_text(smi, "CCO\nCCN\nCCC\n")
        db = os.path.join(d, "three.db")
        build_dataset(smi, db, inputs=("uff",), split=split, seed=0, progress=False)
        return split_file_beside(db)

    add(s, "spktrain resolver: a 3-molecule split without validation rows",
        lambda: spk_no_validation((1.0, 0.0, 0.0)), err("0 validation"))
    add(s, "spktrain resolver: a 3-molecule split with one validation row",
        lambda: spk_no_validation((0.34, 0.33, 0.33)), Result(lambda v: v.endswith("three.split.npz")))

    def spk_loss_scheme():
        from schnetpack_ext import EnergyLoss

        return EnergyLoss(coefficients="expo")

    add(s, "schnetpack EnergyLoss unknown scheme", spk_loss_scheme, err("expo"))

    def tmd_missing():
        from torchmdnet_ext.datasets import EnergyLossDB

        return EnergyLossDB(os.path.join(tmp, "nope.db"))

    add(s, "torchmdnet EnergyLossDB missing root", tmd_missing, err("nope.db"))

    def tmd_split_keys():
        from torchmdnet_ext.datasets import convert_split

        f = os.path.join(tmp, "k.npz")
        np.savez(f, a=[1])
        return convert_split(object(), f, os.path.join(tmp, "o.npz"))

    add(s, "torchmdnet convert_split with other keys", tmd_split_keys, err("train_idx"))

    from energyloss_plugins.metrics.geometry import aligned_rmsd, bond_length_mae

    s = "metrics"
    add(s, "aligned_rmsd shape mismatch", lambda: aligned_rmsd(P, T[:5]), err("pred", "target"))
    add(s, "bond_length_mae (M, 2) bonds", lambda: bond_length_mae(P, T, BONDS.T),
        Either(("bonds",), lambda v: close(v, bond_length_mae(P, T, BONDS))))
    add(s, "bond_length_mae = formula", lambda: bond_length_mae(P, T, BONDS),
        Result(lambda v: close(v, np.mean([abs(float((P[i] - P[j]).norm() - (T[i] - T[j]).norm()))
                                           for i, j in BONDS.T.tolist()]))))


# ------------------------------------------------------------------------------ round two (issue 18)


def _run_main(main, argv: list[str], protect: list[str]) -> tuple[int, str, bool]:
    """Run a console script's ``main``; ``(exit code, stderr, files in protect unchanged)``."""
    before = _snapshot(protect)
    code, _, err_ = _run_main_stdout(main, argv)
    return code, err_, _snapshot(protect) == before


def _numpy_scalar_cases() -> None:
    """The one number check accepts numpy scalars: each result equals the one with a Python number."""
    from energyloss_plugins import PairEnergyLoss, pair_energy_loss
    from energyloss_plugins import spins as S
    from energyloss_plugins.diffusion import NoiseSchedule, diffusion_loss, noise_batch, sample
    from energyloss_plugins.generation import AtomCountDistribution, GenerationObjective

    s = "numpy scalars"
    kinds = (np.float32, np.float64, np.int64)
    for scheme, key, value in [("exp", "k0", 2), ("exp", "length_scale", 2), ("constant", "k0", 3),
                               ("inverse", "k0", 2), ("inverse_square", "k0", 2)]:
        for kind in kinds:
            add(s, f"{scheme} {key}={kind.__name__}({value})",
                pel(P, T, coefficients=scheme, coefficient_kwargs={key: kind(value)}),
                Result(lambda v, scheme=scheme, key=key, value=value: close(
                    v, pair_energy_loss(P, T, coefficients=scheme, coefficient_kwargs={key: float(value)}))))
    for kind in kinds:
        add(s, f"radius cutoff={kind.__name__}(3)", pel(P, T, graph="radius", graph_kwargs={"cutoff": kind(3)}),
            Result(lambda v: close(v, pair_energy_loss(P, T, graph="radius", graph_kwargs={"cutoff": 3.0}))))
        add(s, f"PairEnergyLoss cutoff={kind.__name__}(3)",
            lambda kind=kind: PairEnergyLoss(graph="radius", graph_kwargs={"cutoff": kind(3)})(P, T),
            Result(lambda v: close(v, pair_energy_loss(P, T, graph="radius", graph_kwargs={"cutoff": 3.0}))))
    add(s, "chunk_size=np.int64(4)", pel(P, T, chunk_size=np.int64(4)),
        Result(lambda v: close(v, pair_energy_loss(P, T))))
    add(s, "rigid_sparse seed=np.int64(3)", pel(P, T, graph="rigid_sparse", graph_kwargs={"seed": np.int64(3)}),
        Result(lambda v: close(v, pair_energy_loss(P, T, graph="rigid_sparse", graph_kwargs={"seed": 3}))))
    b = torch.tensor([0, 0, 0, 1, 1, 1])
    noised = noise_batch(T, b, t=torch.tensor([0.3, 0.7], dtype=torch.float64))
    for kind in (np.float32, np.float64):
        add(s, f"diffusion max_weight={kind.__name__}(50)", lambda kind=kind: diffusion_loss(P, noised, b,
                                                                                         max_weight=kind(50)),
            Result(lambda v: close(v, diffusion_loss(P, noised, b, max_weight=50.0), rtol=1e-6)))
        add(s, f"schedule precision={kind.__name__}(1e-4)", lambda kind=kind: NoiseSchedule(precision=kind(1e-4)),
            Result(lambda v: abs(float(v.precision) - 1e-4) < 1e-9))
        add(s, f"GenerationObjective position_weight={kind.__name__}(0.5)",
            lambda kind=kind: GenerationObjective([1, 6], position_weight=kind(0.5)),
            Result(lambda v: v.position_weight == 0.5))
    den = lambda x, t, batch: torch.zeros_like(x)  # noqa: E731
    add(s, "sample steps=np.int64(3)",
        lambda: sample(den, b, steps=np.int64(3), generator=torch.Generator().manual_seed(0)),
        Result(lambda v: close(v, sample(den, b, steps=3, generator=torch.Generator().manual_seed(0)))))
    add(s, "AtomCountDistribution.sample(np.int64(4))",
        lambda: AtomCountDistribution.from_counts([3, 5]).sample(np.int64(4)), Result(lambda v: v.shape == (4,)))
    add(s, "AtomCountDistribution.from_counts(np.array)",
        lambda: AtomCountDistribution.from_counts(np.array([3, 5, 5])).histogram,
        Result(lambda v: v == [0.0, 0.0, 0.0, 1.0, 0.0, 2.0]))
    J = S.random_couplings(3, 2, seed=0, dtype=torch.float64)
    y = torch.ones(2, 3, 3, dtype=torch.float64)
    z = torch.zeros(2, 3, 3, dtype=torch.float64)
    for kind in (np.float32, np.float64):
        add(s, f"spin T={kind.__name__}(2)", lambda kind=kind: S.local_field_free_energy_loss(z, y, J, T=kind(2)),
            Result(lambda v: close(v, S.local_field_free_energy_loss(z, y, J, T=2.0), rtol=1e-6)))
        add(s, f"spin margin={kind.__name__}(0.5)", lambda kind=kind: S.margin_spin_loss(z, y, J, margin=kind(0.5)),
            Result(lambda v: close(v, S.margin_spin_loss(z, y, J, margin=0.5), rtol=1e-6)))
        add(s, f"spin module T={kind.__name__}(2)", lambda kind=kind: S.get_spin_loss("local_field", T=kind(2)),
            Result(lambda v: float(v.T) == 2.0))
    add(s, "greedy_descent n_starts=np.int64(2)", lambda: S.greedy_descent(J[0], n_starts=np.int64(2)),
        Result(lambda v: v is not None))
    for bad in ("2", None, [2.0], True):
        add(s, f"k0={bad!r} still refused", pel(P, T, coefficient_kwargs={"k0": bad}), err("k0"))


def _integer_cases() -> None:
    """Non-integer atomic numbers, element lists and atom counts are refused, never truncated; ranges."""
    from energyloss_plugins.generation import AtomCountDistribution, GenerationObjective, TypeEncoding, sample_molecules

    s = "integers"
    for elements in ([1, 6.7], [1.5, 6], [1, math.nan], np.array([1.0, 6.2])):
        add(s, f"TypeEncoding({elements!r})", lambda elements=elements: TypeEncoding(elements), err("elements"))
        add(s, f"GenerationObjective({elements!r})", lambda elements=elements: GenerationObjective(elements),
            err("elements"))
    for elements in ([1, 10**9], [1, 119], [0, 6], [-1, 6], []):
        add(s, f"GenerationObjective({elements!r})", lambda elements=elements: GenerationObjective(elements),
            err("elements"))
    add(s, "TypeEncoding('CHNO')", lambda: TypeEncoding("CHNO"), err("elements"))
    add(s, "elements [1, 6.0] = [1, 6]", lambda: TypeEncoding([1, 6.0]).elements, Result(lambda v: v == (1, 6)))
    add(s, "elements np.int64 = int", lambda: TypeEncoding(np.array([6, 1])).elements, Result(lambda v: v == (1, 6)))
    for counts in ([3.7, 5.2], [3, 5.5], [3, math.nan]):
        add(s, f"from_counts({counts!r})", lambda counts=counts: AtomCountDistribution.from_counts(counts),
            err("counts"))
    for counts in ([3, 10**9], [3, 10_001], [0, 3], [-2, 3], []):
        add(s, f"from_counts({counts!r})", lambda counts=counts: AtomCountDistribution.from_counts(counts),
            err("counts"))
    add(s, "from_counts([10000]) accepted", lambda: AtomCountDistribution.from_counts([10_000]).max_atoms,
        Result(lambda v: v == 10_000))
    add(s, "histogram of 10**7 entries", lambda: AtomCountDistribution([1.0] * (10**7)), err("histogram"))
    add(s, "histogram with NaN", lambda: AtomCountDistribution([0.0, math.nan, 1.0]), err("histogram"))
    add(s, "AtomCountDistribution.sample(2.5)", lambda: AtomCountDistribution.from_counts([3]).sample(2.5), err("n"))
    add(s, "AtomCountDistribution.sample(-1)", lambda: AtomCountDistribution.from_counts([3]).sample(-1), err("n"))
    obj = GenerationObjective([1, 6])
    den = lambda x, h, t, b: (torch.zeros_like(x), torch.zeros_like(h))  # noqa: E731
    for n_atoms in ([3.7, 3.0], [3, 0], [3, 10**9]):
        add(s, f"objective.sample(n_atoms={n_atoms!r})",
            lambda n_atoms=n_atoms: obj.sample(den, torch.tensor(n_atoms), steps=2), err("n_atoms"))
    add(s, "objective.sample(steps=2.5)", lambda: obj.sample(den, torch.tensor([3]), steps=2.5), err("steps"))
    counts = AtomCountDistribution.from_counts([3, 4])
    for kw, name in [({"n": 2.5}, "n"), ({"n": -1}, "n"), ({"n": 2, "batch_size": 0}, "batch_size"),
                     ({"n": 2, "steps": 0}, "steps")]:
        add(s, f"sample_molecules {kw}", lambda kw=kw: sample_molecules(obj, den, counts, progress=False, **kw),
            err(name))
    for numbers in (torch.tensor([1.0, 6.7, 6, 1, 1, 1]), torch.tensor([1.5, 6, 6, 1, 1, 1]),
                    torch.tensor([1, 200, 6, 1, 1, 1.0])):
        add(s, f"morse numbers {numbers.tolist()}", pel(P, T, coefficients="morse", numbers=numbers), err("numbers"))
    add(s, "morse float numbers that are whole = long",
        pel(P, T, coefficients="morse", numbers=Z.double()),
        Result(lambda v: close(v, pair_energy_loss_ref(coefficients="morse", numbers=Z))))
    add(s, "encode float atomic numbers 6.7", lambda: obj.encoding.encode(torch.tensor([1.0, 6.7])), err("numbers"))


def pair_energy_loss_ref(**kw):
    from energyloss_plugins import pair_energy_loss

    return pair_energy_loss(P, T, **kw)


def _crash_cases() -> None:
    """Ranges validated before any work: thin cells (the image search), huge tables."""
    from energyloss_plugins.ase import EnergyLossCalculator
    from energyloss_plugins.periodic import MinimumImage, minimum_image_shifts

    s = "cells"
    pos = torch.tensor(np.random.default_rng(0).random((6, 3)) * 5.0)
    for h in (0.01, 1e-4, 1e-8):
        for axis in (0, 2):
            diag = [5.0, 5.0, 5.0]
            diag[axis] = h
            cell = torch.diag(torch.tensor(diag, dtype=torch.float64))
            add(s, f"pair_energy_loss cell height {h} along {axis}", pel(pos + 0.1, pos, cell=cell), err("cell"))
        add(s, f"minimum_image_shifts height {h}",
            lambda h=h: minimum_image_shifts(pos.numpy(), np.diag([5.0, 5.0, h]), np.ones(3, bool),
                                             np.array([[0], [1]])), err("cell"))
    skew = np.array([[5.0, 0, 0], [5.0, 0.005, 0], [0, 0, 5.0]])
    add(s, "nearly coplanar skewed cell", pel(pos + 0.1, pos, cell=torch.tensor(skew)), err("cell"))
    add(s, "MinimumImage thin cell (batched)", lambda: MinimumImage(
        pos, torch.zeros(6, dtype=torch.long), 1, torch.diag(torch.tensor([5.0, 5.0, 0.001], dtype=torch.float64))),
        err("cell"))
    add(s, "thin direction non-periodic is fine",
        pel(pos + 0.1, pos, cell=torch.diag(torch.tensor([5.0, 5.0, 0.001], dtype=torch.float64)),
            pbc=torch.tensor([True, True, False])),
        Result(lambda v: bool(torch.isfinite(v))))
    add(s, "cell height 0.2 Å works", pel(pos + 0.1, pos, cell=torch.diag(torch.tensor([5.0, 5.0, 0.2],
                                                                                     dtype=torch.float64))),
        Result(lambda v: bool(torch.isfinite(v))))
    for pbc in ("TTF", "True", ["T", "T", "F"]):
        add(s, f"pbc={pbc!r}", pel(pos + 0.1, pos, cell=torch.eye(3, dtype=torch.float64) * 5, pbc=pbc), err("pbc"))

    from ase import Atoms

    thin = Atoms("H6", positions=pos.numpy(), cell=np.diag([5.0, 5.0, 0.01]), pbc=True)
    add(s, "EnergyLossCalculator thin cell", lambda: EnergyLossCalculator(thin).get_potential_energy(thin),
        err("cell"))


def _silent_cases() -> None:
    from energyloss_plugins import PairEnergyLoss, pair_energy_loss
    from energyloss_plugins.diffusion import sample
    from energyloss_plugins.generation import GenerationObjective
    from energyloss_plugins.losses import PairSprings, pair_energy_kernel, resolve_springs

    s = "shapes"
    springs3 = resolve_springs(T)
    add(s, "2-D prediction against 3-D springs", lambda: springs3.loss(P[:, :2]), err("pred"))
    add(s, "padded prediction against flat springs", lambda: springs3.loss(P[None]), err("pred"))
    add(s, "4-D prediction against 3-D springs", lambda: springs3.loss(torch.randn(6, 4, dtype=torch.float64)),
        err("pred"))
    add(s, "3-D springs loss = pair_energy_loss", lambda: springs3.loss(P), Result(lambda v: close(
        v, pair_energy_loss(P, T))))
    springs2 = resolve_springs(T[:, :2])
    add(s, "3-D prediction against 2-D springs", lambda: springs2.loss(P), err("pred"))
    add(s, "collate 2-D with 3-D springs", lambda: PairSprings.collate([springs2, springs3]), err("dimension"))
    for dtype in (torch.long, torch.int32, torch.bool, torch.uint8):
        add(s, f"PairSprings.to(dtype={dtype})", lambda dtype=dtype: springs3.to(dtype=dtype), err("dtype"))
    add(s, "PairSprings.to(float32) close", lambda: springs3.to(dtype=torch.float32).loss(P.float()),
        Result(lambda v: close(v, pair_energy_loss(P, T), rtol=1e-4)))
    edge = torch.tensor(ALL_PAIRS)
    add(s, "kernel: shifts of wrong width", lambda: pair_energy_kernel(
        P, springs3.distances, springs3.pairs, springs3.springs, shifts=torch.zeros(15, 2, dtype=torch.float64)),
        err("shifts"))
    add(s, "kernel: 15 springs for 14 pairs", lambda: pair_energy_kernel(
        P, springs3.distances[:14], springs3.pairs[:, :14], springs3.springs), err("springs"))

    s = "coincident"
    T2 = T.clone()
    T2[1] = T2[0]
    for scheme in ("exp", "constant", "inverse", "inverse_square"):
        add(s, f"{scheme}: coincident reference atoms", pel(P, T2, coefficients=scheme), err("coincide"))
    add(s, "morse: coincident reference atoms", pel(P, T2, coefficients="morse", numbers=Z), err("coincide"))
    add(s, "lennard_jones: coincident reference atoms", pel(P, T2, coefficients="lennard_jones", numbers=Z),
        err("coincide"))
    add(s, "per-pair springs: coincident reference atoms",
        pel(P, T2, coefficients=torch.ones(15), edge_index=edge), err("coincide"))
    add(s, "resolve_springs: coincident reference atoms", lambda: resolve_springs(T2, coefficients="inverse"),
        err("coincide"))
    add(s, "module: coincident reference atoms", lambda: PairEnergyLoss(coefficients="inverse_square")(P, T2),
        err("coincide"))
    T3 = T.clone()
    T3[1] = T3[0] + 1e-6
    add(s, "1e-6 Å apart", pel(P, T3, coefficients="inverse_square"), err("coincide"))
    add(s, "radius graph leaves the far pair out: fine",
        pel(P, T, graph="radius", graph_kwargs={"cutoff": 0.5}), Result(lambda v: bool(torch.isfinite(v))))
    add(s, "coincident but validate_args=False: caller's choice",
        pel(P, T2, coefficients="constant", validate_args=False, n_structures=1),
        Result(lambda v: bool(torch.isfinite(v))))

    s = "double backward"

    def hessian_fn():
        p = P.clone().requires_grad_()
        return torch.autograd.functional.hessian(lambda x: pair_energy_loss(x, T), p)

    def create_graph():
        p = P.clone().requires_grad_()
        (g,) = torch.autograd.grad(pair_energy_loss(p, T), p, create_graph=True)
        return torch.autograd.grad(g.sum(), p)

    def kernel_create_graph():
        p = P.clone().requires_grad_()
        (g,) = torch.autograd.grad(springs3.loss(p), p, create_graph=True)
        return g

    def single_backward():
        p = P.clone().requires_grad_()
        pair_energy_loss(p, T).backward()
        return p.grad

    def fd_grad():
        h = 1e-6
        out = torch.zeros_like(P)
        for a in range(N):
            for c in range(3):
                pp, pm = P.clone(), P.clone()
                pp[a, c] += h
                pm[a, c] -= h
                out[a, c] = (pair_energy_loss(pp, T) - pair_energy_loss(pm, T)) / (2 * h)
        return out

    add(s, "functional.hessian", hessian_fn, Error(("create_graph",)))
    add(s, "grad(create_graph=True) then grad", create_graph, Error(("create_graph",)))
    add(s, "PairSprings.loss create_graph", kernel_create_graph, Error(("create_graph",)))
    add(s, "single backward = finite differences", single_backward, Result(lambda v: close(v, fd_grad(), rtol=1e-5,
                                                                                            atol=1e-8)))

    s = "chunk_size"
    for value in (-1, 0, 2.5, "100", math.nan, None):
        add(s, f"pair_energy_loss chunk_size={value!r}", pel(P, T, chunk_size=value), err("chunk_size"))
    add(s, "kernel chunk_size=-5", lambda: pair_energy_kernel(P, springs3.distances, springs3.pairs, springs3.springs,
                                                              chunk_size=-5), err("chunk_size"))
    add(s, "PairSprings.loss chunk_size=0", lambda: springs3.loss(P, chunk_size=0), err("chunk_size"))
    add(s, "chunk_size=1 = default", pel(P, T, chunk_size=1), Result(lambda v: close(v, pair_energy_loss(P, T))))

    s = "meta/empty"
    from energyloss_plugins import kabsch_mse_loss, mse_loss

    add(s, "meta tensors, validation on", pel(P.to("meta"), T.to("meta")), err("meta"))
    add(s, "meta tensors mse, validation on", lambda: mse_loss(P.to("meta"), T.to("meta")), err("meta"))
    add(s, "meta kernel, validation on", lambda: pair_energy_kernel(
        P.to("meta"), springs3.distances.to("meta"), springs3.pairs.to("meta"), springs3.springs.to("meta")),
        err("meta"))
    add(s, "empty flat input gives 0", pel(torch.zeros(0, 3), torch.zeros(0, 3)), Result(lambda v: float(v) == 0))
    add(s, "empty kabsch gives 0", lambda: kabsch_mse_loss(torch.zeros(0, 3), torch.zeros(0, 3)),
        Result(lambda v: float(v) == 0))

    s = "denoiser shape"
    b = torch.tensor([0, 0, 0, 1, 1, 1])
    for shape in ((6, 1), (1, 3), (6, 2), (6, 4), (3,), (), (12, 3)):
        add(s, f"sample: denoiser output {shape}",
            lambda shape=shape: sample(lambda x, t, bb: torch.zeros(shape), b, steps=2), err("denoiser"))
    obj = GenerationObjective([1, 6])
    for out_x, out_h in (((6, 1), (6, 3)), ((1, 3), (6, 3)), ((6, 3), (6, 1)), ((6, 3), (1, 3))):
        add(s, f"generation: denoiser outputs {out_x}, {out_h}",
            lambda out_x=out_x, out_h=out_h: obj.sample(lambda x, h, t, bb: (torch.zeros(out_x), torch.zeros(out_h)),
                                                        torch.tensor([3, 3]), steps=2), err("denoiser"))
    for method in ("ddim", "euler"):
        par = "velocity" if method == "euler" else "eps"
        add(s, f"sample {method}: denoiser output (6, 1)", lambda method=method, par=par: sample(
            lambda x, t, bb: torch.zeros(6, 1), b, steps=2, method=method, parameterization=par), err("denoiser"))


def _hessian_cases() -> None:
    from ase.build import molecule

    from energyloss_plugins.ase import EnergyLossCalculator

    s = "ase springs"
    eth = molecule("H2O")
    pairs = np.array(np.triu_indices(3, 1))
    for k in ([-1.0, 1.0, 1.0], [math.nan, 1.0, 1.0], [math.inf, 1.0, 1.0]):
        add(s, f"get_hessian with springs {k}",
            lambda k=k: EnergyLossCalculator(eth, k, edge_index=pairs).get_hessian(),
            err("coefficients"))
        add(s, f"springs() with springs {k}", lambda k=k: EnergyLossCalculator(eth, k, edge_index=pairs).springs(),
            err("coefficients"))
    add(s, "get_hessian with springs as numpy = Σ k b bᵀ",
        lambda: EnergyLossCalculator(eth, np.array([1.0, 2.0, 3.0]), edge_index=pairs).get_hessian(),
        Result(lambda v: np.allclose(v, _spring_hessian_brute(eth.positions, pairs, [1.0, 2.0, 3.0]))))
    coincident = eth.copy()
    coincident.positions[1] = coincident.positions[0]
    add(s, "calculator on a reference with coincident atoms",
        lambda: EnergyLossCalculator(coincident, "inverse_square").get_potential_energy(eth), err("coincide"))


def _spring_hessian_brute(pos, pairs, k):
    n = len(pos)
    H = np.zeros((3 * n, 3 * n))
    for (i, j), kk in zip(pairs.T, k, strict=True):
        u = (pos[j] - pos[i]) / np.linalg.norm(pos[j] - pos[i])
        b = np.zeros(3 * n)
        b[3 * j: 3 * j + 3], b[3 * i: 3 * i + 3] = u, -u
        H += kk * np.outer(b, b)
    return H


def _python_output_cases(tmp: str) -> None:
    """predict_structures / sample_structures: output files checked first, never replaced without overwrite."""
    from ase.build import molecule
    from ase.io import read

    from energyloss_plugins.ase import predict_structures, sample_structures

    s = "python outputs"
    water = molecule("H2O")
    calls = []

    def model(positions, numbers):
        calls.append(1)
        return positions

    def den(x, t, batch, numbers):
        calls.append(1)
        return torch.zeros_like(x)

    def existing(text="my notes\n"):
        p = os.path.join(tempfile.mkdtemp(dir=tmp), "out.extxyz")
        _write_text(p, text)
        return p

    def kept_after(fn, path):
        before = _snapshot([path])
        try:
            fn(path)
        except ERRORS as exc:
            if _snapshot([path]) != before:
                raise AssertionError(f"{path} modified") from None
            raise ValueError(str(exc)) from None
        if _snapshot([path]) != before:
            raise AssertionError(f"{path} modified")
        return "written over nothing"

    for name, fn in [("predict_structures", lambda p: predict_structures(model, [water], output=p)),
                     ("sample_structures", lambda p: sample_structures(den, [water], steps=2, output=p))]:
        add(s, f"{name}(output=existing)", lambda fn=fn: kept_after(fn, existing()), err("overwrite"))

        def missing_folder(fn=fn):
            calls.clear()
            try:
                fn(os.path.join(tmp, "no", "such", "folder", "x.extxyz"))
            finally:
                if calls:
                    raise AssertionError(f"the model ran {len(calls)} times before the output check (not modified)")

        add(s, f"{name}(output=missing folder) before any work", missing_folder, err("folder"))
        add(s, f"{name}(output='-')", lambda fn=fn: fn("-"), err("output"))
        add(s, f"{name}(output=a directory)", lambda fn=fn: fn(tempfile.mkdtemp(dir=tmp)), err("directory"))
        add(s, f"{name}(output=x.unknownsuffix)",
            lambda fn=fn: fn(os.path.join(tempfile.mkdtemp(dir=tmp), "x.qqq")), err("format"))

    def overwrite_replaces():
        p = existing()
        predict_structures(model, [water], output=p, overwrite=True)
        return read(p)

    add(s, "predict_structures(overwrite=True) replaces", overwrite_replaces,
        Result(lambda v: np.allclose(v.positions, water.positions, atol=1e-6)))

    def atomic_on_failure():
        p = existing()
        before = _snapshot([p])

        def bad_model(positions, numbers):
            return positions

        try:
            predict_structures(bad_model, [water], output=p, overwrite=True, format="no-such-format")
        except Exception:
            pass
        stray = [f for f in os.listdir(os.path.dirname(p)) if f != "out.extxyz"]
        return _snapshot([p]) == before and not stray

    add(s, "a failed write leaves the old file and no temporary", atomic_on_failure, Result(bool))


def _diverged_cases(tmp: str) -> None:
    """sample_structures / predict_structures when the model returns NaN (or there is nothing to sample)."""
    from ase import Atoms
    from ase.build import molecule
    from ase.io import read

    from energyloss_plugins.ase import predict_structures, sample_structures

    s = "diverged"
    water = molecule("H2O")

    def den(x, t, batch, numbers):
        return torch.zeros_like(x)

    def nan_den(x, t, batch, numbers):
        out = torch.zeros_like(x)
        out[batch == 1] = math.nan
        return out

    def drop():
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = sample_structures(nan_den, [water, water, water], steps=2)
        return out, [str(w.message) for w in caught]

    add(s, "sample_structures leaves NaN samples out and counts them", drop,
        Result(lambda v: [a.info["sample_of"] for a in v[0]] == [0, 2] and any("1 of 3" in m for m in v[1])))
    add(s, "sample_structures keep_diverged=True marks them",
        lambda: sample_structures(nan_den, [water, water], steps=2, keep_diverged=True),
        Result(lambda v: len(v) == 2 and v[1].info.get("diverged") and not np.isfinite(v[1].positions).all()))

    def drop_file():
        p = os.path.join(tempfile.mkdtemp(dir=tmp), "s.extxyz")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sample_structures(nan_den, [water, water, water], steps=2, output=p)
        return read(p, ":")

    add(s, "sample_structures output file holds finite samples only", drop_file,
        Result(lambda v: len(v) == 2 and all(np.isfinite(a.positions).all() for a in v)))
    add(s, "sample_structures([])", lambda: sample_structures(den, [], steps=2), err("templates"))
    add(s, "predict_structures NaN model output", lambda: predict_structures(
        lambda p, z: p * math.nan, [water]), err("NaN"))
    add(s, "Atoms without atoms as a template", lambda: sample_structures(den, [Atoms()], steps=2),
        Either(("atoms",), lambda v: len(v) <= 1))


def _evaluate_cases(tmp: str) -> None:
    from ase import Atoms
    from ase.build import bulk, molecule
    from ase.io import write

    from energyloss_plugins.metrics.cli import main as evaluate

    s = "evaluate CLI"
    d = tempfile.mkdtemp(dir=tmp)
    mols = os.path.join(d, "mols.extxyz")
    write(mols, [molecule("H2O"), molecule("CH4"), molecule("NH3")])

    def run(argv, protect=()):
        return _run_main(evaluate, [*argv, "--no-progress"], list(protect))

    for label, content, name, expect in [
        ("empty file", b"", "x.extxyz", "empty"), ("binary file", bytes(range(256)) * 8, "x.extxyz", "x.extxyz"),
        ("unknown format", b"hello\n", "x.qqq", "x.qqq"), ("directory", None, "x.extxyz", "directory"),
        ("text named .db", b"notes\n", "x.db", "ASE database"), ("empty .db", b"", "x.db", "ASE database"),
        ("truncated xyz", b"3\n\nH 0 0 0\n", "x.xyz", "x.xyz")]:
        add(s, f"evaluate an {label}", lambda content=content, name=name: (
            lambda p: run([p], [p] if os.path.isfile(p) else []))(_bad_file(tmp, content, name)), Kept((expect,)))
        add(s, f"--train an {label}", lambda content=content, name=name: (
            lambda p: run([mols, "--train", p], [p] if os.path.isfile(p) else []))(_bad_file(tmp, content, name)),
            Kept((expect,)))

    def sqlite_kept():
        p = os.path.join(tempfile.mkdtemp(dir=tmp), "x.db")
        con = sqlite3.connect(p)
        con.execute("CREATE TABLE t (x)")
        con.commit()
        con.close()
        return run([p], [p])

    add(s, "evaluate a foreign SQLite .db (unchanged)", sqlite_kept, Kept(("ASE database",)))
    add(s, "missing file", lambda: run([os.path.join(d, "nope.extxyz")]), Kept(("nope.extxyz",)))
    for value in ("-1", "0", "2.5", "x"):
        add(s, f"--limit {value}", lambda value=value: run([mols, "--limit", value]), Kept(("--limit",)))

    def json_existing():
        p = os.path.join(tempfile.mkdtemp(dir=tmp), "notes.json")
        _write_text(p)
        return run([mols, "--json", p], [p])

    add(s, "--json an existing file", json_existing, Kept(("--overwrite",)))

    def json_overwrite():
        p = os.path.join(tempfile.mkdtemp(dir=tmp), "notes.json")
        _write_text(p)
        code, err_, _ = run([mols, "--json", p, "--overwrite"])
        import json as _json

        with open(p) as fh:
            return code == 0 and _json.load(fh)["n"] == 3

    add(s, "--json --overwrite replaces", json_overwrite, Result(bool))
    add(s, "--json into a missing folder", lambda: run([mols, "--json", os.path.join(d, "no", "m.json")]),
        Kept(("folder",)))
    add(s, "--json a directory", lambda: run([mols, "--json", tempfile.mkdtemp(dir=tmp)]), Kept(("directory",)))

    def crystal():
        p = os.path.join(tempfile.mkdtemp(dir=tmp), "cu.extxyz")
        write(p, [bulk("Cu", "fcc", a=3.6) * (2, 2, 2), molecule("H2O")])
        return run([p])

    add(s, "a periodic crystal", crystal, Kept(("periodic",)))

    def empty_train():
        from energyloss_plugins.metrics import generation_metrics

        return generation_metrics([molecule("H2O")], set())["novelty"]

    add(s, "novelty against an empty training set", empty_train, Result(lambda v: v is None))

    def empty_train_cli():
        from ase.db import connect

        t = os.path.join(tempfile.mkdtemp(dir=tmp), "t.db")
        with connect(t) as db:  # an ASE database without rows
            db.metadata = {"note": "empty"}
        code, err_, _ = _run_main_stdout(evaluate, [mols, "--train", t, "--no-progress"])
        return code, err_

    add(s, "--train an empty database: novelty unavailable", empty_train_cli,
        Result(lambda v: v[0] == 0 and "novelty" in v[1] and "100.00 %" not in
               [ln for ln in v[1].splitlines() if ln.startswith("novelty")][0]))
    add(s, "--positions target on an extxyz", lambda: run([mols, "--positions", "target"]), Kept(("target",)))
    add(s, "huge molecule (> 10,000 atoms)", lambda: _gm([Atoms("H10001", positions=np.random.default_rng(0).random(
        (10001, 3)) * 100)]), err("10000"))


def _gm(mols):
    from energyloss_plugins.metrics import generation_metrics

    return generation_metrics(mols)


def _run_main_stdout(main, argv):
    """Run a console script's ``main``; ``(exit code, stdout, stderr)`` (argparse's exits give their code)."""
    out = io.StringIO()
    err_buf = io.StringIO()
    with contextlib.redirect_stderr(err_buf), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err_buf.getvalue()


def _sample_cli_cases(tmp: str) -> None:
    """energyloss-sample: every user error is one line and exit 2, checked before the checkpoint is loaded."""
    from ase.build import molecule
    from ase.io import write

    from energyloss_plugins.sample_cli import main as sample_main

    s = "sample CLI"
    d = tempfile.mkdtemp(dir=tmp)
    ckpt = os.path.join(d, "model.ckpt")
    _write_text(ckpt, "not a checkpoint\n")
    inputs = os.path.join(d, "in.extxyz")
    write(inputs, [molecule("H2O")])

    def run(argv, protect=()):
        return _run_main(sample_main, [*argv, "--quiet"], list(protect))

    def out_path():
        return os.path.join(tempfile.mkdtemp(dir=tmp), "out.extxyz")

    def existing_out():
        p = out_path()
        _write_text(p)
        return run([ckpt, "-n", "2", "-o", p], [p])

    add(s, "-o an existing file", existing_out, Kept(("--overwrite",)))
    add(s, "-o -", lambda: run([ckpt, "-n", "2", "-o", "-"]), Kept(("-o",)))
    add(s, "-o a directory", lambda: run([ckpt, "-n", "2", "-o", tempfile.mkdtemp(dir=tmp)]), Kept(("directory",)))
    add(s, "-o in a missing folder", lambda: run([ckpt, "-n", "2", "-o", os.path.join(d, "no", "x.xyz")]),
        Kept(("folder",)))
    for argv, name in [(["--steps", "0"], "--steps"), (["--steps", "-3"], "--steps"), (["--batch-size", "0"],
                       "--batch-size"), (["-n", "0"], "-n"), (["-n", "-2"], "-n"), (["--method", "heun"], "heun"),
                       (["--device", "tpu9"], "--device"), (["--steps", "x"], "--steps")]:
        add(s, " ".join(argv), lambda argv=argv: run([ckpt, "-o", out_path(), *argv]), Kept((name,)))
    import torch as _torch

    if not _torch.cuda.is_available():
        add(s, "--device cuda without a GPU", lambda: run([ckpt, "-n", "2", "-o", out_path(), "--device", "cuda"]),
            Kept(("cuda",)))
    for label, content, name, expect in [
        ("empty", b"", "x.extxyz", "empty"), ("binary", bytes(range(256)) * 8, "x.extxyz", "x.extxyz"),
        ("unknown-format", b"hello\n", "x.qqq", "x.qqq"), ("directory", None, "dir.extxyz", "directory")]:
        def bad_inputs(content=content, name=name):
            return run([ckpt, "--inputs", _bad_file(tmp, content, name), "-o", out_path()])

        add(s, f"--inputs {label} file", bad_inputs, Kept((expect,)))
    add(s, "missing --inputs file", lambda: run([ckpt, "--inputs", os.path.join(d, "nope.xyz"), "-o", out_path()]),
        Kept(("nope.xyz",)))
    add(s, "checkpoint is a directory", lambda: run([tempfile.mkdtemp(dir=tmp), "-n", "2", "-o", out_path()]),
        Kept(("directory",)))

    def empty_ckpt():
        p = os.path.join(tempfile.mkdtemp(dir=tmp), "e.ckpt")
        open(p, "w").close()
        return run([p, "-n", "2", "-o", out_path()], [p])

    add(s, "checkpoint is empty", empty_ckpt, Kept(("empty",)))
    add(s, "checkpoint missing", lambda: run([os.path.join(d, "nope.ckpt"), "-n", "2", "-o", out_path()]),
        Kept(("nope.ckpt",)))
    add(s, "checkpoint is a text file", lambda: run([ckpt, "-n", "2", "-o", out_path()], [ckpt]),
        Kept(("model.ckpt",)))


def _data_cli_cases(tmp: str) -> None:
    from energyloss_plugins.data.cli import main as data_main

    s = "data CLI"

    def smi(text):
        p = os.path.join(tempfile.mkdtemp(dir=tmp), "mols.smi")
        _write_text(p, text)
        return p

    def build(source, *extra):
        out = os.path.join(os.path.dirname(source), "out.db")
        code, err_, kept = _run_main(data_main, ["build", source, "-o", out, "--no-progress", *extra], [source])
        return code, err_, kept and not os.path.exists(out)

    add(s, "every SMILES unparsable", lambda: build(smi("not_a_smiles\nC1CC\n")), Kept(("no molecule",)))
    add(s, "every molecule filtered by --elements", lambda: build(smi("CCO\nCCN\n"), "--elements", "S"),
        Kept(("no molecule",)))
    add(s, "every molecule too large", lambda: build(smi("CCCCCCCC\n"), "--max-heavy-atoms", "2"),
        Kept(("no molecule",)))
    add(s, "empty source file", lambda: build(smi("")), Kept(("no molecule",)))
    add(s, "-o -", lambda: _run_main(data_main, ["build", smi("C\n"), "-o", "-", "--no-progress"], []), Kept(("-",)))
    add(s, "info on a directory", lambda: _run_main(data_main, ["info", tempfile.mkdtemp(dir=tmp)], []),
        Kept(("ASE database",)))
    add(s, "unknown subcommand", lambda: _run_main(data_main, ["bild"], []), Kept(("bild",)))


def _torchmd_cli_cases(tmp: str) -> None:
    try:
        from torchmdnet_ext.cli import main as train
    except ImportError:
        return
    s = "torchmd CLI"
    d = tempfile.mkdtemp(dir=tmp)
    base = ["--dataset", "EnergyLossDB", "--log-dir", os.path.join(d, "logs"), "--num-epochs", "1",
            "--save-interval", "1", "--model", "tensornet"]
    db = os.path.join(d, "data.db")
    _write_text(db)  # never read: every case fails on its options first

    def run(argv):
        return _run_main(train, argv, [])

    add(s, "missing --dataset-root", lambda: run(base), Kept(("--dataset-root",)))
    add(s, "--dataset-root that does not exist", lambda: run([*base, "--dataset-root", os.path.join(d, "no.db")]),
        Kept(("no.db",)))
    gen = [*base, "--dataset-root", db, "--task", "generation"]
    for elements, name in [("1,6.5", "elements"), ("1,200", "elements"), ("C,H", "elements"), ("", "elements")]:
        add(s, f"--elements {elements!r}", lambda elements=elements: run([*gen, "--elements", elements]), Kept((name,)))
    add(s, "generation without --elements", lambda: run(gen), Kept(("--elements",)))
    for option, value in [("--position-weight", "-1"), ("--max-weight", "0"), ("--max-weight", "nan"),
                          ("--sampling-steps", "0")]:
        add(s, f"{option} {value}", lambda option=option, value=value: run([*gen, "--elements", "1,6", option,
                                                                            value]), Kept((option,)))
    add(s, "--task unknown", lambda: run([*base, "--dataset-root", db, "--task", "energyy"]), Kept(("energyy",)))
    add(s, "--conf a missing file", lambda: run(["--conf", os.path.join(d, "nope.yaml")]), Kept(("nope.yaml",)))


# ------------------------------------------------------------------------------------------- runner


def classify(c: Case) -> None:
    try:
        value = c.run()
    except MemoryError as exc:
        c.outcome, c.detail = "crash", f"MemoryError {exc}"
        return
    except RecursionError as exc:
        c.outcome, c.detail = "crash", f"RecursionError {exc}"
        return
    except AssertionError as exc:  # a harness check (e.g. a file modified by a read)
        lost = "modified" in str(exc) or "created" in str(exc)
        c.outcome, c.detail = ("data lost" if lost else "unclear error"), str(exc)
        return
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        c.detail = msg.splitlines()[0][:300]
        if isinstance(exc, RuntimeError) and "allocat" in str(exc).lower():
            c.outcome = "crash"
        elif isinstance(c.expect, (Error, Either)):
            ok = isinstance(exc, ERRORS) and all(n.lower() in str(exc).lower() for n in c.expect.names)
            c.outcome = "clear error" if ok else "unclear error"
        else:
            c.outcome = "unclear error"
        return
    if isinstance(c.expect, Kept):
        code, err_, kept = value
        c.detail = err_.strip().splitlines()[-1][:300] if err_.strip() else f"exit {code}"
        if not kept:
            c.outcome = "data lost"
        elif not c.expect.must_fail:
            c.outcome = "correct result" if code == 0 else "unclear error"
        elif code == 0:
            c.outcome = "silent wrong result"
        else:
            lines = [ln for ln in err_.splitlines() if ln.startswith("energyloss")]
            named = len(lines) == 1 and all(n.lower() in lines[0].lower() for n in c.expect.names)
            c.outcome = "clear error" if named and "Traceback" not in err_ else "unclear error"
        return
    if isinstance(c.expect, Error):
        c.outcome, c.detail = "silent wrong result", f"returned {_short(value)}"
        return
    try:
        good = bool(c.expect.check(value))
    except Exception as exc:
        good, c.detail = False, f"check failed: {type(exc).__name__}: {exc}"
    c.outcome = "correct result" if good else "silent wrong result"
    if not good and not c.detail:
        c.detail = f"returned {_short(value)}"


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) < 120 else s[:117] + "..."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verbose", action="store_true", help="print every case")
    ap.add_argument("--only", default=None, help="run one surface (losses, modules, coefficients, graphs, periodic, "
                                                  "diffusion, spins, ase, data, adapters, metrics, ...: see the table)")
    ap.add_argument("--memory-gib", type=float, default=6.0, help="address-space cap while running the cases")
    a = ap.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    limit = int(a.memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    with tempfile.TemporaryDirectory() as tmp:
        for make in (_core_cases, _module_cases, _graph_cases, _periodic_cases, _diffusion_cases, _spin_cases,
                     _ase_cases, _numpy_scalar_cases, _integer_cases, _crash_cases, _silent_cases, _hessian_cases):
            make()
        for make_in in (_data_output_cases, _data_cases, _adapter_cases, _python_output_cases, _diverged_cases,
                        _evaluate_cases, _sample_cli_cases, _data_cli_cases, _torchmd_cli_cases):
            make_in(tmp)
        cases = [c for c in CASES if a.only is None or c.surface == a.only]
        for c in cases:
            classify(c)
            if a.verbose or c.outcome not in ("clear error", "correct result"):
                owner = f" [{c.owner}]" if c.owner else ""
                print(f"{c.outcome:20s} {c.surface:12s} {c.name}{owner}: {c.detail}", flush=True)
    counts = Counter(c.outcome for c in cases)
    surfaces = list(dict.fromkeys(c.surface for c in cases))
    short = ("clear", "correct", "unclear", "silent", "crash", "lost")
    print(f"\n{'surface':18s}" + "".join(f"{h:>9s}" for h in short))
    for surface in surfaces:
        row = Counter(c.outcome for c in cases if c.surface == surface)
        print(f"{surface:18s}" + "".join(f"{row.get(o, 0):9d}" for o in OUTCOMES))
    print(f"\n{len(cases)} cases")
    for o in OUTCOMES:
        print(f"  {o:20s} {counts.get(o, 0)}")
    bad = [c for c in cases if c.outcome not in ("clear error", "correct result")]
    kernel = sum(c.owner.startswith("KERNEL") for c in bad)
    if bad:
        print(f"  not yet right: {len(bad)} ({kernel} in files owned by the KERNEL branch)")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
