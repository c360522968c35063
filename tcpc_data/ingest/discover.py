"""Discovering cases under source folders, files or fsspec URLs.

A case is one volume: a DICOM series (files grouped by SeriesInstanceUID), or
one NIfTI (``.nii``, ``.nii.gz``), MetaImage (``.mhd`` + its data file, or
``.mha``), NRRD (``.nrrd``) or NumPy (``.npy``, ``.npz``) file.

Only DICOM headers are read here (``stop_before_pixels``). Non-image DICOM
objects (SR, SEG, RTSTRUCT, presentation states...), non-CT modalities and
localizer images are skipped with a note; files that are neither images nor
DICOM (XML annotations, licences) are ignored with a note. Empty folders and
unreadable DICOM headers become failure records; they never stop discovery.

Label maps are not cases: a volume file in a ``masks/`` or ``labels/``
folder beside an ``images/`` folder, or in nnU-Net's ``labelsTr/``/``labelsTs/``
beside ``imagesTr/``/``imagesTs/``, is the mask of the image of the same name
(nnU-Net's ``<case>_0000`` image channel suffix is dropped from the case id)
and is ingested as that case's ``mask`` array. A label map without an image
is skipped with a note. So is a DICOM-SEG object, the mask of the series it
references (:mod:`tcpc_data.ingest.dicomseg`).

Case ids are sanitised, unique and stable: a file's name without extensions
(``phantom-000``); a DICOM series' folder relative to the source without its
UID-named levels (``LIDC-IDRI-0001``), plus a short series-UID suffix when one
folder holds several series. Ids that still collide get their parent folders
as a prefix, then a hash of the source path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import posixpath
import re
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

from fsspec.implementations.local import LocalFileSystem

from tcpc_data.ingest.dicomseg import is_segmentation, pair_segmentations
from tcpc_data.runner import progress_display
from tcpc_data.store import sanitize_case_id
from tcpc_data.urls import filesystem, is_local

_VOLUME_SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".mhd": "metaimage", ".mha": "metaimage",
                    ".nrrd": "nrrd", ".npy": "numpy", ".npz": "numpy"}
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
_NON_IMAGE_MODALITIES = {"SR", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "REG", "DOC",
                         "RWV", "PLAN", "FID"}
_NON_IMAGE_SOP_PREFIXES = ("1.2.840.10008.5.1.4.1.1.88.",     # structured reports
                           "1.2.840.10008.5.1.4.1.1.66",      # segmentation, registration, fiducials
                           "1.2.840.10008.5.1.4.1.1.481.",    # radiotherapy objects
                           "1.2.840.10008.5.1.4.1.1.11.",     # presentation states
                           "1.2.840.10008.5.1.4.1.1.104.")    # encapsulated documents
_HEADER_TAGS = ["SeriesInstanceUID", "SeriesNumber", "Modality", "SOPClassUID", "ImageType", "PatientID"]
_UID_NAME = re.compile(r"\d+(\.\d+){3,}")
# Label-map folders and the image folder beside each (nnU-Net raw layout, and images/ + masks/):
# their files are masks of the image of the same name, never CT cases.
_LABEL_FOLDERS = {"masks": "images", "labels": "images", "labelstr": "imagestr", "labelsts": "imagests"}
_NNUNET_IMAGES = ("imagestr", "imagests")
_CHANNEL_0 = "_0000"  # nnU-Net's channel suffix of a single-channel image


@dataclasses.dataclass(frozen=True)
class CaseSource:
    """One case found under a source.

    Attributes
    ----------
    case
        Sanitised, unique case id.
    format
        ``dicom``, ``nifti``, ``metaimage``, ``nrrd`` or ``numpy``.
    source
        The series folder or the file, as a path or URL (recorded in the store).
    files
        Every file whose bytes define the case (URLs for remote sources), sorted.
    info
        Extra case attributes, e.g. DICOM ``patient_id``, ``series_uid``, ``modality``.
    mask
        Label map of the case (a file of a ``masks/`` or ``labelsTr/`` folder
        beside the images), stored as its ``mask`` array; None when there is none.
    """

    case: str
    format: str
    source: str
    files: tuple[str, ...]
    info: tuple[tuple[str, str], ...] = ()
    mask: str | None = None


@dataclasses.dataclass
class Discovery:
    """Cases found, failure records (case, source, error) and notes for the user."""

    cases: list[CaseSource] = dataclasses.field(default_factory=list)
    failures: list[dict] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def discover(sources, *, workers: int | None = 1, progress=False) -> Discovery:
    """Find the cases under each source (folder, file, or fsspec URL of either).

    Parameters
    ----------
    sources
        Folder, file or fsspec URL, or a list of them.
    workers
        Processes that read DICOM headers (None: one per core); remote sources
        use threads instead, since their cost is latency. The result does not
        depend on it.
    progress
        True: a progress line of its own; a display from
        :func:`tcpc_data.runner.progress_display`: a line in it; False: none.

    Raises
    ------
    FileNotFoundError
        When a source does not exist (a typo should stop the run before it starts).
    """
    if isinstance(sources, (str, bytes)) or not hasattr(sources, "__iter__"):
        sources = [sources]
    sources = [str(s) for s in sources]
    if not sources:
        raise ValueError("no sources given")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    found = Discovery()
    candidates: list[tuple[list[str], CaseSource]] = []  # (name levels, case with a provisional id)
    for src in sources:
        fs, root = filesystem(src)
        if not fs.exists(root):
            raise FileNotFoundError(f"source {src} does not exist")
        candidates += _discover_one(src, fs, root, found, workers, progress)
    found.cases = _assign_ids(candidates)
    return found


def _case_id(name: str) -> str:
    """Sanitised id; a name with nothing usable left ('_', 'é') gets a stable id from its hash."""
    try:
        return sanitize_case_id(name)
    except ValueError:
        return "case-" + hashlib.sha1(name.encode()).hexdigest()[:8]


def _url(fs, path: str, src: str) -> str:
    """Path as given for local sources, full URL for remote ones."""
    return path if is_local(src) else fs.unstrip_protocol(path)


def _strip_suffix(name: str) -> tuple[str, str | None]:
    low = name.lower()
    for suf, fmt in _VOLUME_SUFFIXES.items():
        if low.endswith(suf):
            return name[: -len(suf)], fmt
    return name, None


def _discover_one(src: str, fs, root: str, found: Discovery, workers: int | None,
                  progress) -> list[tuple[list[str], CaseSource]]:
    if fs.isfile(root):
        base, files, dirs = posixpath.dirname(root), [root], []
    else:
        base = root
        all_files, dirs = _walk(fs, root)
        files = [p for p in all_files if not posixpath.basename(p).startswith(".")]
        if not files:
            found.failures.append({"case": _case_id(posixpath.basename(root) or "source"),
                                   "source": src, "error": f"empty folder: no files under {src}"})
            return []
        occupied = {posixpath.dirname(f) for f in all_files}
        for f in list(occupied):  # every ancestor of a file is occupied too
            while f not in ("", "/") and f != root:
                f = posixpath.dirname(f)
                occupied.add(f)
        for d in dirs:
            if d.rstrip("/") not in occupied:
                rel = posixpath.relpath(d, root)
                found.failures.append({"case": _case_id(rel), "source": _url(fs, d, src),
                                       "error": f"empty folder: {_url(fs, d, src)} holds no files"})

    out: list[tuple[list[str], CaseSource]] = []
    claimed: set[str] = set()
    masks = _label_maps(files)
    mask_files = set(masks.values())
    files = [f for f in files if f not in mask_files]
    unknown = [f for f in files if _strip_suffix(posixpath.basename(f))[1] is None]
    scans = dict(zip(unknown, _scan_all(fs, unknown, src, workers, progress)))
    dicom_files: list[tuple[str, dict | str]] = []  # (path, header tags or the parse error)
    ignored: list[str] = []
    for f in files:
        stem, fmt = _strip_suffix(posixpath.basename(f))
        if fmt is None:
            if scans[f] is None:
                ignored.append(f)
            else:
                dicom_files.append((f, scans[f]))
            continue
        members = [f]
        if fmt == "metaimage" and f.lower().endswith(".mhd"):
            data = _mhd_data(fs, f)
            if data is not None:
                members.append(data)
                claimed.add(data)
        image_dir = posixpath.dirname(f)
        folder = posixpath.basename(image_dir).lower()
        if folder in _NNUNET_IMAGES and stem.endswith(_CHANNEL_0):
            stem = stem[: -len(_CHANNEL_0)]
        mask = masks.pop((posixpath.dirname(image_dir), folder, stem), None)
        levels = _levels(posixpath.relpath(posixpath.dirname(f), base)) + [stem]
        out.append((levels, CaseSource(_case_id(stem), fmt, _url(fs, f, src),
                                       tuple(_url(fs, m, src) for m in sorted(members)),
                                       mask=None if mask is None else _url(fs, mask, src))))
    unpaired = sorted(masks.values())  # those left: no image of their name
    if unpaired:
        names = ", ".join(posixpath.relpath(f, base) for f in unpaired[:3]) + (" ..." if len(unpaired) > 3 else "")
        found.notes.append(f"{src}: ignored {len(unpaired)} label map(s) with no image of the same name ({names})")
    ignored = [f for f in ignored if f not in claimed]
    if ignored:
        names = ", ".join(posixpath.basename(f) for f in ignored[:3]) + (" ..." if len(ignored) > 3 else "")
        found.notes.append(f"{src}: ignored {len(ignored)} file(s) that are neither images nor DICOM ({names})")
    out += _dicom_series(src, fs, base, dicom_files, found)
    return out


def _walk(fs, root: str) -> tuple[list[str], list[str]]:
    """Sorted files and sub-folders under ``root``.

    Local folders follow symbolic links, since datasets are often folders of
    links into an archive; a link back to a folder already walked (a loop) is
    not entered twice. Remote filesystems have no links.
    """
    if not isinstance(fs, LocalFileSystem):
        listing = fs.find(root, withdirs=True, detail=True)
        return (sorted(p for p, i in listing.items() if i["type"] == "file"),
                sorted(p for p, i in listing.items() if i["type"] == "directory" and p.rstrip("/") != root))
    files, dirs, seen = [], [], set()
    for folder, subdirs, names in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            subdirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        subdirs.sort()
        if folder != root:
            dirs.append(folder)
        files += [posixpath.join(folder, n) for n in names if os.path.isfile(posixpath.join(folder, n))]
    return sorted(files), sorted(dirs)


def _label_maps(files: list[str]) -> dict[tuple[str, str, str], str]:
    """Volume files inside a label-map folder (``masks/``, ``labelsTr/``...) that has its image
    folder beside it, keyed by (parent folder, image folder name in lower case, case name)."""
    out: dict[tuple[str, str, str], str] = {}
    dirs = {(posixpath.dirname(d), posixpath.basename(d).lower()) for d in map(posixpath.dirname, files)}
    for f in files:
        folder = posixpath.dirname(f)
        images = _LABEL_FOLDERS.get(posixpath.basename(folder).lower())
        stem, fmt = _strip_suffix(posixpath.basename(f))
        if images is not None and fmt is not None and (posixpath.dirname(folder), images) in dirs:
            out[(posixpath.dirname(folder), images, stem)] = f
    return out


def _scan_file(fs, path: str) -> dict | str | None:
    """A file of unknown type: None if it is not DICOM, else its header tags, or the parse error.

    DICOM means the ``DICM`` preamble, or a DICOM suffix (preamble-less files
    are read with ``force``). Runs in discovery's worker processes or threads.
    """
    import pydicom

    suffix, magic = path.lower().endswith(_DICOM_SUFFIXES), False
    try:
        with fs.open(path, "rb") as fh:  # one open: on remote storage each costs a round trip
            head = fh.read(132)
            magic = len(head) == 132 and head[128:] == b"DICM"
            if not magic and not suffix:
                return None
            fh.seek(0)
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=not magic)
        if not any(ds.get(t) for t in ("SeriesInstanceUID", "Modality", "SOPClassUID")):
            raise ValueError("no DICOM image header (no SeriesInstanceUID, Modality or SOPClassUID)")
        return {"SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "") or ""),
                "SeriesNumber": str(ds.get("SeriesNumber", "")),  # as before: series 0 stays "0"
                "Modality": str(ds.get("Modality", "") or ""),
                "SOPClassUID": str(ds.get("SOPClassUID", "") or ""),
                "ImageType": [str(t).upper() for t in (ds.get("ImageType") or [])],
                "PatientID": str(ds.get("PatientID", "") or "")}
    except Exception as exc:  # noqa: BLE001 - any parse error of a user's file is that file's failure
        if not magic and not suffix:  # unreadable, and nothing says it is DICOM
            return None
        return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)


def _scan_chunk(fs, paths: list[str]) -> list[dict | str | None]:
    return [_scan_file(fs, p) for p in paths]


_CHUNK = 64  # files per task: amortises the hand-over, keeps progress moving


def _scan_all(fs, paths: list[str], src: str, workers: int | None, progress) -> list[dict | str | None]:
    """:func:`_scan_file` of every path, in order; in parallel for large inputs, with progress."""
    if not paths:
        return []
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    local = "file" in protocols or "local" in protocols
    n = min(len(chunks), (workers or os.cpu_count() or 1) if local else 16)
    out: list = []
    with contextlib.ExitStack() as stack:
        display = None
        if progress:
            display = progress_display() if isinstance(progress, bool) else progress
            if isinstance(progress, bool):
                stack.enter_context(display)
            line = display.add_task(f"discover {posixpath.basename(src.rstrip('/')) or src}",
                                    total=len(paths), counts="files read")
        if n > 1:
            # Local headers cost CPU (pydicom parses in Python): processes. Remote ones cost
            # latency: threads, which also see in-memory filesystems.
            pool = stack.enter_context((ProcessPoolExecutor if local else ThreadPoolExecutor)(n))
            results = pool.map(_scan_chunk, [fs] * len(chunks), chunks)
        else:
            results = (_scan_chunk(fs, c) for c in chunks)
        for chunk in results:
            out += chunk
            if display is not None:
                display.update(line, advance=len(chunk))
    return out


def _mhd_data(fs, path: str) -> str | None:
    """The data file a ``.mhd`` header names, when it exists (the reader reports a missing one)."""
    from tcpc_data.ingest.readers import mhd_data_file, read_mhd_header

    try:
        with fs.open(path, "rb") as f:
            header = read_mhd_header(path, f.read(64 * 1024).decode("latin-1"))
        name = mhd_data_file(path, header)
    except (ValueError, OSError):
        return None  # the reader raises the same error when the case runs
    if name is None:
        return None
    data = posixpath.join(posixpath.dirname(path), name)
    return data if fs.exists(data) else None


def _levels(rel_dir: str) -> list[str]:
    """Folder levels of a relative path, without '.' and UID-named levels."""
    return [p for p in rel_dir.split("/") if p not in ("", ".") and not _UID_NAME.fullmatch(p)]


def _dicom_series(src: str, fs, base: str, files: list[tuple[str, dict | str]], found: Discovery):
    series: dict[str, list[str]] = defaultdict(list)
    meta: dict[str, dict] = {}
    skipped: dict[tuple[str, str], int] = defaultdict(int)
    segs: list[str] = []
    for f, ds in files:
        if isinstance(ds, str):
            rel = posixpath.relpath(f, base)
            found.failures.append({"case": _case_id(rel), "source": _url(fs, f, src),
                                   "error": f"unreadable DICOM file {_url(fs, f, src)}: {ds}"})
            continue
        modality, sop = ds["Modality"], ds["SOPClassUID"]
        folder = posixpath.relpath(posixpath.dirname(f), base)
        if is_segmentation(ds):  # the mask of the series it references (pair_segmentations)
            segs.append(f)
            continue
        if modality in _NON_IMAGE_MODALITIES or sop.startswith(_NON_IMAGE_SOP_PREFIXES):
            skipped[(folder, f"non-image object ({modality or sop})")] += 1
            continue
        if modality != "CT":
            skipped[(folder, f"modality {modality or 'unknown'} is not CT")] += 1
            continue
        if "LOCALIZER" in ds["ImageType"]:
            skipped[(folder, "localizer image")] += 1
            continue
        uid = ds["SeriesInstanceUID"]
        # Anonymisers sometimes blank the UID: then a folder and series number make the series
        key = uid or f"{posixpath.dirname(f)}#{ds['SeriesNumber']}"
        series[key].append(f)
        meta.setdefault(key, {"patient_id": ds["PatientID"], "series_uid": uid,
                              "modality": modality})
    for (folder, why), n in sorted(skipped.items()):
        found.notes.append(f"{src}: skipped {n} DICOM file(s) in {folder}: {why}")
    for key in sorted(k for k in series if not meta[k]["series_uid"]):
        found.notes.append(f"{src}: {len(series[key])} DICOM file(s) in "
                           f"{posixpath.relpath(posixpath.dirname(series[key][0]), base)} have no "
                           f"SeriesInstanceUID; grouped by folder and SeriesNumber")

    out = []
    by_levels: dict[tuple[str, ...], list[str]] = defaultdict(list)
    levels_of = {}
    for uid, members in series.items():
        folder = posixpath.commonpath([posixpath.dirname(m) for m in members])
        levels = _levels(posixpath.relpath(folder, base))
        if not levels:  # the series sits in UID-named folders: name it after the nearest other one
            up = folder
            while up not in ("", "/") and _UID_NAME.fullmatch(posixpath.basename(up)):
                up = posixpath.dirname(up)
            levels = [posixpath.basename(up) or posixpath.basename(folder) or "series"]
        levels_of[uid] = (levels, folder)
        by_levels[tuple(levels)].append(uid)
    for uid, (levels, folder) in sorted(levels_of.items()):
        if len(by_levels[tuple(levels)]) > 1:  # several series in one folder: tell them apart
            tail = re.sub(r"\W", "", uid)[-8:]
            levels = levels[:-1] + [f"{levels[-1]}_{tail}"]
        info = tuple(sorted(meta[uid].items()))
        out.append((levels, CaseSource(_case_id(levels[-1]), "dicom", _url(fs, folder, src),
                                       tuple(_url(fs, m, src) for m in sorted(series[uid])), info)))
    return pair_segmentations(fs, src, base, out, segs, found.notes, _url)


def _assign_ids(candidates: list[tuple[list[str], CaseSource]]) -> list[CaseSource]:
    """Make ids unique: last level; on collision all levels; then a hash of the source."""
    def ids(name_of):
        return [name_of(levels, c) for levels, c in candidates]

    names = ids(lambda levels, c: _case_id(levels[-1]))
    full = ids(lambda levels, c: _case_id("_".join(levels)))
    counts = defaultdict(int)
    for n in names:
        counts[n] += 1
    names = [f if counts[n] > 1 else n for n, f in zip(names, full)]
    counts = defaultdict(int)
    for n in names:
        counts[n] += 1
    out = []
    for n, (levels, c) in zip(names, candidates):
        if counts[n] > 1:
            n = f"{n}-{hashlib.sha1(c.source.encode()).hexdigest()[:6]}"
        out.append(dataclasses.replace(c, case=n))
    return sorted(out, key=lambda c: c.case)
