"""Missing optional dependencies: one line naming the feature and the extra; console scripts exit 2.

A missing module is simulated with ``sys.modules[name] = None`` (Python's documented way to make an
import fail), restored by monkeypatch after each test.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from energyloss_plugins.console import console_script
from energyloss_plugins.optional import MissingOptionalDependency, install_line, require


def hide(monkeypatch, *names: str) -> None:
    """Make ``import name`` (and of its submodules) raise ModuleNotFoundError for this test."""
    for name in names:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            monkeypatch.setitem(sys.modules, key, None)
        monkeypatch.setitem(sys.modules, name, None)


def _one_line_naming(message: str, feature: str, extra: str) -> None:
    assert "\n" not in message.strip(), message
    assert feature in message and install_line(extra) in message, message
    assert install_line(extra) == f'pip install "energyloss-plugins[{extra}]"'


def test_require_returns_the_module_or_names_feature_and_extra(monkeypatch):
    assert require("json.decoder", "x", "data") is importlib.import_module("json.decoder")
    hide(monkeypatch, "rdkit")
    with pytest.raises(MissingOptionalDependency) as info:
        require("rdkit.Chem", "bond perception", "data")
    _one_line_naming(str(info.value), "bond perception", "data")
    assert isinstance(info.value, ModuleNotFoundError) and info.value.name == "rdkit"


def test_require_keeps_the_real_error_of_an_installed_but_broken_module(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg_el.py").write_text("import nonexistent_dependency_el\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("brokenpkg_el", "a feature", "data")
    assert not isinstance(info.value, MissingOptionalDependency)
    assert info.value.name == "nonexistent_dependency_el"


def test_energyloss_data_build_without_rdkit_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ase")
    from energyloss_plugins.data.cli import main

    hide(monkeypatch, "rdkit")
    out = tmp_path / "nci.db"
    status = main(["build", "nci", "-o", str(out), "--max-molecules", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("energyloss-data: ") and "Traceback" not in err
    _one_line_naming(err, "energyloss-data: ", "data")
    assert not out.exists()


def test_build_dataset_with_xtb_without_tblite_names_the_xtb_extra(tmp_path, monkeypatch):
    pytest.importorskip("rdkit")
    from energyloss_plugins.data import build_dataset

    hide(monkeypatch, "tblite")
    with pytest.raises(MissingOptionalDependency) as info:
        build_dataset("g2", str(tmp_path / "g2.db"), method="xtb", inputs=("thermal",), max_molecules=1, progress=False)
    _one_line_naming(str(info.value), "GFN2-xTB", "xtb")


def test_console_script_maps_a_raw_import_of_a_known_optional_module(monkeypatch, capsys):
    hide(monkeypatch, "h5py")

    @console_script("some-tool")
    def main_known():
        import h5py  # noqa: F401

    @console_script("some-tool")
    def main_unknown():
        import nonexistent_dependency_el  # noqa: F401

    assert main_known() == 2
    _one_line_naming(capsys.readouterr().err, "some-tool: this command needs h5py", "torchmdnet")
    with pytest.raises(ModuleNotFoundError):  # not ours to explain: the traceback stays
        main_unknown()


def test_torchmd_train_without_torchmdnet_exits_2(tmp_path, monkeypatch, capsys):
    """The installed command goes through run_script, which imports the adapter inside the guard."""
    from energyloss_plugins.optional import SCRIPTS_GROUP, run_script

    # the metadata a wheel install writes (pyproject's entry points), for a command named fake-train
    info = tmp_path / "fake_el-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-el\nVersion: 0\n")
    (info / "entry_points.txt").write_text(f"[{SCRIPTS_GROUP}]\nfake-train = torchmdnet_ext.cli:main\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "bin" / "fake-train"), "--help"])
    for key in [k for k in sys.modules if k.startswith("torchmdnet_ext")]:
        monkeypatch.delitem(sys.modules, key)  # a fresh process: the adapter package is not imported yet
    hide(monkeypatch, "torchmdnet")
    assert run_script() == 2
    err = capsys.readouterr().err
    assert err.startswith("fake-train: ") and "Traceback" not in err
    _one_line_naming(err, "TorchMD-Net adapter", "torchmdnet")


def test_importing_the_ase_bridge_without_ase_names_the_ase_extra(monkeypatch):
    for key in [k for k in sys.modules if k.startswith("energyloss_plugins.ase")]:
        monkeypatch.delitem(sys.modules, key)
    hide(monkeypatch, "ase")
    with pytest.raises(MissingOptionalDependency) as info:
        importlib.import_module("energyloss_plugins.ase")
    _one_line_naming(str(info.value), "energyloss_plugins.ase", "ase")


def test_mmff_calculator_without_rdkit_names_the_ase_extra(monkeypatch):
    pytest.importorskip("ase")
    from ase.build import molecule

    from energyloss_plugins.ase import MMFFCalculator

    hide(monkeypatch, "rdkit")
    with pytest.raises(MissingOptionalDependency) as info:
        MMFFCalculator(molecule("CH4"))
    _one_line_naming(str(info.value), "MMFFCalculator", "ase")


def test_chemistry_without_rdkit_names_the_data_extra(monkeypatch):
    import numpy as np

    from energyloss_plugins import chem

    hide(monkeypatch, "rdkit")
    z, x = np.array([8, 1, 1]), np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    calls = [lambda: chem.mol_from_smiles("O"), lambda: chem.mol_from_xyz(z, x), lambda: chem.bare_mol(z, x),
             lambda: chem.mol_from_bonds(z, x, np.array([[0, 1], [0, 2]]))]
    for call in calls:
        with pytest.raises(MissingOptionalDependency) as info:
            call()
        _one_line_naming(str(info.value), "energyloss_plugins.chem", "data")
