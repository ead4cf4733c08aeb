"""Offline builder of structure-task datasets: equilibrium targets plus input geometries, in an ASE db.

One database row per (molecule, input geometry); see ``docs/data.md`` for the contract. The build
writes each molecule in one transaction into ``<out>.partial``; an interrupted build resumes from
there (molecules are identified by their source index, and every random choice is seeded from the
global seed and that index, so a resumed build equals an uninterrupted one). At the end the rows
are copied in source order into a temporary file beside ``<out>``, which replaces ``<out>``
atomically, and the split file (``<name>.split.npz``, see :mod:`energyloss_plugins.data.paths`) is
written the same way. An existing ``<out>`` is only replaced when this builder wrote it (its metadata
holds the ``energyloss`` entry) or with ``overwrite=True``.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from energyloss_plugins import chem
from energyloss_plugins._checks import check_number
from energyloss_plugins.chem import ChemError
from energyloss_plugins.data.paths import ase_db_metadata, check_output_path, split_file_for
from energyloss_plugins.data.seeds import EMBED_STREAM, ETKDG_STREAM, THERMAL_STREAM, seed_for
from energyloss_plugins.data.sources import (
    SOURCE_NAMES,
    SourceEntry,
    Structures,
    load_structures,
    parse_elements,
    resolve_source,
)
from energyloss_plugins.io import atomic_savez, atomic_write
from energyloss_plugins.optional import require

#: Format version of the database written by this module.
FORMAT_VERSION = 1
#: Reference methods for the targets.
METHODS = ("mmff", "xtb", "as-given")
#: Input kinds; ``cheap`` resolves to ``uff`` for MMFF targets and to ``mmff`` otherwise.
INPUT_KINDS = ("cheap", "uff", "mmff", "xtb", "thermal", "etkdg")
#: What ``cheap`` means for each method.
CHEAP_INPUT = {"mmff": "uff", "xtb": "mmff", "as-given": "mmff"}
#: Units of the properties SchNetPack reads (``_property_unit_dict``).
PROPERTY_UNITS = {"target_positions": "Ang", "ref_energy": "eV"}

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


@dataclass
class BuildReport:
    """Summary of a build.

    Attributes:
        path: the database.
        split_file: the split file (``<name>.split.npz`` beside the database by default).
        n_molecules: molecules written.
        n_rows: database rows (one per input geometry).
        rows_per_kind: input kind -> rows.
        filtered: reason -> source entries left out when reading the source (not processed).
        skipped: reason -> molecules processed but not written (embedding failed, no force-field
            parameters, not converged, ...).
        input_failures: ``"kind:reason"`` -> inputs that could not be made (the molecule is kept
            with its other inputs).
        median_input_rmsd: input kind -> median Kabsch-aligned RMSD (Å) between inputs and targets.
        n_train, n_val, n_test: rows per split.
        elapsed: seconds spent in this call.
        resumed: molecules taken over from an interrupted build.
        already_built: True when ``out`` was complete with the same settings and nothing was done.
    """

    path: str
    split_file: str
    n_molecules: int = 0
    n_rows: int = 0
    rows_per_kind: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    input_failures: dict[str, int] = field(default_factory=dict)
    median_input_rmsd: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    n_val: int = 0
    n_test: int = 0
    elapsed: float = 0.0
    resumed: int = 0
    already_built: bool = False

    def __str__(self) -> str:
        lines = [
            f"{self.path}: {self.n_molecules} molecules, {self.n_rows} rows "
            f"({', '.join(f'{k} {v}' for k, v in self.rows_per_kind.items())})",
            f"  split ({self.split_file}): train {self.n_train}, val {self.n_val}, test {self.n_test} rows",
            "  median aligned RMSD input->target (Å): "
            + ", ".join(f"{k} {v:.3f}" for k, v in self.median_input_rmsd.items()),
            f"  filtered from source: {_fmt_counts(self.filtered)}",
            f"  skipped molecules: {_fmt_counts(self.skipped)}",
            f"  failed inputs: {_fmt_counts(self.input_failures)}",
            f"  time: {self.elapsed:.1f} s"
            + (f" (resumed {self.resumed} molecules)" if self.resumed else "")
            + (" (already built)" if self.already_built else ""),
        ]
        return "\n".join(lines)


def _fmt_counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) if d else "none"


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


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


def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
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
        split=_check_split(split),
    )


# --------------------------------------------------------------------------------------------
# One molecule
# --------------------------------------------------------------------------------------------


@dataclass
class MoleculeResult:
    """A processed molecule: target, graph and input geometries (numpy, Å / eV)."""

    index: int
    name: str
    numbers: np.ndarray
    target: np.ndarray
    ref_energy: float
    target_fmax: float
    bonds: np.ndarray
    bond_orders: np.ndarray
    formal_charges: np.ndarray
    smiles: str
    n_heavy: int
    inputs: list[tuple[str, int, np.ndarray]]
    input_failures: dict[str, int]


def _target(entry: SourceEntry, s: BuildSettings) -> tuple[np.ndarray, Any, float, float]:
    """``(target positions, mol with conformer = target, ref energy eV, max force eV/Å)``."""
    if entry.smiles is not None:
        mol = chem.mol_from_smiles(entry.smiles)
        start = chem.embed(mol, seed_for(s.seed, entry.index, EMBED_STREAM))
    else:
        assert entry.numbers is not None and entry.positions is not None
        mol = chem.mol_from_xyz(entry.numbers, entry.positions, entry.charge)
        start = entry.positions
    if chem.n_fragments(mol) > 1:
        raise ChemError("multiple_fragments")
    if s.method == "as-given":
        pos, energy, fmax = np.array(start, dtype=np.float64), entry.energy, math.nan
    elif s.method == "mmff":
        pos, energy, fmax = chem.ff_relax(mol, start, "mmff")
        if fmax > chem.TARGET_FMAX:
            raise ChemError("target_not_converged", f"max force {fmax:.2e} eV/Å")
    else:  # xtb
        if entry.smiles is not None:
            try:  # pre-relax the embedding with MMFF: cheaper and a better start
                start, _, _ = chem.ff_relax(mol, start, "mmff")
            except ChemError:
                pass
        pos, energy, fmax = chem.xtb_relax(chem.atomic_numbers(mol), start, *chem.charge_and_multiplicity(mol))
        if not _same_connectivity(mol, pos):
            raise ChemError("topology_changed", "the GFN2-xTB relaxation broke or formed a bond")
    mol = chem.with_positions(mol, pos)
    chem.rdkit().AssignStereochemistryFrom3D(mol)
    return pos, mol, energy, fmax


def _same_connectivity(mol: Any, positions: np.ndarray) -> bool:
    probe = chem.bare_mol(chem.atomic_numbers(mol), positions)
    try:
        chem.rdkit("rdkit.Chem.rdDetermineBonds").DetermineConnectivity(probe)
    except Exception:
        return False
    a = {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))) for b in mol.GetBonds()}
    b = {tuple(sorted((x.GetBeginAtomIdx(), x.GetEndAtomIdx()))) for x in probe.GetBonds()}
    return a == b


def _thermal_hessian(
    kind_cache: dict[str, np.ndarray], mol: Any, numbers: np.ndarray, target: np.ndarray, s: BuildSettings
) -> np.ndarray:
    """Hessian (eV/Å²) of the reference method at its minimum in the target's basin.

    MMFF targets: MMFF94 at the target. GFN2-xTB targets: GFN2-xTB at the target. As-given targets:
    MMFF94 (UFF if MMFF has no parameters) at the force-field relaxation from the target.
    """
    if s.method == "mmff":
        return chem.ff_hessian(mol, target, "mmff")
    if s.method == "xtb":
        return chem.xtb_hessian(numbers, target, *chem.charge_and_multiplicity(mol))
    for ff in ("mmff", "uff"):
        try:
            relaxed = kind_cache[ff] if ff in kind_cache else chem.ff_relax(mol, target, ff)[0]
            return chem.ff_hessian(mol, relaxed, ff)
        except ChemError:
            continue
    raise ChemError("no_force_field_for_hessian")


def process_entry(entry: SourceEntry, s: BuildSettings) -> MoleculeResult:
    """Make the target, graph and inputs of one source entry (deterministic given ``s.seed``).

    Raises:
        ChemError: the molecule cannot be used (its ``reason`` is counted by the builder).
    """
    target, mol, energy, fmax = _target(entry, s)
    numbers = chem.atomic_numbers(mol)
    bonds, orders = chem.bond_arrays(mol)
    charge, mult = chem.charge_and_multiplicity(mol)
    inputs: list[tuple[str, int, np.ndarray]] = []
    failures: Counter[str] = Counter()
    relaxed: dict[str, np.ndarray] = {}
    for kind in s.inputs:
        try:
            if kind in ("uff", "mmff"):
                relaxed[kind] = chem.ff_relax(mol, target, kind)[0]
                inputs.append((kind, 0, relaxed[kind]))
            elif kind == "xtb":
                inputs.append((kind, 0, chem.xtb_relax(numbers, target, charge, mult)[0]))
            elif kind == "thermal":
                hess = _thermal_hessian(relaxed, mol, numbers, target, s)
                rng = np.random.default_rng(seed_for(s.seed, entry.index, THERMAL_STREAM))
                samples = chem.harmonic_samples(target, hess, s.temperature, s.n_thermal, rng)
                inputs.extend((kind, k, samples[k]) for k in range(s.n_thermal))
            elif kind == "etkdg":
                for k in range(s.n_etkdg):
                    inputs.append((kind, k, chem.embed(mol, seed_for(s.seed, entry.index, ETKDG_STREAM + k))))
        except ChemError as exc:
            failures[f"{kind}:{exc.reason}"] += 1
    if not inputs:
        raise ChemError("no_inputs", ", ".join(failures))
    smiles = entry.smiles if entry.smiles is not None else chem.canonical_smiles(mol)
    return MoleculeResult(
        index=entry.index,
        name=entry.name,
        numbers=numbers,
        target=target,
        ref_energy=float(energy),
        target_fmax=float(fmax),
        bonds=bonds,
        bond_orders=orders,
        formal_charges=chem.formal_charges(mol),
        smiles=smiles or "",
        n_heavy=int((numbers != 1).sum()),
        inputs=inputs,
        input_failures=dict(failures),
    )


def _safe_process(args: tuple[SourceEntry, BuildSettings]) -> MoleculeResult | tuple[int, str]:
    entry, s = args
    try:
        return process_entry(entry, s)
    except ChemError as exc:
        return entry.index, exc.reason
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except Exception as exc:  # an unexpected RDKit/tblite failure on one molecule is never fatal
        return entry.index, f"error:{type(exc).__name__}"


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


# --------------------------------------------------------------------------------------------
# Database I/O
# --------------------------------------------------------------------------------------------


def _connect(path: str) -> Any:
    from ase.db import connect

    return connect(path, type="db", use_lock_file=False, append=True)


def _row_kvp(
    res: MoleculeResult,
    s: BuildSettings,
    source: str,
    mol_id: int,
    input_index: int,
    kind: str,
    sample: int,
    rmsd: float,
) -> dict[str, Any]:
    kvp: dict[str, Any] = {
        "mol_id": int(mol_id),
        "input_kind": kind,
        "input_index": int(input_index),
        "sample": int(sample),
        "smiles": res.smiles,
        "method": s.method,
        "source": source,
        "source_index": int(res.index),
        "name": res.name,
        "n_heavy": int(res.n_heavy),
        "input_rmsd": float(rmsd),
    }
    if math.isfinite(res.target_fmax):
        kvp["target_fmax"] = float(res.target_fmax)
    return kvp


def _input_rmsds(res: MoleculeResult) -> list[float]:
    import torch

    from energyloss_plugins.alignment import aligned_rmsd

    tgt = torch.as_tensor(res.target, dtype=torch.float64)
    return [float(aligned_rmsd(torch.as_tensor(pos, dtype=torch.float64), tgt)[0]) for _, _, pos in res.inputs]


def _write_molecule(db: Any, res: MoleculeResult, s: BuildSettings, source: str) -> None:
    """All rows of one molecule in one transaction (``mol_id`` = source index until finalisation)."""
    from ase import Atoms

    data_common = {
        "target_positions": np.asarray(res.target, dtype=np.float64),
        "ref_energy": np.array([res.ref_energy], dtype=np.float64),
        "bonds": np.asarray(res.bonds, dtype=np.int64).reshape(-1, 2),
        "bond_orders": np.asarray(res.bond_orders, dtype=np.float64),
        "formal_charges": np.asarray(res.formal_charges, dtype=np.int64),
    }
    rmsds = _input_rmsds(res)
    with db:
        for k, ((kind, sample, pos), rmsd) in enumerate(zip(res.inputs, rmsds, strict=True)):
            atoms = Atoms(numbers=res.numbers, positions=np.asarray(pos, dtype=np.float64), pbc=False)
            db.write(
                atoms, key_value_pairs=_row_kvp(res, s, source, res.index, k, kind, sample, rmsd), data=data_common
            )


def _partial_state(path: str) -> tuple[dict[str, Any], set[int], dict[int, str], dict[int, dict[str, int]]]:
    """Settings, written source indices, skipped source indices and input failures of a partial build."""
    db = _connect(path)
    md = db.metadata
    state = md.get("energyloss_partial", {})
    done = {int(r.key_value_pairs["source_index"]) for r in db.select(include_data=False)}
    skipped = {int(k): v for k, v in state.get("skipped", {}).items()}
    failures = {int(k): v for k, v in state.get("input_failures", {}).items()}
    return state.get("settings", {}), done, skipped, failures


def _set_partial_state(
    db: Any, settings: dict[str, Any], skipped: dict[int, str], failures: dict[int, dict[str, int]]
) -> None:
    md = dict(db.metadata)
    md["energyloss_partial"] = {
        "settings": settings,
        "skipped": {str(k): v for k, v in sorted(skipped.items())},
        "input_failures": {str(k): v for k, v in sorted(failures.items())},
    }
    db.metadata = md


def _is_split_file(path: str) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"train_idx", "val_idx", "test_idx"} <= set(z.files)
    except Exception:
        return False


def split_molecules(mol_ids: np.ndarray, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Row indices of a split by molecule.

    Args:
        mol_ids: ``(n_rows,)`` molecule id of each row.
        fractions: (train, val, test) fractions of the molecules.
        seed: the global seed (the permutation is drawn from ``SeedSequence([seed, 'split'])``).

    Returns:
        ``train_idx``, ``val_idx``, ``test_idx``: sorted 0-based int64 row indices; all rows of a
        molecule are in the same split.
    """
    f = _check_split(fractions)
    mol_ids = np.asarray(mol_ids, dtype=np.int64)
    unique = np.unique(mol_ids)
    n = len(unique)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5B117]))
    perm = unique[rng.permutation(n)]
    n_train = int(round(f[0] * n))
    n_val = min(int(round(f[1] * n)), n - n_train)
    n_test = n - n_train - n_val if abs(sum(f) - 1) < 1e-9 else min(int(round(f[2] * n)), n - n_train - n_val)
    groups = (perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val : n_train + n_val + n_test])
    out = {}
    for name, group in zip(("train_idx", "val_idx", "test_idx"), groups, strict=True):
        out[name] = np.flatnonzero(np.isin(mol_ids, group)).astype(np.int64)
    return out


