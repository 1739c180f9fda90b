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

from ._walk import parameters

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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                 "fsmblks", "uordblks", "fordblks", "keepcost")]


def _find_info():
    if _TRIM is None:
        return None
    try:
        fn = ctypes.CDLL(None).mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [], _MallInfo2
    return fn


_INFO = _find_info()
_WORTH = 32 << 20  # free heap bytes below which a trim is not worth its cost (~10-60 ms)
#: bytes a caller says it freed below which the heap is not even asked: a model of a few hundred
#: MiB frees less than that in a prune, a big one (the memory goals) gigabytes
_FREED_WORTH = 256 << 20


def weight_bytes(model) -> int:
    """Bytes of ``model``'s parameters (what a prune frees a share of)."""
    return sum(t.numel() * t.element_size() for t in parameters(model))


def release_free_memory(freed: int | None = None) -> None:
    """Return the C heap's free pages to the OS (a no-op where that is not possible), when the
    heap holds at least 32 MiB of free blocks: trimming walks the whole heap, which costs more
    than a small model's prune step gains from it. ``freed``: the bytes the caller just let go,
    when it knows; below 256 MiB the heap is not even asked (asking walks its free lists)."""
    if _TRIM is None or (freed is not None and freed < _FREED_WORTH):
        return
    if _INFO is not None and _INFO().fordblks < _WORTH:
        return
    _TRIM(0)


def scratch(numel: int) -> torch.Tensor:
    """A float64 CPU buffer of at least ``numel`` elements, reused by this thread: one long-lived
    buffer instead of a fresh block per step, which would fragment the heap."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.numel() < numel:
        # at least a block at once: growing it call by call (the weights come smallest first)
        # made a dozen fresh buffers per prune, each paying its page faults anew
        buf = _local.buf = torch.empty(max(numel, SCRATCH_MIN), dtype=torch.float64)
    return buf[:numel]


#: elements of the smallest scratch buffer made, and the scoring's block (1 MiB of float64)
SCRATCH_MIN = 1 << 17


def drop_scratch() -> int:
    """Free this thread's scratch buffer; returns its size in elements (0 if there was none)."""
    buf, _local.buf = getattr(_local, "buf", None), None
    return 0 if buf is None else buf.numel()
