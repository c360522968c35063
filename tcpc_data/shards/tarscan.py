"""A compiled pass over the tar headers in a block of bytes: where each plain member's data lies.

:func:`tcpc_data.shards.tario.tar_members` reads a shard in large blocks and
asks :func:`scan` where the members of each block are. Python spends a read call,
the checksum, two number fields and the name per member's header; the scan checks a
whole block's headers in one call (``docs/performance.md``, Loader). It accepts only
what it can read exactly as the Python reader does: a header whose checksum
matches (bytes summed unsigned or signed), whose size and checksum fields are
plain octal, and that is not a PAX or GNU long-name header nor uses the ustar
name prefix. Anything else stops it, and the Python reader takes that header
(it knows every other form, and words every error).

Imported on first use (Numba's cache keeps the compiled code across runs).
"""
from __future__ import annotations

import numba
import numpy as np

END, SLOW, MORE = 0, 1, 2  # the scan's stop reasons (see scan)


@numba.njit(cache=True, inline="always")
def _octal(h, start, stop):
    """The value of a plain octal field ``h[start:stop]`` (spaces, digits 0-7, then spaces or NULs
    only), as ``int(field.rstrip(b" \\0"), 8)`` reads it; -1 for any other field."""
    i = start
    while i < stop and h[i] == 32:
        i += 1
    value = 0
    digits = 0
    while i < stop and 48 <= h[i] <= 55:
        value = value * 8 + (h[i] - 48)
        digits += 1
        i += 1
    while i < stop and (h[i] == 0 or h[i] == 32):
        i += 1
    return value if i == stop and digits > 0 else -1


@numba.njit(cache=True, nogil=True)
def scan(buf, remaining):
    """Index the plain tar members in ``buf``, which starts at a header.

    Parameters
    ----------
    buf : (n,) uint8 array
        Bytes of the tar from a header boundary on.
    remaining : int
        Bytes of the file from ``buf``'s start to the end of the file (>= n).

    Returns
    -------
    index : (k, 4) int64 array
        Per regular member in stored order, offsets in ``buf``: the start and
        end of its name (in its header) and of its data. Other plain entries
        (directories, links) are skipped.
    stop : int
        Offset in ``buf`` of the first header not taken (the end of the last
        member and its padding).
    reason : int
        END: ``stop`` is an all-zero header or the end of the file; SLOW: the
        header at ``stop`` is not plain, or damaged, or the file ends inside
        it or its data (the Python reader takes it); MORE: the header at
        ``stop`` or its data runs past ``buf`` but not past the file.
    need : int
        For MORE, the bytes from ``stop`` that hold the header, its data and padding.
    """
    n = len(buf)
    index = np.empty((n // 512 + 1, 4), np.int64)
    k = 0
    pos = 0
    while True:
        if pos >= remaining:
            return index[:k], pos, END, 0
        if pos + 512 > remaining:  # a header cut short by the end of the file
            return index[:k], pos, SLOW, 0
        if pos + 512 > n:
            return index[:k], pos, MORE, 512
        unsigned = 0
        signed = 0
        for i in range(512):
            b = np.int64(buf[pos + i])
            unsigned += b
            signed += b - 256 if b > 127 else b
        if unsigned == 0:
            return index[:k], pos, END, 0
        field_unsigned = 0
        field_signed = 0
        for i in range(148, 156):
            b = np.int64(buf[pos + i])
            field_unsigned += b
            field_signed += b - 256 if b > 127 else b
        stored = _octal(buf, pos + 148, pos + 156)
        kind = buf[pos + 156]
        size = -1 if buf[pos + 124] & 0x80 else _octal(buf, pos + 124, pos + 136)
        prefix = buf[pos + 345] != 0 and buf[pos + 257] == 117 and buf[pos + 258] == 115 and \
            buf[pos + 259] == 116 and buf[pos + 260] == 97 and buf[pos + 261] == 114 and buf[pos + 262] == 0
        if stored < 0 or size < 0 or kind == 120 or kind == 76 or prefix or (
                stored != unsigned - field_unsigned + 256 and stored != signed - field_signed + 256):
            return index[:k], pos, SLOW, 0  # PAX ("x") or GNU long name ("L"), odd fields, a bad checksum
        end = pos + 512 + size
        if end > remaining:
            return index[:k], pos, SLOW, 0  # declares more bytes than the file holds
        padded = min(end + (-size) % 512, remaining)
        if end > n:
            return index[:k], pos, MORE, padded - pos
        if kind == 48 or kind == 0 or kind == 55:  # "0", NUL, "7": regular files
            length = 0
            while length < 100 and buf[pos + length] != 0:
                length += 1
            index[k, 0] = pos
            index[k, 1] = pos + length
            index[k, 2] = pos + 512
            index[k, 3] = end
            k += 1
        pos = padded
