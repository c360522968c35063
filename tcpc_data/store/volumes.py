"""The Zarr v3 volume store: opening it, listing complete cases, committing arrays atomically.

Layout (``docs/design.md``, Store contract): one group per case; ``image``, ``supervoxels``,
``candidates``... arrays inside. A stage output is *complete* when its array
carries a ``digest`` attribute; the digest is written last, so readers treat
arrays without one as absent.

On a local store, arrays are first written to a staging store beside the
volume store (``.<name>.staging``) and renamed into place, so a crash never
leaves a half-written case visible. On fsspec URLs (``s3://``, ``memory://``),
where rename is not atomic, arrays are written in place and the digest
attribute is the completion marker.
"""
from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import shutil
import socket
import time
import uuid
from typing import Any, Mapping

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec, Crc32cCodec, ShardingCodec

from tcpc_data.store import ngff
from tcpc_data.store.malloc import retain_freed_memory
from tcpc_data.outputs import STORE_ATTR, OutputError, check_apart, folder_entries, read_zarr_attrs
from tcpc_data.store.encode import blosc_of, encode_shard, same_as_zarr
from tcpc_data.urls import filesystem, is_local, local_path

_CASE_RE = re.compile(r"[^A-Za-z0-9_-]+")
# Blosc zstd level 1 on bit-shuffled values: about half the write time of zarr's default zstd for a
# few more bytes; Blosc blocks of 1 MiB (a whole 64^3 float32 chunk) instead of blosc's choice (tens
# of KiB at level 1): less CPU per chunk for about as many bytes (docs/performance.md, Store writes).
# A CRC-32C of every stored chunk: zarr checks it on each read, so a flipped bit on disk is an
# error naming the array, never silently different voxels (``tcpc verify`` reads every chunk).
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", blocksize=1 << 20), Crc32cCodec())


def sanitize_case_id(name: str) -> str:
    """Map any name to the store's case-id alphabet ``[A-Za-z0-9_-]``.

    >>> sanitize_case_id("LIDC-IDRI-0001/1.3.6 series")
    'LIDC-IDRI-0001_1_3_6_series'
    """
    cid = _CASE_RE.sub("_", name).strip("_")
    if not cid:
        raise ValueError(f"cannot make a case id from {name!r}")
    return cid


def open_store(url: str | os.PathLike, mode: str = "a") -> zarr.Group:
    """Open (``mode='a'`` creates, marked as tcpc's: :func:`claim_store`) the root group of a volume store."""
    if mode == "r" and is_local(url) and not local_path(url).exists():
        raise FileNotFoundError(f"no volume store at {url}")
    try:
        root = zarr.open_group(str(url), mode=mode, zarr_format=3)
    except zarr.errors.ContainsGroupError:
        if mode != "a":
            raise
        # another worker created the root between zarr's check and its write: open that one
        return zarr.open_group(str(url), mode="r+", zarr_format=3)
    if mode == "a" and not root.attrs.get(STORE_ATTR) and not any(True for _ in root.keys()):
        root.update_attributes({STORE_ATTR: _STORE_MARK})  # a store this call just made
    return root


