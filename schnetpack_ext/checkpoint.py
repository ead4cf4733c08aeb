"""Checkpoint loading for SchNetPack tasks under PyTorch >= 2.6.

SchNetPack's ``AtomisticTask`` stores its model and outputs (``nn.Module`` objects) as Lightning
hyperparameters, so its checkpoints are full pickles. PyTorch 2.6 made ``torch.load`` default to
``weights_only=True``, and ``spktrain``'s final ``trainer.test(ckpt_path="best")`` then fails on
SchNetPack's own classes. The shipped experiments add :class:`TrustedCheckpointIO` to the trainer:
it loads checkpoints with ``weights_only=False`` unless the caller asks otherwise. Only load
checkpoints you produced or trust (the same trust ``schnetpack.utils.load_model`` assumes).
"""

from __future__ import annotations

from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning import Callback


class TrustedCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` loading full pickles (``weights_only=False``) by default."""

    def load_checkpoint(self, path, map_location: Any | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict:
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=False if weights_only is None else weights_only)


def apply_ema_weights(task, checkpoint_path: str) -> bool:
    """Copy the averaged weights of SchNetPack's ``ExponentialMovingAverage`` callback into ``task.model``.

    ``spktrain`` trains with that callback; checkpoints written between validations (e.g. every n
    steps) hold the raw weights in the state dict and the averages in the callback state. Returns
    False when the checkpoint holds no EMA state (the weights are left as loaded).
    """
    import torch

    state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    for value in (state.get("callbacks") or {}).values():
        shadow = (value.get("ema") or {}).get("shadow_params") if isinstance(value, dict) else None
        if shadow is None:
            continue
        params = list(task.model.parameters())
        if len(params) != len(shadow):
            raise ValueError(f"the EMA state of {checkpoint_path} has {len(shadow)} tensors but the model has "
                             f"{len(params)} parameters: the checkpoint belongs to another model.")
        with torch.no_grad():
            for p, s in zip(params, shadow, strict=True):
                p.copy_(s.to(p.device, p.dtype))
        return True
    return False


class ValidateAtMaxSteps(Callback):
    """Validate (and so write the best checkpoint) when ``trainer.max_steps`` ends a run mid-epoch.

    ``spktrain`` ends with ``trainer.test(ckpt_path="best")``, which fails when no validation has run;
    a run bounded by ``trainer.max_steps=N`` with N below one epoch (QM9: about 1,700 steps of 64)
    would train, then crash. Setting ``trainer.should_stop`` at the last step makes Lightning run the
    validation loop before it stops (its rule for early stopping), and ``ModelCheckpoint`` saves there.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True
