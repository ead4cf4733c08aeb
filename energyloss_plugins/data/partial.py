"""The partial build ``<out>.partial``: one transaction per molecule, and the state a resumed build reads
back (settings, molecules written, molecules skipped, inputs that failed)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from energyloss_plugins.data.inputs import MoleculeResult
from energyloss_plugins.data.paths import ase_db_metadata
from energyloss_plugins.data.settings import PROPERTY_UNITS, BuildSettings


def connect_db(path: str) -> Any:
    """The ASE sqlite database at ``path`` (created if absent), without a lock file: one writer, this process."""
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


def write_molecule(db: Any, res: MoleculeResult, s: BuildSettings, source: str) -> None:
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


def partial_state(path: str) -> tuple[dict[str, Any], set[int], dict[int, str], dict[int, dict[str, int]]]:
    """Settings, written source indices, skipped source indices and input failures of a partial build."""
    db = connect_db(path)
    md = db.metadata
    state = md.get("energyloss_partial", {})
    done = {int(r.key_value_pairs["source_index"]) for r in db.select(include_data=False)}
    skipped = {int(k): v for k, v in state.get("skipped", {}).items()}
    failures = {int(k): v for k, v in state.get("input_failures", {}).items()}
    return state.get("settings", {}), done, skipped, failures


def set_partial_state(
    db: Any, settings: dict[str, Any], skipped: dict[int, str], failures: dict[int, dict[str, int]]
) -> None:
    md = dict(db.metadata)
    md["energyloss_partial"] = {
        "settings": settings,
        "skipped": {str(k): v for k, v in sorted(skipped.items())},
        "input_failures": {str(k): v for k, v in sorted(failures.items())},
    }
    db.metadata = md


def open_partial(
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
        old, done, skipped, failures = partial_state(partial)
        if old and old != settings_json:
            diff = sorted(k for k in settings_json if old.get(k) != settings_json[k])
            raise ValueError(
                f"An interrupted build with other settings ({', '.join(diff)}) exists at {partial}. Rerun with the "
                f"same settings to resume it, or pass resume=False (CLI: --no-resume) to start over."
            )
    db = connect_db(partial)
    if "energyloss_partial" not in db.metadata:
        with db:
            db.metadata = {"_distance_unit": "Ang", "_property_unit_dict": dict(PROPERTY_UNITS), "atomrefs": {}}
            set_partial_state(db, settings_json, skipped, failures)
    return db, done, skipped, failures


def complete_metadata(path: str) -> dict[str, Any] | None:
    """The ``energyloss`` metadata entry of a finished build at ``path``; None for any other file."""
    md = ase_db_metadata(path)
    return None if md is None else md.get("energyloss")