def _finalise(
    partial: str,
    out: str,
    split_file: str,
    s: BuildSettings,
    max_molecules: int | None,
    report: BuildReport,
    extra_meta: dict[str, Any],
) -> None:
    """Copy the partial build's rows into ``out`` in source order (the first ``max_molecules`` molecules,
    renumbered 0, 1, ...), with the split and the build summary in its metadata."""
    rows, mol_ids = _ordered_rows(partial, max_molecules)
    split = split_molecules(mol_ids, s.split, s.seed)
    _summarise(report, rows, s, split)
    report.n_molecules = len(np.unique(mol_ids))
    meta = {
        "_distance_unit": "Ang",
        "_property_unit_dict": dict(PROPERTY_UNITS),
        "atomrefs": {},
        "energyloss": _build_metadata(s, max_molecules, split_file, report, extra_meta),
    }
    _write_final(out, split_file, rows, mol_ids, meta, split)


def _ordered_rows(partial: str, max_molecules: int | None) -> tuple[list[Any], np.ndarray]:
    """The partial build's rows (with data) of the first ``max_molecules`` molecules in source order, and
    their final molecule ids ``(n_rows,)`` (0, 1, ... in that order)."""
    src = _connect(partial)
    rows = sorted(
        src.select(include_data=True),
        key=lambda r: (r.key_value_pairs["source_index"], r.key_value_pairs["input_index"]),
    )
    order = sorted({r.key_value_pairs["source_index"] for r in rows})
    if max_molecules is not None:
        order = order[:max_molecules]
    mol_of = {idx: i for i, idx in enumerate(order)}
    rows = [r for r in rows if r.key_value_pairs["source_index"] in mol_of]
    mol_ids = np.array([mol_of[r.key_value_pairs["source_index"]] for r in rows], dtype=np.int64)
    return rows, mol_ids


