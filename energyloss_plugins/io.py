"""Writing user-visible files: one rule everywhere (nothing replaced without ``overwrite``, no partial file).

- :func:`check_output_path` runs before any expensive work: the path is not ``-``, not a directory,
  its folder exists (or can be created) and is writable, and an existing file is only accepted with
  ``overwrite``.
- :func:`atomic_write` hands out a fresh temporary name in the same folder and renames it onto the
  target only when the writer finished, so an error or Ctrl-C leaves the old file (or none), never a
  partial one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from energyloss_plugins.optional import require


def check_output_path(path: str | os.PathLike, *, name: str = "output", overwrite: bool = False,
                      flag: str = "overwrite=True", create_folder: bool = False) -> str:
    """Check that ``path`` can be written without losing a file; returns it as an absolute path.

    Args:
        path: the output file.
        name: the argument's name in messages (``--json``, ``output``, ...).
        overwrite: accept an existing file (it is replaced atomically later).
        flag: how the user says ``overwrite`` (``--overwrite`` for console scripts).
        create_folder: a missing folder is fine (the writer creates it); otherwise it is an error.

    Raises:
        ValueError: ``-``, a directory, a missing or unwritable folder, a folder that is a file,
            or an existing file without ``overwrite``.
    """
    text = os.fspath(path)
    if text in ("", "-"):
        raise ValueError(f"{name}={text!r} is not a file name (writing to stdout is not supported); give a path.")
    full = os.path.abspath(text)
    if os.path.isdir(full):
        raise ValueError(f"{name}={text} is a directory; give a file path inside it.")
    folder = os.path.dirname(full)
    probe = folder
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{name}={text}: {probe} is a file, not a folder; choose another location.")
    if probe != folder and not create_folder:
        raise ValueError(f"{name}={text}: the folder {folder} does not exist; create it first.")
    try:  # a real probe: os.access misses read-only file systems
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".energyloss-write-test-")
        os.close(fd)
        os.remove(tmp)
    except OSError as exc:
        raise ValueError(f"{name}={text}: cannot write in {probe} ({exc.strerror}); choose a writable location.") \
            from None
    if os.path.exists(full) and not overwrite:
        raise ValueError(f"{name}={text} exists; pass {flag} to replace it.")
    return full


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[str]:
    """Yield a fresh temporary path beside ``path`` (same suffix, not yet created); rename it onto ``path`` on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is
    untouched. The same folder keeps ``os.replace`` atomic.
    """
    full = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(full)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=f".tmp{os.path.splitext(base)[1]}")
    os.close(fd)
    os.remove(tmp)  # writers such as ASE's database or np.savez create the file themselves
    try:
        yield tmp
        os.replace(tmp, full)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_savez(path: str | os.PathLike, **arrays: Any) -> None:
    """``np.savez`` of arrays through :func:`atomic_write` (flushed to disk before the rename)."""
    import numpy as np

    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` through :func:`atomic_write`."""
    with atomic_write(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)


def structure_format(path: str | os.PathLike, fmt: str | None = None, *, name: str = "output") -> str:
    """The ``ase.io`` format that writes ``path``: ``fmt``, else the one its suffix names (extxyz without one).

    Raises:
        ValueError: a format ASE does not know or cannot write (checked before any work).
    """
    formats = require("ase.io.formats", "writing structure files", "data")
    filetype, ioformats = formats.filetype, formats.ioformats
    text = os.fspath(path)
    if fmt is None and not os.path.splitext(text)[1]:
        fmt = "extxyz"
    if fmt is None:
        try:
            fmt = filetype(text, read=False)
        except Exception:  # ASE raises its own error types for unknown suffixes
            fmt = os.path.splitext(text)[1].lstrip(".")
    if fmt not in ioformats or not ioformats[fmt].can_write:
        raise ValueError(f"{name}={text}: ASE cannot write the file format {fmt!r}; use .db, .extxyz or .xyz "
                         "(or another format ase.io.write knows).")
    return fmt


def write_structures(path: str | os.PathLike, images: list, *, overwrite: bool = False, name: str = "output",
                     flag: str = "overwrite=True", **write_kwargs) -> None:
    """``ase.io.write`` through :func:`atomic_write`; the format follows the file name (extxyz without a suffix)."""
    write = require("ase.io", "writing structure files", "data").write
    check_output_path(path, name=name, overwrite=overwrite, flag=flag)
    fmt = structure_format(path, write_kwargs.pop("format", None), name=name)
    with atomic_write(path) as tmp:
        write(tmp, images, format=fmt, **write_kwargs)


def read_structures(path: str | os.PathLike, *, name: str = "file", index: str = ":") -> list:
    """Structures of an ``ase.io`` file as a list of ``ase.Atoms``, with one-line errors naming ``name``.

    Raises:
        FileNotFoundError: no such file. ValueError: a directory, an empty file, or a file ASE cannot
            parse (binary data, an unknown format, a corrupt record), or one holding no structures.
    """
    ase_io = require("ase.io", "reading structure files", "data")
    atoms_type = require("ase", "reading structure files", "data").Atoms
    text = os.fspath(path)
    if not os.path.exists(text):
        raise FileNotFoundError(f"{name} {text} does not exist.")
    if os.path.isdir(text):
        raise ValueError(f"{name} {text} is a directory; give a structure file (.extxyz, .xyz, .db, ...).")
    if os.path.getsize(text) == 0:
        raise ValueError(f"{name} {text} is empty; give a structure file (.extxyz, .xyz, .db, ...).")
    try:
        frames = ase_io.read(text, index=index)
    except Exception as exc:  # ASE's parsers raise anything from KeyError to UnicodeDecodeError on bad files
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{name} {text}: not a structure file ASE can read ({detail[:200]}); use .extxyz, .xyz, "
                         ".sdf or an ASE database (.db).") from None
    frames = [frames] if isinstance(frames, atoms_type) else list(frames)
    if not frames:
        raise ValueError(f"{name} {text} holds no structures.")
    return frames
