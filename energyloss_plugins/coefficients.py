"""Spring coefficients k_ij(y) of the pair energy, selected by name (SPEC §2).

A scheme is a function ``fn(pairs: PairContext, **params) -> Tensor (E,)`` returning springs in
eV/Å² for each pair from the *reference* structure only. Coefficients never carry gradient.

Built-in schemes (``d`` = reference distance in Å):

=================  ============================================  ===========================
name               k_ij                                          parameters (defaults)
=================  ============================================  ===========================
constant           k0                                            k0=1.0
inverse            k0 / d                                        k0=1.0
inverse_square     k0 / d²                                       k0=1.0
exp                k0 exp(-d / length_scale)                     k0=1.0, length_scale=1.0
bond_aware         k_bond if bonded else k0 / d²                 k_bond=1.0, k0=1.0
morse              φ''(d), φ = D (1 - e^{-a(r - r0)})²           D=1.0, a=2.0, r0=None, params, k_min
lennard_jones      φ''(d), φ = ε((r_min/r)^12 - 2(r_min/r)^6)    epsilon=1.0, r_min=None, params, k_min
hessian            springs stored per structure with the data    (fitted by energyloss_plugins.ase)
=================  ============================================  ===========================

For the pair potentials, ``r0`` (Morse) and ``r_min`` (LJ; σ = r_min / 2^{1/6}) default to the sum
of covalent radii of the two elements, so the potential's minimum sits at a typical bond length;
``params`` maps an element pair ``(Z_a, Z_b)`` to its own parameter dict. Their second derivative
is negative beyond the inflection point, so k is clipped below at ``k_min`` (default 1e-3) to keep
every pair a (weak) spring and the minimiser set unchanged.

Register a custom scheme with :func:`register_coefficients`, or pass a callable directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.elements import covalent_radius

CoefficientFn = Callable[..., Tensor]

_REGISTRY: dict[str, CoefficientFn] = {}
_NEEDS: dict[str, set[str]] = {}


@dataclass
class PairContext:
    """What a coefficient scheme may use about each pair of the reference structure.

    Attributes:
        distance: ``(E,)`` reference distance |y_i - y_j| in Å.
        z_i, z_j: ``(E,)`` atomic numbers of the two atoms, or None if not given.
        bonded: ``(E,)`` bool, True for covalent bonds, or None if no bond list was given.
    """

    distance: Tensor
    z_i: Tensor | None = None
    z_j: Tensor | None = None
    bonded: Tensor | None = None


def register_coefficients(name: str, needs: tuple[str, ...] = ()) -> Callable[[CoefficientFn], CoefficientFn]:
    """Decorator adding a scheme to the registry. ``needs`` lists required inputs ("numbers", "bonds")."""

    def deco(fn: CoefficientFn) -> CoefficientFn:
        _REGISTRY[name] = fn
        _NEEDS[name] = set(needs)
        return fn

    return deco


def coefficient_names() -> list[str]:
    """Names of the registered schemes."""
    return sorted(_REGISTRY)


#: Parameters of the built-in schemes that are lengths or strengths: > 0 (``k_min``: >= 0).
_POSITIVE = {"k0", "length_scale", "k_bond", "D", "a", "r0", "epsilon", "r_min"}
_NON_NEGATIVE = {"k_min"}


def _check_param(name: str, value: object, nullable: bool = True) -> None:
    """``nullable``: None is the scheme's own default for this parameter (e.g. morse ``r0`` from radii)."""
    if value is None and nullable:
        return
    if name in _POSITIVE:
        _checks.check_number(f"coefficient_kwargs[{name!r}]", value, low=0.0)
    elif name in _NON_NEGATIVE:
        _checks.check_number(f"coefficient_kwargs[{name!r}]", value, low=0.0, low_inclusive=True)


