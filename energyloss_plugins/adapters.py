"""Framework adapters, found through Python entry points (the core never imports an adapter by name).

An adapter is a module registered in the entry-point group ``energyloss_plugins.adapters`` (the
distribution's ``[project.entry-points."energyloss_plugins.adapters"]`` table; the entry-point name
is the framework's name). It implements this protocol (ASE ``Atoms`` in and out, positions in Å):

- ``identify(source) -> str | None``: the kind of a model object or checkpoint path this adapter
  handles (``"structure"``, ``"diffusion"`` or ``"generation"``), else None. Must not raise for
  foreign objects or files.
- ``load(path, device="cpu", *, trusted=False)``: the model of a checkpoint ``identify`` accepted, read
  with ``weights_only=True``; a file that needs a full unpickle raises
  :class:`~energyloss_plugins.checkpoints.UntrustedCheckpointError` unless ``trusted``.
- ``predict(model, images, *, batch_size, device, progress) -> list[np.ndarray]``: a structure
  model's predicted positions ``(n_i, 3)``, one array per input, in the model's frame.
- ``sample_conformers(model, templates, *, steps, method, seed, batch_size, device, progress, **options)
  -> list[Atoms]``: a diffusion model's conformers, one per template (Atoms or atomic-number lists).
- ``generate(model, n, *, steps, method, seed, batch_size, device, progress) -> list[Atoms]``: ``n``
  new molecules from a generation model. Both adapters use :func:`generate` here, which calls the
  model's ``sample_molecules`` (the method every generation model has).

Identifying a path runs no code from the file: adapters read it with :func:`read_checkpoint`
(``weights_only=True``) or :func:`~energyloss_plugins.checkpoints.peek_checkpoint` (the names a
pickle refers to, without unpickling it). A full unpickle happens only in ``load`` with ``trusted=True``.

Discovery reads the installed distribution's entry points; a source checkout whose installed
metadata predates an adapter (an editable install not re-run after ``pyproject.toml`` changed)
falls back to the table in the ``pyproject.toml`` beside the package.
"""

from __future__ import annotations

import importlib
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

#: Entry-point group of the adapters.
GROUP = "energyloss_plugins.adapters"
#: Model kinds an adapter can report.
KINDS = ("structure", "diffusion", "generation")


class AdapterUnavailableError(ImportError):
    """An adapter is registered but cannot be imported (its framework, an optional extra, is missing)."""


def adapter_table() -> dict[str, str]:
    """``{framework name: module}`` of the registered adapters, sorted by name."""
    table = {ep.name: ep.value for ep in metadata.entry_points(group=GROUP)}
    if not table:
        table = _source_checkout_table()
    return dict(sorted(table.items()))


def _source_checkout_table() -> dict[str, str]:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    with open(pyproject, "rb") as f:
        project = tomllib.load(f).get("project", {})
    return dict(project.get("entry-points", {}).get(GROUP, {}))


def adapter_names() -> tuple[str, ...]:
    """Names of the registered adapters (available or not)."""
    return tuple(adapter_table())


def get_adapter(name: str) -> ModuleType:
    """The adapter module registered as ``name``.

    Raises:
        ValueError: no adapter of that name (the message lists the registered ones).
        AdapterUnavailableError: registered, but its framework is not installed.
    """
    table = adapter_table()
    if name not in table:
        raise ValueError(f"Unknown framework {name!r}. Registered adapters: {', '.join(table) or 'none'}.")
    module = table[name].split(":")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] == module.split(".")[0]:
            raise  # the adapter package itself is missing or broken: a bug, not a missing extra
        raise AdapterUnavailableError(
            f"The {name} adapter needs its framework ({err}); install it with "
            f"`pip install energyloss-plugins[{name}]`."
        ) from err


@dataclass
class Resolved:
    """A model object or checkpoint recognised by an adapter."""

    framework: str
    adapter: ModuleType
    kind: str
    model: Any


