"""benchmarks/device_suite.py: its CPU smoke run writes every section with plausible values, and the
generation pair's spktrain composition sets each override once (what the GPU run relies on).

The smoke run trains two tiny PaiNN models through spktrain and samples them (a few minutes on a
loaded 2-core machine; marked slow, still part of ``make test``). Nothing here reads ../shared.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("schnetpack")
pytest.importorskip("rdkit")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import device_suite  # noqa: E402
from loss_cost_cuda import BATCH_LOSSES  # noqa: E402


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_suite.py"), "--smoke", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_smoke_writes_every_section(smoke):
    out, res = smoke
    assert set(res) == {"device", "tests", "loss_cost", "step_overhead", "generation"}
    for section in ("tests", "loss_cost", "step_overhead", "generation"):
        assert "error" not in res[section], (section, res[section])
    assert res["device"]["smoke"] is True and res["device"]["kind"] == "cpu"
    # tests/test_cuda.py ran: on a machine without CUDA every test is collected and skipped
    tests = res["tests"]
    assert tests["failed"] == 0 and tests["passed"] + tests["skipped"] >= 5
    md = (out / "results.md").read_text()
    assert "## Loss cost" in md and "## Generation pair" in md


@pytest.mark.slow
def test_smoke_loss_cost_and_step_overhead_are_plausible(smoke):
    _, res = smoke
    qm9 = res["loss_cost"]["batches"]["qm9"]
    assert set(qm9["losses"]) == set(BATCH_LOSSES)
    assert all(_finite_positive(v["ms"]) for v in qm9["losses"].values())
    assert qm9["losses"]["mse"]["over_mse"] == 1.0
    single = res["loss_cost"]["single"]["1000"]
    assert {"lean", "lean-sparse", "energy", "sparse", "dense-cdist"} <= set(single)
    batch = res["step_overhead"]["batches"]["4"]
    assert all(_finite_positive(r["step_ms"]) and _finite_positive(r["over_mse"]) for r in batch["variants"].values())
    assert batch["variants"]["mse"]["over_mse"] == 1.0


@pytest.mark.slow
def test_smoke_generation_pair_equal_steps_and_metrics_passed_through(smoke):
    out, res = smoke
    from ase.collections import g2

    from energyloss_plugins.metrics import generation_metrics

    gen = res["generation"]
    metric_keys = set(generation_metrics([g2["CH4"], g2["H2O"]]))  # whatever the metrics return, kept
    steps = {loss: gen[loss]["steps"] for loss in ("energy", "mse")}
    assert steps["energy"] == steps["mse"] == gen["steps"] > 0
    for loss in ("energy", "mse"):
        r = gen[loss]
        assert metric_keys <= set(r)
        for key in ("atom_stability", "mol_stability", "validity"):
            assert 0.0 <= r[key] <= 1.0
        assert r["n"] == gen["samples"]
        curve = [p["step"] for p in r["curve"]]
        assert curve == sorted(curve) and curve[-1] == r["steps"] and len(curve) >= 2
        samples = (out / "generation" / "runs" / loss / "samples.extxyz").read_text()
        assert samples.count("Properties=") == gen["samples"]
    for loss in ("energy", "mse"):  # each loss's own learning rate reaches its run
        assert f"globals.lr={gen[loss]['lr']}" in gen["commands"][loss]
    assert "globals.loss=energy" in gen["commands"]["energy"] and "globals.loss=mse" in gen["commands"]["mse"]


def test_generation_command_sets_each_override_once():
    args = SimpleNamespace(gen_steps=2000, loader_workers=4, batch_size=128, lr_energy=3e-4, lr_mse=1e-3, width=256,
                           interactions=6, val_every_epochs=10)
    for loss, lr in (("energy", "0.0003"), ("mse", "0.001")):
        cmd = device_suite.generation_command(args, "/tmp/g", loss, "/tmp/g/qm7.db", "cuda", 200)
        keys = [a.split("=", 1)[0].lstrip("+") for a in cmd[1:] if "=" in a]
        assert len(keys) == len(set(keys)), keys
        assert {"trainer.accelerator=gpu", f"globals.lr={lr}", f"globals.loss={loss}", "data.batch_size=128",
                "model.representation.n_atom_basis=256", "++trainer.max_time=00:00:03:20",
                "++trainer.max_steps=2000", "++trainer.check_val_every_n_epoch=10"} <= set(cmd)
