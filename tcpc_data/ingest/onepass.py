"""One read of each file of a DICOM case not yet in the store: series membership, digest and
pixels from the same bytes.

A case already in the store needs its digest first (to skip it when it matches), so it
finds its series' files by header scans (:func:`discover.series_files`) and hashes them
before anything else. A new case read that way would read and parse every file twice
more (a header scan, the hash, the full parse); here each file in the series' folders is
read once and parsed once: membership comes from the parsed header, and a thread hashes
the members' bytes, in the order :func:`tcpc_data.digest.files_digest` uses, while the
main thread parses on, so the digest equals the stored case's.
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tcpc_data.ingest.dicom import parse_file, parse_slice
from tcpc_data.ingest.dicomscan import scan_slice
from tcpc_data.ingest.discover import header_of, in_series, scan_header, series_candidates


def read_series_once(folders, series: str, *, case: str) -> tuple[list[Path], list, str]:
    """The files of DICOM series ``series`` in the local ``folders``, each read once.

    Parameters
    ----------
    folders
        Local folders (or one DICOM file) the series lies in, as :func:`discover.series_files` takes.
    series
        The series key (:attr:`CaseSource.series`).
    case
        Case name for error messages.

    Returns
    -------
    paths, slices, files_hex
        The member files sorted as :func:`tcpc_data.digest.files_digest` sorts them, what
        :func:`tcpc_data.ingest.dicom.parse_slice` makes of each (pixels not yet decoded), and
        ``files_digest(paths)``.

    Raises
    ------
    ValueError
        A file whose header puts it in the series cannot be parsed (named, as
        :func:`tcpc_data.ingest.dicom.read_series` names it).
    """
    h, paths, datasets, arena = hashlib.sha256(), [], [], _Arena()
    mixed = False  # a folder shared with other series: from its first stranger on, headers first
    # one thread: updates run in submission order; hashlib releases the GIL on large buffers
    with ThreadPoolExecutor(1, thread_name_prefix="tcpc-digest") as pool:
        for p in sorted(Path(f) for f in series_candidates(folders)):
            try:
                found = (_member_headers_first if mixed else _member)(p, series, case, arena)
            except OSError:
                continue  # unopenable: discovery's header scan passes it over too
            if isinstance(found, bool):
                mixed = mixed or found
                continue
            data, ds = found
            pool.submit(h.update, p.name.encode() + b"\0")
            pool.submit(h.update, data)
            paths.append(p)
            datasets.append(ds)
    return paths, datasets, h.hexdigest()


def _member(p: Path, series: str, case: str, arena: "_Arena") -> tuple[bytes, object] | bool:
    """(bytes, slice) of a file of the series, else whether it is a DICOM image of another one."""
    data = arena.read(p)
    scanned = scan_slice(data)
    if scanned is not None:
        header, found = scanned.header, scanned
    else:
        try:
            found = parse_file(data, p, case)
        except ValueError:
            # damaged or not DICOM: the header scan discovery made decides whether it fails the case
            # (one of ours) or is passed over
            if in_series(scan_header(io.BytesIO(data), str(p)), series):
                raise
            arena.drop()
            return False
        header = header_of(found)
    if in_series(header, series):
        return data, found
    arena.drop()  # not kept: the next file may have its space
    return header is not None


def _member_headers_first(p: Path, series: str, case: str, arena: "_Arena") -> tuple[bytes, object] | bool:
    """As :func:`_member`, reading past the header (the first KB, as discovery does) only for a
    file of the series."""
    with open(p, "rb") as fh:
        if not in_series(scan_header(fh, str(p)), series):
            return True
    data = arena.read(p)
    return data, parse_slice(data, p, case)


_BLOCK = 64 << 20  # bytes per arena block


class _Arena:
    """Files read into large NumPy blocks, which NumPy asks the kernel to back with huge pages:
    a series' bytes then cost a page fault per 2 MiB instead of per 4 KiB (docs/performance.md,
    Page faults)."""

    def __init__(self):
        self._block, self._used, self._last = np.empty(0, np.uint8), 0, 0

    def read(self, p: Path):
        """The bytes of file ``p`` (a memoryview into a block, or bytes when the file changed size
        while read)."""
        with open(p, "rb", buffering=0) as fh:
            n = os.fstat(fh.fileno()).st_size
            if self._used + n > self._block.size:
                self._block, self._used = np.empty(max(_BLOCK, n), np.uint8), 0
            view, got = memoryview(self._block[self._used:self._used + n]), 0
            while got < n:
                k = fh.readinto(view[got:])
                if not k:
                    break
                got += k
            if got != n or fh.read(1):  # shorter or longer than its size said: read it as it is now
                fh.seek(0)
                self._last = 0
                return fh.read()
        self._used, self._last = self._used + n, n
        return view

    def drop(self) -> None:
        """Give back the space of the file read last, which is not kept (nothing may refer to it)."""
        self._used -= self._last
        self._last = 0
