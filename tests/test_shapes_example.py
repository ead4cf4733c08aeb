"""The regular-shape example (examples/shapes): its quality metric, and a short run showing MSE's collapse."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "examples" / "shapes" / "shapes.py"
_spec = importlib.util.spec_from_file_location("shapes_example", _PATH)
shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes)


def _polygons(radius: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    phi = 2 * math.pi * torch.rand(radius.shape[0], generator=g, dtype=torch.float64)
    return shapes.regular_polygons(radius, n, phi).double()


def test_quality_is_high_for_regular_polygons_of_the_right_size_under_rigid_motions_and_relabelling():
    g = torch.Generator().manual_seed(0)
    radius = 0.3 + 4.7 * torch.rand(64, generator=g, dtype=torch.float64)
    exact = _polygons(radius, 8, g)
    noisy = exact + 1e-4 * radius.view(-1, 1, 1) * torch.randn(exact.shape, generator=g, dtype=torch.float64)
    q = shapes.shape_quality(noisy, radius)
    assert bool((q > 7).all())
    theta = 2 * math.pi * torch.rand(64, 1, 1, generator=g, dtype=torch.float64)
    rot = torch.cat([torch.cat([theta.cos(), -theta.sin()], 2), torch.cat([theta.sin(), theta.cos()], 2)], 1)
    moved = noisy @ rot.transpose(1, 2) + 10 * torch.randn(64, 1, 2, generator=g, dtype=torch.float64)
    moved = moved[:, torch.randperm(8, generator=g)]
    for radial in shapes.RADIAL:
        torch.testing.assert_close(
            shapes.shape_quality(moved, radius, radial), shapes.shape_quality(noisy, radius, radial)
        )


def test_quality_scores_a_collapsed_speck_low_only_about_the_prescribed_radius():
    g = torch.Generator().manual_seed(1)
    radius = 0.3 + 4.7 * torch.rand(32, generator=g, dtype=torch.float64)
    speck = 0.01 * (_polygons(radius, 8, g) + 1e-4 * torch.randn(32, 8, 2, generator=g, dtype=torch.float64))
    assert bool((shapes.shape_quality(speck, radius) < 0.05).all())  # -ln(0.99): the size is wrong
    assert bool((shapes.shape_quality(speck, radius, radial="spread") > 5).all())  # the scale-free reading is blind
    torch.testing.assert_close(shapes.size_ratio(speck, radius), torch.full_like(radius, 0.01), rtol=1e-3, atol=0)


def test_quality_is_low_for_disordered_points():
    g = torch.Generator().manual_seed(2)
    radius = torch.full((256,), 2.0, dtype=torch.float64)
    cloud = radius.view(-1, 1, 1) * torch.randn(256, 8, 2, generator=g, dtype=torch.float64)
    for radial in shapes.RADIAL:
        assert float(shapes.shape_quality(cloud, radius, radial).median()) < 2


def test_unknown_radial_reading_is_rejected():
    with pytest.raises(ValueError, match="target"):
        shapes.shape_quality(torch.zeros(1, 8, 2), torch.ones(1), radial="mean")


def test_short_run_mse_collapses_at_theta_pi_while_the_energy_loss_keeps_the_shape(tmp_path):
    results = shapes.main(["--epochs", "40", "--n-train", "2048", "--batch-size", "256", "--n-test", "200",
                           "--thetas", "pi", "--losses", "mse", "energy", "--restarts", "1", "--out", str(tmp_path)])
    mse, energy = results["losses"]["mse"][0], results["losses"]["energy"][0]
    assert mse["median_size_ratio"] < 0.1  # the average of the rotated targets is a speck
    assert energy["median_size_ratio"] == pytest.approx(1.0, abs=0.05)
    assert energy["median_quality"] > mse["median_quality"] + 2
    assert (tmp_path / "shapes.png").stat().st_size > 0 and (tmp_path / "results.json").exists()
