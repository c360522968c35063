"""WebDataset tar and ``.npy`` I/O: deterministic writing, and reading at the speed a training loop needs.

Python's :mod:`tarfile` builds header objects per member and :func:`numpy.load`
parses each array's header with ``ast.literal_eval``; with three members and two
arrays per pretraining sample, that made the shard loader cost as much as a small
model's step on two CPU cores (``bench/train.py``; ``docs/performance.md``, Loader).
This module reads a tar in blocks of a few MiB (one read call and one copy
each), checks the headers of a block in one compiled pass
(:mod:`tcpc_data.shards.tarscan`, Numba), and hands any header that pass does not take to a Python reader
that knows every form below and words every error. Arrays are parsed with a
regular expression per ``.npy`` header, falling back to :func:`numpy.load` for
any header it does not recognise. It depends on NumPy and Numba alone (and
fsspec for URLs, through :mod:`tcpc_data.urls`), so the trainer can import it
without the engine's Dask stack.

Supported tar features: ustar/GNU/PAX members, the ustar name prefix, PAX
``path``/``size`` records, GNU long names; directories, links and global
headers are skipped. Arrays are never unpickled.
"""
from __future__ import annotations

import functools
import io
import math
import os
import re
import tarfile
import uuid
import zlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from tcpc_data.urls import open_binary

_BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")
_ZERO_BLOCK = bytes(_BLOCK)
# The header NumPy writes for plain numeric arrays (format versions 1-3).
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=]?[biufc]\d+)', 'fortran_order': (False|True), "
                         r"'shape': \(((?:\d+, ?)*\d*)\), \} *\n?$")
_NPY_MAGIC = b"\x93NUMPY"

Sample = tuple[str, dict[str, bytes]]  # (key without dots, {extension: bytes})


def _number(field: bytes, what: str, path: str) -> int:
    """A tar header number: NUL/space-padded octal, or GNU base-256 when the top bit is set."""
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    try:  # the usual field, digits then NULs or spaces: one call, the same value as below
        return int(field.rstrip(b" \0"), 8)
    except ValueError:
        pass
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ValueError(f"{path}: not a tar file (bad {what} field {field!r})") from None


_ODD_BYTES = int.from_bytes(b"\1" * _BLOCK, "little")  # the low bit of every byte of a header


def _byte_sum(header: bytes) -> int:
    """``sum(header)`` for a 512-byte block, without a Python loop over its bytes.

    Adler-32's first half is 1 + the byte sum mod 65521; the sum's parity is the
    parity of the number of odd bytes. The sum lies in [0, 512 * 255] < 2 * 65521
    and 65521 is odd, so these two residues fix it.
    """
    residue = (zlib.adler32(header) & 0xFFFF) - 1
    residue += 65521 if residue < 0 else 0
    odd = (int.from_bytes(header, "little") & _ODD_BYTES).bit_count() & 1
    return residue if residue & 1 == odd else residue + 65521


def _signed_checksum(header: bytes) -> int:
    """The header checksum as some old tars compute it: bytes as signed chars."""
    field = header[148:156]
    return sum(b - 256 if b > 127 else b for b in header) - sum(b - 256 if b > 127 else b for b in field) + 8 * 32


def _pax_records(data: bytes, path: str) -> dict[str, str]:
    """``"<len> key=value\\n"`` records of a PAX extended header."""
    out, pos = {}, 0
    try:
        while pos < len(data) and data[pos:pos + 1] != b"\0":
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            if length <= space - pos or pos + length > len(data):
                raise ValueError(f"record length {length}")
            key, _, value = data[space + 1:pos + length - 1].partition(b"=")
            out[key.decode("utf-8")] = value.decode("utf-8")
            pos += length
        if not out.get("size", "0").isdigit():
            raise ValueError(f"size {out['size']!r}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: corrupt PAX header in the tar ({exc})") from None
    return out


_BLOCK_READ = 4 << 20  # bytes read at once: one call and one copy per ~60 U-path samples


def _slow_member(f, pos: int, total: int, path: str) -> Iterator[tuple[str, bytes]]:
    """Read headers from ``pos`` (``f`` is there) up to and including the next entry that is not a
    PAX or GNU long-name header, yielding it if it is a regular file; returns the offset after it, or
    None at the end of the archive. Every header form and every damage is handled and worded here."""
    pax, longname = {}, None
    while True:
        header = f.read(_BLOCK)
        pos += _BLOCK
        if len(header) < _BLOCK or header == _ZERO_BLOCK:
            if header and any(header):
                raise ValueError(f"{path}: truncated tar (a header is cut short)")
            return None  # end-of-archive blocks, or a tar written without them
        stored = _number(header[148:156], "checksum", path)
        if stored != _byte_sum(header) - sum(header[148:156]) + 8 * 32 and stored != _signed_checksum(header):
            raise ValueError(f"{path}: not a tar file or corrupt (header checksum mismatch at byte "
                             f"{pos - _BLOCK})")
        kind = header[156:157]
        size = int(pax.get("size", _number(header[124:136], "size", path))) if kind in _REGULAR \
            else _number(header[124:136], "size", path)
        if size > total - pos:
            raise ValueError(f"{path}: truncated tar (the member at byte {pos - _BLOCK} "
                             f"declares {size} bytes; {total - pos} remain)")
        data = f.read(size)
        if len(data) < size:
            raise ValueError(f"{path}: truncated tar (member data cut short)")
        pos += size - size % -_BLOCK
        f.seek(min(pos, total))
        if kind == b"x":
            pax = _pax_records(data, path)
            continue
        if kind == b"L":
            longname = data.rstrip(b"\0").decode("utf-8")
            continue
        if kind in _REGULAR:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            # The name prefix is POSIX ustar's; GNU headers keep other fields there.
            prefix = header[345:500].split(b"\0", 1)[0] if header[345] and header[257:263] == b"ustar\0" else b""
            if prefix:
                name = prefix.decode("utf-8") + "/" + name
            yield pax.get("path") or longname or name, data
        return pos