def claim_store(url: str | os.PathLike, inputs=(), create: bool = True) -> None:
    """Make ``url`` a volume store this command may write into, or refuse it in one line.

    A new or empty folder becomes a store marked as tcpc's (the ``tcpc``
    attribute of its root group); a marked store is accepted; an unmarked
    store that only holds case groups tcpc wrote (from before stores were
    marked) is marked and accepted. Anything else, and a store that is, holds
    or lies inside one of ``inputs``, is refused before anything is written
    (:mod:`tcpc_data.outputs`).

    Parameters
    ----------
    url
        Volume store path or fsspec URL.
    inputs
        What the command reads.
    create
        False: the store must exist already (a stage that adds arrays to cases).

    Raises
    ------
    OutputError, FileNotFoundError
    """
    check_apart(url, inputs, "volume store")
    names = folder_entries(url)
    if not names:
        if not create:
            raise FileNotFoundError(f"no volume store at {url}")
        zarr.open_group(str(url), mode="a", zarr_format=3).update_attributes({STORE_ATTR: _STORE_MARK})
        return
    attrs = read_zarr_attrs(url) if "zarr.json" in names else None
    if attrs is not None and isinstance(attrs.get(STORE_ATTR), dict):
        if attrs[STORE_ATTR].get("kind") != "volume-store":
            raise OutputError(f"{url} is a tcpc {attrs[STORE_ATTR].get('kind')}, not a volume store")
        return
    if attrs is not None and all(_is_case_group(url, n) for n in names if n != "zarr.json"):
        open_store(url, mode="r+").update_attributes({STORE_ATTR: _STORE_MARK})  # a store from before marks
        return
    raise OutputError(f"{url} is {'a Zarr group' if attrs is not None else 'a folder'} tcpc did not write "
                      f"({len(names)} entries, e.g. {names[0]!r}); a volume store goes into a new or empty folder, "
                      "or one tcpc made: choose another --out (nothing was changed)")


_STORE_MARK = {"kind": "volume-store", "version": 1}


def _is_case_group(url, name: str) -> bool:
    """Whether entry ``name`` of the store is a case group as tcpc writes it (source and format attributes)."""
    attrs = read_zarr_attrs(f"{str(url).rstrip('/')}/{name}")
    return attrs is not None and "source" in attrs and "format" in attrs


def array_digest(group: zarr.Group, name: str) -> str | None:
    """The digest of array ``name`` in ``group``, or None when absent or incomplete."""
    try:
        arr = group[name]
    except KeyError:
        return None
    return arr.attrs.get("digest")


def list_cases(url: str | os.PathLike, require: tuple[str, ...] = ("image",)) -> list[str]:
    """Sorted ids of cases whose arrays ``require`` are all complete."""
    return sorted(case_digests(url, require))


def case_digests(url: str | os.PathLike, require: tuple[str, ...] = ("image",)) -> dict[str, dict[str, str]]:
    """``{case: {array name: digest}}`` for every case whose arrays ``require`` are all complete.

    One listing of two levels: zarr reads the metadata of every case and its arrays
    concurrently (``async.concurrency``), where ``group[case][name].attrs`` per case
    costs one round trip after another (10,000 cases: 10,000 sequential reads).
    """
    root = open_store(url, mode="r")
    fs = getattr(root.store, "fs", None)
    if fs is not None:  # fsspec caches listings per filesystem; workers have written since the last
        fs.invalidate_cache()
    cases: set[str] = set()
    digests: dict[str, dict[str, str]] = {}
    for path, node in root.members(max_depth=1):
        case, _, name = path.partition("/")
        if not name and isinstance(node, zarr.Group):
            cases.add(case)
        elif name in require and isinstance(node, zarr.Array) and node.attrs.get("digest"):
            digests.setdefault(case, {})[name] = node.attrs["digest"]
    return {c: digests[c] for c in sorted(cases) if len(digests.get(c, ())) == len(set(require))}


def _chunks_for(shape: tuple[int, ...]) -> tuple[int, ...]:
    # 64^3 chunks read crops cheaply; 1-D/2-D tables stay one chunk.
    if len(shape) == 3:
        return tuple(min(64, max(1, s)) for s in shape)
    return tuple(max(1, s) for s in shape)


def _has_empty_chunk(data: np.ndarray, chunks: tuple[int, ...]) -> bool:
    """Whether any chunk of ``data`` holds only zeros (zarr's default fill value)."""
    if data.size == 0 or data.dtype.kind not in "biuf":
        return True  # the safe answer: zarr then tests each chunk itself
    grid = [range(0, s, c) for s, c in zip(data.shape, chunks)]
    for start in itertools.product(*grid):
        block = data[tuple(slice(o, o + c) for o, c in zip(start, chunks))]
        # the first voxel settles almost every chunk without a pass over it
        if block.flat[0] == 0 and not np.any(block):
            return True
    return False


