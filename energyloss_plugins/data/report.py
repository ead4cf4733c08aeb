"""The summary of a dataset build (:class:`BuildReport`), as text, JSON and from a database's metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


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


def fill_report_from_meta(report: BuildReport, meta: dict[str, Any]) -> None:
    """``report`` from a finished build's ``energyloss`` metadata entry and its split file."""
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
