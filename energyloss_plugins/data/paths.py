"""Where a dataset's files live, and which files the builder may replace (standard library only).

Each database ``<name>.db`` owns its split file ``<name>.split.npz`` beside it, so several datasets
can share a folder. Databases built before this layout used one ``split.npz`` per folder; it is
still found when it cannot belong to another database (the folder holds a single ``.db``).
This module imports nothing heavy: the SchNetPack config resolvers load it while Hydra starts.
"""

from __future__ import annotations

import glob
import json
import os
import sqlite3

from energyloss_plugins.io import check_output_path as check_location

#: Split file name of databases built before the per-database layout.
LEGACY_SPLIT_NAME = "split.npz"
_SQLITE_MAGIC = b"SQLite format 3\x00"


def split_file_for(db_path: str | os.PathLike) -> str:
    """``<name>.split.npz`` beside ``<name>.db``: the split file the builder writes for that database."""
    path = os.path.abspath(os.fspath(db_path))
    stem = path[: -len(".db")] if path.endswith(".db") else path
    return stem + ".split.npz"


def find_split_file(db_path: str | os.PathLike) -> str | None:
    """The existing split file of a database, or None.

    ``<name>.split.npz`` if it exists; else a legacy ``split.npz`` in the same folder when that folder
    holds no other ``.db`` file (with several databases the shared file is ambiguous and is ignored).
    """
    own = split_file_for(db_path)
    if os.path.isfile(own):
        return own
    folder = os.path.dirname(os.path.abspath(os.fspath(db_path)))
    legacy = os.path.join(folder, LEGACY_SPLIT_NAME)
    if os.path.isfile(legacy) and len(glob.glob(os.path.join(glob.escape(folder), "*.db"))) <= 1:
        return legacy
    return None


def is_sqlite_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file starting with the SQLite header (read without opening a database)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def ase_db_metadata(path: str | os.PathLike) -> dict | None:
    """The metadata of an ASE SQLite database, read-only; None if ``path`` is not one.

    Opening a file with ``ase.db.connect`` creates ASE's tables in it (even in a foreign SQLite
    file); this reads through a read-only SQLite connection instead, so it never changes the file.
    """
    if not is_sqlite_file(path):
        return None
    try:
        uri = "file:" + os.path.abspath(os.fspath(path)) + "?mode=ro"
        con = sqlite3.connect(uri, uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "systems" not in tables:
                return None
            row = None
            if "information" in tables:
                row = con.execute("SELECT value FROM information WHERE name='metadata'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    try:
        return json.loads(row[0]) if row else {}
    except (TypeError, ValueError):
        return {}


def check_output_path(path: str, what: str, owned_key: str | None, overwrite: bool, flag: str = "--overwrite") -> None:
    """Check before any work that ``path`` can be written and that replacing it loses nothing.

    Args:
        path: absolute output path.
        what: the argument's name for messages (e.g. ``"out"``).
        owned_key: metadata key that marks an ASE database written by this project (the file may
            then be replaced); None: only a missing file may be written.
        overwrite: replace whatever is there.
        flag: how the user says ``overwrite`` (named in the message).

    Raises:
        ValueError: a directory, an unwritable or impossible location, or an existing file this
            project did not write.
    """
    check_location(path, name=what, overwrite=True, create_folder=True)
    if os.path.exists(path) and not overwrite:
        meta = ase_db_metadata(path) if owned_key is not None else None
        if meta is None or owned_key not in meta:
            kind = (
                "an ASE database not written by energyloss-data"
                if meta is not None
                else "a file not written by energyloss-data"
            )
            raise ValueError(
                f"{what}={path} already exists and is {kind}; refusing to replace it. Choose a new name, or pass "
                f"{flag} (overwrite=True in Python) to replace it."
            )
