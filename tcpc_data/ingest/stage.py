"""The ingest stage: CT sources -> normalised volumes in ``volumes.zarr/<case>/image``.

Per case: hash the source files with the config (the digest), skip the case
when the store already holds that digest, else read it (DICOM series or
volume file), refuse NaN/Inf, apply the HU window, resample when the series is
irregular or a spacing is asked for, normalise min/max to [-1, 1], and commit
it atomically with its geometry and the mapping back to HU. A case whose
image has a label map beside it (``masks/``, nnU-Net ``labelsTr/``:
:mod:`tcpc_data.ingest.discover`) also gets a ``mask`` array on the image's
grid (nearest neighbour when resampled); a mask on another grid fails the
case. Cases run in
parallel through :func:`tcpc_data.runner.run_cases`; a bad case becomes one
failure record and never stops the run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import field
from pathlib import Path
from typing import Literal

import numpy as np

from tcpc_data.digest import digest, files_digest
from tcpc_data.ingest.dicom import series_volume
from tcpc_data.ingest.dicomseg import read_seg_mask
from tcpc_data.ingest.discover import CaseSource, _strip_suffix, discover, series_files
from tcpc_data.ingest.normalise import apply_clip, as_stored, check_clip, normalise
from tcpc_data.ingest.onepass import read_series_once
from tcpc_data.ingest.resample import to_grid
from tcpc_data.outputs import check_replaceable, remove_if_ours
from tcpc_data.runner import DONE, SKIPPED, RunReport, Task, run_cases
from tcpc_data.store.volumes import array_digest, claim_store, commit_arrays, open_store, sweep_staging
from tcpc_data.urls import is_local, local_path
from tcpc_data.volume import Volume, check_finite

_DTYPES = ("float32", "float16")
_OVERLAP_BYTES = 8 << 20  # a case this large hashes in a thread while it is parsed
_IRREGULAR = ("resample", "refuse")


def _positive3(value, name: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = (value,) * 3
    vals = tuple(float(v) for v in value)
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not all(np.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"{name} must be one or three positive numbers (z, y, x) in mm, got {value}")
    return vals


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """How cases are read and normalised (saved in each image's ``config`` attribute)."""

    # LIDC pads outside the scan field with -2048/-3024 HU: (-1024, 3071) keeps padding from dominating the range.
    clip: tuple[float, float] | None = field(default=None, metadata={
        "help": "HU window lo,hi applied before min/max normalisation, e.g. -1024,3071.", "metavar": "LO,HI"})
    spacing_zyx: tuple[float, ...] | None = field(default=None, metadata={
        "help": "Resample to this voxel size in mm (one number: isotropic); none keeps the native grid.",
        "metavar": "S|Z,Y,X", "option": "spacing", "aliases": ("spacing-zyx",)})
    npy_spacing_zyx: tuple[float, ...] | None = field(default=None, metadata={
        "help": "Voxel size in mm of .npy/.npz inputs, which carry none; none refuses them.",
        "metavar": "S|Z,Y,X", "option": "npy-spacing", "aliases": ("npy-spacing-zyx",)})
    dtype: Literal[_DTYPES] = field(default="float16", metadata={
        "help": "Stored dtype of the normalised image: float16 rounds by at most 2^-12 of the [-1, 1] range "
                "(0.5 HU of a 4095-HU window; the shards hold float16 cubes anyway); float32 keeps every bit."})
    irregular: Literal[_IRREGULAR] = field(default="resample", metadata={
        "help": "Tilted or unevenly spaced DICOM series: resample onto a regular grid, or refuse."})
    max_voxels: int = field(default=1 << 30, metadata={
        "help": "Size guard: refuse any volume (before or after resampling) with more voxels."})
    fixed_window: bool = field(default=False, metadata={
        "help": "Map the clip window itself onto [-1, 1] (one HU scale for every case) instead of each "
                "case's min/max after clipping; needs clip (HU)."})

    def __post_init__(self):
        object.__setattr__(self, "clip", check_clip(self.clip))
        object.__setattr__(self, "spacing_zyx", _positive3(self.spacing_zyx, "spacing"))
        object.__setattr__(self, "npy_spacing_zyx", _positive3(self.npy_spacing_zyx, "npy spacing"))
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.irregular not in _IRREGULAR:
            raise ValueError(f"irregular must be one of {_IRREGULAR}, got {self.irregular!r}")
        if self.fixed_window and self.clip is None:
            raise ValueError("fixed_window maps the clip window onto [-1, 1]: give clip (lo, hi) too")
        if int(self.max_voxels) < 8:
            raise ValueError(f"max_voxels must be at least 8, got {self.max_voxels}")
        object.__setattr__(self, "max_voxels", int(self.max_voxels))

    def digest_fields(self, fmt: str) -> dict:
        """The fields that shape a case of format ``fmt`` (the size guard does not)."""
        d = dataclasses.asdict(self)
        d.pop("max_voxels")
        if not d["fixed_window"]:  # stores ingested before the option keep their digests
            d.pop("fixed_window")
        if fmt != "numpy":
            d.pop("npy_spacing_zyx")
        return d


@dataclasses.dataclass(frozen=True)
class _Job:
    """Payload of one task: a case to ingest, or a discovery failure to report."""

    case: CaseSource | None
    out: str
    config: IngestConfig
    error: str | None = None


def ingest(sources, out, config: IngestConfig = IngestConfig(), *, workers: int | None = None,
           scheduler: str | None = None, progress: bool = False,
           failures_path: str | os.PathLike | None = None, memory_limit: str | None = None) -> RunReport:
    """Ingest CT sources into the volume store ``out``.

    Parameters
    ----------
    sources
        Folder, file or fsspec URL, or a list of them.
    out
        Volume store path or URL (``volumes.zarr``).
    config
        :class:`IngestConfig`.
    workers, scheduler, progress, memory_limit
        Parallelism and display, as in :func:`tcpc_data.runner.run_cases`.
    failures_path
        JSON-lines failures report; a stale one from an earlier run is removed.

    Returns
    -------
    RunReport
        Cases done, skipped (digest matched) and failed; ``notes`` holds
        skipped files/series and geometry corrections; ``results[case]`` has
        ``shape`` and ``source_bytes``.
    """
    if not isinstance(config, IngestConfig):
        raise TypeError(f"config must be an IngestConfig, got {type(config).__name__}")
    if workers is not None and workers < 1:  # refused before the store is made
        raise ValueError(f"workers must be >= 1, got {workers}")
    given = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if failures_path is not None:
        check_replaceable(failures_path, inputs=given)
    claim_store(out, inputs=given)  # before discovery: a refused output costs no reading
    found = discover(sources, workers=workers, progress=progress, scheduler=scheduler)
    out = str(out)
    swept = sweep_staging(out)
    tasks = [Task(c.case, c.source, _Job(c, out, config)) for c in found.cases]
    tasks += [Task(f["case"], f["source"], _Job(None, out, config, f["error"])) for f in found.failures]
    if failures_path is not None:
        remove_if_ours(failures_path)  # a stale report of an earlier run
    report = run_cases("ingest", tasks, _ingest_case, workers=workers, scheduler=scheduler,
                       failures_path=failures_path, progress=progress, memory_limit=memory_limit)
    report.notes = list(found.notes) + [f"{case}: {note}" for case, r in sorted(report.results.items())
                                        for note in r.get("notes", ())]
    if swept:
        report.notes.append(f"removed {len(swept)} staging folder(s) that killed runs left beside {out}")
    return report


def _ingest_case(job: _Job):
    """Ingest one case (runs on a worker): a generator that pauses once, between its reads and
    its writes, so that in-process runs overlap them (:func:`tcpc_data.runner.run_cases`);
    returns ``(status, result)``."""
    if job.error is not None:
        raise ValueError(job.error)
    cs, config = job.case, job.config
    stored = _stored_digest(job.out, cs.case)
    if cs.format == "dicom" and stored is None:
        volume, mask, d, n_bytes = _read_new_dicom(cs, config)
    else:
        with _case_files(cs) as paths:
            n_bytes = sum(os.path.getsize(p) for p in paths)
            # The digest hashes every source byte (hashlib releases the GIL): for a large case not
            # yet in the store, a thread hashes while this one parses; a stored case needs it first.
            overlap = stored is None and n_bytes >= _OVERLAP_BYTES
            hashing = ThreadPoolExecutor(1, thread_name_prefix="tcpc-digest") if overlap else contextlib.nullcontext()
            with hashing as pool:
                hashed = pool.submit(_case_digest, cs, paths, config) if overlap else None
                d = None if overlap else _case_digest(cs, paths, config)
                if stored is not None and d == stored:
                    return SKIPPED, {"source_bytes": n_bytes}
                volume = _read(cs, paths[:-1] if cs.mask else paths, config)
                mask = _read_mask(cs, paths[-1], volume, config) if cs.mask else None
                d = hashed.result() if overlap else d
    hu = volume.hu
    # NaN propagates into min and max, and an infinity is one of them: two passes without the
    # voxel-sized mask (and its page faults) of the full check, which only runs to name the voxels
    if hu.size == 0 or not (np.isfinite(hu.min()) and np.isfinite(hu.max())):
        check_finite(hu, cs.case)
    volume = dataclasses.replace(volume, hu=apply_clip(volume.hu, config.clip))
    source_spacing, notes = volume.spacing_zyx, list(volume.notes)
    if not volume.regular or config.spacing_zyx is not None:
        volume = to_grid(volume, config.spacing_zyx, max_voxels=config.max_voxels, case=cs.case)
        if notes:
            notes.append("resampled onto a regular grid of " + " x ".join(f"{s:.3f}" for s in volume.spacing_zyx)
                         + " mm (z, y, x)")
    if config.fixed_window:
        lo, hi = config.clip
        values = np.clip((volume.hu - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - 1.0, -1.0, 1.0)
        values = values.astype(np.float32, copy=False)
    else:
        hu = volume.hu  # clipped, maybe resampled
        if config.dtype == "float16":  # rounded to the stored dtype in the same pass
            out = np.empty(hu.shape, np.float16)
        else:
            in_place = hu.dtype == np.float32 and hu.flags.c_contiguous  # the volume is ours: no copy
            out = hu if in_place else None
        values, (lo, hi) = normalise(hu, cs.case, out=out)
    attrs = {
        "spacing_zyx": list(volume.spacing_zyx),
        "origin_zyx": list(volume.origin_zyx),
        "direction": (np.asarray(volume.direction, float) + 0.0).tolist(),  # no -0.0
        "source_spacing_zyx": list(source_spacing),
        "source": cs.source,
        "clip": list(config.clip) if config.clip else None,
        "intensity_range": [lo, hi],
        "config": dataclasses.asdict(config),
        "digest": d,
    }
    case_attrs = {"source": cs.source, "format": cs.format, **dict(cs.info)}
    if notes:
        case_attrs["notes"] = notes
    yield  # the reads are done; the writes may overlap the next case's reads
    arrays, array_attrs = {"image": as_stored(values, config.dtype)}, {"image": attrs}
    if mask is not None:
        arrays["mask"] = mask_on_grid(mask, source_spacing, volume.spacing_zyx, values.shape)
        array_attrs["mask"] = {"source": cs.mask, "labels": np.unique(arrays["mask"]).tolist(),
                               "grid": "the image's (nearest-neighbour when resampled)", "digest": d}
    commit_arrays(job.out, cs.case, arrays, array_attrs, case_attrs)
    return DONE, {"shape": list(values.shape), "source_bytes": n_bytes, "notes": notes}


def _case_digest(cs: CaseSource, paths: list[str], config: IngestConfig) -> str:
    """Digest of a case's source bytes and the config fields that shape it."""
    return _digest_of(cs, files_digest(paths[:-1] if cs.mask else paths), paths[-1:] if cs.mask else [], config)


def _digest_of(cs: CaseSource, files_hex: str, mask_paths: list[str], config: IngestConfig) -> str:
    """:func:`_case_digest` from the image files' :func:`files_digest` already computed."""
    d = digest(files_hex, config.digest_fields(cs.format))
    if cs.mask:  # a changed mask redoes the case; cases without one keep their digest
        d = digest(d, "mask", files_digest(mask_paths))
    return d


def _read_new_dicom(cs: CaseSource, config: IngestConfig) -> tuple[Volume, np.ndarray | None, str, int]:
    """(volume, mask, digest, source bytes) of a DICOM case not yet in the store, each of its
    files read once (:mod:`tcpc_data.ingest.onepass`)."""
    with _dicom_sources(cs) as (folders, mask_paths):
        paths, datasets, files_hex = read_series_once(folders, cs.series, case=cs.case)
        if not paths:
            raise _series_gone(cs)
        volume = series_volume(paths, datasets, max_voxels=config.max_voxels, case=cs.case,
                               irregular=config.irregular)
        mask = _read_mask(cs, mask_paths[0], volume, config) if cs.mask else None
        n_bytes = sum(os.path.getsize(p) for p in [*paths, *mask_paths])
        return volume, mask, _digest_of(cs, files_hex, mask_paths, config), n_bytes


def _read(cs: CaseSource, paths: list[str], config: IngestConfig, case: str | None = None) -> Volume:
    from tcpc_data.ingest import dicom, readers

    kw = {"max_voxels": config.max_voxels, "case": case or cs.case}
    if cs.format == "dicom":
        return dicom.read_series(paths, irregular=config.irregular, **kw)
    main = paths[0] if cs.format != "metaimage" else next(p for p in paths if p.lower().endswith((".mhd", ".mha")))
    if cs.format == "nifti":
        return readers.read_nifti(main, **kw)
    if cs.format == "metaimage":
        return readers.read_metaimage(main, **kw)
    if cs.format == "nrrd":
        return readers.read_nrrd(main, **kw)
    return readers.read_numpy(main, spacing_zyx=config.npy_spacing_zyx, **kw)


def _read_mask(cs: CaseSource, path: str, volume: Volume, config: IngestConfig) -> np.ndarray:
    """A case's label map as non-negative integers on the image's native grid; refuses a mask
    whose grid (shape, origin, spacing, direction) is not the image's."""
    fmt = _strip_suffix(posixpath.basename(cs.mask))[1]
    case = f"{cs.case} mask"
    if fmt is None:  # not a volume file: a DICOM-SEG object that references the series
        return read_seg_mask(path, volume, case=case)
    mask = _read(dataclasses.replace(cs, format=fmt, files=(cs.mask,)), [path], config, case=case)
    same = (mask.hu.shape == volume.hu.shape and volume.regular
            and np.allclose(mask.spacing_zyx, volume.spacing_zyx, rtol=1e-4, atol=1e-4)
            and np.allclose(mask.origin_zyx, volume.origin_zyx, atol=1e-3)
            and np.allclose(mask.direction, volume.direction, atol=1e-4))
    if not same:
        raise ValueError(f"{case} {cs.mask}: its grid (shape {list(mask.hu.shape)}, spacing "
                         f"{list(mask.spacing_zyx)}, origin {list(mask.origin_zyx)}) is not the image's "
                         f"(shape {list(volume.hu.shape)}, spacing {list(volume.spacing_zyx)}, "
                         f"origin {list(volume.origin_zyx)})")
    values = mask.hu
    if not np.all(np.isfinite(values)) or np.any(values < 0) or np.any(values != np.rint(values)):
        raise ValueError(f"{case} {cs.mask}: a label map must hold non-negative integers")
    top = int(values.max(initial=0))
    return values.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)


def mask_on_grid(mask: np.ndarray, source_spacing, spacing, shape) -> np.ndarray:
    """Nearest-neighbour copy of a (Z, Y, X) label map onto a regular grid of ``spacing`` mm and
    ``shape`` with the same origin and direction (what :func:`to_grid` makes of a regular image):
    labels are never blended."""
    idx = [np.clip(np.rint(np.arange(n) * (t / s)), 0, m - 1).astype(np.int64)
           for n, t, s, m in zip(shape, spacing, source_spacing, mask.shape)]
    return np.ascontiguousarray(mask[np.ix_(*idx)])


def _stored_digest(out: str, case: str) -> str | None:
    try:
        return array_digest(open_store(out, mode="r")[case], "image")
    except (FileNotFoundError, KeyError):
        return None


@contextlib.contextmanager
def _case_files(cs: CaseSource):
    """Local paths of the files of a case, its mask's last; a DICOM series' files are listed
    from its folders here, on the worker (discovery keeps no file lists)."""
    if cs.format != "dicom":
        with _local_copies(cs.files + ((cs.mask,) if cs.mask else ())) as paths:
            yield paths
        return
    with _dicom_sources(cs) as (folders, mask):
        paths = series_files(folders, cs.series)
        if not paths:
            raise _series_gone(cs)
        yield paths + mask


@contextlib.contextmanager
def _dicom_sources(cs: CaseSource):
    """(local folders of a DICOM case's series, [its DICOM-SEG mask's local path] or [])."""
    with _local_copies(cs.files, folders=True) as folders, \
            _local_copies((cs.mask,)) if cs.mask else contextlib.nullcontext([]) as mask:
        yield folders, mask


def _series_gone(cs: CaseSource) -> ValueError:
    return ValueError(f"{cs.case}: no file of series {cs.series} is left in {cs.source}")


@contextlib.contextmanager
def _local_copies(files: tuple[str, ...], folders: bool = False):
    """Local paths of the case's files (or, with ``folders``, of the folders that hold them);
    remote ones are copied into a temporary folder first.

    The copies keep their paths relative to the case's common folder (a MetaImage
    header finds its data file by name). A folder is copied with the files directly in it.
    """
    if all(is_local(f) for f in files):
        yield [str(local_path(f)) for f in files]
        return
    import fsspec

    fs, _ = fsspec.core.url_to_fs(files[0])
    given = [fs._strip_protocol(f) for f in files]
    stripped = [f for f in given if not folders or fs.isfile(f)]
    for folder in [f for f in given if f not in stripped]:
        stripped += [i["name"] for i in fs.ls(folder, detail=True) if i["type"] == "file"
                     and not posixpath.basename(i["name"]).startswith(".")]
    common = posixpath.commonpath([posixpath.dirname(p) for p in stripped])
    with tempfile.TemporaryDirectory(prefix="tcpc-ingest-") as tmp:
        local = []
        for p in stripped:
            dst = Path(tmp) / posixpath.relpath(p, common)
            dst.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(p, str(dst))
            local.append(str(dst))
        yield [str(Path(tmp) / posixpath.relpath(g, common)) for g in given] if folders else local
