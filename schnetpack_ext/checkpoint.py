"""Checkpoint loading for SchNetPack tasks under PyTorch >= 2.6.

SchNetPack's ``AtomisticTask`` stores its model and outputs (``nn.Module`` objects) as Lightning
hyperparameters, so its checkpoints are full pickles. PyTorch 2.6 made ``torch.load`` default to
``weights_only=True``, and ``spktrain``'s final ``trainer.test(ckpt_path="best")`` then fails on
SchNetPack's own classes. The shipped experiments add :class:`TrustedCheckpointIO` to the trainer:
it loads checkpoints with ``weights_only=False`` unless the caller asks otherwise. Only load
checkpoints you produced or trust (the same trust ``schnetpack.utils.load_model`` assumes).
"""

from __future__ import annotations

from typing import Any, Optional

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class TrustedCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` loading full pickles (``weights_only=False``) by default."""

    def load_checkpoint(self, path, map_location: Optional[Any] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict:
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=False if weights_only is None else weights_only)
