"""Keeping resident memory honest on glibc.

glibc serves medium-sized blocks from its heap once a large block has been freed (its mmap
threshold adapts upwards), and freed heap blocks stay resident until the heap is trimmed. A
pruned model's old weights, and the scratch buffers of scoring, would otherwise keep the process
at its pre-pruning size for good.
"""
from __future__ import annotations

import ctypes
import sys
import threading

import torch

_local = threading.local()


def _find_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_TRIM = _find_trim()


def release_free_memory() -> None:
    """Return the C heap's free pages to the OS (a no-op where that is not possible)."""
    if _TRIM is not None:
        _TRIM(0)


def scratch(numel: int) -> torch.Tensor:
    """A float64 CPU buffer of at least ``numel`` elements, reused by this thread: one long-lived
    buffer instead of a fresh block per step, which would fragment the heap."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < numel:
        buf = _local.buf = torch.empty(numel, dtype=torch.float64)
    return buf[:numel]


def drop_scratch() -> int:
    """Free this thread's scratch buffer; returns its size in elements (0 if there was none)."""
    buf, _local.buf = getattr(_local, "buf", None), None
    return 0 if buf is None else buf.numel()
