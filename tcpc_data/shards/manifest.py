"""The shard-set contract: the one module that reads and writes ``manifest.json``.

A shard set is a directory (local path or fsspec URL) of ``<name>-%06d.tar``
WebDataset shards plus ``manifest.json``, written last: a directory without
one is incomplete (``docs/design.md``, Shard contract). A labelled set is the
directory of its split sets ``train/``, ``val/`` (optional) and ``test/``.

Readers open ``<dir>/manifest.json`` by its name, never by listing the
directory, so a set behind a URL needs read access to its files alone. Every
manifest read is checked here once: valid JSON, format ``tcpc-webdataset``,
format version 1, the fields of :class:`Manifest` with shard counts that add
up; anything else is a one-line error naming the file. The writer checks the
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

from tcpc_data.urls import filesystem, join

FORMAT = "tcpc-webdataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("pretrain", "finetune")  # path samples (cubes, path, json); labelled volumes (volume, cls, json)
SPLITS = ("train", "val", "test")  # the split sets of a labelled set, in this order


class ShardEntry(TypedDict):
    """One shard file of the set, its sample count and (sets written by tcpc_data) its SHA-256,
    which ``tcpc verify`` checks."""

    name: str
    samples: int
    sha256: NotRequired[str]


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
        [{"name", "samples"}] in stream order.
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
                         f"reads version {FORMAT_VERSION} (rewrite the shards with this version)")
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


def write_manifest(out_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Check ``manifest`` and write ``out_dir/manifest.json`` atomically; returns its path.

    The text is indented JSON with sorted keys: the same content gives the
    same bytes. ``out_dir`` is local (a remote set is built locally, then
    uploaded with its manifest last).
    """
    out = Path(out_dir)
    check_manifest(manifest, str(out / MANIFEST))
    tmp = out / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"
    try:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, out / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)
    return out / MANIFEST


def describe(manifest: Manifest) -> str:
    """``"N samples in S shards from C cases"`` for a report line."""
    t = manifest["totals"]
    return f"{t['samples']} samples in {t['shards']} shards from {t['cases']} cases"