def check_coefficient_params(name: str, fn: CoefficientFn, params: Mapping) -> None:
    """Validate a built-in scheme's parameters: known names, valid ranges (also per element pair)."""
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = [p for p in sig.parameters if p != next(iter(sig.parameters))]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"Unknown coefficient_kwargs {unknown} for scheme {name!r}. Valid: {', '.join(valid) or 'none'}."
        )
    for key, value in params.items():
        if key == "params":
            for override in dict(value or {}).values():
                for k, v in dict(override).items():
                    _check_param(k, v)
        else:
            _check_param(key, value, nullable=sig.parameters[key].default is None)


def resolve_coefficients(scheme: str | CoefficientFn, params: Mapping | None = None) -> Callable[[PairContext], Tensor]:
    """Turn a scheme name or callable plus parameters into ``fn(PairContext) -> (E,)`` springs.

    Raises:
        ValueError: an unknown name (valid names listed), per-pair springs given as a list or array
            (they must be a tensor with ``edge_index``), or a built-in scheme's parameter that is
            unknown or out of range (e.g. ``length_scale <= 0``).
    """
    if params is not None and not isinstance(params, Mapping):
        raise ValueError(f"coefficient_kwargs must be a dict of scheme parameters, got {type(params).__name__}.")
    params = dict(params or {})
    if callable(scheme):
        fn, name = scheme, getattr(scheme, "__name__", "custom")
    elif isinstance(scheme, str):
        _checks.check_choice("coefficient scheme", scheme, _REGISTRY)
        fn, name = _REGISTRY[scheme], scheme
        check_coefficient_params(name, fn, params)
    else:
        raise ValueError(
            f"coefficients must be a scheme name ({', '.join(coefficient_names())}), a callable, or per-pair "
            f"springs as a (E,) torch.Tensor together with edge_index=; got a {type(scheme).__name__}"
            + (" (convert it with torch.tensor(...) and pass edge_index=)." if not isinstance(scheme, Tensor) else ".")
        )

    def evaluate(ctx: PairContext) -> Tensor:
        with torch.no_grad():
            if "numbers" in _NEEDS.get(name, ()) and ctx.z_i is None:
                raise ValueError(f"Coefficient scheme {name!r} needs atomic numbers: pass numbers=.")
            if "bonds" in _NEEDS.get(name, ()) and ctx.bonded is None:
                raise ValueError(f"Coefficient scheme {name!r} needs a bond list: pass bonds= (2, M) atom pairs.")
            k = fn(ctx, **params)
            if not isinstance(k, Tensor) or k.shape != ctx.distance.shape:
                raise ValueError(
                    f"Coefficient scheme {name!r} must return a tensor of shape {tuple(ctx.distance.shape)}."
                )
            # Two plain reductions instead of isfinite/any (≈ 6 passes over k): the minimum is NaN
            # or negative for NaN or negative springs, the sum non-finite for any Inf.
            if k.numel() and not (bool(k.min() >= 0) and bool(torch.isfinite(k.sum()))):
                raise ValueError(
                    f"Coefficient scheme {name!r} returned negative or non-finite springs; k must be >= 0."
                )
            return k.to(ctx.distance.dtype)

    return evaluate


@register_coefficients("constant")
def constant(ctx: PairContext, k0: float = 1.0) -> Tensor:
    return torch.full_like(ctx.distance, k0)


@register_coefficients("inverse")
def inverse(ctx: PairContext, k0: float = 1.0) -> Tensor:
    return k0 / ctx.distance.clamp_min(1e-6)


@register_coefficients("inverse_square")
def inverse_square(ctx: PairContext, k0: float = 1.0) -> Tensor:
    return k0 / ctx.distance.clamp_min(1e-6) ** 2


@register_coefficients("exp")
def exp(ctx: PairContext, k0: float = 1.0, length_scale: float = 1.0) -> Tensor:
    # The exponent is capped at 80 (k ≈ 2e-35 k0, still a normal float32): beyond it exp underflows
    # to denormals, which take a slow path in every following operation (large structures).
    return k0 * torch.exp(-(ctx.distance / length_scale).clamp(max=80.0))


