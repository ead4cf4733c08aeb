"""Read a dataset written by :func:`energyloss_plugins.data.build_dataset` into records or flat batches."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from energyloss_plugins.layouts import first_atoms, flat_numbers


@dataclass
class DatasetRecord:
    """One database row: an input geometry and its equilibrium target.

    Attributes:
        row_index: 0-based row index (the index used by ``split.npz`` and SchNetPack).
        mol_id: molecule id (shared by all inputs of a molecule).
        input_kind: ``"uff"``, ``"mmff"``, ``"xtb"``, ``"thermal"`` or ``"etkdg"``.
        numbers: ``(N,)`` long atomic numbers.
        positions: ``(N, 3)`` float64 input positions in Å.
        target_positions: ``(N, 3)`` float64 equilibrium positions in Å (same atom order).
        ref_energy: energy of the target under the reference method in eV (NaN if unknown).
        bonds: ``(M, 2)`` long bond list of the target, i < j.
        bond_orders: ``(M,)`` float64 Kekulé bond orders (1, 2, 3).
        formal_charges: ``(N,)`` long formal charges.
        smiles, method, source, name: strings from the row.
        input_rmsd: Kabsch-aligned RMSD input -> target in Å.
        spring_pairs, spring_k: ``(E, 2)`` long and ``(E,)`` float64 springs (eV/Å²) fitted to a
            calculator's Hessian (``energyloss_plugins.ase.add_springs_to_db``), or None.
    """

    row_index: int
    mol_id: int
    input_kind: str
    numbers: Tensor
    positions: Tensor
    target_positions: Tensor
    ref_energy: float
    bonds: Tensor
    bond_orders: Tensor
    formal_charges: Tensor
    smiles: str
    method: str
    source: str
    name: str
    input_rmsd: float
    spring_pairs: Tensor | None = None
    spring_k: Tensor | None = None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The database metadata (SchNetPack keys plus the ``energyloss`` entry), read without changing the file.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not an ASE database.
    """
    from energyloss_plugins.data.paths import ase_db_metadata

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No dataset at {path}; build one with `energyloss-data build`.")
    meta = ase_db_metadata(path)
    if meta is None:
        raise ValueError(f"path={path} is not an ASE database (build one with `energyloss-data build`).")
    return meta


#: What a structure database must hold, and how to make one (for error messages).
_DB_CONTRACT = (
    "It must be an ASE SQLite database whose rows hold the input geometry (the row's atoms) and "
    "row.data['target_positions'] ((N, 3) equilibrium positions, Å); build one with "
    "`energyloss-data build nci -o {path} --max-molecules 500` (see docs/data.md)."
)


#: What any molecule database must hold (diffusion, generation), and where such databases come from.
_ATOMS_DB_CONTRACT = (
    "It must be an ASE SQLite database of molecules with SchNetPack's metadata (_distance_unit, "
    "_property_unit_dict): one written by schnetpack.datasets.QM9/MD17, by ASEAtomsData.create + add_systems, "
    "or by `energyloss-data build` (see docs/data.md)."
)


def check_structure_db(path: str | os.PathLike, what: str = "path") -> None:
    """Check, without changing the file, that ``path`` is a structure database with targets.

    Args:
        path: the ``.db`` file.
        what: the argument's name in messages (e.g. ``"data.datapath"``).

    Raises:
        ValueError: missing file, not an ASE database, no rows, or rows without ``target_positions``;
            the message says what the database must contain and how to build one.
    """
    check_atoms_db(path, what, required="target_positions")


def check_atoms_db(path: str | os.PathLike, what: str = "path", required: str | None = None) -> None:
    """Check, without changing the file, that ``path`` is an ASE database SchNetPack can train from.

    Args:
        path: the ``.db`` file.
        what: the argument's name in messages (e.g. ``"data.datapath"``).
        required: a property every row must hold in ``row.data`` (e.g. ``"target_positions"`` for
            structure prediction); None for tasks that need atoms and positions only (diffusion,
            generation: a database written by ``schnetpack.datasets.QM9`` or ``MD17`` as it is).

    Raises:
        ValueError: missing file, not an ASE database, no rows, no SchNetPack units in the metadata,
            or rows without ``required``; the message says what the database must contain.
    """
    from energyloss_plugins.data.paths import ase_db_metadata

    path = os.path.abspath(os.fspath(path))
    contract = (_DB_CONTRACT if required == "target_positions" else _ATOMS_DB_CONTRACT).format(path=path)
    if not os.path.exists(path):
        raise ValueError(f"{what}={path} does not exist. {contract}")
    meta = ase_db_metadata(path)
    if meta is None:
        raise ValueError(f"{what}={path} is not an ASE database. {contract}")
    from ase.db import connect

    db = connect(path, type="db", use_lock_file=False)
    if db.count() == 0:
        raise ValueError(f"{what}={path} holds no rows. {contract}")
    if required is not None:
        row = db.get(id=next(db.select(limit=1, include_data=False)).id)
        if required not in row.data:
            raise ValueError(
                f"{what}={path}: its rows have no data[{required!r}] "
                f"(found: {sorted(row.data) or 'none'}). {contract} A database without targets (SchNetPack's "
                "QM9 or MD17 as written) trains diffusion and generation: experiment=energyloss_diffusion or "
                "energyloss_generation; or add the targets as a property (ASEAtomsData.create(..., "
                f"property_unit_dict={{{required!r}: 'Ang', ...}}), see docs/data.md)."
            )
    missing_units = [key for key in ("_distance_unit", "_property_unit_dict") if key not in meta]
    if missing_units:
        raise ValueError(f"{what}={path}: its metadata has no {' or '.join(missing_units)}, which SchNetPack needs "
                         f"(found: {sorted(meta) or 'none'}). {contract}")


