"""WebDataset shard I/O: deterministic tar members, per-case parts, shard assembly and the manifest.

Every shard set (pretraining or labelled) is written the same way:

1. each case's samples go, in parallel over cases, into one *part* tar in
   ``<out>/.parts/`` whose name carries the digest of its inputs and config
   (written to a temporary name, then renamed: a part that exists is whole,
   so a killed run resumes by skipping the parts already there);
2. the parts are concatenated in sorted case order into ``<name>-%06d.tar``
   shards of ``shard_size`` samples, each written to a temporary name and
   renamed;
3. ``manifest.json`` (:mod:`tcpc_data.shards.manifest`: format version,
   config, digest, per-shard sample counts, totals, member schema) is written
   last: a shard directory without one is incomplete.

A finished run deletes its parts; when cases are added later, the parts of
the unchanged ones are cut back out of the previous shards (the manifest
records each case's input digest and sample count), so only new or changed
cases are computed.

An output given as an fsspec URL (``s3://bucket/shards``) is built in a local
staging directory named after the URL (so a killed run resumes there), then
uploaded: shards first, stale shards removed, the manifest last.

Tar members have fixed mtime, owner and mode, and sample order does not
depend on the worker count, so a rerun with the same inputs, config and seed
produces the same bytes. Members are ``.npy`` (saved without pickle),
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
from tcpc_data.digest import file_sha256
from tcpc_data.digest import to_json
from tcpc_data.runner import DONE, SKIPPED, RunReport, Task, run_cases
from tcpc_data.shards.manifest import (FORMAT_VERSION, MANIFEST, Manifest, find_manifest, new_manifest,
                                       write_manifest)
from tcpc_data.shards.tario import Sample, tar_samples, write_tar
from tcpc_data.urls import filesystem, is_remote, join

PARTS = ".parts"


def encode_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys) of a record."""
    return to_json(obj).encode()


def _write_part(make_samples: Callable[[Any], Iterable[Sample]], payload: Any, part: str) -> tuple[str, Any]:
    """Runner task: write one case's part tar unless it is already there."""
    p = Path(part)
    if p.exists():
        return SKIPPED, sum(1 for _ in tar_samples(p))
    return DONE, write_tar(p, make_samples(payload))


def is_current(out_dir: str | os.PathLike, run_digest: str) -> Manifest | None:
    """The manifest when ``out_dir`` already holds a complete, failure-free set of this digest."""
    m = find_manifest(out_dir)
    if m is None or m["digest"] != run_digest or m["failed_cases"]:
        return None
    fs, root = filesystem(out_dir)
    if all(fs.exists(join(root, s["name"])) for s in m["shards"]):
        return m
    return None


def staging_dir(url: str) -> Path:
    """The local directory where the shard set for ``url`` is built before its upload: under the
    system's temporary directory (``TMPDIR`` moves it), which needs room for the whole set."""
    return Path(tempfile.gettempdir()) / f"tcpc-shards-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def _upload(staging: Path, url: str, manifest: Manifest, name: str) -> None:
    """Copy a finished local set to ``url``: manifest removed first, shards, stale ones removed,
    manifest last, so the remote set is never vouched for while it is mixed."""
    fs, root = filesystem(url)
    fs.makedirs(root, exist_ok=True)
    if fs.exists(f"{root}/{MANIFEST}"):
        fs.rm(f"{root}/{MANIFEST}")
    names = {s["name"] for s in manifest["shards"]}
    for n in sorted(names):
        fs.put_file(str(staging / n), f"{root}/{n}")
    for p in fs.glob(f"{root}/{name}-*.tar"):
        if p.rstrip("/").rsplit("/", 1)[-1] not in names:
            fs.rm(p)
    fs.put_file(str(staging / MANIFEST), f"{root}/{MANIFEST}")


class ShardWriter:
    """Stream samples into ``<name>-%06d.tar`` shards of ``shard_size`` samples, each renamed into place."""

    def __init__(self, out_dir: Path, name: str, shard_size: int):
        self.out_dir, self.name, self.shard_size = out_dir, name, shard_size
        self.shards: list[dict] = []

    def write(self, samples: Iterable[Sample]) -> list[dict]:
        """Write all ``samples``; returns [{"name", "samples", "sha256"}] per shard."""
        it = iter(samples)
        while True:
            first = next(it, None)
            if first is None:
                break
            name = f"{self.name}-{len(self.shards):06d}.tar"
            n = write_tar(self.out_dir / name, _take(first, it, self.shard_size))
            self.shards.append({"name": name, "samples": n, "sha256": file_sha256(self.out_dir / name)})
        self._remove_stale()
        return self.shards

    def _remove_stale(self) -> None:
        keep = {s["name"] for s in self.shards}
        for p in self.out_dir.glob(f"{self.name}-*.tar"):
            if p.name not in keep:
                p.unlink()


def _take(first: Sample, it: Iterator[Sample], n: int) -> Iterator[Sample]:
    yield first
    for _ in range(n - 1):
        s = next(it, None)
        if s is None:
            return
        yield s


