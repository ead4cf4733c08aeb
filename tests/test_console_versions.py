"""``--version`` on every console script prints the one version of the package (energyloss_plugins.__version__)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import energyloss_plugins

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("energyloss-data", "energyloss-sample", "energyloss-evaluate", "energyloss-torchmd-train")


@pytest.mark.parametrize("command", COMMANDS)
def test_console_script_prints_the_package_version(command):
    path = os.path.join(BIN, command)
    if not os.path.exists(path):
        pytest.skip(f"{command} is not installed in this environment")
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([path, "--version"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == f"{command} {energyloss_plugins.__version__}"


def test_parsers_list_version_in_their_help():
    """The parsers themselves carry --version (the trampoline answers it early only as a shortcut)."""
    from energyloss_plugins.data.cli import _parser as data_parser
    from energyloss_plugins.metrics.cli import _parser as evaluate_parser
    from energyloss_plugins.sample_cli import build_parser

    parsers = [data_parser(), evaluate_parser(), build_parser()]
    try:
        from torchmdnet_ext.cli import get_argparse

        parsers.append(get_argparse())
    except ModuleNotFoundError:  # without the [torchmdnet] extra
        pass
    for parser in parsers:
        assert "--version" in parser.format_help()
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["--version"])
        assert info.value.code == 0
