"""Test helper: whether an optional module imports here (to skip the tests that need it)."""

from __future__ import annotations

import importlib


def importable(module: str) -> bool:
    """True when ``module`` (e.g. ``"tblite.ase"``) imports without error."""
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True