def build_shard_set(stage: str, out_dir: str | os.PathLike, *, name: str, shard_size: int,
                    config: Any, inputs: dict[str, str], payloads: dict[str, Any],
                    make_samples: Callable[[Any], Iterable[Sample]], members: dict,
                    extra: dict | None = None, workers: int | None = None,
                    scheduler: str | None = None, progress: bool = False,
                    failures_path: str | os.PathLike | None = None) -> tuple[RunReport, Manifest]:
    """Write one shard set from per-case sample generators (steps 1-3 of the module docstring).

    Parameters
    ----------
    stage
        Name for progress and the report.
    out_dir
        Shard directory (created): a local path, or an fsspec URL built in
        :func:`staging_dir` and uploaded.
    name, shard_size
        Shard file prefix and samples per shard.
    config
        The stage config (frozen dataclass), recorded in the manifest.
    inputs
        Case id -> digest of that case's inputs *and* the sample config (not
        the shard size): names its part, so a changed case is redone.
    payloads
        Case id -> what ``make_samples`` needs (picklable).
    make_samples
        Module-level function ``payload -> iterable of samples`` for one case.
    members
        Member schema for the manifest: extension -> {"shape", "dtype", ...}.
    extra
        The manifest's ``kind`` and its optional fields (e.g. how intensities
        were mapped): see :class:`tcpc_data.shards.manifest.Manifest`.

    Returns
    -------
    report, manifest
        Per-case outcomes (all ``skipped`` when the directory was already
        current) and the manifest written.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1 sample, got {shard_size}")
    if not name or not all(ch.isalnum() or ch in "_-" for ch in name):
        raise ValueError(f"shard name {name!r} must be non-empty and use only [A-Za-z0-9_-]")
    run_digest = _digest(FORMAT_VERSION, config, inputs, name, shard_size)
    current = is_current(out_dir, run_digest)
    if current is not None:
        return RunReport(stage=stage, skipped=sorted(inputs)), current
    remote = is_remote(out_dir)
    out = staging_dir(str(out_dir)) if remote else Path(filesystem(out_dir)[1])
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"shard output {out_dir} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    staged = is_current(out, run_digest) if remote else None  # a staged set whose upload was cut short
    if staged is not None:
        report, manifest = RunReport(stage=stage, skipped=sorted(inputs)), staged
    else:
        report, manifest = _build(stage, out, str(out_dir), run_digest, name, shard_size, config, inputs,
                                  payloads, make_samples, members, extra, workers, scheduler, progress,
                                  failures_path)
    if remote:
        _upload(out, str(out_dir), manifest, name)
        if not manifest["failed_cases"]:  # else the staged parts let a rerun resume
            shutil.rmtree(out, ignore_errors=True)
    return report, manifest


def _build(stage, out: Path, previous: str, run_digest, name, shard_size, config, inputs, payloads, make_samples,
           members, extra, workers, scheduler, progress, failures_path) -> tuple[RunReport, Manifest]:
    """Steps 1-3 in the local directory ``out`` (a staging copy of a remote output); ``previous``
    is where the set written last time lies (``out`` itself, or the URL)."""

    parts_dir = out / PARTS
    parts_dir.mkdir(exist_ok=True)
    parts = {c: parts_dir / f"{c}-{inputs[c][:16]}.tar" for c in sorted(inputs)}
    for p in parts_dir.glob("*.tar"):  # parts of older inputs or configs
        if p not in parts.values():
            p.unlink()
    _recover_parts(previous, parts, inputs)
    tasks = [Task(c, c, payloads[c]) for c in sorted(inputs)]
    fn = functools.partial(_call_part, make_samples)
    report = run_cases(stage, [Task(t.case, t.source, (t.payload, str(parts[t.case]))) for t in tasks],
                       fn, workers=workers, scheduler=scheduler, progress=progress,
                       failures_path=failures_path)
    failed = sorted(f["case"] for f in report.failures)
    good = [c for c in sorted(inputs) if c not in failed]
    # The manifest marks a complete set: drop it before shards are replaced, so a kill
    # mid-assembly leaves no manifest vouching for mixed shards.
    (out / MANIFEST).unlink(missing_ok=True)
    try:
        shards = ShardWriter(out, name, shard_size).write(
            s for c in good for s in tar_samples(parts[c]))
        manifest = new_manifest(stage=stage, name=name, config=json.loads(to_json(config)), digest=run_digest,
                                shard_size=shard_size, members=members, shards=shards,
                                cases={c: int(report.results[c]) for c in good},
                                case_digests={c: inputs[c] for c in good}, failed_cases=failed, **(extra or {}))
        write_manifest(out, manifest)
    except OSError as exc:  # a full disk, typically: keep the parts, free what the assembly wrote
        for p in out.glob(f"{name}-*.tar"):
            p.unlink()
        error = OSError(f"{out}: cannot write the shard set ({exc.strerror or exc}); the finished case parts "
                        f"stay in {parts_dir}, so a rerun after freeing space only assembles the shards")
        error.errno = exc.errno
        raise error from None
    if not failed:  # keep parts only where a rerun can still use them
        shutil.rmtree(parts_dir, ignore_errors=True)
    return report, manifest


def _recover_parts(previous: str, parts: dict[str, Path], inputs: dict[str, str]) -> None:
    """Rebuild the missing parts of unchanged cases from the set written last time.

    A finished run deletes its parts, so adding one case to an archive would
    redo every case. The previous manifest records each case's input digest
    and sample count, and its shards hold the cases' samples back to back in
    sorted case order: the samples of a case whose digest is unchanged are cut
    out of that stream instead of being computed again. Damaged or foreign
    shards end the recovery; those cases are then computed as usual.
    """
    try:
        old = find_manifest(previous)
    except (ValueError, OSError):
        return
    if old is None:
        return
    wanted = {c for c, p in parts.items() if not p.exists() and old["case_digests"].get(c) == inputs[c]}
    if not wanted:
        return
    stream = (s for shard in old["shards"] for s in tar_samples(join(previous, shard["name"])))
    try:
        for case in sorted(old["cases"]):
            n = int(old["cases"][case])
            samples = [s for _, s in zip(range(n), stream)]
            if len(samples) < n:
                return
            if case in wanted:
                write_tar(parts[case], samples)
    except (ValueError, OSError):
        return


def _call_part(make_samples, payload_and_part):
    payload, part = payload_and_part
    return _write_part(make_samples, payload, part)
