"""Console script ``energyloss-evaluate``: EDM's metrics of a file of molecules (samples or a dataset),
connectivity, and distances to a reference set.

energyloss-evaluate samples.extxyz --train qm7/data.db --json metrics.json
energyloss-evaluate samples.extxyz --reference qm7/data.db --json metrics.json   # distances, no novelty
energyloss-evaluate qm7/data.db --positions target          # the dataset's own equilibrium geometries
energyloss-evaluate ../shared/data/qm7/qm7_pbe0.extxyz.gz

Reads any ``ase.io`` format (extxyz, xyz, sdf, ASE db, ...). For an ASE database built by
``energyloss-data build``, ``--positions target`` takes the equilibrium geometries stored in each
row's data (``target_positions``) instead of the input geometries, once per molecule (``mol_id``).
``--train DB`` gives novelty: the training molecules (the ``train_idx`` rows of the database's split file
beside the database when it exists, else all rows; targets when stored) go through the same
bond/SMILES pipeline as the samples; a training set without a valid molecule reports novelty as
unavailable. ``--reference FILE|DB`` (default: the ``--train`` set, read the same way) gives
Wasserstein-1 distances of bond lengths (Å), bond angles and dihedrals (degrees) and radii of
gyration (Å), and the Fréchet ChemNet distance (the ``[metrics]`` extra). Periodic structures
(crystals) are refused: the metrics are for molecules. ``--json PATH`` is checked before any work
and never replaces a file without ``--overwrite`` (``--json -`` prints it). User errors print one
line and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from energyloss_plugins._checks import check_number
from energyloss_plugins.console import ArgumentParser, console_script, positive_int
from energyloss_plugins.io import atomic_write_text, check_output_path, read_structures
from energyloss_plugins.optional import add_version_option, require

#: Which geometry of a row to evaluate: the atoms' positions, or the builder's ``target_positions``.
POSITIONS = ("atoms", "target")

_LABELS = {
    "n": "molecules",
    "atom_stability": "atom stability",
    "mol_stability": "molecule stability",
    "validity": "validity",
    "uniqueness": "uniqueness (of valid)",
    "valid_unique": "valid and unique",
    "novelty": "novelty (of valid unique)",
    "non_finite": "non-finite (diverged)",
    "connected": "connected (one fragment)",
    "valid_and_connected": "valid and connected",
    "mean_fragments": "fragments per molecule",
}

#: Distances to the reference set: key -> (label, unit).
_DISTANCES = {
    "bond_length_distance": ("bond lengths W1", "Å"),
    "bond_angle_distance": ("bond angles W1", "°"),
    "dihedral_distance": ("dihedrals W1", "°"),
    "rg_distance": ("radius of gyration W1", "Å"),
    "fcd": ("FCD", ""),
}


def _is_database(path: str) -> bool:
    return path.endswith((".db", ".sqlite", ".sqlite3"))


def read_molecules(path: str, positions: str = "atoms", rows: Sequence[int] | None = None,
                   limit: int | None = None) -> list[Any]:
    """Molecules of a structure file as ``ase.Atoms``.

    Args:
        path: any ``ase.io`` file; an ASE database (``.db``) is read row by row.
        positions: ``atoms`` (the stored positions) or ``target`` (``row.data["target_positions"]`` of a
            database built by ``energyloss-data``; one row per ``mol_id``).
        rows: 0-based database rows to read (e.g. a split's ``train_idx``); None: all.
        limit: read at most this many molecules.

    Raises:
        FileNotFoundError: no such file. ValueError: bad ``positions`` or a row without targets.
    """
    from ase import Atoms

    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}.")
    if limit is not None:
        limit = check_number("limit", limit, low=1, low_inclusive=True, integer=True)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No file {path}.")
    if not _is_database(path) or os.path.isdir(path):
        if positions == "target" or rows is not None:
            raise ValueError(f"positions='target' and rows apply to ASE databases built by energyloss-data; {path} "
                             "is a plain structure file: evaluate its positions (positions='atoms').")
        return read_structures(path, index=":" if limit is None else f":{limit}")
    from ase.db import connect

    from energyloss_plugins.data.paths import ase_db_metadata

    if ase_db_metadata(path) is None:  # read-only probe: connect() would add ASE's tables to a foreign file
        raise ValueError(f"{path} is not an ASE database (empty, another SQLite file or not SQLite at all); give "
                         "an ASE database or an .extxyz/.xyz file.")

    db = connect(path, type="db", use_lock_file=False)
    selected = db.select(sort="id") if rows is None else (db.get(id=int(i) + 1) for i in sorted(rows))
    out, seen = [], set()
    for row in selected:
        if limit is not None and len(out) >= limit:
            break
        if positions == "target":
            if "target_positions" not in row.data:
                raise ValueError(f"Row {row.id} of {path} has no target_positions; positions='target' needs a "
                                 "database built by energyloss-data (use positions='atoms' for other databases).")
            mol_id = row.key_value_pairs.get("mol_id")
            if mol_id is not None and mol_id in seen:
                continue  # every input row of a molecule holds the same target
            seen.add(mol_id)
            out.append(Atoms(numbers=row.numbers, positions=row.data["target_positions"]))
        else:
            out.append(row.toatoms())
    return out


def training_molecules(path: str, split_file: str | None = None) -> list[Any]:
    """The training molecules of a dataset: a split's ``train_idx`` rows (targets when stored).

    ``split_file`` defaults to the database's own split file (``<name>.split.npz``, or a legacy
    ``split.npz`` beside it); without one, every row/frame is used.
    """
    if not _is_database(path):
        return read_molecules(path)
    from ase.db import connect

    from energyloss_plugins.data.paths import ase_db_metadata

    if not os.path.isfile(path) or ase_db_metadata(path) is None:  # connect() would add tables to a foreign file
        raise ValueError(f"--train {path} is not an ASE database (missing, empty, another SQLite file or not SQLite "
                         "at all); give an energyloss-data database or an .extxyz/.xyz file.")

    from energyloss_plugins.data.paths import find_split_file

    split_file = split_file or find_split_file(path)
    rows = None
    if split_file is not None:
        from energyloss_plugins.data.reader import read_split

        rows = read_split(split_file)["train_idx"].tolist()
    first = next(iter(connect(path, type="db", use_lock_file=False).select(limit=1)), None)
    has_targets = first is not None and "target_positions" in first.data
    return read_molecules(path, "target" if has_targets else "atoms", rows=rows)


def format_table(metrics: dict, train_given: bool = False) -> str:
    """The metrics as an aligned two-column text table (fractions in %)."""
    lines = []
    for key, label in _LABELS.items():
        value = metrics.get(key)
        if key in ("n", "non_finite"):
            text = str(value)
        elif key == "mean_fragments":
            text = "-" if value is None else f"{value:6.2f}"
        elif value is None and key == "novelty":
            text = "- (training set has no valid molecule)" if train_given else "- (no --train)"
        elif value is None:
            text = "-"
        elif isinstance(value, float) and math.isnan(value):
            text = "n/a"
        else:
            text = f"{100 * value:6.2f} %"
        lines.append(f"{label:<28s}{text}")
    notes = metrics.get("notes") or {}
    if "reference" in notes:
        return "\n".join([*lines, f"(distances: {notes['reference']}; pass --reference or --train)"])
    for key, (label, unit) in _DISTANCES.items():
        value = metrics.get(key)
        text = "n/a" if value is None else f"{value:9.4f} {unit}".rstrip()
        lines.append(f"{label:<28s}{text}" + (f"   ({notes[key]})" if key in notes else ""))
    per_type = metrics.get("bond_length_distance_per_type") or {}
    if per_type:
        shown = [f"{k} {v:.4f}" if v is not None else f"{k} n/a" for k, v in list(per_type.items())[:8]]
        lines.append(f"{'  per bond type (Å)':<28s}" + ", ".join(shown) + (", ..." if len(per_type) > 8 else ""))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="energyloss-evaluate",
        description="EDM's metrics of molecules (atom/molecule stability, validity, uniqueness, novelty), "
                    "connectivity (one fragment under EDM's bonds), and against a reference set Wasserstein-1 "
                    "distances of bond lengths (Å), bond angles, dihedrals (degrees), radii of gyration (Å) and FCD.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_version_option(p)
    p.add_argument("file", help="molecules: an ASE database (.db) or any ase.io file (extxyz, xyz, sdf, ...)")
    p.add_argument("--positions", default="atoms", choices=POSITIONS,
                   help="atoms: the stored positions; target: the equilibrium targets of an energyloss-data database")
    p.add_argument("--train", default=None, metavar="DB",
                   help="training set for novelty (energyloss-data database: its train split; or any structure file)")
    p.add_argument("--train-split-file", default=None, help="split of --train (default: split.npz beside it)")
    p.add_argument("--reference", default=None, metavar="FILE|DB",
                   help="molecules to compare distributions with (default: the --train set): Wasserstein-1 "
                        "distances of bond lengths per bond type (Å), bond angles and dihedrals (degrees), radii "
                        "of gyration (Å), and FCD; an energyloss-data database gives its train split's targets")
    p.add_argument("--no-fcd", action="store_true",
                   help="skip the Fréchet ChemNet distance (ChemNet runs on every valid SMILES of both sets)")
    p.add_argument("--limit", type=positive_int("--limit"), default=None, help="evaluate only the first N molecules")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the metrics as JSON ('-': stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


@console_script("energyloss-evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``energyloss-evaluate``; returns the exit status."""
    args = _parser().parse_args(argv)
    require("ase", "energyloss-evaluate", "data")
    require("rdkit", "energyloss-evaluate", "data")
    from energyloss_plugins.metrics.distributions import profile
    from energyloss_plugins.metrics.generation import generation_metrics, molecule_smiles_set

    if args.json not in (None, "-"):  # before the work: an existing file, a missing folder
        check_output_path(args.json, name="--json", overwrite=args.overwrite, flag="--overwrite")
    progress = not args.no_progress
    reference_path = args.reference or args.train
    molecules = read_molecules(args.file, args.positions, limit=args.limit)
    train_smiles = reference = None
    if reference_path is not None:
        same = args.train is not None and os.path.abspath(reference_path) == os.path.abspath(args.train)
        reference = profile(training_molecules(reference_path, args.train_split_file if same else None),
                            progress=progress)
        if same:  # the reference's valid SMILES are the training SMILES: read the set once
            train_smiles = set(reference.smiles)
    if args.train is not None and train_smiles is None:
        train = training_molecules(args.train, args.train_split_file)
        train_smiles = molecule_smiles_set(train, progress=progress, total=len(train)) if train else set()
    metrics = generation_metrics(molecules, train_smiles, reference=reference, fcd=not args.no_fcd,
                                 progress=progress)
    print(format_table(metrics, train_given=args.train is not None))
    if args.json is not None:
        clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
        record = {"file": os.path.abspath(args.file), "positions": args.positions,
                  "train": None if args.train is None else os.path.abspath(args.train),
                  "n_train_smiles": None if train_smiles is None else len(train_smiles),
                  "reference": None if reference_path is None else os.path.abspath(reference_path),
                  "n_reference": None if reference is None else reference.n, **clean}
        text = json.dumps(record, indent=2)
        if args.json == "-":
            print(text)
        else:
            atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
