"""``python -m torchmdnet_ext.train``: the same command as ``energyloss-torchmd-train`` (same parser, same ``main``).

TorchMD-Net's own ``torchmd-train`` cannot load the plugin: it has no plugin hook (its parser's
choices are fixed when it starts, its conf loader rejects keys it does not know, such as ``task``,
and its ``LNNP`` passes no structure index to a loss). This module is the one-line way to run the
wrapper from a Python environment without the console script on ``PATH``; see docs/torchmdnet.md.
"""

from torchmdnet_ext.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
