"""glibc malloc settings for processes that allocate and free large buffers over and over.

With glibc's defaults a block above the (dynamic) mmap threshold is mapped afresh
and returned to the system when freed, so every page of the next such block faults
on first write. Two of tcpc's hot loops do exactly that: the loader's batch arrays
(8 MiB for 128 U-path samples: ~16 faults and ~45 µs per sample, more than decoding
and augmenting it) and Blosc's output buffer per 64³ chunk of a store write
(~25,000 faults and a quarter of the write's CPU for a 140-slice CT).
"""
from __future__ import annotations

import ctypes
import functools
import platform


@functools.lru_cache(maxsize=1)
def retain_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory in this process (up to 256 MiB) and serve blocks up
    to 32 MiB from its heap; returns whether it took the settings (False off glibc).

    Process-wide and set once; a process that calls it may hold up to 256 MiB of freed
    memory for reuse instead of giving it back at once.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))
