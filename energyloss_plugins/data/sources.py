"""Molecule sources for the dataset builder: SMILES files (RDKit's bundled NCI set) and structure files.

A source is named by a string:

- ``"nci"``: RDKit's bundled ``Data/NCI/first_5K.smi`` (4,991 parsable NCI compounds, offline);
- ``"g2"``: ``ase.collections.g2`` (162 small molecules and atoms, MP2 equilibrium geometries);
- a path to a ``.smi`` / ``.smiles`` file (one SMILES per line, optional name after whitespace);
- a path to any ASE-readable structure file (xyz, extxyz(.gz), sdf, ASE db, ...), every frame a
  molecule.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from energyloss_plugins.chem import rdkit, rdkit_quiet

#: Source names understood besides file paths.
SOURCE_NAMES = ("nci", "g2")
#: File endings read as SMILES files; everything else goes through ``ase.io.read``.
SMILES_SUFFIXES = (".smi", ".smiles", ".smi.gz", ".smiles.gz")


@dataclass
class SourceEntry:
    """One molecule of a source.

    Attributes:
        index: position in the source (line of a SMILES file, frame of a structure file, entry of
            g2), counted before any filtering; the builder derives per-molecule seeds and resumes
            by it.
        name: ``"<source>:<id>"`` with the id from the source (NCI number, g2 name, ``qm7_id``, or
            the frame index).
        smiles: the SMILES string for SMILES sources, else None.
        numbers: ``(N,)`` atomic numbers (structure sources; None for SMILES).
        positions: ``(N, 3)`` positions in Å (structure sources; None for SMILES).
        charge: total charge (``atoms.info["charge"]`` or the sum of initial charges; SMILES: formal).
        energy: energy in eV stored with the frame (ASE calculator results), NaN if none.
        n_heavy: number of non-hydrogen atoms.
    """

    index: int
    name: str
    smiles: str | None = None
    numbers: np.ndarray | None = None
    positions: np.ndarray | None = None
    charge: int = 0
    energy: float = math.nan
    n_heavy: int = 0

    @property
    def has_geometry(self) -> bool:
        return self.positions is not None


@dataclass
class Structures:
    """The filtered entries of a source, with the count of entries left out per reason.

    Attributes:
        source: the source label written to the database (``nci``, ``g2``, or the file name).
        kind: ``"smiles"`` or ``"structures"``.
        entries: the kept entries, in source order.
        skipped: reason -> count of entries left out (``unparsable_smiles``, ``elements``,
            ``too_many_heavy_atoms``, ``too_few_atoms``, ``multiple_fragments``, ``duplicate``,
            ``periodic``).
        n_read: number of entries read from the source before filtering.
        path: resolved file path ("" for g2).
    """

    source: str
    kind: str
    entries: list[SourceEntry] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    n_read: int = 0
    path: str = ""

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[SourceEntry]:
        return iter(self.entries)

    def __getitem__(self, i: int) -> SourceEntry:
        return self.entries[i]


def nci_path() -> str:
    """Path of RDKit's bundled ``Data/NCI/first_5K.smi``."""
    path = os.path.join(rdkit("rdkit.RDConfig").RDDataDir, "NCI", "first_5K.smi")
    if not os.path.exists(path):
        raise FileNotFoundError(f"RDKit's bundled NCI SMILES file is missing at {path}; reinstall rdkit.")
    return path


def resolve_source(source: str | os.PathLike) -> tuple[str, str, str]:
    """``(label, kind, path)`` of a source name or path.

    Raises:
        ValueError: unknown name and no such file.
    """
    s = os.fspath(source)
    if s == "nci":
        return "nci", "smiles", nci_path()
    if s == "g2":
        return "g2", "structures", ""
    if os.path.isfile(s):
        kind = "smiles" if s.lower().endswith(SMILES_SUFFIXES) else "structures"
        return os.path.basename(s), kind, os.path.abspath(s)
    raise ValueError(
        f"Unknown source {s!r}: not a file. Valid sources: {', '.join(SOURCE_NAMES)}, a path to a SMILES file "
        f"({', '.join(SMILES_SUFFIXES)}), or a path to an ASE-readable structure file (xyz, extxyz, sdf, db, ...)."
    )


