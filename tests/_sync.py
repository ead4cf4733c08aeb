"""Records the operations that make the host wait for the device, with the Python stack that ran them."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: ATen operators that read a device value back to the host (or size an output by one).
SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "equal", "nonzero", "masked_select", "bincount",
            "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive"}
#: Source trees counted as "ours"; any other innermost frame outside torch is the host framework's.
OURS = ("/energyloss_plugins/", "/schnetpack_ext/", "/torchmdnet_ext/")


@dataclass
class SyncRecorder(TorchDispatchMode):
    """``with SyncRecorder() as rec: ...`` then ``rec.ours`` / ``rec.host``: (op, frame) of each synchronisation.

    A synchronisation is attributed to the innermost Python frame outside torch itself: ours when it
    lies in one of :data:`OURS`, else the host framework's (SchNetPack, TorchMD-Net, PyG, Lightning).
    ``repeat_interleave`` counts without an ``output_size``, indexing with a boolean mask always.
    """

    ours: list = field(default_factory=list)
    host: list = field(default_factory=list)

    def __post_init__(self):
        super().__init__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if _synchronises(name, args, kwargs):
            frame = _innermost_caller()
            (self.ours if any(part in frame.filename for part in OURS) else self.host).append(
                (str(func), f"{frame.filename}:{frame.lineno} {frame.name}"))
        return func(*args, **kwargs)


def _synchronises(name: str, args, kwargs) -> bool:
    if name in SYNC_OPS:
        return True
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None and isinstance(args[-1] if len(args) > 1 else args[0], torch.Tensor)
    if name in ("index", "index_put", "index_put_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
    return False


def _innermost_caller() -> traceback.FrameSummary:
    for frame in reversed(traceback.extract_stack()[:-3]):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and not path.endswith("/_sync.py"):
            return frame
    return traceback.extract_stack()[0]
