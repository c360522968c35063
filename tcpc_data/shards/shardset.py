"""WebDataset shard I/O: per-case shards written by the workers, and the manifest that makes them a set.

Every shard set (pretraining or labelled) is written the same way:

1. the client plans: for each case, the digest of its inputs and sample config
   (plus the packing: shard size) gives it a file key; a case that the
   previous manifest lists with the same key, and whose shards are all there,
   is reused as it is;
2. each other case runs as one task on a worker, which writes that case's
   samples straight to the output (local path or fsspec URL) as
   ``<name>-<case>-<key>-%05d.tar``, ``shard_size`` samples per tar at most,
   then the case's record ``<name>-<case>-<key>.case.json`` (its shards,
   sample counts and SHA-256), written last. Each file appears whole: locally
   under a temporary name, flushed to disk and renamed; on object storage by
   one put of the whole object. A case whose record is there (a killed run's
   finished cases) is not computed again;
3. the client writes ``manifest.json`` (:mod:`tcpc_data.shards.manifest`)
   listing every case's shards in sorted case order, with their case, sample
   count and SHA-256, then deletes the files of this set that the manifest no
   longer lists (cases removed or changed, parts of failed cases, temporary
   files of killed workers, and the shards of an older format version).

Shards are never rewritten in place (a changed case gets a new key, hence new
names), so the previous manifest stays valid, with every shard it lists, until
the new one replaces it: a reader sees the old set or the new one. Adding or
changing cases writes only those cases and the manifest, and never reads the
existing shards. The client reads the previous manifest and lists the
directory's names once before and once after the run; it holds no sample.

Tar members have fixed mtime, owner and mode, and a case's shards depend on
that case alone, so a rerun with the same inputs, config and seed produces the
same bytes for any worker count. Members are ``.npy`` (saved without pickle),
``.json`` and ``.cls`` (decimal text), never pickles.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from tcpc_data.digest import digest as _digest
from tcpc_data.digest import to_json
from tcpc_data.outputs import claim_dir, has_files
from tcpc_data.runner import DONE, SKIPPED, RunReport, Task, run_cases
from tcpc_data.shards.manifest import (FORMAT_VERSION, MANIFEST, Manifest, ShardEntry, find_manifest, fsync_dir,
                                       new_manifest, write_durably, write_manifest)
from tcpc_data.shards.tario import Sample, write_tar
from tcpc_data.urls import filesystem, is_remote, join, local_path

CASE_RECORD = ".case.json"  # suffix of a case's record: <name>-<case>-<key>.case.json
OLD_PARTS = ".parts"  # where format version 1 kept per-case parts (removed when a set is rewritten)


def encode_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys) of a record."""
    return to_json(obj).encode()


def case_prefix(name: str, case: str, key: str) -> str:
    """``<name>-<case>-<key>``: the start of every file of one case's shards."""
    return f"{name}-{case}-{key}"


def _case_key(inputs_digest: str, shard_size: int) -> str:
    """The file key of a case: its inputs and sample config, and how its samples are packed."""
    return _digest(inputs_digest, shard_size)[:16]