def resolve(source: Any, framework: str | None = None, *, device: str = "cpu", load: bool = True,
            trusted: bool = False) -> Resolved:
    """Find the adapter that handles ``source`` (a model object or a checkpoint path) and load it.

    Args:
        source: a model object of an adapter, or a path to one of its checkpoints.
        framework: an adapter name, to skip detection (and to get its error for a foreign ``source``).
        device: where a checkpoint is loaded.
        load: load a checkpoint path (False: ``model`` is the path itself; nothing is unpickled).
        trusted: allow a full unpickle of the checkpoint (SchNetPack's ``best_model``, old checkpoints):
            it can run code from the file, so only for files you made or trust.

    Raises:
        UntrustedCheckpointError: the checkpoint needs a full unpickle and ``trusted`` is False.
        CorruptCheckpointError: the path is not a readable checkpoint (truncated, corrupt, other format).
        ValueError: no registered adapter recognises ``source`` (the message lists the adapters,
            the kinds they handle and the ones that are not installed).
        FileNotFoundError: ``source`` is a path that does not exist.
    """
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        if not os.path.exists(source):
            raise FileNotFoundError(f"Checkpoint {source!r} does not exist.")
    names = [framework] if framework is not None else list(adapter_table())
    unavailable: dict[str, str] = {}  # adapter name -> why it cannot be imported
    for name in names:
        try:
            adapter = get_adapter(name)
        except AdapterUnavailableError as err:
            if framework is not None:
                raise
            unavailable[name] = str(err.__cause__ or err)
            continue
        kind = adapter.identify(source)
        if kind is not None:
            if not (load and isinstance(source, str)):
                return Resolved(name, adapter, kind, source)
            # Only the opt-in is passed on, so adapters written before it keep working.
            model = adapter.load(source, device=device, **({"trusted": True} if trusted else {}))
            return Resolved(name, adapter, kind, model)
    if isinstance(source, str):
        from energyloss_plugins.checkpoints import UntrustedCheckpointError, load_checkpoint

        try:  # a corrupt file or a foreign pickle is named as such, not as "not recognised"
            load_checkpoint(source)
        except UntrustedCheckpointError:
            if not trusted:
                raise
    what = f"checkpoint {source!r}" if isinstance(source, str) else f"a {type(source).__name__}"
    lines = [f"No adapter recognises {what}."]
    if framework is not None:
        lines.append(f"The {framework} adapter does not handle it.")
    else:
        tried = [n for n in names if n not in unavailable]
        lines.append(f"Tried: {', '.join(tried) or 'none'} (model kinds: {', '.join(KINDS)}).")
        for name, why in unavailable.items():
            lines.append(f"Not installed: {name} ({why}; `pip install energyloss-plugins[{name}]`).")
    raise ValueError(" ".join(lines))


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The content of a checkpoint file read with ``weights_only=True``, or None if unreadable or if it
    needs a full unpickle (nothing from the file is executed).

    For adapters' ``identify``: a file another framework wrote, or one whose classes are not
    importable, is simply not theirs.
    """
    from energyloss_plugins.checkpoints import peek_checkpoint

    return peek_checkpoint(path)[0]


def generate(model: Any, n: int, *, steps: int = 500, method: str | None = None, seed: int | None = None,
             batch_size: int = 250, device: str = "cpu", progress: bool = True) -> Sequence:
    """``n`` new molecules (``ase.Atoms``) from a generation model, through its ``sample_molecules``.

    Raises:
        ValueError: the model has no ``sample_molecules`` (not a generation model).
    """
    if not callable(getattr(model, "sample_molecules", None)):
        raise ValueError(f"A {type(model).__name__} does not generate molecules (no sample_molecules); "
                         "use a checkpoint of a generation model.")
    model = model.to(device)
    return model.sample_molecules(n, steps=steps, method=method, seed=seed, batch_size=batch_size, progress=progress)
