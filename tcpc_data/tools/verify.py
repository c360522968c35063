"""Verify a tcpc output: a volume store, a shard set, or a labelled directory of split sets.

What is checked, without trusting anything the files say about themselves:

- store: every case's arrays are complete (a ``digest``), every chunk reads
  (zarr checks each chunk's CRC-32C where the store recorded one), image
  attributes describe a usable geometry (positive spacing, orthonormal
  direction, an intensity range lo < hi), image values are finite and in
  [-1, 1], supervoxels have the image's shape, candidates lie inside it;
- shard set: the manifest keeps the shard contract (``docs/design.md``, Shard
  contract), every shard it lists exists, its SHA-256 matches the manifest's
  (sets written by tcpc record one), it parses as a tar, holds as many samples
  as listed, and every sample decodes to the members of the manifest's schema
  with their shapes and dtypes and, where the shard names its case, belongs to
  that case.

The result is a list of problems, one line each; none means the output is intact.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from tcpc_data.digest import file_sha256
from tcpc_data.shards.manifest import MANIFEST, SPLITS, read_manifest
from tcpc_data.shards.tario import read_npy, tar_samples
from tcpc_data.urls import filesystem, join
from tcpc_data.volume import orthonormal_direction


@dataclasses.dataclass
class VerifyReport:
    """What was checked and every problem found (one line each)."""

    path: str
    kind: str
    checked: dict[str, int] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        counts = ", ".join(f"{n} {what}" for what, n in self.checked.items())
        verdict = "ok" if self.ok else f"{len(self.problems)} problem(s)"
        return f"{self.path}: {self.kind}, checked {counts}: {verdict}"


def verify(path: str | os.PathLike) -> VerifyReport:
    """Check a volume store, a shard set or a labelled split directory (path or fsspec URL).

    Raises
    ------
    FileNotFoundError
        Nothing is at ``path``.
    ValueError
        ``path`` is none of the three outputs.
    """
    path = str(path).rstrip("/")
    fs, root = filesystem(path)
    if not fs.exists(root):
        raise FileNotFoundError(f"nothing to verify at {path}")
    if fs.exists(join(root, MANIFEST)):
        report = VerifyReport(path, "shard set")
        _verify_shards(path, report)
    elif any(fs.exists(join(root, s, MANIFEST)) for s in SPLITS):
        report = VerifyReport(path, "labelled split sets")
        for split in SPLITS:
            if fs.exists(join(root, split, MANIFEST)):
                _verify_shards(join(path, split), report)
    elif fs.exists(join(root, "zarr.json")):
        report = VerifyReport(path, "volume store")
        _verify_store(path, report)
    else:
        raise ValueError(f"{path} is neither a volume store (zarr.json), a shard set (manifest.json) nor a "
                         "directory of split sets")
    return report


def _count(report: VerifyReport, what: str, n: int = 1) -> None:
    report.checked[what] = report.checked.get(what, 0) + n


def _verify_shards(d: str, report: VerifyReport) -> None:
    try:
        manifest = read_manifest(d)
    except (ValueError, FileNotFoundError) as exc:
        report.problems.append(str(exc))
        return
    _count(report, "shard sets")
    schema = manifest["members"]
    fs, _ = filesystem(d)
    for entry in manifest["shards"]:
        url = join(d, entry["name"])
        _count(report, "shards")
        if not fs.exists(filesystem(url)[1]):
            report.problems.append(f"{url}: listed in {join(d, MANIFEST)} but missing")
            continue
        if "sha256" in entry and file_sha256(url) != entry["sha256"]:
            report.problems.append(f"{url}: SHA-256 differs from the manifest's (the file changed after writing)")
        n = 0
        try:
            for key, members in tar_samples(url):
                n += 1
                for problem in _sample_problems(members, schema, entry.get("case")):
                    report.problems.append(f"{url}: sample {key}: {problem}")
        except ValueError as exc:
            report.problems.append(str(exc))
            continue
        _count(report, "samples", n)
        if n != entry["samples"]:
            report.problems.append(f"{url}: holds {n} samples, the manifest lists {entry['samples']}")


def _sample_problems(members: dict[str, bytes], schema: dict, case: str | None = None) -> list[str]:
    """Differences between one sample's members and the manifest's member schema (and the case
    its shard holds, when the manifest names one)."""
    problems = [f"no {ext!r} member" for ext in schema if ext not in members]
    problems += [f"unexpected member {ext!r}" for ext in members if ext not in schema]
    for ext, data in members.items():
        spec = schema.get(ext) or {}
        try:
            if ext.endswith(".npy"):
                arr = read_npy(data)
                if "dtype" in spec and str(arr.dtype) != spec["dtype"]:
                    problems.append(f"{ext} is {arr.dtype}, the schema says {spec['dtype']}")
                if "shape" in spec and list(arr.shape) != list(spec["shape"]):
                    problems.append(f"{ext} has shape {list(arr.shape)}, the schema says {spec['shape']}")
                if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                    problems.append(f"{ext} holds NaN or infinite values")
            elif ext == "json":
                record = json.loads(data)
                missing = [k for k in spec.get("keys", ()) if not isinstance(record, dict) or k not in record]
                if missing:
                    problems.append(f"json lacks {', '.join(missing)}")
                if case is not None and isinstance(record, dict) and record.get("case") != case:
                    problems.append(f"json names case {record.get('case')!r}, the manifest lists the shard "
                                    f"under case {case!r}")
            elif ext == "cls":
                int(data.decode().strip())
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{ext} does not decode ({' '.join(str(exc).split())})")
    return problems


def _verify_store(path: str, report: VerifyReport) -> None:
    import zarr

    root = zarr.open_group(path, mode="r", zarr_format=3)
    for case, group in sorted(root.groups()):
        _count(report, "cases")
        where = f"{path}/{case}"
        arrays = dict(group.arrays())
        if "image" not in arrays or "digest" not in arrays["image"].attrs:
            report.problems.append(f"{where}: no complete image (an unfinished case; a rerun of ingest completes it)")
            continue
        data = {}
        for name, arr in sorted(arrays.items()):
            _count(report, "arrays")
            if "digest" not in arr.attrs:
                report.problems.append(f"{where}/{name}: incomplete (no digest: its stage did not finish)")
                continue
            try:
                data[name] = arr[...]
            except Exception as exc:  # noqa: BLE001 - a corrupt chunk raises whatever its codec raises
                report.problems.append(f"{where}/{name}: a chunk does not read ({type(exc).__name__}: "
                                       f"{' '.join(str(exc).split())})")
        report.problems += [f"{where}: {p}" for p in _case_problems(data, dict(arrays["image"].attrs))]


def _case_problems(data: dict[str, np.ndarray], attrs: dict) -> list[str]:
    problems = []
    spacing, origin = attrs.get("spacing_zyx"), attrs.get("origin_zyx")
    if not (isinstance(spacing, list) and len(spacing) == 3 and all(np.isfinite(spacing)) and min(spacing) > 0):
        problems.append(f"image spacing_zyx must be 3 positive numbers, got {spacing!r}")
    if not (isinstance(origin, list) and len(origin) == 3 and all(np.isfinite(origin))):
        problems.append(f"image origin_zyx must be 3 finite numbers, got {origin!r}")
    try:  # the readers' own check, so verify and ingest agree on what a usable direction is
        orthonormal_direction(attrs.get("direction", np.eye(3)), "image")
    except (TypeError, ValueError) as exc:  # a ragged or non-numeric attribute, too
        msg = " ".join(str(exc).split())
        problems.append(msg if msg.startswith("image:") else f"image direction: {msg}")
    rng = attrs.get("intensity_range")
    if not (isinstance(rng, list) and len(rng) == 2 and rng[0] < rng[1]):
        problems.append(f"image intensity_range must be [lo, hi] with lo < hi, got {rng!r}")
    image = data.get("image")
    if image is None:
        return problems
    if image.ndim != 3:
        return problems + [f"image must be 3-D, has shape {image.shape}"]
    if not np.isfinite(image).all():
        problems.append(f"image holds {int((~np.isfinite(image)).sum())} NaN or infinite values")
    elif image.size and (image.min() < -1 or image.max() > 1):
        problems.append(f"image values span [{image.min()}, {image.max()}], outside [-1, 1]")
    for name in ("supervoxels", "mask"):
        if name in data and data[name].shape != image.shape:
            problems.append(f"{name} has shape {data[name].shape}, the image {image.shape}")
    cands = data.get("candidates")
    if cands is not None:
        if cands.ndim != 2 or cands.shape[1] != 3:
            problems.append(f"candidates must be (K, 3), got {cands.shape}")
        elif len(cands) and ((cands < 0).any() or (cands >= np.asarray(image.shape)).any()):
            problems.append("candidates lie outside the image")
        scores = data.get("candidate_scores")
        if scores is not None and len(scores) != len(cands):
            problems.append(f"candidate_scores has {len(scores)} entries for {len(cands)} candidates")
    return problems
