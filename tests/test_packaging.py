"""The wheel a pip user installs: metadata, shipped files, and extras that cover what each README section runs.

The coverage check would have caught the RDKit gap (``[schnetpack]`` without RDKit, while the
SchNetPack section starts with ``energyloss-data build``): for every README section with a
``pip install "energyloss-plugins[...]"`` line it collects the section's entry points (console
commands in its shell blocks, ``spktrain experiment=...`` configurations' ``_target_`` classes,
imports in its Python blocks, backticked module names), follows the project's own imports from
there statically (function-local imports included, so nothing has to run), and requires every
third-party module reached to be installed by the section's line: the core requirements plus the
named extras, expanded through the requirements of the installed distributions. Imports through
``energyloss_plugins.optional.require(module, feature, extra)`` may stay outside the line when
``extra`` exists and installs the module (the user then gets the one-line message naming it), unless
the call is a gate (a statement of its own outside any ``if``: the entry point cannot run without it).
Offline and fast: the wheel is built with ``--no-build-isolation --no-index`` (setuptools only).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from functools import cache
from importlib import metadata

import pytest
import yaml

packaging = pytest.importorskip("packaging")
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

import energyloss_plugins  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("energyloss_plugins", "schnetpack_ext", "torchmdnet_ext", "hydra_plugins")
ADAPTERS = ("schnetpack_ext", "torchmdnet_ext")
NAME = "energyloss-plugins"
# README sections a pip user follows; each must state one install line (matched by heading word)
SECTIONS = ("SchNetPack", "TorchMD-Net", "ASE", "data", "Spin")
# a section's line: from a clone (`pip install ".[extra]"`, `pip install .`) or by name once published
INSTALL = re.compile(r'pip install "?(?:energyloss-plugins|\.)(?:\[([\w,-]+)\])?"?(?=[\s`)]|$)')


# ----------------------------------------------------------------------------------- the wheel
@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> dict:
    """Build the wheel from a copy of the sources (setuptools writes build/ into the tree it builds)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for pkg in PACKAGES:
        shutil.copytree(os.path.join(ROOT, pkg), src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-v",
           "-w", str(tmp / "dist"), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "default"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (path,) = (tmp / "dist").glob("*.whl")
    sources = {os.path.relpath(os.path.join(d, f), src).replace(os.sep, "/")
               for pkg in PACKAGES for d, _, files in os.walk(src / pkg) for f in files}
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    return {"log": res.stdout + res.stderr, "names": names, "meta": meta, "entry_points": entry_points,
            "path": path, "sources": sources}


def test_wheel_builds_without_deprecation_warnings_and_carries_current_metadata(wheel):
    assert "deprecat" not in wheel["log"].lower(), [ln for ln in wheel["log"].splitlines() if "eprecat" in ln]
    meta = wheel["meta"]
    assert meta["Version"] == energyloss_plugins.__version__
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel["names"])
    core = [Requirement(r) for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert {canonicalize_name(r.name) for r in core} == {"torch", "numpy", "scipy", "networkx", "tqdm", "vesin"}


def test_wheel_ships_the_configurations_and_no_repository_only_files(wheel):
    names = set(wheel["names"])
    for conf in ("structure_tensornet", "diffusion_et"):
        assert f"torchmdnet_ext/configs/{conf}.yaml" in names
    for exp in ("energyloss_structure", "energyloss_diffusion"):
        assert f"schnetpack_ext/configs/experiment/{exp}.yaml" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "examples/")) for n in names)