def _write_arrays(group: zarr.Group, arrays: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Mapping[str, Any]], url: str | None = None) -> None:
    """Create and fill ``group``'s arrays; ``url``: the store's fsspec URL when ``group`` lies in a
    remote store (its shards are then written through fsspec)."""
    for name, data in arrays.items():
        data = np.asarray(data)
        chunks = _chunks_for(data.shape)
        # One shard holds the whole array: each task writes whole shards only.
        shards = tuple(-(-s // c) * c for s, c in zip(data.shape, chunks)) if data.ndim == 3 else None
        # zarr omits chunks that hold only the fill value (0), testing every chunk as it encodes
        # it (a slow pass of its own); one pass here that finds none lets it skip the test,
        # with the same bytes written.
        config = {"write_empty_chunks": not _has_empty_chunk(data, chunks)}
        a = dict(attrs.get(name, {}))
        digest = a.pop("digest", None)
        # Attributes in one metadata write (attrs.update rewrites zarr.json once per key)
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
                                 compressors=_COMPRESSORS, overwrite=True, config=config, attributes=a,
                                 dimension_names=ngff.DIMENSION_NAMES if data.ndim == 3 else None)
        _fill(arr, data, chunks, config["write_empty_chunks"], url)
        if digest is not None:
            arr.update_attributes({"digest": digest})  # last: the completion marker


def _fill(arr: zarr.Array, data: np.ndarray, chunks: tuple[int, ...], write_empty_chunks: bool,
          url: str | None) -> None:
    """Write all of ``data`` into the new array ``arr``: a 3-D array's one shard is encoded here
    (:mod:`tcpc_data.store.encode`, the same bytes as zarr's write at less CPU) where that module
    writes the installed zarr's bytes, the rest through zarr."""
    codec = arr.metadata.codecs[0] if data.ndim == 3 and len(arr.metadata.codecs) == 1 else None
    blosc = blosc_of(codec) if isinstance(codec, ShardingCodec) else None
    local = isinstance(arr.store, zarr.storage.LocalStore)
    if blosc is None or not (local or url is not None) or not same_as_zarr():
        arr[...] = data
        return
    retain_freed_memory()  # Blosc's output buffer per chunk would otherwise fault every page afresh
    pieces = encode_shard(data, chunks, blosc, write_empty_chunks)
    if pieces is None:  # every chunk holds the fill value: zarr writes no shard
        return
    key = "/".join(p for p in (arr.path, arr.metadata.encode_chunk_key((0,) * data.ndim)) if p)
    if local:  # what LocalStore.set does, without a join
        path = arr.store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.writelines(pieces)
    else:  # a remote store: the same key under its URL, through fsspec's public API
        fs, root = filesystem(url)
        fs.pipe_file(f"{root}/{key}", b"".join(pieces))


def commit_arrays(url: str | os.PathLike, case_id: str, arrays: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Mapping[str, Any]] | None = None,
                  case_attrs: Mapping[str, Any] | None = None) -> None:
    """Write ``arrays`` into group ``case_id`` so that no partial array is ever visible.

    Parameters
    ----------
    url
        Volume store path or fsspec URL.
    case_id
        Sanitised case id; the group is created when missing.
    arrays
        Name -> array. Existing arrays of the same name are replaced.
    attrs
        Name -> attributes of that array; its ``"digest"`` is written last.
    case_attrs
        Attributes merged into the case group.

    The case's OME-Zarr metadata follow the arrays (:mod:`tcpc_data.store.ngff`).
    """
    attrs = attrs or {}
    ngff_attrs = ngff.before_commit(open_store(url, mode="a"), case_id, arrays, attrs)
    _commit(url, case_id, arrays, attrs, {**ngff_attrs, **(case_attrs or {})})
    ngff.after_commit(open_store(url, mode="r+")[case_id], arrays)


