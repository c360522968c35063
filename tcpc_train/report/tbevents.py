"""TensorBoard event files of scalar rows, written without TensorFlow or tensorboard installed.

An event file is a sequence of records, each ``uint64 length``, ``uint32
masked CRC-32C of the length``, the bytes of one ``Event`` protocol buffer and
``uint32 masked CRC-32C of those bytes`` (little-endian). The few ``Event``
fields a scalar log needs are encoded here by hand:

```
Event      { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
             SessionLog session_log = 7; }
Summary    { repeated Value value = 1; }     Value { string tag = 1; float simple_value = 2; }
SessionLog { enum SessionStatus status = 1; }  (START = 1)
```

A file opens with ``file_version = "brain.Event:2"`` and a ``SessionLog.START``
at step 0: a TensorBoard that was already reading an earlier file of the same
run then drops what it held from that step on (its rule for restarted jobs),
so a rewritten log (a resumed run) is never shown twice.
"""
from __future__ import annotations

import math
import os
import struct
import time
from pathlib import Path
from typing import Iterable, Mapping

# Our files end in this suffix, so a rewrite removes only files tcpc wrote; TensorBoard reads any
# name containing "tfevents", in sorted order.
SUFFIX = ".tcpc"
_PREFIX = "events.out.tfevents."
# Row members that are coordinates of a row, not scalars to plot.
_NOT_SCALARS = frozenset({"step", "wall_time"})
_FLOAT32_MAX = 3.4028234663852886e38


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)  # Castagnoli polynomial, reflected
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord files checksum their records."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, ``data``, the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int, *, file_version: str | None = None,
          scalars: Mapping[str, float] | None = None, session_start: bool = False) -> bytes:
    """The bytes of one ``Event`` (exactly one of ``file_version``, ``scalars``, ``session_start``)."""
    if step < 0:
        raise ValueError(f"event step must be >= 0, got {step}")
    # proto3 leaves out fields at their default (0), so the bytes equal protobuf's own serialisation
    out = (b"\x09" + struct.pack("<d", wall_time) if wall_time != 0 else b"") + \
        (b"\x10" + _varint(step) if step else b"")
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if scalars is not None:
        values = b"".join(_field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", v))
                          for tag, v in scalars.items())
        out += _field_bytes(5, values)
    if session_start:
        out += _field_bytes(7, b"\x08\x01")
    return out


def row_scalars(row: Mapping) -> dict[str, float]:
    """The numbers of a log row that a float32 holds (``step`` and ``wall_time`` aside), tag -> value."""
    return {k: float(v) for k, v in row.items() if k not in _NOT_SCALARS and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= _FLOAT32_MAX}


class ScalarEvents:
    """The event file of a run directory, mirroring its log rows (rank 0 writes it).

    Opening it empties the event files tcpc wrote there before and writes one
    new file holding ``rows`` (the rows a resumed run kept), so every step
    appears once; :meth:`write` appends a row. Rows without ``wall_time`` (seconds since
    the epoch) are stamped now.
    """

    def __init__(self, directory: str | Path, rows: Iterable[Mapping] = ()):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob(f"{_PREFIX}*{SUFFIX}"):
            # Emptied, not removed: a TensorBoard reading the file moves on to the next one, while it
            # stops at a file that vanished. Files emptied by an earlier rewrite can go.
            if old.stat().st_size:
                old.write_bytes(b"")
            else:
                old.unlink()
        # nanoseconds in the name: a rewrite in the same second still sorts after the file it replaces
        self.path = directory / f"{_PREFIX}{time.time_ns()}.{os.getpid()}{SUFFIX}"
        now = time.time()
        head = record(event(now, 0, file_version="brain.Event:2")) + record(event(now, 0, session_start=True))
        self.path.write_bytes(head + b"".join(map(self._record, rows)))

    @staticmethod
    def _record(row: Mapping) -> bytes:
        scalars = row_scalars(row)
        if not scalars:
            return b""
        return record(event(float(row.get("wall_time", time.time())), int(row["step"]), scalars=scalars))

    def write(self, row: Mapping) -> None:
        """Append a row with a ``step`` (its numeric members become scalars of that step)."""
        data = self._record(row)
        if data:
            with open(self.path, "ab") as f:
                f.write(data)