def _summarise(report: BuildReport, rows: list[Any], s: BuildSettings, split: dict[str, np.ndarray]) -> None:
    """Rows, rows and median input RMSD per input kind, and rows per split, into ``report``."""
    per_kind: Counter[str] = Counter(r.key_value_pairs["input_kind"] for r in rows)
    rmsd: dict[str, list[float]] = {}
    for r in rows:
        rmsd.setdefault(r.key_value_pairs["input_kind"], []).append(float(r.key_value_pairs["input_rmsd"]))
    report.n_rows = len(rows)
    report.rows_per_kind = {k: per_kind[k] for k in s.inputs if k in per_kind}
    report.median_input_rmsd = {k: float(np.median(rmsd[k])) for k in s.inputs if k in rmsd}
    report.n_train, report.n_val, report.n_test = (len(split[k]) for k in ("train_idx", "val_idx", "test_idx"))


def _build_metadata(s: BuildSettings, max_molecules: int | None, split_file: str, report: BuildReport,
                    extra_meta: dict[str, Any]) -> dict[str, Any]:
    """The database's ``energyloss`` metadata entry: format, settings, summary, thresholds and units."""
    return {
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "settings": {**s.to_json(), "max_molecules": max_molecules},
        "split_file": os.path.abspath(split_file),
        "n_molecules": report.n_molecules,
        "n_rows": report.n_rows,
        "rows_per_kind": report.rows_per_kind,
        "median_input_rmsd": report.median_input_rmsd,
        "filtered": report.filtered,
        "skipped": report.skipped,
        "input_failures": report.input_failures,
        "target_fmax_threshold": (
            chem.TARGET_FMAX if s.method == "mmff" else (chem.XTB_FMAX if s.method == "xtb" else None)
        ),
        "thermal_k_min": chem.THERMAL_K_MIN,
        "input_kinds": {k: INPUT_DESCRIPTIONS[k] for k in s.inputs},
        "units": {
            "positions": "Ang",
            "target_positions": "Ang",
            "ref_energy": "eV",
            "input_rmsd": "Ang",
            "target_fmax": "eV/Ang",
        },
        **extra_meta,
    }


