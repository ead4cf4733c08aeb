"""The layering rules of docs/architecture.md, read from the source with ``ast``:

- the core (``energyloss_plugins``) never imports an adapter package;
- no import cycle between modules (module-level and function-level imports);
- no module imports another module's private name (a private module is shared inside its own package);
- the distribution's packages hold no test or benchmark helpers.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = "energyloss_plugins"
ADAPTERS = ("schnetpack_ext", "torchmdnet_ext")
PACKAGES = (CORE, *ADAPTERS)
#: Script folders checked for private imports (their modules are named "<folder>.<file>").
SCRIPT_DIRS = ("benchmarks", "examples")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(tops=PACKAGES) -> dict[str, Path]:
    found = {}
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imports(name: str, path: Path):
    """``(target module or None, imported names, line)`` for every import statement of a module."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [a.name for a in node.names], node.lineno


def _graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for base, names, _ in _imports(name, path):
            targets = [f"{base}.{n}" if f"{base}.{n}" in modules else base for n in names] or [base]
            graph.add_edges_from((name, t) for t in targets if t in modules and t != name)
    return graph


def test_core_never_imports_an_adapter():
    offenders = [
        f"{path.relative_to(ROOT)}:{line} imports {base}"
        for name, path in _modules((CORE,)).items()
        for base, _, line in _imports(name, path)
        if base.split(".")[0] in ADAPTERS
    ]
    assert not offenders, offenders
    text = "\n".join(p.read_text() for p in (ROOT / CORE).rglob("*.py"))
    assert not any(a in text for a in ADAPTERS), "the core names an adapter package"


def test_no_import_cycles():
    graph = _graph()
    assert graph.number_of_edges() > 50  # the walk found the imports
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, cycles


def test_cycle_check_would_see_a_function_level_import(tmp_path):
    source = "def f():\n    from energyloss_plugins.losses import pair_energy_loss\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [b for b, _, _ in _imports("energyloss_plugins.metrics.m", path)] == ["energyloss_plugins.losses"]


def _is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _resolve(importer: str, base: str, modules: dict[str, Path]) -> str:
    """``base`` as a module name; a script's bare import of a sibling file gets the script folder's prefix."""
    sibling = f"{importer.rpartition('.')[0]}.{base}"
    return sibling if base not in modules and sibling in modules else base


def _crosses_private_module(importer: str, module: str) -> bool:
    """Whether ``module`` has a private component whose package does not contain ``importer``."""
    parts = module.split(".")
    if parts[0] not in (*PACKAGES, *SCRIPT_DIRS):
        return False  # third-party private APIs are another matter
    for i, part in enumerate(parts):
        owner = ".".join(parts[:i])
        if _is_private(part) and not (importer == owner or importer.startswith(owner + ".")):
            return True
    return False


def _private_violations(name: str, path: Path, modules: dict[str, Path]) -> list[str]:
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    out: list[str] = []
    aliases = {}
    for base, names, line in _imports(name, path):
        base = _resolve(name, base, modules)
        for item in names or [base]:
            full = f"{base}.{item}" if names else item
            is_module = full in modules
            # A private module is shared inside the package that holds it; a private name never leaves its module.
            if _crosses_private_module(name, full if is_module else base):
                out.append(f"{where}:{line} imports private module {full if is_module else base}")
            elif names and not is_module and _is_private(item):
                out.append(f"{where}:{line} imports private name {item} from {base}")
            if is_module:
                aliases[item if names else full.split(".")[0]] = full
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if _is_private(node.attr) and aliases[node.value.id] != name:
                out.append(f"{where}:{node.lineno} uses {node.value.id}.{node.attr}")
    return sorted(set(out))


def test_no_module_imports_a_private_name_of_another():
    modules = {**_modules(), **_modules(SCRIPT_DIRS)}
    violations = [v for name, path in modules.items() for v in _private_violations(name, path, modules)]
    assert not violations, violations


def test_private_name_check_flags_a_crossing(tmp_path):
    modules = _modules()
    path = tmp_path / "m.py"
    path.write_text("from energyloss_plugins.metrics.bonds import _VALENCES\nfrom energyloss_plugins import _checks\n"
                    "x = _checks.describe\ny = _checks._private\n"
                    "from schnetpack_ext._resolvers import register_resolvers\n")
    found = _private_violations("examples.m", path, modules)
    # the private name, the private module outside its package (twice), the private attribute
    assert len(found) == 4, found
    inside = _private_violations("energyloss_plugins.m", path, modules)  # _checks is shared inside the core
    assert len(inside) == 3 and not any("private module energyloss_plugins._checks" in v for v in inside), inside


def test_distribution_ships_no_test_or_benchmark_helpers():
    setuptools = pytest.importorskip("setuptools")
    with open(ROOT / "pyproject.toml", "rb") as f:
        config = tomllib.load(f)
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = setuptools.find_packages(where=str(ROOT), include=include)
    assert set(PACKAGES) <= set(packages)
    assert not {"tests", "benchmarks", "examples"} & {p.split(".")[0] for p in packages}
    helpers = []
    for package in packages:
        for path in (ROOT / package.replace(".", "/")).glob("*.py"):
            tree = ast.parse(path.read_text())
            imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import,)) for a in n.names}
            imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            if path.stem.startswith(("test", "_test", "_bench", "bench")) or {"pytest", "hypothesis"} & imported:
                helpers.append(str(path.relative_to(ROOT)))
    assert not helpers, helpers


#: The functions every adapter module implements (energyloss_plugins/adapters.py documents them).
ADAPTER_PROTOCOL = {"identify", "load", "predict", "sample_conformers", "generate"}


def test_adapter_entry_points_name_adapter_modules_that_implement_the_protocol():
    with open(ROOT / "pyproject.toml", "rb") as f:
        declared = tomllib.load(f)["project"]["entry-points"]["energyloss_plugins.adapters"]
    # A fresh interpreter: discovery must find the table without importing any adapter (or its framework).
    probe = ("import json, sys; from energyloss_plugins.adapters import adapter_table; table = adapter_table(); "
             f"print(json.dumps([table, sorted(m for m in sys.modules if m.split('.')[0] in {list(ADAPTERS)!r})]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    table, adapter_modules_loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert table == dict(sorted(declared.items()))
    assert adapter_modules_loaded == [], adapter_modules_loaded
    for module in table.values():
        path = ROOT / (module.replace(".", "/") + ".py")
        assert path.is_file(), module
        defined = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        defined |= {a.asname or a.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.ImportFrom)
                    for a in n.names}
        assert ADAPTER_PROTOCOL <= defined, f"{module} lacks {sorted(ADAPTER_PROTOCOL - defined)}"
