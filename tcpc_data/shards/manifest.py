"""The shard-set contract: the one module that reads and writes ``manifest.json``.

A shard set is a directory (local path or fsspec URL) of WebDataset tar
shards plus ``manifest.json``, written last: the set is what the manifest
lists, and a directory without one is incomplete (``docs/design.md``, Shard
contract). Sets written by :mod:`tcpc_data.shards.shardset` hold one case per
shard (``<name>-<case>-<key>-%05d.tar``); other writers may name shards as
they like. A labelled set is the directory of its split sets ``train/``,
``val/`` (optional) and ``test/``.

Readers open ``<dir>/manifest.json`` by its name, never by listing the
directory, so a set behind a URL needs read access to its files alone. Every
manifest read is checked here once: valid JSON, format ``tcpc-webdataset``,
format version 2, the fields of :class:`Manifest` with shard counts that add
up (per case too, where shards name their case); anything else is a one-line
error naming the file. Version 1 (shards that mixed cases) is refused with a
hint to rewrite the set. The writer checks the
same rules, so nothing is written that a reader would refuse.

It needs the standard library alone (fsspec for URLs), so the trainer reads
manifests without the engine's stack.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from tcpc_data.urls import filesystem, is_remote, join, local_path

FORMAT = "tcpc-webdataset"
FORMAT_VERSION = 2  # 2: one case per shard, each shard entry names its case
MANIFEST = "manifest.json"
KINDS = ("pretrain", "finetune")  # path samples (cubes, path, json); labelled volumes (volume, cls, json)
SPLITS = ("train", "val", "test")  # the split sets of a labelled set, in this order


class ShardEntry(TypedDict):
    """One shard file of the set, its sample count and (sets written by tcpc_data) its SHA-256,
    which ``tcpc verify`` checks, and the case whose samples it holds."""

    name: str
    samples: int
    sha256: NotRequired[str]
    case: NotRequired[str]


class Totals(TypedDict):
    """Counts over the whole set."""

    samples: int
    shards: int
    cases: int


class _Optional(TypedDict, total=False):
    """Fields some writers add: where the data came from and what the labels are."""

    source: str
    labels: str
    split: str
    classes: list[int]
    intensity_map: str


class Manifest(_Optional):
    """What ``manifest.json`` holds (JSON object; dict access).

    ``digest`` names the set's content (inputs, config, packing): a trainer
    records it, a rerun with the same digest has nothing to do. ``cases``
    maps each case to its sample count in shard order, ``case_digests`` each
    case to the digest of its inputs (an incremental rebuild reuses unchanged
    cases). ``members`` is the sample schema: extension -> {shape, dtype, ...}.
    """

    format: str
    format_version: int
    kind: str
    name: str
    stage: str
    config: dict[str, Any]
    digest: str
    shard_size: int
    members: dict[str, Any]
    shards: list[ShardEntry]
    cases: dict[str, int]
    case_digests: dict[str, str]
    failed_cases: list[str]
    totals: Totals


_REQUIRED = tuple(sorted(Manifest.__required_keys__))


def manifest_url(shard_dir: str | os.PathLike) -> str:
    """``<shard_dir>/manifest.json`` for a directory path or URL."""
    return join(shard_dir, MANIFEST)


def new_manifest(*, kind: str, name: str, stage: str, config: dict, digest: str, shard_size: int,
                 members: dict, shards: list[ShardEntry], cases: dict[str, int],
                 case_digests: dict[str, str], failed_cases: list[str] = (), **extra: Any) -> Manifest:
    """A checked manifest of a shard set; ``totals`` are counted from ``shards`` and ``cases``.

    Parameters
    ----------
    kind
        'pretrain' or 'finetune' (:data:`KINDS`).
    name, shard_size
        Shard file prefix and the most samples per shard.
    stage
        The stage that wrote the set (for reports).
    config
        The writer's config as plain JSON values.
    digest
        Content digest of the set.
    members
        Sample schema: extension -> {"shape", "dtype", ...}.
    shards
        [{"name", "samples"}, optionally "sha256" and "case"] in stream order;
        a shard that names its case counts toward that case's samples.
    cases, case_digests
        Case -> sample count (in shard order) and case -> input digest, for the cases written.
    failed_cases
        Cases that failed and are absent.
    extra
        Optional fields of :class:`Manifest` (source, labels, split, classes, intensity_map).

    Raises
    ------
    ValueError
        A field breaks the contract (see :func:`check_manifest`).
    """
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "name": name,
                "stage": stage, "config": config, "digest": digest, "shard_size": shard_size,
                "members": members, "shards": [dict(s) for s in shards], "cases": dict(cases),
                "case_digests": dict(case_digests), "failed_cases": sorted(failed_cases),
                "totals": {"samples": sum(s["samples"] for s in shards), "shards": len(shards),
                           "cases": len(cases)},
                **extra}
    return check_manifest(manifest, f"new {kind} manifest {name!r}")


def check_manifest(obj: Any, where: str) -> Manifest:
    """``obj`` when it is a manifest of this format and version, else a ValueError naming ``where``."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: not a tcpc shard manifest (a JSON {type(obj).__name__}, not an object)")
    if obj.get("format") != FORMAT:
        raise ValueError(f"{where}: not a tcpc shard manifest (format {obj.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if obj.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{where}: manifest format version {obj.get('format_version')!r}; this tcpc "
                         f"reads version {FORMAT_VERSION} (rerun the command that wrote the set, on the same "
                         "output, to rewrite it in this version)")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"{where}: manifest lacks {', '.join(missing)}")
    if obj["kind"] not in KINDS:
        raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {obj['kind']!r}")
    shards = obj["shards"]
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                               for s in shards):
        raise ValueError(f"{where}: 'shards' must list {{'name', 'samples'}} objects")
    for s in shards:
        n = s.get("samples")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{where}: shard {s['name']!r} has no valid sample count (got {n!r})")
        if "/" in s["name"] or s["name"] in ("", ".", ".."):
            raise ValueError(f"{where}: shard name {s['name']!r} must be a file name in the set's directory")
    per_case: dict[str, int] = {}
    for s in shards:
        if "case" in s:
            if not isinstance(s["case"], str) or not isinstance(obj["cases"], dict) or s["case"] not in obj["cases"]:
                raise ValueError(f"{where}: shard {s['name']!r} holds case {s['case']!r}, which 'cases' lacks")
            per_case[s["case"]] = per_case.get(s["case"], 0) + s["samples"]
    wrong = sorted(c for c, n in per_case.items() if obj["cases"][c] != n)
    if wrong:
        raise ValueError(f"{where}: case {wrong[0]!r} has {per_case[wrong[0]]} samples in its shards, "
                         f"'cases' says {obj['cases'][wrong[0]]!r}")
    totals = obj["totals"]
    counted = {"samples": sum(s["samples"] for s in shards), "shards": len(shards)}
    if not isinstance(totals, dict) or any(totals.get(k) != v for k, v in counted.items()):
        raise ValueError(f"{where}: totals {totals!r} disagree with the shards listed ({counted})")
    if not isinstance(obj["digest"], str) or not obj["digest"]:
        raise ValueError(f"{where}: digest must be a non-empty string, got {obj['digest']!r}")
    return obj