def _write_final(out: str, split_file: str, rows: list[Any], mol_ids: np.ndarray, meta: dict[str, Any],
                 split: dict[str, np.ndarray]) -> None:
    """Write the rows (``mol_id`` = ``mol_ids``) and ``meta`` into a temporary file beside ``out``, the split
    file, then move the database into place."""
    with atomic_write(out) as tmp:
        dst = _connect(tmp)
        with dst:
            dst.metadata = meta
            for r, mid in zip(rows, mol_ids.tolist(), strict=True):
                kvp = dict(r.key_value_pairs)
                kvp["mol_id"] = int(mid)
                dst.write(r.toatoms(), key_value_pairs=kvp, data=dict(r.data))
        atomic_savez(split_file, **split)


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("energyloss-plugins")
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def build_dataset(
    source: str | os.PathLike = "nci",
    out: str | os.PathLike = "energyloss_data.db",
    *,
    method: str = "mmff",
    inputs: Iterable[str] | str = ("cheap", "thermal"),
    n_thermal: int = 1,
    temperature: float = 300.0,
    n_etkdg: int = 1,
    max_molecules: int | None = None,
    max_heavy_atoms: int | None = None,
    elements: Iterable[str] | str | None = None,
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    split_file: str | os.PathLike | None = None,
    resume: bool = True,
    overwrite: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> BuildReport:
    """Build an ASE database of equilibrium targets and input geometries (see ``docs/data.md``).

    Args:
        source: ``"nci"`` (RDKit's bundled NCI first_5K.smi), ``"g2"`` (ase.collections.g2), a
            ``.smi`` file, or any ASE-readable structure file (xyz, extxyz(.gz), sdf, ASE db).
        out: database path (``.db``).
        method: how targets are made: ``"mmff"`` (MMFF94 minimum, RDKit), ``"xtb"`` (GFN2-xTB
            minimum, tblite) or ``"as-given"`` (the file's geometry, bonds perceived with RDKit).
        inputs: input kinds, in row order per molecule: ``"cheap"`` (= ``"uff"`` for MMFF targets,
            ``"mmff"`` otherwise), ``"uff"``, ``"mmff"``, ``"xtb"`` (relaxations started from the
            target), ``"thermal"`` (harmonic Boltzmann samples at ``temperature``), ``"etkdg"``
            (fresh embeddings).
        n_thermal: thermal samples per molecule.
        temperature: K, for the thermal inputs.
        n_etkdg: ETKDG embeddings per molecule.
        max_molecules: stop after this many molecules (the first ones in source order that succeed).
        max_heavy_atoms: keep molecules with at most this many non-hydrogen atoms.
        elements: allowed elements (H implied), e.g. ``"C,N,O,F"``.
        seed: global seed; every molecule's random choices derive from (seed, source index).
        split: (train, val, test) fractions of molecules.
        split_file: path of the split; default ``<name>.split.npz`` beside ``out`` (``<name>.db``).
        resume: continue an interrupted build of the same settings from ``<out>.partial`` (and do
            nothing if ``out`` is already complete with these settings); False starts over.
        overwrite: replace ``out`` (and ``split_file``) even when this builder did not write it.
            Without it an existing file is only replaced when it is a database built here.
        workers: processes (1: in this process).
        progress: show a tqdm progress bar.

    Returns:
        :class:`BuildReport`.
    """
    t0 = time.perf_counter()
    require("rdkit", "build_dataset", "data")
    s = make_settings(source, method, inputs, n_thermal, temperature, n_etkdg, max_heavy_atoms, elements, seed, split)
    if max_molecules is not None:
        max_molecules = int(check_number("max_molecules", max_molecules, low=1, low_inclusive=True, integer=True))
    check_number("workers", workers, low=1, low_inclusive=True, integer=True)
    out, split_path = _output_paths(out, split_file, overwrite)
    partial = out + ".partial"
    report = BuildReport(path=out, split_file=split_path)
    if resume and _already_built(report, partial, s, max_molecules):
        report.elapsed = time.perf_counter() - t0
        return report
    if os.path.exists(partial) and (not resume or "energyloss_partial" not in (ase_db_metadata(partial) or {})):
        os.remove(partial)  # a partial of ours when starting over, or (overwrite) a foreign file in its place

    structures = load_structures(s.source, max_heavy_atoms=s.max_heavy_atoms, elements=s.elements)
    report.filtered = dict(structures.skipped)
    db, done, skipped, failures = _open_partial(partial, s.to_json())
    report.resumed = len(done)
    _run(structures, s, db, done, skipped, failures, max_molecules, workers, progress)
    _count_failures(report, done, skipped, failures, max_molecules)
    if not done:
        _refuse_empty(partial, out, s, skipped, report)
    source_meta = {"source_label": structures.source, "n_source_entries": structures.n_read}
    _finalise(partial, out, split_path, s, max_molecules, report, source_meta)
    os.remove(partial)
    report.elapsed = time.perf_counter() - t0
    return report


def _output_paths(out: str | os.PathLike, split_file: str | os.PathLike | None, overwrite: bool) -> tuple[str, str]:
    """Absolute paths of the database and the split file, checked before any work: the locations are
    writable and replacing them (or the database's ``.partial``) loses nothing of the user's."""
    out = os.path.abspath(os.fspath(out))
    if not out.endswith(".db"):
        raise ValueError(f"out must end with .db (an ASE sqlite database SchNetPack can read), got {out}.")
    split_path = os.path.abspath(os.fspath(split_file)) if split_file is not None else split_file_for(out)
    if split_path == out:
        raise ValueError(f"split_file and out are the same file ({out}); give the split its own name.")
    check_output_path(out, "out", "energyloss", overwrite)
    check_output_path(out + ".partial", "out", "energyloss_partial", overwrite)
    check_output_path(split_path, "split_file", None, overwrite or _is_split_file(split_path))
    try:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        os.makedirs(os.path.dirname(split_path), exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the folder of out={out} or split_file={split_path}: {exc}") from None
    return out, split_path


def _already_built(report: BuildReport, partial: str, s: BuildSettings, max_molecules: int | None) -> bool:
    """True (and ``report`` filled, the split file restored) when ``report.path`` is a complete build of
    these settings and no partial build is pending."""
    out = report.path
    if not os.path.exists(out) or os.path.exists(partial):
        return False
    done_meta = _complete_metadata(out)
    if done_meta is None or done_meta.get("settings") != {**s.to_json(), "max_molecules": max_molecules}:
        return False
    _ensure_split(out, report.split_file, s)
    _fill_report_from_meta(report, done_meta)
    report.already_built = True
    return True


def _open_partial(
    partial: str, settings_json: dict[str, Any]
) -> tuple[Any, set[int], dict[int, str], dict[int, dict[str, int]]]:
    """The partial database (created with these settings if absent) and the state of an interrupted build:
    written source indices, skipped ones (index -> reason) and input failures.

    Raises:
        ValueError: the interrupted build has other settings.
    """
    done: set[int] = set()
    skipped: dict[int, str] = {}
    failures: dict[int, dict[str, int]] = {}
    if os.path.exists(partial):
        old, done, skipped, failures = _partial_state(partial)
        if old and old != settings_json:
            diff = sorted(k for k in settings_json if old.get(k) != settings_json[k])
            raise ValueError(
                f"An interrupted build with other settings ({', '.join(diff)}) exists at {partial}. Rerun with the "
                f"same settings to resume it, or pass resume=False (CLI: --no-resume) to start over."
            )
    db = _connect(partial)
    if "energyloss_partial" not in db.metadata:
        with db:
            db.metadata = {"_distance_unit": "Ang", "_property_unit_dict": dict(PROPERTY_UNITS), "atomrefs": {}}
            _set_partial_state(db, settings_json, skipped, failures)
    return db, done, skipped, failures


def _count_failures(report: BuildReport, done: set[int], skipped: dict[int, str],
                    failures: dict[int, dict[str, int]], max_molecules: int | None) -> None:
    """Skipped molecules and failed inputs of this build into ``report`` (with ``max_molecules``, only
    those up to the last molecule kept)."""
    counted = sorted(done)[:max_molecules] if max_molecules is not None else sorted(done)
    # with max_molecules, entries after the last molecule kept were not part of this build
    cutoff = counted[-1] if max_molecules is not None and len(counted) == max_molecules else math.inf
    report.skipped = dict(sorted(Counter(v for k, v in skipped.items() if k < cutoff).items()))
    fail_total: Counter[str] = Counter()
    for idx in counted:
        fail_total.update(failures.get(idx, {}))
    report.input_failures = dict(sorted(fail_total.items()))


def _refuse_empty(partial: str, out: str, s: BuildSettings, skipped: dict[int, str], report: BuildReport) -> None:
    """No molecule could be processed: drop the partial build and say why (an empty database would only
    fail later, in training)."""
    os.remove(partial)
    reasons = Counter(skipped.values())
    reasons.update(report.filtered)
    why = "; ".join(f"{n} {reason}" for reason, n in reasons.most_common(5))
    raise ValueError(f"source {s.source!r}: no molecule could be processed ({why or 'no entries'}); nothing "
                     f"was written to {out}. Check the source file and --elements/--max-heavy-atoms.")


def _run(
    structures: Structures,
    s: BuildSettings,
    db: Any,
    done: set[int],
    skipped: dict[int, str],
    failures: dict[int, dict[str, int]],
    max_molecules: int | None,
    workers: int,
    progress: bool,
) -> None:
    """Process the entries not done yet, in source order, until ``max_molecules`` are written."""
    from tqdm.auto import tqdm

    target = len(structures) if max_molecules is None else max_molecules
    n_ok = 0
    pending = [e for e in structures if e.index not in done and e.index not in skipped]
    bar = tqdm(
        total=min(target, len(structures)), unit="mol", desc="energyloss-data", disable=not progress, dynamic_ncols=True
    )
    pool = None
    try:
        results: Iterator[MoleculeResult | tuple[int, str]]
        if workers > 1 and len(pending) > 1:
            import multiprocessing as mp

            # fork (Linux): workers run RDKit/numpy/tblite only, and scripts need no __main__ guard
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded process, fork()"
                pool = mp.get_context(method).Pool(workers, initializer=_worker_init)
            results = pool.imap(_safe_process, ((e, s) for e in pending), chunksize=1)
        else:
            results = (_safe_process((e, s)) for e in pending)
        for entry in structures:
            if n_ok >= target:
                break
            if entry.index in done:
                n_ok += 1
                bar.update(1)
                continue
            if entry.index in skipped:
                continue
            res = next(results)
            if isinstance(res, tuple):
                assert res[0] == entry.index
                skipped[res[0]] = res[1]
                with db:
                    _set_partial_state(db, s.to_json(), skipped, failures)
            else:
                assert res.index == entry.index
                if res.input_failures:
                    failures[res.index] = res.input_failures
                    with db:
                        _set_partial_state(db, s.to_json(), skipped, failures)
                _write_molecule(db, res, s, structures.source)
                done.add(res.index)
                n_ok += 1
                bar.update(1)
            bar.set_postfix(skipped=len(skipped), refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def _complete_metadata(path: str) -> dict[str, Any] | None:
    md = ase_db_metadata(path)
    return None if md is None else md.get("energyloss")


def _ensure_split(out: str, split_path: str, s: BuildSettings) -> None:
    """(Re)write the split of a complete database unless the file already holds it.

    The split is a function of the rows' molecule ids, the fractions and the seed, so a split file
    replaced by another build (the old shared ``split.npz``) or deleted is restored exactly.
    """
    from ase.db import connect

    db = connect(out, type="db", use_lock_file=False)
    mol_ids = np.array([r.key_value_pairs["mol_id"] for r in db.select(sort="id", include_data=False)], dtype=np.int64)
    split = split_molecules(mol_ids, s.split, s.seed)
    if _is_split_file(split_path):
        with np.load(split_path, allow_pickle=False) as z:
            if all(np.array_equal(z[k], split[k]) for k in split):
                return
    atomic_savez(split_path, **split)


def _fill_report_from_meta(report: BuildReport, meta: dict[str, Any]) -> None:
    report.n_molecules = meta.get("n_molecules", 0)
    report.n_rows = meta.get("n_rows", 0)
    report.rows_per_kind = meta.get("rows_per_kind", {})
    report.median_input_rmsd = meta.get("median_input_rmsd", {})
    report.filtered = meta.get("filtered", {})
    report.skipped = meta.get("skipped", {})
    report.input_failures = meta.get("input_failures", {})
    try:
        with np.load(report.split_file, allow_pickle=False) as z:
            report.n_train, report.n_val, report.n_test = (len(z[k]) for k in ("train_idx", "val_idx", "test_idx"))
    except Exception:
        pass


def report_json(report: BuildReport) -> str:
    """The report as JSON (for the CLI's ``--json``)."""
    return json.dumps(asdict(report), indent=2)
