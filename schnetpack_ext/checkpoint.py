"""Checkpoints of the SchNetPack tasks that load without a full unpickle.

SchNetPack's ``AtomisticTask`` stores its model and outputs (``nn.Module`` objects) as Lightning
hyperparameters, which would make every checkpoint a full pickle: opening one could run code from
the file. The tasks here (:class:`~schnetpack_ext.tasks.ContextTask` and subclasses) save those
hyperparameters as a plain description instead (:func:`energyloss_plugins.checkpoints.to_plain`:
class names under an allow-list and their state), so their checkpoints load with
``weights_only=True``: :meth:`ContextTask.load_from_checkpoint`, ``spktrain``'s resume and its final
``trainer.test(ckpt_path="best")`` all read them that way (Lightning's default under torch >= 2.6;
the shipped experiments add :class:`SafeCheckpointIO` for a clear message on a refused file).

Files that still need a full unpickle (``spktrain``'s ``best_model``, which is ``torch.save`` of the
whole model; checkpoints written before this format; checkpoints of models outside the allow-list)
load only with ``trusted=True``, or :class:`TrustedCheckpointIO` in a trainer: for files you trust.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning import Callback

from energyloss_plugins.checkpoints import NotPlainError, allow_modules, from_plain, load_checkpoint, to_plain

# The tasks' hyperparameters hold SchNetPack modules and this package's outputs and losses.
allow_modules("schnetpack.", "schnetpack_ext.")

#: Checkpoint key marking hyperparameters saved as a plain description (value: format version).
PLAIN_HPARAMS_KEY = "energyloss_plain_hparams"
_HPARAMS_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")


def save_plain_hparams(checkpoint: dict[str, Any]) -> None:
    """Replace the checkpoint's hyperparameters by their plain description (in place).

    Hyperparameters naming something outside the allow-list are left as they are, with a warning:
    that checkpoint then loads only with ``trusted=True``.
    """
    try:
        plain = {key: to_plain(checkpoint[key]) for key in _HPARAMS_KEYS if key in checkpoint}
    except NotPlainError as err:
        warnings.warn(f"The checkpoint's hyperparameters are saved as a full pickle ({err}); it will load only "
                      "with trusted=True / --trust-checkpoint.", stacklevel=2)
        return
    checkpoint.update(plain)
    checkpoint[PLAIN_HPARAMS_KEY] = 1


def plain_hparams(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The task's constructor arguments rebuilt from a checkpoint :func:`save_plain_hparams` wrote ({} if none).

    Raises:
        UntrustedCheckpointError: the description names a class outside the allow-list.
    """
    if checkpoint.get(PLAIN_HPARAMS_KEY) != 1:
        return {}
    return dict(from_plain(checkpoint.get("hyper_parameters") or {}))


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` loading with ``weights_only=True``; a refused file names the opt-in."""

    def load_checkpoint(self, path, map_location: Any | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict:
        return load_checkpoint(path, map_location=map_location, trusted=weights_only is False)


class TrustedCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` loading full pickles (``weights_only=False``): opt-in for checkpoints you trust
    that need one (e.g. resuming a run written before checkpoints held plain hyperparameters)."""

    def load_checkpoint(self, path, map_location: Any | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict:
        return super().load_checkpoint(path, map_location=map_location,
                                       weights_only=False if weights_only is None else weights_only)


def apply_ema_weights(task, checkpoint_path: str, *, trusted: bool = False) -> bool:
    """Copy the averaged weights of SchNetPack's ``ExponentialMovingAverage`` callback into ``task.model``.

    ``spktrain`` trains with that callback; checkpoints written between validations (e.g. every n
    steps) hold the raw weights in the state dict and the averages in the callback state. Returns
    False when the checkpoint holds no EMA state (the weights are left as loaded). The file is read
    with ``weights_only=True`` unless ``trusted``.
    """
    state = load_checkpoint(checkpoint_path, map_location="cpu", trusted=trusted)
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
