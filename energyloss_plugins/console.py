"""What the console scripts share: the wrapper their ``main`` runs in (user errors: one line, exit status 2).

- ``ValueError`` (bad option values, unreadable or unsuitable files), ``FileNotFoundError`` and other
  ``OSError`` (paths), and a missing optional dependency print ``<prog>: error: <message>`` on one line
  and return 2; the message names the problem and the fix.
- Ctrl-C (``KeyboardInterrupt``) prints one line and returns 130 (128 + SIGINT, what shells expect);
  writers go through :func:`energyloss_plugins.io.atomic_write`, so no partial file is left.
- Any other exception is a bug and keeps its traceback. ``ENERGYLOSS_TRACEBACK=1`` shows the
  traceback of user errors too (for reports).

Option checks (:func:`check_option`, the core's one number check; :func:`check_device`;
:func:`positive_int` for argparse) name the option and the fix.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable

from energyloss_plugins._checks import check_number as check_option
from energyloss_plugins.optional import explain_missing

__all__ = ["INTERRUPTED", "USAGE_ERROR", "ArgumentParser", "UsageError", "check_device", "check_option",
           "console_script", "one_line", "positive_int"]

#: Exit status of a user error (argparse's own) and of Ctrl-C (128 + SIGINT).
USAGE_ERROR, INTERRUPTED = 2, 130


class UsageError(ValueError):
    """A problem with the command line or its files; reported in one line, exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``<prog>: error: ...; see <prog> --help``), exit 2."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (ASE and torch messages may span several)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def console_script(prog: str, interrupted: str = "interrupted") -> Callable[[Callable[..., int | None]],
                                                                            Callable[..., int | None]]:
    """Decorate a console script's ``main`` (see the module docstring); ``interrupted`` is the Ctrl-C line.

    A ``ModuleNotFoundError`` for a module listed in :data:`energyloss_plugins.optional.PROVIDERS`
    names the extra that installs it (``optional.explain_missing``). The decorated module must import
    optional packages only inside ``main`` (after this wrapper runs).
    """

    def wrap(main: Callable[..., int | None]) -> Callable[..., int | None]:
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"{prog}: {interrupted}", file=sys.stderr)
                return INTERRUPTED
            except ModuleNotFoundError as exc:
                missing = explain_missing(exc)
                if missing is None:
                    raise
                print(f"{prog}: {missing}", file=sys.stderr)
                return USAGE_ERROR
            except (ValueError, OSError) as exc:
                if os.environ.get("ENERGYLOSS_TRACEBACK"):
                    raise
                print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
                return USAGE_ERROR

        return run

    return wrap


def check_device(device: str, option: str = "--device") -> str:
    """``device`` if torch can use it here, else a :class:`UsageError` naming ``option`` and the fix."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"{option} {device!r} is not a torch device; use cpu, cuda or cuda:0.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{option} {device}: no CUDA GPU is available here; use {option} cpu.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"{option} {device}: only {torch.cuda.device_count()} GPU(s) here; use cuda:0.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{option} mps: Apple's MPS is not available here; use {option} cpu.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{option} {device!r}: use cpu or cuda.")
    return device


def positive_int(option: str) -> Callable[[str], int]:
    """argparse ``type`` for an integer >= 1 (argparse turns the error into one line, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be an integer >= 1, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be an integer >= 1, got {value}")
        return value

    return parse
