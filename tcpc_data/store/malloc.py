"""glibc malloc settings for processes that allocate and free large buffers over and over.

With glibc's defaults a block above the (dynamic) mmap threshold is mapped afresh
and returned to the system when freed, so every page of the next such block faults
on first write. Two of tcpc's hot loops do exactly that: the loader's batch arrays
(the faults cost more than decoding and augmenting a sample) and Blosc's output buffer
per 64³ chunk of a store write (``docs/performance.md``, Page faults).
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