@register_coefficients("bond_aware", needs=("bonds",))
def bond_aware(ctx: PairContext, k_bond: float = 1.0, k0: float = 1.0) -> Tensor:
    assert ctx.bonded is not None
    return torch.where(ctx.bonded, torch.full_like(ctx.distance, k_bond), k0 / ctx.distance.clamp_min(1e-6) ** 2)


@register_coefficients("hessian")
def hessian(ctx: PairContext, **unused) -> Tensor:
    # A name, not a formula: the springs fitted per structure (energyloss_plugins.ase) are stored
    # with the data and substituted by the task objectives (energyloss_plugins.config.LossConfig.evaluate).
    raise ValueError(
        "coefficients 'hessian' means the springs stored with each structure: pass them as "
        "pair_energy_loss(..., edge_index=pairs, coefficients=k), or train through a task objective, "
        "which reads them from the batch (fit them with energyloss_plugins.ase.add_springs_to_db)."
    )


def _pair_params(ctx: PairContext, defaults: dict[str, float | None], params: Mapping | None) -> dict[str, Tensor]:
    """Per-pair parameter tensors from global defaults and ``{(Za, Zb): {...}}`` overrides."""
    out = {}
    for key, value in defaults.items():
        if value is None:  # length defaults to the sum of covalent radii
            if ctx.z_i is None:
                raise ValueError(f"Pass numbers= or an explicit {key}= for the pair-potential coefficients.")
            out[key] = (covalent_radius(ctx.z_i) + covalent_radius(ctx.z_j)).to(ctx.distance.dtype)
        else:
            out[key] = torch.full_like(ctx.distance, float(value))
    for (za, zb), override in (params or {}).items():
        if ctx.z_i is None:
            raise ValueError("Element-pair parameters need atomic numbers: pass numbers=.")
        sel = ((ctx.z_i == za) & (ctx.z_j == zb)) | ((ctx.z_i == zb) & (ctx.z_j == za))
        for key, value in override.items():
            if key not in out:
                raise ValueError(f"Unknown pair-potential parameter {key!r}; valid: {', '.join(out)}.")
            out[key] = torch.where(sel, torch.full_like(out[key], float(value)), out[key])
    return out


@register_coefficients("morse")
def morse(ctx: PairContext, D: float = 1.0, a: float = 2.0, r0: float | None = None,
          params: Mapping | None = None, k_min: float = 1e-3) -> Tensor:
    p = _pair_params(ctx, {"D": D, "a": a, "r0": r0}, params)
    e = torch.exp(-p["a"] * (ctx.distance - p["r0"]))
    return (2 * p["D"] * p["a"] ** 2 * e * (2 * e - 1)).clamp_min(k_min)


@register_coefficients("lennard_jones")
def lennard_jones(ctx: PairContext, epsilon: float = 1.0, r_min: float | None = None,
                  params: Mapping | None = None, k_min: float = 1e-3) -> Tensor:
    # φ = ε((r_min/r)^12 - 2 (r_min/r)^6), i.e. σ = r_min / 2^{1/6}; φ''(r_min) = 72 ε / r_min².
    p = _pair_params(ctx, {"epsilon": epsilon, "r_min": r_min}, params)
    d = ctx.distance.clamp_min(1e-6)
    x6 = (p["r_min"] / d) ** 6
    return (p["epsilon"] * (156 * x6**2 - 84 * x6) / d**2).clamp_min(k_min)


def scheme_function(scheme: str | CoefficientFn) -> CoefficientFn:
    """The raw scheme ``fn(PairContext, **params) -> (E,)`` of a name or callable, without the checks
    :func:`resolve_coefficients` adds (the ``validate_args=False`` path of the losses, which must not
    read values back to the host), e.g. to inspect its parameters."""
    if callable(scheme):
        return scheme
    _checks.check_choice("coefficient scheme", scheme, _REGISTRY)
    return _REGISTRY[scheme]