def parse_elements(elements: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """Normalise an element filter (``"C,N,O,F"`` or a list) to a sorted tuple of symbols (H implied)."""
    if elements is None:
        return None
    if isinstance(elements, str):
        elements = [e for e in elements.replace(" ", ",").split(",") if e]
    from ase.data import atomic_numbers

    out = set()
    for e in elements:
        sym = str(e).strip()
        sym = sym[:1].upper() + sym[1:].lower()
        if sym not in atomic_numbers or sym == "X":
            raise ValueError(f"Unknown element symbol {e!r} in elements; use symbols such as C, N, O, F.")
        out.add(sym)
    out.add("H")
    return tuple(sorted(out))


def load_structures(
    source: str | os.PathLike,
    *,
    max_heavy_atoms: int | None = None,
    elements: Iterable[str] | str | None = None,
    min_atoms: int = 2,
    deduplicate: bool = True,
) -> Structures:
    """Read and filter the molecules of a source (no geometry is generated here).

    Args:
        source: ``"nci"``, ``"g2"``, a ``.smi`` path or an ASE-readable structure file.
        max_heavy_atoms: keep molecules with at most this many non-hydrogen atoms.
        elements: allowed element symbols (hydrogen always allowed), e.g. ``"C,N,O,F"``.
        min_atoms: keep molecules with at least this many atoms, hydrogens included (a single atom
            has no structure to predict).
        deduplicate: for SMILES sources, keep the first of molecules with the same canonical SMILES.

    Returns:
        :class:`Structures`; unparsable or filtered entries are counted in ``skipped``, never fatal.
    """
    if max_heavy_atoms is not None and max_heavy_atoms < 1:
        raise ValueError(f"max_heavy_atoms must be >= 1 or None, got {max_heavy_atoms}.")
    label, kind, path = resolve_source(source)
    allowed = parse_elements(elements)
    out = Structures(source=label, kind=kind, path=path)
    skipped: Counter[str] = Counter()
    if kind == "smiles":
        _load_smiles(path, out, skipped, max_heavy_atoms, allowed, min_atoms, deduplicate)
    else:
        _load_frames(label, path, out, skipped, max_heavy_atoms, allowed, min_atoms)
    out.skipped = dict(sorted(skipped.items()))
    return out


def _read_smiles_lines(path: str) -> Iterator[tuple[int, str, str]]:
    import gzip

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as fh:
        index = 0
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            name = parts[1].strip() if len(parts) > 1 else str(index)
            yield index, parts[0], name
            index += 1


def _load_smiles(
    path: str,
    out: Structures,
    skipped: Counter[str],
    max_heavy: int | None,
    allowed: tuple[str, ...] | None,
    min_atoms: int,
    deduplicate: bool,
) -> None:
    Chem = rdkit()
    seen: set[str] = set()
    for index, smi, name in _read_smiles_lines(path):
        out.n_read += 1
        with rdkit_quiet():
            mol = Chem.MolFromSmiles(smi)
        if mol is None:
            skipped["unparsable_smiles"] += 1
            continue
        reason = _filter_reason([a.GetSymbol() for a in mol.GetAtoms()], mol.GetNumHeavyAtoms(), max_heavy, allowed)
        if reason is None and len(Chem.GetMolFrags(mol)) > 1:
            reason = "multiple_fragments"
        if reason is None and mol.GetNumAtoms() + sum(a.GetTotalNumHs() for a in mol.GetAtoms()) < min_atoms:
            reason = "too_few_atoms"
        canon = Chem.MolToSmiles(mol)
        if reason is None and deduplicate:
            if canon in seen:
                reason = "duplicate"
            seen.add(canon)
        if reason is not None:
            skipped[reason] += 1
            continue
        out.entries.append(
            SourceEntry(
                index=index,
                name=f"{out.source}:{name}",
                smiles=canon,
                charge=Chem.GetFormalCharge(mol),
                n_heavy=mol.GetNumHeavyAtoms(),
            )
        )


def _filter_reason(
    symbols: Sequence[str], n_heavy: int, max_heavy: int | None, allowed: tuple[str, ...] | None
) -> str | None:
    if allowed is not None and any(s not in allowed for s in symbols):
        return "elements"
    if max_heavy is not None and n_heavy > max_heavy:
        return "too_many_heavy_atoms"
    return None


def _frames(label: str, path: str) -> Iterator[tuple[int, str, object]]:
    if label == "g2" and not path:
        from ase.collections import g2

        for i, name in enumerate(g2.names):
            yield i, name, g2[name]
        return

    try:
        frames = _read_all_frames(path)
    except Exception as exc:
        raise ValueError(f"ASE cannot read structures from {path}: {exc}") from exc
    for i, atoms in enumerate(frames):
        info = atoms.info
        name = info.get("name") or info.get("qm7_id") or str(i)
        yield i, str(name), atoms


def _read_all_frames(path: str) -> list:
    """All frames of a structure file. Compressed text files are decompressed into memory first:
    ASE's reader seeks in the compressed stream once per frame, which is quadratic (minutes for QM7)."""
    import ase.io

    openers = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}
    suffix = os.path.splitext(path)[1].lower()
    if suffix in openers:
        import importlib
        import io

        from ase.io.formats import filetype

        fmt = filetype(path, guess=True)
        with importlib.import_module(openers[suffix]).open(path, "rt") as fh:
            text = fh.read()
        frames = ase.io.read(io.StringIO(text), index=":", format=fmt)
    else:
        frames = ase.io.read(path, index=":")
    return frames if isinstance(frames, list) else [frames]


def _load_frames(
    label: str,
    path: str,
    out: Structures,
    skipped: Counter[str],
    max_heavy: int | None,
    allowed: tuple[str, ...] | None,
    min_atoms: int,
) -> None:
    for index, name, atoms in _frames(label, path):
        out.n_read += 1
        numbers = np.asarray(atoms.get_atomic_numbers(), dtype=np.int64)  # type: ignore[attr-defined]
        symbols = atoms.get_chemical_symbols()  # type: ignore[attr-defined]
        if any(atoms.pbc):  # type: ignore[attr-defined]
            skipped["periodic"] += 1
            continue
        n_heavy = int((numbers != 1).sum())
        reason = _filter_reason(symbols, n_heavy, max_heavy, allowed)
        if reason is None and len(numbers) < min_atoms:
            reason = "too_few_atoms"
        if reason is not None:
            skipped[reason] += 1
            continue
        info = atoms.info  # type: ignore[attr-defined]
        if "charge" in info:
            charge = int(round(float(info["charge"])))
        else:
            charge = int(round(float(np.sum(atoms.get_initial_charges()))))  # type: ignore[attr-defined]
        energy = math.nan
        calc = atoms.calc  # type: ignore[attr-defined]
        if calc is not None and "energy" in getattr(calc, "results", {}):
            energy = float(calc.results["energy"])
        out.entries.append(
            SourceEntry(
                index=index,
                name=f"{label}:{name}",
                numbers=numbers,
                positions=np.array(atoms.get_positions(), dtype=np.float64),  # type: ignore[attr-defined]
                charge=charge,
                energy=energy,
                n_heavy=n_heavy,
            )
        )
