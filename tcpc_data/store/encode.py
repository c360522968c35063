"""Encoding a whole 3-D array into the bytes of one Zarr v3 shard, as zarr itself would write them.

The volume store keeps each 3-D array as one shard of 64^3 chunks
(:mod:`tcpc_data.store.volumes`). zarr's own write splits the array into fresh chunk
arrays, runs every codec through its asyncio pipeline and joins the results:
on a LIDC volume that is 0.1 s of CPU beyond the compression itself, about
half the bare DICOM read. Here each chunk is copied into a reused buffer and
compressed by a small thread pool (Blosc releases the GIL off the main
thread), and the shard is assembled once. The bytes are zarr's, byte for byte
(``tests/data/store/test_encode.py`` compares them), so the array metadata,
the readers and the digests are those of a zarr write.

Shard layout (sharding codec, index at the end): the encoded chunks in
Morton order, then the index of ``(offset, nbytes)`` little-endian uint64
pairs per chunk in C order (``2**64 - 1`` for an omitted, all-fill-value
chunk) followed by the index's CRC-32C. A chunk is encoded as
bytes (little-endian, C order) -> Blosc -> CRC-32C appended.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import google_crc32c
import numpy as np
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.indexing import morton_order_iter

_EMPTY = np.uint64(2**64 - 1)
# Compression threads per shard: beyond a few, the copy into chunk buffers and the
# memory bandwidth limit it, and a Dask worker runs one task per core already.
_THREADS = max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def blosc_of(codec: ShardingCodec) -> Blosc | None:
    """The numcodecs Blosc that zarr runs for the chunks of ``codec``, or None when the shard's
    codecs are not the layout this module writes (bytes -> Blosc -> CRC-32C, index bytes ->
    CRC-32C at the end, little-endian)."""
    inner, index = tuple(codec.codecs), tuple(codec.index_codecs)
    if not (len(inner) == 3 and isinstance(inner[0], BytesCodec) and isinstance(inner[1], BloscCodec)
            and isinstance(inner[2], Crc32cCodec) and len(index) == 2 and isinstance(index[0], BytesCodec)
            and isinstance(index[1], Crc32cCodec) and codec.index_location == ShardingCodecIndexLocation.end
            and all(c.endian is None or c.endian.value == "little" for c in (inner[0], index[0]))):
        return None
    b = inner[1]
    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
    return Blosc(cname=b.cname.value, clevel=b.clevel, shuffle=shuffle[b.shuffle.value],
                 blocksize=b.blocksize, typesize=b.typesize)


def encode_shard(data: np.ndarray, chunks: tuple[int, int, int], blosc: Blosc,
                 write_empty_chunks: bool) -> list[bytes] | None:
    """The bytes zarr writes for a shard holding all of ``data``, in pieces.

    Parameters
    ----------
    data
        (Z, Y, X) array of a numeric or bool dtype; the shard covers it, rounded
        up to whole chunks (the rest is the fill value 0).
    chunks
        (3,) inner chunk shape.
    blosc
        The chunks' compressor (:func:`blosc_of`).
    write_empty_chunks
        False: chunks whose bytes are all zero (the fill value) are omitted, as zarr does.

    Returns
    -------
    list of bytes or None
        The shard's pieces in order (the encoded chunks, the index): written one after the
        other, without a join into one more copy of the shard; None when every chunk was
        omitted (zarr then writes no shard).
    """
    if data.ndim != 3 or len(chunks) != 3:
        raise ValueError(f"encode_shard takes a 3-D array and 3-D chunks, got {data.shape} and {chunks}")
    dtype = data.dtype.newbyteorder("<") if data.dtype.itemsize > 1 else data.dtype
    grid = tuple(-(-s // c) for s, c in zip(data.shape, chunks))
    order = list(morton_order_iter(grid))
    local = threading.local()

    def encode(coords: tuple[int, int, int]) -> bytes | None:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty(chunks, dtype=dtype)
        block = data[tuple(slice(i * c, (i + 1) * c) for i, c in zip(coords, chunks))]
        if block.shape != tuple(chunks):  # an edge chunk: the rest is the fill value
            buf[...] = 0
            buf[tuple(slice(0, s) for s in block.shape)] = block
        else:
            buf[...] = block
        raw = buf.view(np.uint8).reshape(-1)
        if not write_empty_chunks and not raw.any():
            return None
        encoded = blosc.encode(buf)
        return encoded + np.uint32(google_crc32c.value(encoded)).astype("<u4").tobytes()

    if _THREADS > 1 and len(order) > 1:
        with ThreadPoolExecutor(_THREADS, thread_name_prefix="tcpc-shard") as pool:
            parts = list(pool.map(encode, order))
    else:
        parts = [encode(c) for c in order]

    index = np.full(grid + (2,), _EMPTY, dtype="<u8")
    offset = 0
    for coords, part in zip(order, parts):
        if part is not None:
            index[coords] = (offset, len(part))
            offset += len(part)
    if offset == 0:
        return None
    index_bytes = index.tobytes()
    return ([p for p in parts if p is not None]
            + [index_bytes, np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()])