def test_wheel_holds_exactly_the_package_sources_and_its_core_imports_from_an_install(wheel, tmp_path):
    shipped = {n for n in wheel["names"] if ".dist-info/" not in n}
    assert {n for n in wheel["sources"] if n.endswith((".py", ".yaml"))} == wheel["sources"], "stray files"
    assert shipped == wheel["sources"], (sorted(wheel["sources"] - shipped), sorted(shipped - wheel["sources"]))
    target = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
                          str(wheel["path"])], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # Every core module, imported from the installed wheel (not this checkout) in a fresh interpreter.
    probe = ("import importlib, pkgutil, energyloss_plugins as p; "
             "names = [m.name for m in pkgutil.walk_packages(p.__path__, 'energyloss_plugins.')]; "
             "mods = [importlib.import_module(n) for n in names]; "
             "print(len(mods), sorted({m.__file__.split('energyloss_plugins')[0] for m in [p, *mods]}))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(target)})
    assert res.returncode == 0, res.stderr[-3000:]
    count, roots = res.stdout.split(" ", 1)
    n_core = sum(n.startswith("energyloss_plugins/") and n.endswith(".py") for n in shipped)
    assert int(count) == n_core - 1  # every module but the package's own __init__
    assert roots.strip() == repr([str(target) + os.sep]), roots


def test_sdist_ships_what_the_readme_and_docs_link_to(tmp_path):
    """Relative links of README.md and docs/*.md resolve inside the source distribution (no public URL
    exists, so the package index page's readers get the files with the sdist); the wheel names them."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    for folder in (*PACKAGES, "docs", "examples", "requirements"):
        shutil.copytree(os.path.join(ROOT, folder), src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(tmp_path / 'dist')!r}))"
    res = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    import tarfile

    with tarfile.open(tmp_path / "dist" / res.stdout.split()[-1]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"docs/install.md", "examples/schnetpack/README.md", "requirements/ci.txt"} <= names
    for page in ["README.md", *(f"docs/{n}" for n in os.listdir(os.path.join(ROOT, "docs")) if n.endswith(".md"))]:
        text = open(os.path.join(ROOT, page)).read()
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            target = os.path.normpath(os.path.join(os.path.dirname(page), link))
            assert target in names or any(n.startswith(target + "/") for n in names), f"{page} links {link}"
    with open(src / "pyproject.toml", "rb") as f:
        import tomllib

        urls = tomllib.load(f)["project"]["urls"]
    assert urls and all(u in names or u.startswith("https://") for u in urls.values())


def test_console_scripts_point_at_existing_functions(wheel):
    scripts, group = _scripts(wheel)
    assert {"energyloss-data", "energyloss-torchmd-train"} <= set(scripts)
    for target in [*scripts.values(), *group.values()]:
        module, func = target.split(":")
        assert func in _functions(module), target
    for name, target in scripts.items():  # the trampoline dispatches through the group, by command name
        assert target != "energyloss_plugins.optional:run_script" or name in group, name


# ------------------------------------------------------------------------- static import closure
def _module_file(module: str) -> str | None:
    base = os.path.join(ROOT, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _functions(module: str) -> set[str]:
    tree = ast.parse(open(_module_file(module)).read())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def _is_probe(node: ast.Try) -> bool:
    """``try: import x / except ImportError`` (or Exception): an availability probe, not a requirement."""
    names = set()
    for handler in node.handlers:
        kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        names |= {getattr(k, "id", None) for k in kinds}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception", None})


def _require_call(node) -> tuple[str, str] | None:
    """``(module, extra)`` of a ``require(module, feature, extra)`` call with constant arguments, else None."""
    if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require" and len(node.args) == 3
            and all(isinstance(a, ast.Constant) for a in node.args)):
        return node.args[0].value, node.args[2].value
    return None


class _Imports(ast.NodeVisitor):
    """Imports of one module: plain ones (required) and ``require(...)`` calls (module, extra).

    A ``require(...)`` on a statement of its own, outside any ``if``, is a gate (``build_dataset`` and
    ``energyloss-evaluate`` check RDKit first thing: they cannot run without it), so it is a need like a
    plain import; any other ``require`` is an optional feature (a message when used).
    """

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.plain: set[str] = set()
        self.optional: set[tuple[str, str]] = set()
        self.conditional = 0  # depth of enclosing `if` statements

    def visit_If(self, node):  # skip `if TYPE_CHECKING:` blocks
        if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            self.conditional += 1
            self.generic_visit(node)
            self.conditional -= 1

    def visit_Expr(self, node):
        gate = _require_call(node.value)
        if gate is not None and not self.conditional:
            self.plain.add(gate[0])
        self.generic_visit(node)

    def visit_Try(self, node):
        if not _is_probe(node):
            for stmt in node.body:
                self.visit(stmt)
        for part in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(part)

    def visit_Import(self, node):
        self.plain |= {a.name for a in node.names}

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        self.plain.add(base)
        self.plain |= {f"{base}.{a.name}" for a in node.names}  # submodules imported by name

    def visit_Call(self, node):
        if (call := _require_call(node)) is not None:
            self.optional.add(call)
        self.generic_visit(node)


@cache
def _imports(module: str) -> tuple[frozenset, frozenset]:
    path = _module_file(module)
    visitor = _Imports(module, path.endswith("__init__.py"))
    visitor.visit(ast.parse(open(path).read()))
    return frozenset(visitor.plain), frozenset(visitor.optional)


def _reach(entries: set[str]) -> tuple[set[str], set[tuple[str, str]]]:
    """Third-party modules reached from ``entries`` (plain imports) and optional (module, extra) pairs.

    Project modules are followed (with their parent packages, which Python runs first). A core
    module's import of an adapter is not followed: the core runs an adapter only on a model the user
    trained with that adapter, whose extra is then installed (and issue 13 removes these imports).
    """
    todo, seen, plain, optional = list(entries), set(), set(), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        if not _module_file(module):  # a namespace package (hydra_plugins): no code of its own
            continue
        found, opt = _imports(module)
        optional |= opt
        for name in found:
            top = name.split(".")[0]
            if top in PACKAGES:
                if module.startswith("energyloss_plugins") and top in ADAPTERS:
                    continue
                if _module_file(name):
                    todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                plain.add(top)
    return plain, optional


# ------------------------------------------------------------------------------ requirement closure
def _provided(meta, extras: set[str]) -> set[str]:
    """Canonical names of every distribution that ``pip install energyloss-plugins[extras]`` installs."""
    todo = [Requirement(r) for r in meta.get_all("Requires-Dist") if _applies(Requirement(r), extras)]
    done: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == NAME:  # an extra naming others of ours
            todo += [Requirement(r) for r in meta.get_all("Requires-Dist") if _applies(Requirement(r), req.extras)]
            continue
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in done:
            continue
        done.add(key)
        todo += [r for r in map(Requirement, _installed().get(name, [])) if _applies(r, req.extras)]
    return {k.split("[")[0] for k in done}


@cache
def _installed() -> dict[str, list[str]]:
    """Requirements of every installed distribution, by canonical name (one scan of sys.path)."""
    return {canonicalize_name(d.metadata["Name"]): d.requires or [] for d in metadata.distributions()}


def _applies(req: Requirement, extras) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in [*extras, ""])


@cache
def _top_level_map() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # one scan of every installed distribution's files


def _distributions(top: str) -> set[str]:
    """Canonical names of the installed distributions providing the top-level module ``top``."""
    return {canonicalize_name(d) for d in _top_level_map().get(top, [])}


# ---------------------------------------------------------------------------------- README sections
def _sections() -> dict[str, str]:
    text = open(os.path.join(ROOT, "README.md")).read()
    return {m.group(1): m.group(2) for m in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.M | re.S)}


def _entries(section: str, scripts: dict[str, str], group: dict[str, str]) -> set[str]:
    """Modules a README section runs: its commands, spktrain experiments, Python imports, named modules."""
    entries = set()
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", section, re.S):
        for line in block.splitlines():
            words = line.split("#")[0].split()
            if not words:
                continue
            if words[0].startswith("energyloss-"):
                assert words[0] in scripts, f"README runs {words[0]}, which the wheel does not install"
                entries.add(group.get(words[0], scripts[words[0]]).split(":")[0])
            elif words[0] == "spktrain":
                entries |= {"schnetpack_ext", "hydra_plugins.energyloss_plugins_searchpath.energyloss_searchpath"}
                for exp in re.findall(r"experiment=(\w+)", line):
                    conf = yaml.safe_load(open(os.path.join(ROOT, "schnetpack_ext", "configs", "experiment",
                                                            f"{exp}.yaml")))
                    entries |= {t for t in _targets(conf) if t.split(".")[0] in PACKAGES}
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        visitor = _Imports("__main__", False)
        visitor.visit(ast.parse(block))
        entries |= {m for m in visitor.plain if m.split(".")[0] in PACKAGES}
    entries |= set(re.findall(r"`((?:energyloss_plugins|schnetpack_ext|torchmdnet_ext)(?:\.\w+)*)", section))
    resolved = set()
    for name in entries:  # a dotted class/function name -> its module
        while not _module_file(name):
            name = name.rpartition(".")[0]
        resolved.add(name)
    return resolved


def _targets(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield value
            else:
                yield from _targets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets(value)


def _scripts(wheel) -> tuple[dict[str, str], dict[str, str]]:
    """(console scripts, trampoline group) of the wheel: command -> "module:function"."""
    ep = wheel["entry_points"]

    def group(name):
        return dict(re.findall(r"^(\S+) = (\S+)$", ep.split(f"[{name}]")[1].split("\n[")[0], re.M))

    return group("console_scripts"), group("energyloss_plugins.scripts")


def _section_problems(meta, title: str, text: str, scripts, group) -> list[str]:
    """What the section's install line misses; [] when it installs everything the section runs."""
    known_extras = set(meta.get_all("Provides-Extra"))
    line = INSTALL.findall(text)[0]
    extras = {e for e in line.split(",") if e}
    if extras - known_extras:
        return [f"{title}: unknown extras {sorted(extras - known_extras)}"]
    installed = _provided(meta, extras)
    plain, optional = _reach(_entries(text, scripts, group))
    problems = []
    for top in sorted(plain):
        dists = _distributions(top)
        if not dists:
            problems.append(f"{title}: imports {top!r}, which no installed distribution provides")
        elif not dists & installed:
            problems.append(f"{title}: imports {top!r} ({', '.join(sorted(dists))}), not installed by "
                            f"[{line}]")
    for module, extra in sorted(optional):
        if extra not in known_extras or not _distributions(module.split(".")[0]) & _provided(meta, {extra}):
            problems.append(f"{title}: require({module!r}, ..., {extra!r}) names an extra that does not install it")
    return problems


def test_each_readme_section_installs_everything_it_runs(wheel):
    sections = _sections()
    for word in SECTIONS:
        (title,) = [t for t in sections if word in t.split()]
        assert len(INSTALL.findall(sections[title])) == 1, f"README section {title!r} needs one install line"
    scripts, group = _scripts(wheel)
    checked = [t for t, text in sections.items() if INSTALL.findall(text)]
    assert len(checked) >= len(SECTIONS)
    problems = [p for t in checked for p in _section_problems(wheel["meta"], t, sections[t], scripts, group)]
    assert not problems, "\n".join(problems)


def test_the_check_catches_the_rdkit_gap(wheel):
    """The bug this file exists for: [schnetpack] without RDKit while its section runs the data builder."""
    meta = wheel["meta"]
    (title,) = [t for t in _sections() if "SchNetPack" in t.split()]
    text = _sections()[title]
    scripts, group = _scripts(wheel)
    assert _section_problems(meta, title, text, scripts, group) == []
    old = Parser().parsestr(meta.as_string())  # the metadata as it was: [schnetpack] without [data]
    del old["Requires-Dist"]
    for req in meta.get_all("Requires-Dist"):
        if not req.startswith(f"{NAME}[data]") or "schnetpack" not in req:
            old["Requires-Dist"] = req
    problems = _section_problems(old, title, text, scripts, group)
    assert any("'rdkit'" in p for p in problems), problems
