"""Encoding a whole 3-D array into the bytes of one Zarr v3 shard, as zarr itself would write them.

The volume store keeps each 3-D array as one shard of 64^3 chunks
(:mod:`tcpc_data.store.volumes`). zarr's own write splits the array into fresh chunk
arrays, runs every codec through its asyncio pipeline and joins the results: CPU beyond
the compression itself (``docs/performance.md``, Store writes). Here each chunk is copied
into a reused buffer and compressed by a small thread pool (Blosc releases the GIL off the
main thread), and the shard is assembled once. The bytes are zarr's, byte for byte
(``tests/data/store/test_encode.py`` compares them), so the array metadata,
the readers and the digests are those of a zarr write.

Shard layout (sharding codec, index at the end): the encoded chunks in
Morton order, then the index of ``(offset, nbytes)`` little-endian uint64
pairs per chunk in C order (``2**64 - 1`` for an omitted, all-fill-value
chunk) followed by the index's CRC-32C. A chunk is encoded as
bytes (little-endian, C order) -> Blosc -> CRC-32C appended.

Only zarr's public API is used: the chunk order is computed here (zarr's "compressed" Morton
order, :func:`morton_order`), and :func:`same_as_zarr` checks once per process, on a few tiny
arrays written by zarr itself, that this module's bytes are the installed zarr's. Where they are
not (a zarr that orders, omits or indexes chunks otherwise), the store writes through zarr
(``arr[...] = data``): slower, never different from zarr, and never an import error.
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import google_crc32c
import numpy as np
from numcodecs import Blosc
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ShardingCodecIndexLocation

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
    try:
        return Blosc(cname=b.cname.value, clevel=b.clevel, shuffle=shuffle[b.shuffle.value],
                     blocksize=b.blocksize, typesize=b.typesize)
    except (TypeError, KeyError, AttributeError):  # a numcodecs or zarr whose Blosc differs: zarr writes
        return None


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
    order = morton_order(grid)
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


def morton_order(grid: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The chunk coordinates of a shard of ``grid`` chunks in the order zarr writes them: the
    "compressed" Morton order (Neuroglancer's), bit ``b`` of every axis that still has one, axis 0
    first, from the lowest bit up; an axis of ``n`` chunks has ``(n - 1).bit_length()`` bits.

    Parameters
    ----------
    grid
        (D,) chunks per axis, each >= 1.

    Returns
    -------
    list of (D,) tuples
        Every chunk's coordinates once, in write order.
    """
    coords = np.indices(grid).reshape(len(grid), -1)
    bits = [(n - 1).bit_length() for n in grid]
    code, out_bit = np.zeros(coords.shape[1], dtype=np.uint64), 0
    for bit in range(max(bits, default=0)):
        for axis, width in enumerate(bits):
            if bit < width:
                code |= ((coords[axis] >> bit) & 1).astype(np.uint64) << np.uint64(out_bit)
                out_bit += 1
    return [tuple(int(v) for v in c) for c in coords[:, np.argsort(code, kind="stable")].T]


@functools.cache
def same_as_zarr() -> bool:
    """Whether :func:`encode_shard` writes the installed zarr's bytes: checked once per process on
    tiny arrays that zarr writes itself (edge chunks, an omitted empty chunk, a chunk of negative
    zeros, a grid whose axes differ in bits, an all-empty array), through its public API. False on any difference and on
    any error, so that a zarr release that changes its layout or API only slows the store down."""
    data = np.arange(5 * 6 * 9, dtype="<f4").reshape(5, 6, 9)
    data[:2, :4, :4] = 0  # one chunk holds the fill value only
    data[2:4, 4:, 8:] = -0.0  # one holds negative zeros: data, not the fill value (zarr < 3.1 omitted it)
    try:
        for volume, write_empty in ((data, False), (data, True), (np.zeros_like(data), False)):
            written: dict = {}
            arr = zarr.create_array(zarr.storage.MemoryStore(store_dict=written), shape=volume.shape,
                                    dtype=volume.dtype, chunks=(2, 4, 4), shards=(6, 8, 12),
                                    compressors=(BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"),
                                                 Crc32cCodec()),
                                    config={"write_empty_chunks": write_empty}, zarr_format=3)
            arr[...] = volume
            blosc = blosc_of(arr.metadata.codecs[0])
            key = arr.metadata.encode_chunk_key((0, 0, 0))
            expected = written[key].to_bytes() if key in written else None
            pieces = None if blosc is None else encode_shard(volume, (2, 4, 4), blosc, write_empty)
            if blosc is None or expected != (None if pieces is None else b"".join(pieces)):
                return False
    except Exception:  # noqa: BLE001 - any change in zarr's API means: write through zarr
        return False
    return True