def find_manifest(shard_dir: str | os.PathLike) -> Manifest | None:
    """The checked manifest of a shard directory (path or URL), or None when it has none
    (never written, or its run has not finished).

    Raises
    ------
    ValueError
        The file is there but breaks the contract (:func:`check_manifest`).
    """
    url = manifest_url(shard_dir)
    fs, path = filesystem(url)
    try:
        data = fs.cat_file(path)
    except (FileNotFoundError, NotADirectoryError):  # no such directory, or a file in its place
        return None
    except IsADirectoryError:
        raise ValueError(f"{url}: is a directory, not a manifest file") from None
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad JSON or encoding; too many digits; nesting too deep
        raise ValueError(f"{url}: not valid JSON ({type(exc).__name__}: {exc})") from None
    return check_manifest(obj, url)


def read_manifest(shard_dir: str | os.PathLike) -> Manifest:
    """The checked manifest of a shard directory (path or URL).

    Raises
    ------
    FileNotFoundError
        It has no ``manifest.json``.
    ValueError
        As :func:`find_manifest`.
    """
    manifest = find_manifest(shard_dir)
    if manifest is None:
        raise FileNotFoundError(f"shard directory {shard_dir} has no manifest: {manifest_url(shard_dir)} not found "
                                "(it does not exist, or its run has not finished; write shards first)")
    return manifest


def manifest_bytes(manifest: Manifest) -> bytes:
    """The file's bytes: indented JSON with sorted keys, so the same content gives the same bytes."""
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def write_manifest(out_dir: str | os.PathLike, manifest: Manifest) -> str | Path:
    """Check ``manifest`` and write ``out_dir/manifest.json`` atomically; returns its path (or URL).

    Locally the file is written under a temporary name, flushed to disk and
    renamed, so a crash leaves the old manifest or the new one; on object
    storage one put of the whole object is atomic in the same way.
    """
    check_manifest(manifest, manifest_url(out_dir))
    if is_remote(out_dir):
        fs, root = filesystem(out_dir)
        fs.pipe_file(f"{root}/{MANIFEST}", manifest_bytes(manifest))
        return manifest_url(out_dir)
    out = local_path(out_dir)
    write_durably(out / MANIFEST, manifest_bytes(manifest))
    return out / MANIFEST


def write_durably(path: Path, data: bytes) -> None:
    """Write a local file atomically and durably: a temporary name, fsync, rename, fsync of the
    directory (a crash leaves the old file or the new one, never a renamed file without its data)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (its renames) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def describe(manifest: Manifest) -> str:
    """``"N samples in S shards from C cases"`` for a report line."""
    t = manifest["totals"]
    return f"{t['samples']} samples in {t['shards']} shards from {t['cases']} cases"
