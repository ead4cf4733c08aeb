"""Adapter discovery (``energyloss_plugins.adapters``): entry points, the source-checkout fallback,
missing frameworks, and a new adapter picked up by the core's runners without any core change."""

from __future__ import annotations

import sys
import textwrap
from importlib import metadata

import numpy as np
import pytest
import torch

pytest.importorskip("ase")

from ase.build import molecule  # noqa: E402

from energyloss_plugins import adapters  # noqa: E402
from energyloss_plugins.ase import predict_structures  # noqa: E402


def _entry_points(table: dict[str, str]):
    eps = [metadata.EntryPoint(name=k, value=v, group=adapters.GROUP) for k, v in table.items()]
    return lambda group=None: [e for e in eps if group is None or e.group == group]


def test_installed_metadata_and_source_checkout_give_the_same_table(monkeypatch):
    from_pyproject = adapters.adapter_table()
    assert {"schnetpack", "torchmdnet"} <= set(from_pyproject)
    monkeypatch.setattr(metadata, "entry_points", _entry_points(from_pyproject))
    assert adapters.adapter_table() == from_pyproject
    monkeypatch.setattr(metadata, "entry_points", _entry_points({}))  # metadata predating the table
    assert adapters.adapter_table() == from_pyproject


def test_missing_framework_is_named_with_its_extra(monkeypatch, tmp_path):
    (tmp_path / "fancyfw_adapter.py").write_text("import no_such_framework_xyz  # the framework, not installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(metadata, "entry_points", _entry_points({"fancyfw": "fancyfw_adapter"}))
    with pytest.raises(adapters.AdapterUnavailableError, match=r"energyloss-plugins\[fancyfw\]"):
        adapters.get_adapter("fancyfw")
    with pytest.raises(ValueError, match="Registered adapters: fancyfw"):
        adapters.get_adapter("other")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(ValueError, match=r"No adapter recognises.*Not installed: fancyfw"):
        adapters.resolve(str(junk))
    # A registered module that does not exist is a packaging bug, not a missing extra: it is not hidden.
    monkeypatch.setattr(metadata, "entry_points", _entry_points({"ghost": "no_such_adapter_pkg.adapter"}))
    with pytest.raises(ModuleNotFoundError, match="no_such_adapter_pkg"):
        adapters.resolve(str(junk))


class ShiftModel(torch.nn.Module):
    """A 'trained' model of a toy framework: moves every atom by +x (Å)."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = torch.nn.Parameter(torch.tensor(shift))


TOY_ADAPTER = '''
import numpy as np
import torch
from test_adapters import ShiftModel
from energyloss_plugins.adapters import generate, read_checkpoint

def identify(source):
    if isinstance(source, str):
        content = read_checkpoint(source)
        return "structure" if isinstance(content, dict) and "toy_shift" in content else None
    return "structure" if isinstance(source, ShiftModel) else None

def load(path, device="cpu"):
    return ShiftModel(float(read_checkpoint(path)["toy_shift"]))

def predict(model, images, *, batch_size=32, device="cpu", progress=False):
    return [a.positions + np.array([float(model.shift), 0.0, 0.0]) for a in images]
'''


def test_a_new_framework_is_one_module_and_one_entry_point(monkeypatch, tmp_path):
    (tmp_path / "toy_adapter.py").write_text(textwrap.dedent(TOY_ADAPTER))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "test_adapters", sys.modules[__name__])
    monkeypatch.setattr(metadata, "entry_points", _entry_points({"toy": "toy_adapter"}))
    path = tmp_path / "toy.ckpt"
    torch.save({"toy_shift": 0.5}, path)
    images = [molecule("H2O"), molecule("NH3")]
    resolved = adapters.resolve(str(path))
    assert (resolved.framework, resolved.kind) == ("toy", "structure")
    out = predict_structures(str(path), images, align_to_input=False)
    for a, b in zip(out, images, strict=True):
        np.testing.assert_allclose(a.positions - b.positions, np.tile([0.5, 0.0, 0.0], (len(b), 1)))
    aligned = predict_structures(ShiftModel(0.5), images)  # aligned onto the input: the shift is undone
    for a, b in zip(aligned, images, strict=True):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-6)
    with pytest.raises(ValueError, match="does not generate molecules"):
        resolved.adapter.generate(resolved.model, 3)


def test_plain_callables_need_no_adapter(monkeypatch):
    monkeypatch.setattr(metadata, "entry_points", _entry_points({"broken": "no_such_framework_ext.adapter"}))
    monkeypatch.setattr(adapters, "_source_checkout_table", dict)
    images = [molecule("CH4")]
    out = predict_structures(lambda pos, numbers: pos * 1.0, images)
    np.testing.assert_allclose(out[0].positions, images[0].positions, atol=1e-6)