def build_shard_set(stage: str, out_dir: str | os.PathLike, *, name: str, shard_size: int,
                    config: Any, inputs: dict[str, str], payloads: dict[str, Any],
                    make_samples: Callable[[Any], Iterable[Sample]], members: dict,
                    extra: dict | None = None, reads: tuple = (), workers: int | None = None,
                    scheduler: str | None = None, progress: bool = False,
                    failures_path: str | os.PathLike | None = None,
                    memory_limit: str | None = None) -> tuple[RunReport, Manifest]:
    """Write one shard set from per-case sample generators (steps 1-3 of the module docstring).

    Parameters
    ----------
    stage
        Name for progress and the report.
    out_dir
        Shard directory (created): a local path or an fsspec URL, written by
        the workers directly (with a cluster, a local path must be on a disk
        the workers share).
    name, shard_size
        Shard file prefix and the most samples per shard.
    config
        The stage config (frozen dataclass), recorded in the manifest.
    inputs
        Case id -> digest of that case's inputs *and* the sample config (not
        the shard size): a changed case gets new shard names and is redone.
    payloads
        Case id -> what ``make_samples`` needs (picklable).
    make_samples
        Module-level function ``payload -> iterable of samples`` for one case.
    members
        Member schema for the manifest: extension -> {"shape", "dtype", ...}.
    extra
        The manifest's ``kind`` and its optional fields (e.g. how intensities
        were mapped): see :class:`tcpc_data.shards.manifest.Manifest`.
    reads
        The paths or URLs the samples come from: ``out_dir`` may neither lie
        inside one nor hold one (:func:`tcpc_data.outputs.claim_dir`).
    workers, scheduler, progress, failures_path, memory_limit
        As in :func:`tcpc_data.runner.run_cases`.

    Returns
    -------
    report, manifest
        Per-case outcomes (``skipped``: reused from the previous set or from a
        killed run's finished cases) and the manifest written.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1 sample, got {shard_size}")
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise ValueError(f"shard name {name!r} must be non-empty and use only [A-Za-z0-9_-]")
    # a new or empty folder, or a shard set tcpc wrote (before marks: its manifest says so)
    claim_dir(out_dir, "shard-set", inputs=reads, legacy=has_files(MANIFEST))
    if not is_remote(out_dir):  # absolute: workers run in directories of their own
        out_dir = local_path(out_dir).resolve()
    out = str(out_dir)
    run_digest = _digest(FORMAT_VERSION, config, inputs, name, shard_size)
    keys = {c: _case_key(inputs[c], shard_size) for c in sorted(inputs)}
    previous, present = _previous(out), _names(out)
    if (previous is not None and previous["digest"] == run_digest and not previous["failed_cases"]
            and all(s["name"] in present for s in previous["shards"])):
        return RunReport(stage=stage, skipped=sorted(inputs)), previous
    reused = _reusable(previous, keys, present)
    todo = [c for c in sorted(inputs) if c not in reused]
    report = RunReport(stage=stage)
    if todo:
        fn = functools.partial(_write_case, make_samples, out, name, shard_size)
        report = run_cases(stage, [Task(c, c, (c, keys[c], payloads[c])) for c in todo], fn, workers=workers,
                           scheduler=scheduler, progress=progress, failures_path=failures_path,
                           memory_limit=memory_limit)
    report.skipped = sorted([*report.skipped, *reused])
    entries = {**reused, **{c: report.results[c] for c in report.done + report.skipped if c in report.results}}
    failed = sorted(f["case"] for f in report.failures)
    good = [c for c in sorted(inputs) if c in entries]
    manifest = new_manifest(stage=stage, name=name, config=json.loads(to_json(config)), digest=run_digest,
                            shard_size=shard_size, members=members,
                            shards=[s for c in good for s in entries[c]],
                            cases={c: sum(s["samples"] for s in entries[c]) for c in good},
                            case_digests={c: inputs[c] for c in good}, failed_cases=failed, **(extra or {}))
    try:
        write_manifest(out, manifest)
    except OSError as exc:  # a full disk, typically: the finished cases' shards stay for the rerun
        error = OSError(f"{join(out, MANIFEST)}: cannot write the manifest ({exc.strerror or exc}); the finished "
                        "cases' shards stay, so a rerun after freeing space only writes the manifest")
        error.errno = exc.errno
        raise error from None
    keep = {s["name"] for s in manifest["shards"]} | {case_prefix(name, c, keys[c]) + CASE_RECORD for c in good}
    _remove_unlisted(out, name, keep)
    return report, manifest


def _previous(out: str) -> Manifest | None:
    """The manifest written last time, or None (none, unreadable, or of an older format version:
    then every case is written again and the old shards are removed)."""
    try:
        return find_manifest(out)
    except (ValueError, OSError):
        return None


def _names(out: str) -> set[str]:
    """File names directly in ``out`` (one listing; none when it does not exist yet)."""
    fs, root = filesystem(out)
    fs.invalidate_cache(root)  # the workers, other processes, wrote there since any cached listing
    try:
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
    except FileNotFoundError:
        return set()


def _reusable(previous: Manifest | None, keys: dict[str, str], present: set[str]) -> dict[str, list[ShardEntry]]:
    """Case -> its shard entries, for the cases the previous manifest lists with the same key and
    whose shards are all present: they are neither computed nor read again."""
    if previous is None:
        return {}
    by_case: dict[str, list[ShardEntry]] = {}
    for s in previous["shards"]:
        if "case" in s:
            by_case.setdefault(s["case"], []).append(s)
    out = {}
    for c, shards in by_case.items():
        old = previous["case_digests"].get(c)
        if (c in keys and old is not None and _case_key(old, previous["shard_size"]) == keys[c]
                and all(s["name"] in present and "sha256" in s for s in shards)):
            out[c] = [dict(s) for s in shards]
    return out


def _remove_unlisted(out: str, name: str, keep: set[str]) -> None:
    """Delete this set's files that the manifest just written does not list: shards and records
    of removed or changed cases, a failed case's partial shards, temporary files of killed
    workers or of a client killed while writing the manifest, shards and parts of the older format."""
    fs, root = filesystem(out)
    for n in sorted(_names(out) - keep):
        ours = n.startswith(f"{name}-") and (n.endswith(".tar") or n.endswith(CASE_RECORD))
        temporary = n.startswith((f".{name}-", f".{MANIFEST}.")) and n.endswith(".tmp")
        if ours or temporary:
            fs.rm_file(f"{root}/{n}")
    if not is_remote(out):
        shutil.rmtree(local_path(out) / OLD_PARTS, ignore_errors=True)


def _write_case(make_samples: Callable[[Any], Iterable[Sample]], out: str, name: str, shard_size: int,
                payload: tuple[str, str, Any]) -> tuple[str, list[ShardEntry]]:
    """Runner task (on a worker): write one case's shards and record, unless a previous run did.

    Returns the case's shard entries ``{"name", "samples", "sha256", "case"}``.
    A case that fails removes the shards it wrote (a killed one leaves them to
    the client's sweep after the manifest).
    """
    case, key, case_payload = payload
    prefix = case_prefix(name, case, key)
    fs, root = filesystem(out)
    record = f"{root}/{prefix}{CASE_RECORD}"
    done = _read_record(fs, root, record, case)
    if done is not None:
        return SKIPPED, done
    written: list[str] = []
    try:
        entries = []
        it = iter(make_samples(case_payload))
        while True:
            first = next(it, None)
            if first is None:
                break
            shard = f"{prefix}-{len(entries):05d}.tar"
            written.append(shard)
            n, sha = _put_tar(out, shard, _take(first, it, shard_size))
            entries.append({"name": shard, "samples": n, "sha256": sha, "case": case})
        data = encode_json(entries)
        if is_remote(out):
            fs.pipe_file(record, data)
        else:
            write_durably(local_path(out) / f"{prefix}{CASE_RECORD}", data)
    except BaseException:
        for shard in written:
            try:
                fs.rm_file(f"{root}/{shard}")
            except OSError:
                pass
        raise
    return DONE, entries


def _read_record(fs, root: str, record: str, case: str) -> list[ShardEntry] | None:
    """A finished case's entries from its record, when the record and every shard it lists are
    there; None otherwise (the case is written again)."""
    try:
        entries = json.loads(fs.cat_file(record))
    except (FileNotFoundError, ValueError):
        return None
    fs.invalidate_cache(root)  # existence below from the store itself, not a listing cached earlier
    ok = isinstance(entries, list) and all(
        isinstance(e, dict) and e.get("case") == case and isinstance(e.get("name"), str)
        and isinstance(e.get("samples"), int) and isinstance(e.get("sha256"), str) for e in entries)
    if not ok or not all(fs.exists(f"{root}/{e['name']}") for e in entries):
        return None
    return entries


def _put_tar(out: str, shard: str, samples: Iterable[Sample]) -> tuple[int, str]:
    """Write one shard so that it appears whole; returns its sample count and SHA-256.

    Locally: written under a temporary name beside it, flushed and renamed
    (``write_tar``), then the directory flushed, so that the case record,
    written after, never vouches for a shard that a crash could lose. To a
    URL: built in the worker's temporary directory, then put as one object.
    """
    sha = hashlib.sha256()  # fed as the bytes are written: no second read of the shard
    if not is_remote(out):
        path = local_path(out) / shard
        n = write_tar(path, samples, durable=True, sha256=sha)
        fsync_dir(path.parent)
        return n, sha.hexdigest()
    fs, root = filesystem(out)
    with tempfile.TemporaryDirectory(prefix="tcpc-shard-") as tmp:
        path = Path(tmp) / shard
        n = write_tar(path, samples, sha256=sha)
        fs.put_file(str(path), f"{root}/{shard}")
    return n, sha.hexdigest()


def _take(first: Sample, it: Iterator[Sample], n: int) -> Iterator[Sample]:
    yield first
    for _ in range(n - 1):
        s = next(it, None)
        if s is None:
            return
        yield s
