"""What a dataset build is made of: methods, input kinds, units and the validated :class:`BuildSettings`."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from energyloss_plugins._checks import check_number
from energyloss_plugins.data.sources import SOURCE_NAMES, parse_elements, resolve_source
from energyloss_plugins.optional import require

#: Format version of the database the builder writes.
FORMAT_VERSION = 1
#: Reference methods for the targets.
METHODS = ("mmff", "xtb", "as-given")
#: Input kinds; ``cheap`` resolves to ``uff`` for MMFF targets and to ``mmff`` otherwise.
INPUT_KINDS = ("cheap", "uff", "mmff", "xtb", "thermal", "etkdg")
#: What ``cheap`` means for each method.
CHEAP_INPUT = {"mmff": "uff", "xtb": "mmff", "as-given": "mmff"}
#: Units of the properties SchNetPack reads (``_property_unit_dict``).
PROPERTY_UNITS = {"target_positions": "Ang", "ref_energy": "eV"}
#: What each input kind is, as stored in the database's metadata.
INPUT_DESCRIPTIONS = {
    "uff": "UFF (RDKit) relaxation started from the target: same basin, other force field",
    "mmff": "MMFF94 (RDKit) relaxation started from the target: same basin, cheap method",
    "xtb": "GFN2-xTB (tblite) relaxation started from the target",
    "thermal": "classical harmonic (normal-mode) Boltzmann sample around the target at the build temperature",
    "etkdg": "fresh ETKDGv3 embedding (unrelaxed) of the same stereoisomer: another conformer, "
    "equivalent atoms possibly permuted; use symmetry-aware metrics",
}


@dataclass(frozen=True)
class BuildSettings:
    """Everything that determines the content of a build (``max_molecules`` aside)."""

    source: str
    method: str
    inputs: tuple[str, ...]
    n_thermal: int
    temperature: float
    n_etkdg: int
    max_heavy_atoms: int | None
    elements: tuple[str, ...] | None
    seed: int
    split: tuple[float, float, float]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = list(self.inputs)
        d["elements"] = None if self.elements is None else list(self.elements)
        d["split"] = list(self.split)
        return d


def resolve_inputs(method: str, inputs: Iterable[str] | str) -> tuple[str, ...]:
    """Validate input kinds for a method and resolve ``cheap``; keeps the given order, drops repeats."""
    if isinstance(inputs, str):
        inputs = [s for s in inputs.replace(" ", ",").split(",") if s]
    out: list[str] = []
    for kind in inputs:
        if kind not in INPUT_KINDS:
            raise ValueError(f"Unknown input kind {kind!r}. Valid input kinds: {', '.join(INPUT_KINDS)}.")
        kind = CHEAP_INPUT[method] if kind == "cheap" else kind
        if kind == method:
            raise ValueError(
                f"Input kind {kind!r} with method {method!r} would relax the target with its own method and "
                f"return the target itself. Use 'cheap' (= {CHEAP_INPUT[method]!r} for method {method!r}) "
                "or another kind."
            )
        if kind not in out:
            out.append(kind)
    if not out:
        raise ValueError(f"inputs is empty; choose from {', '.join(INPUT_KINDS)}.")
    return tuple(out)


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    """(train, val, test) fractions, checked: non-negative, finite, summing to at most 1."""
    s = tuple(float(x) for x in split)
    if len(s) != 3 or any(x < 0 or not math.isfinite(x) for x in s) or not (0 < sum(s) <= 1 + 1e-9):
        raise ValueError(
            f"split must be three non-negative fractions (train, val, test) summing to at most 1, got {split}."
        )
    return s  # type: ignore[return-value]


def make_settings(
    source: str | os.PathLike,
    method: str = "mmff",
    inputs: Iterable[str] | str = ("cheap", "thermal"),
    n_thermal: int = 1,
    temperature: float = 300.0,
    n_etkdg: int = 1,
    max_heavy_atoms: int | None = None,
    elements: Iterable[str] | str | None = None,
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
) -> BuildSettings:
    """Validate builder arguments (clear ValueErrors) and return the settings record."""
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}. Valid methods: {', '.join(METHODS)}.")
    label, kind, path = resolve_source(source)
    if method == "as-given" and kind == "smiles":
        raise ValueError(
            "method='as-given' needs a structure file with relaxed geometries (xyz, extxyz, db, g2); a SMILES "
            "source has no geometry. Use method='mmff' or 'xtb' for SMILES."
        )
    kinds = resolve_inputs(method, inputs)
    for name, value in (("n_thermal", n_thermal), ("n_etkdg", n_etkdg)):
        check_number(name, value, low=1, low_inclusive=True, integer=True)
    check_number("seed", seed, low=0, low_inclusive=True, integer=True)
    if max_heavy_atoms is not None:
        check_number("max_heavy_atoms", max_heavy_atoms, low=1, low_inclusive=True, integer=True)
    if "xtb" in kinds or method == "xtb":
        require("tblite.ase", "GFN2-xTB (method or input 'xtb')", "xtb")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number of kelvin, got {temperature}.")
    return BuildSettings(
        source=label if os.fspath(source) in SOURCE_NAMES else path,
        method=method,
        inputs=kinds,
        n_thermal=int(n_thermal) if "thermal" in kinds else 0,
        temperature=float(temperature) if "thermal" in kinds else 0.0,
        n_etkdg=int(n_etkdg) if "etkdg" in kinds else 0,
        max_heavy_atoms=None if max_heavy_atoms is None else int(max_heavy_atoms),
        elements=parse_elements(elements),
        seed=int(seed),
        split=check_split(split),
    )