def _blocks(path: str) -> Iterator[tuple[bytes, list]]:
    """(bytes, [(name start, name end, data start, data end)] of each regular member in them), in
    stored order: blocks of the tar and the plain members wholly in each, and for every other
    header (:func:`_slow_member`) its member's name and data alone."""
    from tcpc_data.shards.tarscan import END, SLOW, scan
    with open_binary(path) as f:
        total = f.seek(0, io.SEEK_END)  # a header's size is checked against it before any read
        f.seek(0)
        pos, want = 0, 0  # pos: the offset of the next header, where f is
        while pos is not None and pos < total:
            asked = min(max(want, _BLOCK_READ), total - pos)
            block = f.read(asked)
            # A short read: the file shrank since its size was taken; the scan then stops at its new end.
            remaining = total - pos if len(block) == asked else len(block)
            index, stop, reason, want = scan(np.frombuffer(block, np.uint8), remaining)
            if len(index):
                yield block, index.tolist()
            pos += stop
            if reason == END:
                return
            f.seek(pos)
            if reason == SLOW:
                slow = _slow_member(f, pos, total, path)
                while True:
                    try:
                        name, data = next(slow)
                    except StopIteration as done:
                        pos = done.value
                        break
                    encoded = name.encode("utf-8")
                    yield encoded + data, [(0, len(encoded), len(encoded), len(encoded) + len(data))]


def tar_members(path: str | os.PathLike) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file in a tar, in stored order.

    The tar is read in blocks of a few MiB; a compiled pass
    (:mod:`tcpc_data.shards.tarscan`) checks the plain headers of each block.

    Raises
    ------
    ValueError
        A header fails its checksum or the file ends inside a member.
    """
    for block, index in _blocks(os.fspath(path)):
        for name_start, name_end, start, end in index:
            yield block[name_start:name_end].decode("utf-8"), block[start:end]


def tar_samples(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, bytes]]]:
    """WebDataset samples of a tar: (key, {extension: bytes}), consecutive members grouped.

    As in WebDataset, a member ``dir/abc.cubes.npy`` has key ``dir/abc`` and
    extension ``cubes.npy``; members without an extension are skipped.

    Raises
    ------
    ValueError
        As :func:`tar_members`, or a sample repeats an extension.
    """
    key, members = None, {}
    for block, index in _blocks(os.fspath(path)):  # tar_members' loop, inlined: it runs per member
        for name_start, name_end, start, end in index:
            name = block[name_start:name_end].decode("utf-8")
            slash = name.rfind("/") + 1
            dot = name.find(".", slash)
            if dot < 0:
                continue
            k, ext = name[:dot], name[dot + 1:]
            if k != key:
                if key is not None:
                    yield key, members
                key, members = k, {}
            if ext in members:
                raise ValueError(f"{os.fspath(path)}: sample {key!r} has two {ext!r} members")
            members[ext] = block[start:end]
    if key is not None:
        yield key, members


@functools.lru_cache(maxsize=256)
def _plain_layout(header: bytes) -> tuple[np.dtype, tuple[int, ...], str, int] | None:
    """(dtype, shape, order, byte count) of a ``.npy`` header NumPy writes for a plain numeric array,
    else None. Cached: a shard repeats a handful of headers, one per member kind and shape."""
    m = _NPY_HEADER.match(header.decode("latin1"))
    if not m:
        return None
    dtype = np.dtype(m[1])
    shape = tuple(int(s) for s in m[3].split(",") if s.strip())
    return dtype, shape, "F" if m[2] == "True" else "C", math.prod(shape) * dtype.itemsize


def read_npy(data: bytes) -> np.ndarray:
    """The array in ``.npy`` bytes, without copying and never unpickling (read-only when it is a view).

    Raises
    ------
    ValueError
        The bytes are not a ``.npy`` file of a plain (non-object) array.
    """
    if data[:6] == _NPY_MAGIC and data[6:7] in (b"\x01", b"\x02", b"\x03"):
        width = 2 if data[6] == 1 else 4
        start = 8 + width
        end = start + int.from_bytes(data[8:start], "little")
        layout = _plain_layout(data[start:end])
        if layout is not None and len(data) - end == layout[3]:
            return np.ndarray(layout[1], layout[0], data, end, order=layout[2])
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_npy(arr: np.ndarray) -> bytes:
    """``.npy`` bytes of ``arr`` (C order, never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, samples: Iterable[Sample], durable: bool = False, sha256=None) -> int:
    """Write ``samples`` to the tar ``path`` via a temporary name; returns the sample count.

    Members are plain ustar entries (fixed mtime, owner, mode; a PAX header only
    for names over 100 characters), so readers parse one 512-byte header each.
    With ``durable``, the data reach the disk before the rename (a crash never
    leaves the final name on a file without its data); the caller flushes the
    directory. ``sha256`` (a ``hashlib.sha256()``) is updated with every byte
    written, so the caller need not read the file back to hash it.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    n = 0
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=_Hashing(f, sha256) if sha256 is not None else f, mode="w",
                              format=tarfile.PAX_FORMAT) as tar:
                for key, members in samples:
                    if "." in key or "/" in key:
                        raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
                    for ext in sorted(members):
                        _add(tar, f"{key}.{ext}", members[ext])
                    n += 1
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


class _Hashing:
    """A writable file that also feeds every byte written to a hash."""

    def __init__(self, f, h):
        self.f, self.h = f, h

    def write(self, data) -> int:
        self.h.update(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.f.tell()
