"""Peak-memory helpers for benchmarks/loss_cost.py.

Two honest measures, used side by side:

- :func:`rss_peak_delta`: what the operating system sees. Linux's resident-set high-water mark
  (``VmHWM``, the same counter as ``getrusage().ru_maxrss``) is reset to the current RSS by writing
  ``5`` to ``/proc/self/clear_refs``; the peak of one call is then ``VmHWM`` after the call minus
  ``VmRSS`` before it. Free heap is first handed back to the OS (``malloc_trim``), and the call
  runs in a fresh process (``loss_cost.py`` starts one subprocess per measurement) after a
  warm-up on a *tiny* input only: memory freed by an earlier large call and kept by the allocator
  would otherwise be reused without raising RSS.
- :class:`PeakTensorBytes`: what PyTorch allocates. A dispatch mode that adds the bytes of every
  new tensor storage an operator returns (autograd's saved tensors included) and subtracts them
  once the storage is freed; its peak ignores kernels' internal scratch and the allocator's
  overhead. It also runs on ``device="meta"`` tensors, which have shapes but no data: that is how
  a formulation that cannot run here (the dense reference at 30,000 atoms) gets its exact
  tensor-memory requirement without allocating anything.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MiB = 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the RSS high-water mark to the current RSS; returns the current RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """RSS high-water mark (bytes) since the last :func:`reset_peak_rss` (or process start)."""
    return _status_kib("VmHWM") * 1024


def release_free_heap() -> None:
    """Collect garbage and hand free heap pages back to the OS (glibc ``malloc_trim``), so that a
    following call cannot hide its memory in pages freed earlier (e.g. by graph generation)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_peak_delta(fn) -> tuple[int, object]:
    """Run ``fn()`` once; returns (peak RSS during the call minus RSS before it, in bytes; result)."""
    release_free_heap()
    before = reset_peak_rss()
    result = fn()
    return peak_rss() - before, result


def limit_address_space(gib: float) -> None:
    """Cap this process's virtual memory so that a too-large allocation fails with an error
    instead of pushing a shared machine into swap or the OOM killer."""
    limit = int(gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


class PeakTensorBytes(TorchDispatchMode):
    """Track live tensor-storage bytes created while active; ``peak`` is the maximum seen."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in self.live:
                    self.live[ref.cdata] = (ref, storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def tensor_peak_bytes(fn) -> int:
    """Peak live tensor bytes allocated by ``fn()`` (works on meta tensors)."""
    with PeakTensorBytes() as tracker:
        fn()
    return tracker.peak


def cpu_count_note() -> str:
    return f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)"
