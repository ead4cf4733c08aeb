"""Optional dependencies: a one-line message naming the feature and the extra, never a raw traceback.

The core needs torch, numpy, scipy, networkx, tqdm and vesin only; everything else comes with an extra
(``pip install "energyloss-plugins[data]"`` and so on, see pyproject.toml and docs/install.md).
Code that needs an optional module imports it through :func:`require`, and console scripts wrap
their ``main`` in :func:`energyloss_plugins.console.console_script` (one line, exit status 2). A
command whose module cannot even be imported without its framework (an adapter package registers
itself at import) points at :func:`run_script` instead, which imports it inside the same guard.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata
from types import ModuleType

DISTRIBUTION = "energyloss-plugins"

# Top-level module -> (distribution that provides it, smallest extra that installs it). Used by
# console.console_script for imports that did not go through require().
PROVIDERS: dict[str, tuple[str, str]] = {
    "rdkit": ("rdkit", "data"),
    "ase": ("ase", "data"),
    "tblite": ("tblite", "xtb"),
    "fcd": ("fcd", "metrics"),
    "schnetpack": ("schnetpack", "schnetpack"),
    "hydra": ("hydra-core", "schnetpack"),
    "omegaconf": ("omegaconf", "schnetpack"),
    "torchmdnet": ("torchmd-net", "torchmdnet"),
    "torch_geometric": ("torch-geometric", "torchmdnet"),
    "lightning": ("lightning", "torchmdnet"),
    "h5py": ("h5py", "torchmdnet"),
    "yaml": ("pyyaml", "torchmdnet"),
}


def version() -> str:
    """The package's version (its one source: ``energyloss_plugins.__version__``)."""
    from energyloss_plugins import __version__

    return __version__


def add_version_option(parser) -> None:
    """Give an ``argparse`` parser ``--version`` (prints ``<prog> <version>`` and exits 0)."""
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the version of energyloss-plugins and exit")


def install_line(extra: str) -> str:
    """The pip command that installs ``extra``, e.g. ``pip install "energyloss-plugins[data]"``."""
    return f'pip install "{DISTRIBUTION}[{extra}]"'


class MissingOptionalDependency(ModuleNotFoundError):
    """An optional module is not installed; the message names the feature and the extra to install.

    A ``ModuleNotFoundError`` (so ``except ImportError`` still catches it) whose ``str`` is one line.
    """

    def __init__(self, module: str, feature: str, extra: str):
        top = module.split(".")[0]
        dist = PROVIDERS.get(top, (top, extra))[0]
        super().__init__(f"{feature} needs {dist} (module {top!r}), which is not installed: {install_line(extra)}",
                         name=top)
        self.feature, self.extra = feature, extra


def _is_missing(exc: ModuleNotFoundError, module: str) -> bool:
    """True if ``exc`` says ``module`` itself (or a parent package of it) is absent, not one of its imports."""
    return exc.name is not None and (module == exc.name or module.startswith(exc.name + "."))


def require(module: str, feature: str, extra: str) -> ModuleType:
    """Import and return ``module``, or raise :class:`MissingOptionalDependency`.

    Args:
        module: dotted module name, e.g. ``"rdkit.Chem"`` or ``"tblite.ase"``.
        feature: what needs it, as the user knows it (``"energyloss-data build"``, ``"MMFFCalculator"``).
        extra: the extra of this distribution that installs it (``"data"``, ``"xtb"``, ...).

    A module that is installed but fails to import for another reason (a broken dependency of its
    own) re-raises the original error, which is then the useful one.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if not _is_missing(exc, module):
            raise
        raise MissingOptionalDependency(module, feature, extra) from None


def explain_missing(exc: ModuleNotFoundError) -> MissingOptionalDependency | None:
    """``exc`` as a :class:`MissingOptionalDependency` naming the extra, or None for a module we do not provide."""
    if isinstance(exc, MissingOptionalDependency):
        return exc
    top = (exc.name or "").split(".")[0]
    if top not in PROVIDERS:
        return None
    return MissingOptionalDependency(top, "this command", PROVIDERS[top][1])


#: Entry-point group naming the real ``main`` of each command that :func:`run_script` dispatches.
SCRIPTS_GROUP = "energyloss_plugins.scripts"


def run_script() -> int | None:
    """Console-script trampoline: load and run the ``main`` registered for this command, inside the guard.

    pyproject.toml points the command (``sys.argv[0]``'s name) here and names its ``main`` under
    ``[project.entry-points."energyloss_plugins.scripts"]``. Loading that entry point imports an
    adapter package, which imports its framework; doing it here turns a missing framework into the
    one-line message and exit status 2. The ``main`` itself runs in
    :func:`energyloss_plugins.console.console_script` (user errors, Ctrl-C).
    """
    prog = os.path.basename(sys.argv[0]).removesuffix(".exe")
    if sys.argv[1:] == ["--version"]:  # answered without importing the framework (works without it)
        print(f"{prog} {version()}")
        return 0
    found = metadata.entry_points(group=SCRIPTS_GROUP, name=prog)
    if not found:
        raise SystemExit(f"{prog}: no entry point {prog!r} in group {SCRIPTS_GROUP!r}; reinstall {DISTRIBUTION}.")
    (entry,) = found
    try:
        main = entry.load()
    except ModuleNotFoundError as exc:
        missing = explain_missing(exc)
        if missing is None:
            raise
        print(f"{prog}: {missing}", file=sys.stderr)
        return 2
    return main()