def read_dataset(
    path: str | os.PathLike,
    indices: Iterable[int] | None = None,
    input_kinds: Sequence[str] | None = None,
) -> list[DatasetRecord]:
    """Read rows of a dataset as :class:`DatasetRecord` (torch tensors).

    Args:
        path: the ``.db`` file.
        indices: 0-based row indices (e.g. ``np.load("split.npz")["test_idx"]``); None for all rows.
        input_kinds: keep only these input kinds.
    """
    from ase.db import connect

    read_metadata(path)  # exists and is an ASE database (ase.db.connect would add tables to a foreign file)
    db = connect(os.fspath(path), type="db", use_lock_file=False)
    if indices is None:
        rows = list(db.select(sort="id"))
    else:
        n = db.count()
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ValueError(f"Row indices {bad[:5]} are out of range for a dataset of {n} rows (0-based).")
        rows = [db.get(id=i + 1) for i in idx]
    out = []
    for row in rows:
        kvp = row.key_value_pairs
        if input_kinds is not None and kvp.get("input_kind") not in input_kinds:
            continue
        data = row.data
        out.append(
            DatasetRecord(
                row_index=row.id - 1,
                mol_id=int(kvp.get("mol_id", row.id - 1)),
                input_kind=str(kvp.get("input_kind", "")),
                numbers=torch.tensor(np.array(row.numbers), dtype=torch.long),
                positions=torch.tensor(np.array(row.positions, dtype=np.float64)),
                target_positions=torch.tensor(np.array(data["target_positions"], dtype=np.float64)),
                ref_energy=float(np.asarray(data.get("ref_energy", [math.nan]))[0]),
                bonds=torch.tensor(np.array(data.get("bonds", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)),
                bond_orders=torch.tensor(np.array(data.get("bond_orders", np.zeros(0)), dtype=np.float64)),
                formal_charges=torch.tensor(
                    np.array(data.get("formal_charges", np.zeros(len(row.numbers))), dtype=np.int64)
                ),
                smiles=str(kvp.get("smiles", "")),
                method=str(kvp.get("method", "")),
                source=str(kvp.get("source", "")),
                name=str(kvp.get("name", "")),
                input_rmsd=float(kvp.get("input_rmsd", math.nan)),
                spring_pairs=torch.tensor(np.array(data["spring_pairs"], dtype=np.int64).reshape(-1, 2))
                if "spring_pairs" in data else None,
                spring_k=torch.tensor(np.array(data["spring_k"], dtype=np.float64)) if "spring_k" in data else None,
            )
        )
    return out


def read_split(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``train_idx``, ``val_idx``, ``test_idx`` (0-based row indices) from a split file (``<name>.split.npz``)."""
    keys = ("train_idx", "val_idx", "test_idx")
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            if not set(keys) <= set(z.files):
                raise ValueError(f"split file {path} has keys {sorted(z.files)}; expected {', '.join(keys)}.")
            return {k: np.asarray(z[k], dtype=np.int64) for k in keys}
    except (OSError, EOFError) as exc:  # missing, or not an npz archive
        raise ValueError(f"split file {path} cannot be read as a .npz split ({exc}).") from None


def collate_records(records: Sequence[DatasetRecord], dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Concatenate records into the flat layout used by the losses and metrics.

    Returns:
        ``numbers`` (N_total,) long, ``positions`` and ``target_positions`` (N_total, 3) ``dtype`` Å,
        ``batch`` (N_total,) long, ``bonds`` (2, M_total) long flat atom indices, ``bond_orders``
        (M_total,), ``formal_charges`` (N_total,) long, ``ref_energy`` (B,) eV, ``mol_id`` (B,) long.
    """
    if not records:
        raise ValueError("collate_records needs at least one record.")
    numbers, batch, counts = flat_numbers([r.numbers for r in records])
    starts = first_atoms(counts).tolist()
    return {
        "numbers": numbers,
        "positions": torch.cat([r.positions for r in records]).to(dtype),
        "target_positions": torch.cat([r.target_positions for r in records]).to(dtype),
        "batch": batch,
        "bonds": torch.cat([(r.bonds + o).T for r, o in zip(records, starts, strict=True)], dim=1),
        "bond_orders": torch.cat([r.bond_orders for r in records]),
        "formal_charges": torch.cat([r.formal_charges for r in records]),
        "ref_energy": torch.tensor([r.ref_energy for r in records], dtype=torch.float64),
        "mol_id": torch.tensor([r.mol_id for r in records], dtype=torch.long),
    }
