"""Keep freed host memory in the process instead of handing it back to the OS.

glibc serves blocks above its mmap threshold (at most 32 MB) with fresh ``mmap`` pages and
unmaps them on free, and trims the heap top after each large free. A training or sampling
step on the CPU frees and re-allocates the same activation buffers every step, so every
step pays for hundreds of thousands of page faults (the kernel zeroes each new page): on
this project's 2-core CPU about 1.5 GB of page faults per step of the small benchmark
U-Net at batch 64, 10-15% of the step's time. Telling the allocator never to use mmap and
never to trim lets the buffers be re-used from the heap. Intel's PyTorch CPU guides reach
the same end by preloading jemalloc or tcmalloc; this needs no extra library.

The price: the process keeps its peak memory until it exits, which suits a long training
or sampling process. It changes where memory comes from, never what is computed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_enabled = False


def keep_freed_host_memory() -> bool:
    """Configure glibc malloc to re-use freed memory (idempotent). Returns whether it is
    in effect: ``False`` off Linux/glibc (e.g. macOS, musl), where nothing is changed."""
    global _enabled
    if _enabled:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = (mallopt(_M_MMAP_MAX, 0) == 1
          and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
          and mallopt(_M_TOP_PAD, 64 << 20) == 1)
    _enabled = ok
    return ok
