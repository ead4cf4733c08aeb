"""Coefficient schemes: pair potentials give their second derivative; names and requirements are checked."""

from __future__ import annotations

import pytest
import torch

from energyloss_plugins import coefficient_names, pair_energy_loss
from energyloss_plugins.coefficients import PairContext, resolve_coefficients
from energyloss_plugins.elements import covalent_radius


def second_derivative(phi, r, h=1e-4):
    return (phi(r + h) - 2 * phi(r) + phi(r - h)) / h**2


def test_morse_and_lj_springs_are_second_derivatives_of_the_potentials():
    r = torch.linspace(0.8, 1.4, 25, dtype=torch.float64)
    z = torch.full_like(r, 6, dtype=torch.long)
    ctx = PairContext(r, z, z)
    D, a, r0 = 0.8, 1.7, 1.1
    k = resolve_coefficients("morse", {"D": D, "a": a, "r0": r0, "k_min": 0.0})(ctx)
    morse = lambda x: D * (1 - torch.exp(-a * (x - r0))) ** 2  # noqa: E731
    assert torch.allclose(k, second_derivative(morse, r).clamp_min(0.0), atol=1e-5)
    eps, r_min = 0.3, 1.2
    k = resolve_coefficients("lennard_jones", {"epsilon": eps, "r_min": r_min, "k_min": 0.0})(ctx)
    lj = lambda x: eps * ((r_min / x) ** 12 - 2 * (r_min / x) ** 6)  # noqa: E731
    assert torch.allclose(k, second_derivative(lj, r).clamp_min(0.0), rtol=1e-5, atol=1e-5)
    # At the minimum: k = 72 ε / r_min² (SPEC §2).
    lj_springs = resolve_coefficients("lennard_jones", {"epsilon": eps, "r_min": r_min})
    at_min = lj_springs(PairContext(torch.tensor([r_min], dtype=torch.float64)))
    assert torch.allclose(at_min, torch.tensor([72 * eps / r_min**2], dtype=torch.float64))


def test_element_pair_parameters_and_covalent_defaults():
    r = torch.tensor([1.09, 1.09, 1.54], dtype=torch.float64)
    zi, zj = torch.tensor([6, 1, 6]), torch.tensor([1, 6, 6])
    k = resolve_coefficients("morse", {"params": {(1, 6): {"D": 4.0}}})(PairContext(r, zi, zj))
    assert k[0] == k[1]  # (1, 6) and (6, 1) are the same pair
    k_default = resolve_coefficients("morse")(PairContext(r, zi, zj))
    assert torch.allclose(k[:2], 4 * k_default[:2])
    assert torch.allclose(k[2], k_default[2])
    # Default r0 is the sum of covalent radii, where k = 2 D a².
    r_cc = covalent_radius(torch.tensor([6])) * 2
    k_cc = resolve_coefficients("morse", {"D": 1.0, "a": 2.0})(PairContext(r_cc, torch.tensor([6]), torch.tensor([6])))
    assert torch.allclose(k_cc, torch.tensor([8.0], dtype=torch.float64))


def test_bond_aware_uses_bonds():
    target = torch.tensor([[0.0, 0, 0], [1.5, 0, 0], [3.0, 0.2, 0]], dtype=torch.float64)
    pred = target * 1.1
    bonds = torch.tensor([[0, 1], [1, 2]])
    e = pair_energy_loss(pred, target, coefficients="bond_aware", coefficient_kwargs={"k_bond": 3.0, "k0": 2.0},
                         bonds=bonds, reduction="sum", normalize=False)
    d = torch.cdist(target, target)
    dp = torch.cdist(pred, pred)
    expect = 0.5 * (3.0 * ((d - dp)[0, 1] ** 2 + (d - dp)[1, 2] ** 2) + 2.0 / d[0, 2] ** 2 * (d - dp)[0, 2] ** 2)
    assert torch.allclose(e, expect)


def test_registry_lists_every_builtin_scheme():
    builtin = {"constant", "inverse", "inverse_square", "exp", "bond_aware", "morse", "lennard_jones"}
    assert set(coefficient_names()) >= builtin
    with pytest.raises(ValueError, match="needs atomic numbers|Pass numbers"):
        pair_energy_loss(torch.randn(4, 3), torch.randn(4, 3), coefficients="morse")
