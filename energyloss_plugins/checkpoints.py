"""Opening checkpoint files without running code from them.

``torch.load(weights_only=False)`` (a full unpickle) runs whatever code the file asks for, so every
checkpoint here is read with ``weights_only=True``: tensors, numbers, strings and containers only.
A file that needs more (a whole pickled ``nn.Module`` such as SchNetPack's ``best_model``, a
checkpoint from elsewhere) is refused with :class:`UntrustedCheckpointError`, unless the caller opts
in with ``trusted=True`` (``--trust-checkpoint`` on the command lines): only for files you made or
trust.

Frameworks that keep modules among a checkpoint's hyperparameters (SchNetPack's tasks store the model
and outputs) save them as a *plain description* (:func:`to_plain`): each object as its class name and
its state, each function or class as its name. :func:`from_plain` rebuilds them as pickle would
(``cls.__new__`` then ``__setstate__``), but only for names under :data:`ALLOWED_PREFIXES` (adapters
add their framework's packages with :func:`allow_modules`), and it
never calls a constructor or a function named in the file.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import pickletools
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import torch

#: Modules whose classes and functions a plain description may name; adapters add their framework's
#: packages with :func:`allow_modules` (the core names no adapter).
ALLOWED_PREFIXES: list[str] = ["energyloss_plugins.", "torch.nn.", "torch.optim.", "torchmetrics."]
#: What the opt-in is called, for messages.
OPT_IN = "--trust-checkpoint (command line) or trusted=True (Python)"


class UntrustedCheckpointError(ValueError):
    """The file needs a full unpickle (it could run code); load it only with ``trusted=True``."""


class CorruptCheckpointError(ValueError):
    """The file is not a readable PyTorch checkpoint (truncated, corrupt, or another format)."""


def pickle_globals(path: str | os.PathLike) -> list[str]:
    """``module.name`` of every global a ``torch.save`` file's pickle refers to, in order, without unpickling.

    Reads the zip's ``data.pkl`` (or a legacy file's first pickle) opcode by opcode (:mod:`pickletools`);
    nothing is imported or executed.

    Raises:
        CorruptCheckpointError: the file or its pickle is unreadable.
    """
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if name is None:
                    raise CorruptCheckpointError(f"{path} is a zip file without a pickle: not a PyTorch checkpoint.")
                data = archive.read(name)
        else:
            with open(path, "rb") as f:
                data = f.read()
        names: list[str] = []
        # STACK_GLOBAL takes module and name from the two strings pushed before it, maybe through the memo.
        strings: list[str] = []
        memo: dict[int, str] = {}
        n_memoized, last = 0, None  # last: the string on top of the stack, if any
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                last = str(arg)
                strings.append(last)
            elif name in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):  # the top stays where it is
                index = n_memoized if name == "MEMOIZE" else int(arg)
                n_memoized += 1
                if last is not None:
                    memo[index] = last
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                last = memo.get(int(arg))
                if last is not None:
                    strings.append(last)
            else:
                last = None
                if name == "GLOBAL":
                    names.append(str(arg).replace(" ", ".", 1))
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif name == "STOP":
                    break
    except CorruptCheckpointError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise CorruptCheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated: "
                                     f"{_first_line(err)}).") from None
    return names


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


#: Globals every ``torch.save`` file may name (containers, torch's tensor rebuilders): not worth reporting.
_ROUTINE = ("collections.OrderedDict", "collections.Counter", "builtins.set", "builtins.frozenset",
            "builtins.bytearray", "builtins.slice", "builtins.complex", "_codecs.encode")


def _untrusted_names(path: str) -> list[str]:
    """The globals of ``path`` worth naming in a refusal: torch's tensor machinery and containers come last."""
    names = list(dict.fromkeys(n.replace("__builtin__.", "builtins.", 1) for n in pickle_globals(path)))

    def routine(name: str) -> bool:
        module, _, attr = name.rpartition(".")
        if module == "torch":  # dtypes, Size, device, storage classes
            return isinstance(getattr(torch, attr, None), (type, torch.dtype))
        return name in _ROUTINE or name.startswith(("torch._utils.", "torch._tensor."))

    return sorted(names, key=routine)  # stable: the file's order within each group


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, trusted: bool = False) -> Any:
    """The content of a ``torch.save`` file, read with ``weights_only=True`` unless ``trusted``.

    Raises:
        FileNotFoundError: no such file.
        UntrustedCheckpointError: the file needs a full unpickle (names what it refers to and the opt-in).
        CorruptCheckpointError: the file is truncated, corrupt or not a PyTorch file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    if os.path.isdir(path):
        raise CorruptCheckpointError(f"{path} is a directory, not a checkpoint file.")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as err:
        if trusted or "weights only" not in str(err).lower():
            raise CorruptCheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated: "
                                         f"{_first_line(err)}).") from None
        names = _untrusted_names(path)  # raises CorruptCheckpointError for a truncated pickle
        if not names:  # refused, but names no global: a malformed pickle
            raise CorruptCheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(err)}).") from None
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise UntrustedCheckpointError(
            f"{path} needs a full unpickle, which can run code from the file (it refers to {shown}); "
            f"open it only if you made it or trust its source, with {OPT_IN}.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as err:
        raise CorruptCheckpointError(f"{path} is not a readable PyTorch checkpoint (corrupt or truncated: "
                                     f"{_first_line(err)}).") from None


@contextlib.contextmanager
def weights_only_loads(enabled: bool = True) -> Iterator[None]:
    """Within the block, every ``torch.load`` (also inside other libraries that pass ``weights_only=False``)
    reads with ``weights_only=True`` (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``). ``enabled=False``: no change."""
    if not enabled:
        yield
        return
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def peek_checkpoint(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """What an adapter's ``identify`` may learn from a file without unpickling it.

    Returns ``(content, [])`` for a file ``weights_only`` loading reads, ``(None, globals)`` for one
    that needs a full unpickle (the names its pickle refers to, the first being the top-level object's
    class for a pickled module), ``(None, [])`` for an unreadable file. Never raises for a bad file.
    """
    try:
        return load_checkpoint(path), []
    except UntrustedCheckpointError:
        try:
            return None, pickle_globals(path)
        except CorruptCheckpointError:
            return None, []
    except (CorruptCheckpointError, FileNotFoundError):
        return None, []


# --- plain descriptions of objects -------------------------------------------------------------------
_GLOBAL, _OBJECT, _REF, _TUPLE, _SET, _DICT, _ODICT = ("__global__", "__object__", "__ref__", "__tuple__",
                                                        "__set__", "__dict__", "__odict__")


class NotPlainError(TypeError):
    """An object with no plain description (a lambda, a class outside the allow-list, ...)."""


def allow_modules(*prefixes: str) -> None:
    """Let plain descriptions name classes and functions of modules starting with ``prefixes`` (e.g. ``"pkg."``)."""
    for prefix in prefixes:
        if not prefix.endswith(".") or prefix in ("torch.", "builtins.", "os.", "."):
            raise ValueError(f"allow_modules: {prefix!r} must be a package prefix ending in '.' "
                             "(not torch. or builtins.).")
        if prefix not in ALLOWED_PREFIXES:
            ALLOWED_PREFIXES.append(prefix)


def _allowed(module: str) -> bool:
    return any(f"{module}.".startswith(prefix) for prefix in ALLOWED_PREFIXES)


def _name_of(obj: Any) -> str:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname or not _allowed(module):
        raise NotPlainError(f"{obj!r} ({module}.{qualname}) is not under the allowed modules "
                            f"{tuple(ALLOWED_PREFIXES)}.")
    if _resolve(f"{module}:{qualname}") is not obj:
        raise NotPlainError(f"{module}.{qualname} does not name {obj!r}.")
    return f"{module}:{qualname}"


def _resolve(name: str) -> Any:
    """The class or function ``module:qualname`` names, if its module is allowed (imported, never called)."""
    module, _, qualname = name.partition(":")
    if not _allowed(module) or not qualname or "<" in qualname:
        raise UntrustedCheckpointError(f"the checkpoint names {module}.{qualname}, which is not under the allowed "
                                       f"modules ({', '.join(ALLOWED_PREFIXES)}); load it with {OPT_IN} "
                                       "only if you trust it.")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        raise UntrustedCheckpointError(f"the checkpoint names {module}.{qualname}, which is not a class or function.")
    home = getattr(obj, "__module__", None) or ""
    if not _allowed(home) or getattr(obj, "__qualname__", None) != qualname:  # e.g. schnetpack.utils:os.system
        raise UntrustedCheckpointError(f"the checkpoint names {module}.{qualname}, which is {home}."
                                       f"{getattr(obj, '__qualname__', '?')}, not under the allowed modules; load it "
                                       f"with {OPT_IN} only if you trust it.")
    return obj


def to_plain(value: Any) -> Any:
    """``value`` as tensors, numbers, strings, lists and dicts (what ``weights_only`` loading reads).

    Objects become ``{"__object__": "module:Class", "state": ...}`` (their ``__getstate__``), classes and
    functions ``{"__global__": "module:name"}``; an object met twice is stored once (``__ref__``).

    Raises:
        NotPlainError: something outside :data:`ALLOWED_PREFIXES`, or with no name (a lambda).
    """
    memo: dict[int, int] = {}

    def encode(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype,
                                       torch.device, torch.Size)):
            return v
        if type(v) is list:
            return [encode(x) for x in v]
        if type(v) is tuple:
            return {_TUPLE: [encode(x) for x in v]}
        if type(v) in (set, frozenset):
            return {_SET: [encode(x) for x in v]}
        if isinstance(v, dict) and type(v) in (dict, OrderedDict) or type(v).__name__ == "AttributeDict":
            key = _ODICT if type(v) is OrderedDict else _DICT
            return {key: [[encode(k), encode(x)] for k, x in v.items()]}
        if type(v).__module__.startswith("omegaconf"):  # Hydra's DictConfig/ListConfig: values resolve on access
            return encode(dict(v.items()) if isinstance(v, Mapping) else list(v))
        if isinstance(v, (type, types.FunctionType, types.BuiltinFunctionType)):
            return {_GLOBAL: _name_of(v)}
        if id(v) in memo:
            return {_REF: memo[id(v)]}
        cls_name = _name_of(type(v))
        memo[id(v)] = len(memo)
        return {_OBJECT: cls_name, "id": memo[id(v)], "state": encode(v.__getstate__())}

    return encode(value)


def from_plain(data: Any) -> Any:
    """The objects a :func:`to_plain` description holds, rebuilt without calling any named callable.

    Raises:
        UntrustedCheckpointError: the description names something outside :data:`ALLOWED_PREFIXES`.
    """
    memo: dict[int, Any] = {}

    def decode(v: Any) -> Any:
        if type(v) is list:
            return [decode(x) for x in v]
        if type(v) is not dict or len(v) == 0:
            return v
        if _TUPLE in v:
            return tuple(decode(x) for x in v[_TUPLE])
        if _SET in v:
            return {decode(x) for x in v[_SET]}
        if _DICT in v or _ODICT in v:
            items = [(decode(k), decode(x)) for k, x in v.get(_DICT, v.get(_ODICT))]
            return OrderedDict(items) if _ODICT in v else dict(items)
        if _GLOBAL in v:
            return _resolve(v[_GLOBAL])
        if _REF in v:
            return memo[v[_REF]]
        if _OBJECT in v:
            cls = _resolve(v[_OBJECT])
            if not isinstance(cls, type):
                raise UntrustedCheckpointError(f"the checkpoint builds an object of {v[_OBJECT]}, not a class.")
            obj = object.__new__(cls) if cls.__new__ is object.__new__ else cls.__new__(cls)
            memo[v["id"]] = obj
            state = decode(v["state"])
            if hasattr(obj, "__setstate__"):
                obj.__setstate__(state)
            elif isinstance(state, tuple):  # (__dict__, __slots__ values), as object.__getstate__ returns
                obj.__dict__.update(state[0] or {})
                for key, value in (state[1] or {}).items():
                    object.__setattr__(obj, key, value)
            elif state:
                obj.__dict__.update(state)
            return obj
        return v

    return decode(data)
