"""Offline builder of structure-task datasets: equilibrium targets plus input geometries, in an ASE db.

One database row per (molecule, input geometry); see ``docs/data.md`` for the contract. The build
writes each molecule in one transaction into ``<out>.partial``; an interrupted build resumes from
there (molecules are identified by their source index, and every random choice is seeded from the
global seed and that index, so a resumed build equals an uninterrupted one). At the end the rows
are copied in source order into a temporary file beside ``<out>``, which replaces ``<out>``
atomically, and the split file (``<name>.split.npz``, see :mod:`energyloss_plugins.data.paths`) is
written the same way. An existing ``<out>`` is only replaced when this builder wrote it (its metadata
holds the ``energyloss`` entry) or with ``overwrite=True``.

Modules: ``settings`` (what a build is made of), ``targets`` and ``inputs`` (one molecule), ``partial``
(the resumable partial build), ``splits`` and ``finalise`` (the final database), ``report``; this one
runs them (:func:`build_dataset`).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from energyloss_plugins._checks import check_number
from energyloss_plugins.chem import ChemError
from energyloss_plugins.data.finalise import finalise
from energyloss_plugins.data.inputs import MoleculeResult, process_entry
from energyloss_plugins.data.partial import complete_metadata, open_partial, set_partial_state, write_molecule
from energyloss_plugins.data.paths import ase_db_metadata, check_output_path, split_file_for
from energyloss_plugins.data.report import BuildReport, fill_report_from_meta, report_json
from energyloss_plugins.data.settings import (
    CHEAP_INPUT,
    FORMAT_VERSION,
    INPUT_KINDS,
    METHODS,
    PROPERTY_UNITS,
    BuildSettings,
    make_settings,
    resolve_inputs,
)
from energyloss_plugins.data.sources import SourceEntry, Structures, load_structures
from energyloss_plugins.data.splits import ensure_split, is_split_file, split_molecules
from energyloss_plugins.optional import require

#: Re-exported: the builder's public names stay importable from this module.
__all__ = ["CHEAP_INPUT", "FORMAT_VERSION", "INPUT_KINDS", "METHODS", "PROPERTY_UNITS", "BuildReport",
           "BuildSettings", "MoleculeResult", "build_dataset", "make_settings", "process_entry", "report_json",
           "resolve_inputs", "split_molecules"]


def _safe_process(args: tuple[SourceEntry, BuildSettings]) -> MoleculeResult | tuple[int, str]:
    """:func:`process_entry`, or ``(source index, reason)`` when the molecule cannot be used (in a worker too)."""
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
    """One thread per worker process: the workers already use every core."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


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
    db, done, skipped, failures = open_partial(partial, s.to_json())
    report.resumed = len(done)
    _run(structures, s, db, done, skipped, failures, max_molecules, workers, progress)
    _count_failures(report, done, skipped, failures, max_molecules)
    if not done:
        _refuse_empty(partial, out, s, skipped, report)
    source_meta = {"source_label": structures.source, "n_source_entries": structures.n_read}
    finalise(partial, out, split_path, s, max_molecules, report, source_meta)
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
    check_output_path(split_path, "split_file", None, overwrite or is_split_file(split_path))
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
    done_meta = complete_metadata(out)
    if done_meta is None or done_meta.get("settings") != {**s.to_json(), "max_molecules": max_molecules}:
        return False
    ensure_split(out, report.split_file, s)
    fill_report_from_meta(report, done_meta)
    report.already_built = True
    return True


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
                    set_partial_state(db, s.to_json(), skipped, failures)
            else:
                assert res.index == entry.index
                if res.input_failures:
                    failures[res.index] = res.input_failures
                    with db:
                        set_partial_state(db, s.to_json(), skipped, failures)
                write_molecule(db, res, s, structures.source)
                done.add(res.index)
                n_ok += 1
                bar.update(1)
            bar.set_postfix(skipped=len(skipped), refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
