"""The end of a build: the partial build's rows copied in source order into ``<out>`` (atomically), with the
split file and the ``energyloss`` metadata entry (format, settings, summary, thresholds, units)."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from energyloss_plugins import chem
from energyloss_plugins.data.partial import connect_db
from energyloss_plugins.data.report import BuildReport
from energyloss_plugins.data.settings import FORMAT_VERSION, INPUT_DESCRIPTIONS, PROPERTY_UNITS, BuildSettings
from energyloss_plugins.data.splits import split_molecules
from energyloss_plugins.io import atomic_savez, atomic_write


def finalise(
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
    src = connect_db(partial)
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
        dst = connect_db(tmp)
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
