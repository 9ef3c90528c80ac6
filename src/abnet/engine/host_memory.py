"""Host memory that a training step frees, kept for the next step.

glibc's malloc hands the top of its heap back to the OS as soon as 128 KiB of it are free, and serves large blocks
with fresh mmaps above a threshold it keeps moving; a training step frees megabytes of activations, so the next
step page-faults them in again. On 2 CPU cores that cost `resnet20_abn` a fifth of its step under torch.compile.
"""

from __future__ import annotations

import ctypes
import functools
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit machines: blocks below it come from the heap
TRIM_THRESHOLD = 1 << 30  # free heap top kept before handing any back


@functools.cache
def keep_freed_memory() -> bool:
    """Make this process's malloc keep freed memory (fixed thresholds, see the module docstring). Returns whether it
    took effect: False on C libraries other than glibc, where nothing changes."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                          TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