def _commit(url, case_id: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Mapping[str, Any]],
            case_attrs: Mapping[str, Any] | None) -> None:
    if case_id != sanitize_case_id(case_id):
        raise ValueError(f"case id {case_id!r} has characters outside [A-Za-z0-9_-]")
    root = open_store(url, mode="a")
    if not is_local(url):
        if case_id not in root and folder_entries(f"{str(url).rstrip('/')}/{case_id}"):
            raise OutputError(f"{url}/{case_id} is in the volume store but is not a case tcpc wrote: move it away "
                              "and rerun (it was left as it is)")
        case = root.require_group(case_id)
        for name in arrays:  # unmark first: a crash mid-write leaves it absent, not stale
            if name in case and "digest" in case[name].attrs:
                del case[name].attrs["digest"]
        _write_arrays(case, arrays, attrs, str(url))
        if case_attrs:
            case.update_attributes(dict(case_attrs))
        return

    store_dir = local_path(url).resolve()
    staging_root = store_dir.parent / f".{store_dir.name}.staging"
    staging = staging_root / _staging_name(case_id)
    try:
        sgroup = zarr.open_group(str(staging), mode="w", zarr_format=3)
        _write_arrays(sgroup, arrays, attrs)
        case_dir = store_dir / case_id
        if not (case_dir / "zarr.json").exists():
            if case_dir.exists() or case_dir.is_symlink():  # never ours: a case appears whole, by rename
                raise OutputError(f"{case_dir} is in the volume store but is not a case tcpc wrote: move it away "
                                  "and rerun (it was left as it is)")
            if case_attrs:
                sgroup.update_attributes(dict(case_attrs))
            try:
                os.replace(staging, case_dir)  # whole new case appears at once
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # another process committed this case since the check: swap our arrays into it
        case = root[case_id]
        for name in arrays:
            target = case_dir / name
            if target.exists():
                # Drop the completion marker first, then swap directories.
                if name in case and "digest" in case[name].attrs:
                    del case[name].attrs["digest"]
                trash = staging_root / _staging_name("trash")
                os.replace(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(staging / name, target)
        if case_attrs:
            case.update_attributes(dict(case_attrs))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging_root.rmdir()
        except OSError:
            pass


STALE_STAGING_S = 3600.0
# <case or "trash">-<host>-<pid>-<random>: a sweep knows a dead writer on this host by its pid; names
# without host and pid (written before) are swept by age alone
_STAGING_RE = re.compile(r"^[A-Za-z0-9_-]+?(?:-h(?P<host>[0-9a-f]{8})p(?P<pid>[0-9]+))?-[0-9a-f]{32}$")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _staging_name(case_id: str) -> str:
    return f"{case_id}-h{_host_tag()}p{os.getpid()}-{uuid.uuid4().hex}"


def _writer_gone(match: re.Match) -> bool:
    """Whether the staging entry's writer was a process of this host that no longer runs."""
    if match["host"] != _host_tag():
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, under another user
        return False
    return False


def sweep_staging(url: str | os.PathLike, older_than_s: float = STALE_STAGING_S) -> list[str]:
    """Delete what killed runs left in a local store's staging folder; returns the names removed.

    :func:`commit_arrays` stages each write beside the store and renames it
    into place; a process killed in between leaves its staging folder behind,
    never visible as a case but using disk. An entry is removed when the
    process that wrote it (its name carries host and pid) has ended on this
    host, or when it was untouched for ``older_than_s`` seconds (a writer on
    another host of a shared disk writes a case in seconds). Only names tcpc
    gives its staging entries are ever removed.
    """
    if not is_local(url):
        return []
    store_dir = local_path(url).resolve()
    staging_root = store_dir.parent / f".{store_dir.name}.staging"
    if not staging_root.is_dir() or staging_root.is_symlink():
        return []
    now, removed = time.time(), []
    for entry in sorted(staging_root.iterdir()):
        match = _STAGING_RE.match(entry.name)
        if match is None or entry.is_symlink():
            continue
        try:
            newest = max((p.lstat().st_mtime for p in entry.rglob("*")), default=0.0)
            stale = now - max(newest, entry.lstat().st_mtime) > older_than_s
        except OSError:  # removed meanwhile by its writer
            continue
        if stale or _writer_gone(match):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    try:
        staging_root.rmdir()
    except OSError:
        pass
    return removed
