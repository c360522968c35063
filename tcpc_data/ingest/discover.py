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

from tcpc_data.ingest import dicomscan
from tcpc_data.ingest.dicomseg import is_segmentation, pair_segmentations
from tcpc_data.runner import progress_display
from tcpc_data.store.volumes import sanitize_case_id
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
_LAST_HEADER_TAG = dicomscan.LAST_HEADER_TAG  # Series Number: the highest tag of _HEADER_TAGS
_HEAD_BYTES = 4096  # what the header scan reads first; a header that ends later goes to pydicom
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
        Volume formats: every file whose bytes define the case, sorted. DICOM:
        the folders that hold the series' files, sorted; the ingest lists them on
        the worker and keeps the files of ``series`` (:func:`series_files`), so
        discovery never holds a list of an archive's files.
    info
        Extra case attributes, e.g. DICOM ``patient_id``, ``series_uid``, ``modality``.
    mask
        Label map of the case (a file of a ``masks/`` or ``labelsTr/`` folder
        beside the images), stored as its ``mask`` array; None when there is none.
    series
        DICOM: the SeriesInstanceUID of the series' files, or ``#<SeriesNumber>``
        for files without one (grouped per folder); empty for other formats.
    """

    case: str
    format: str
    source: str
    files: tuple[str, ...]
    info: tuple[tuple[str, str], ...] = ()
    mask: str | None = None
    series: str = ""


@dataclasses.dataclass
class Discovery:
    """Cases found, failure records (case, source, error) and notes for the user."""

    cases: list[CaseSource] = dataclasses.field(default_factory=list)
    failures: list[dict] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


_BATCH_FILES = 256  # files per scan task: amortises the hand-over, keeps progress moving
_FIRST_NAMES = 3    # file names quoted in a note


def discover(sources, *, workers: int | None = 1, progress=False, scheduler: str | None = None) -> Discovery:
    """Find the cases under each source (folder, file, or fsspec URL of either).

    The client only walks folders and counts their files; the files of each batch
    of folders are listed and their DICOM headers read by a worker, which sends
    back one summary per folder (its volume files, its DICOM series with file
    counts, skipped and unreadable files). The client's memory grows with the
    number of folders and cases, not with the number of files.

    Parameters
    ----------
    sources
        Folder, file or fsspec URL, or a list of them.
    workers
        Local processes that read DICOM headers (None: one per core); remote
        sources use threads instead, since their cost is latency. The result
        does not depend on it.
    progress
        True: a progress line of its own; a display from
        :func:`tcpc_data.runner.progress_display`: a line in it; False: none.
    scheduler
        Address of a running ``dask.distributed`` scheduler: the folder scans run
        on its workers (which must see the sources); overrides ``workers``.

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
    roots = []
    for src in sources:
        fs, root = filesystem(src)
        if not fs.exists(root):
            raise FileNotFoundError(f"source {src} does not exist")
        roots.append((src, fs, root))
    with contextlib.ExitStack() as stack:
        display = None
        if progress:
            display = progress_display() if isinstance(progress, bool) else progress
            if isinstance(progress, bool):
                stack.enter_context(display)
        for src, fs, root in roots:
            line = None
            if display is not None:
                line = display.add_task(f"discover {posixpath.basename(src.rstrip('/')) or src}",
                                        total=None, counts="files read")
            summary, read = _Summary(src, fs, root), 0
            with _scan_pool(fs, workers, scheduler) as pool:
                for scans in pool((fs, src, summary.base, b) for b in _folder_batches(summary, fs, root)):
                    for scan in scans:
                        summary.add(scan)
                        read += scan.files_read
                    if line is not None:
                        display.update(line, completed=read)
            if line is not None:
                display.update(line, total=read, completed=read)
            candidates += summary.finish(found)
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


def _levels(rel_dir: str) -> list[str]:
    """Folder levels of a relative path, without '.' and UID-named levels."""
    return [p for p in rel_dir.split("/") if p not in ("", ".") and not _UID_NAME.fullmatch(p)]


def _entries(fs, folder: str, count: bool = False) -> tuple[list[str] | int, list[str], bool]:
    """(visible file names, sub-folder names, any file at all) directly in ``folder``, sorted;
    with ``count``, the number of visible files instead of their names (the client's walk).

    Local folders follow symbolic links, since datasets are often folders of links
    into an archive. Hidden files (a name starting with '.') are not cases but still
    make their folder non-empty.
    """
    files, dirs, any_file, n = [], [], False, 0
    if isinstance(fs, LocalFileSystem):
        with os.scandir(folder) as it:
            for e in it:
                if e.is_dir():
                    dirs.append(e.name)
                elif e.is_file():
                    any_file = True
                    if not e.name.startswith("."):
                        n += 1
                        if not count:
                            files.append(e.name)
    else:
        for info in fs.ls(folder, detail=True):
            name = posixpath.basename(info["name"].rstrip("/"))
            if info["type"] == "directory":
                if info["name"].rstrip("/") != folder.rstrip("/"):
                    dirs.append(name)
            elif info["type"] == "file":
                any_file = True
                if not name.startswith("."):
                    n += 1
                    if not count:
                        files.append(name)
    return (n if count else sorted(files)), sorted(dirs), any_file


def _walk(fs, folder: str, seen: set, empty: list[str]):
    """Yield (folder, number of visible files) for every folder under ``folder`` that has some,
    depth first; append folders with no file at all below them to ``empty``; return whether
    any file lies below. Only one folder's names are held at a time, per level of depth.

    A local link back to a folder already walked (a loop) is not entered twice.
    """
    if isinstance(fs, LocalFileSystem):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            return True  # walked already: neither a case source again nor an empty folder
        seen.add((st.st_dev, st.st_ino))
    n, dirs, occupied = _entries(fs, folder, count=True)
    if n:
        yield folder, n
    for d in dirs:
        sub = posixpath.join(folder, d)
        if (yield from _walk(fs, sub, seen, empty)):
            occupied = True
        else:
            empty.append(sub)
    return occupied


def _folder_batches(summary: "_Summary", fs, root: str):
    """Batches of (folder, only this file or None) of about ``_BATCH_FILES`` files, walked lazily."""
    if summary.is_file:
        yield [(posixpath.dirname(root), posixpath.basename(root))]
        return
    batch, n = [], 0
    for folder, count in _walk(fs, root, set(), summary.empty):
        summary.visible = True
        batch.append((folder, None))
        n += count
        if n >= _BATCH_FILES:
            yield batch
            batch, n = [], 0
    if batch:
        yield batch


@dataclasses.dataclass
class _FolderScan:
    """What a worker found in one folder (sent back to the client instead of its file list)."""

    folder: str
    only: str | None = None  # the file, when the source is a single file
    files_read: int = 0
    volumes: list = dataclasses.field(default_factory=list)      # (levels, CaseSource)
    series: dict = dataclasses.field(default_factory=dict)       # key -> {count, first, meta}
    failures: list = dataclasses.field(default_factory=list)
    skipped: dict = dataclasses.field(default_factory=dict)      # (folder, why) -> files
    segs: list = dataclasses.field(default_factory=list)         # DICOM-SEG objects: masks, paired later
    ignored: tuple = (0, ())                                     # (count, first paths)
    unpaired: tuple = (0, ())                                    # label maps without an image


def _first(count_names_a: tuple, count_names_b: tuple) -> tuple:
    """Merge two (count, first few sorted names) pairs."""
    return (count_names_a[0] + count_names_b[0],
            tuple(sorted(count_names_a[1] + count_names_b[1])[:_FIRST_NAMES]))


def _siblings(fs, parent: str, name_lower: str) -> list[str]:
    """Folders beside (in ``parent``) whose name is ``name_lower`` in any case."""
    _, dirs, _ = _entries(fs, parent)
    return [posixpath.join(parent, d) for d in dirs if d.lower() == name_lower]


def _image_stem(folder: str, name: str) -> str:
    stem = _strip_suffix(name)[0]
    if posixpath.basename(folder).lower() in _NNUNET_IMAGES and stem.endswith(_CHANNEL_0):
        stem = stem[: -len(_CHANNEL_0)]
    return stem


def _volume_names(fs, folder: str) -> list[str]:
    return [n for n in _entries(fs, folder)[0] if _strip_suffix(n)[1] is not None]


def _scan_folders(fs, src: str, base: str, batch) -> list[_FolderScan]:
    """Scan a batch of folders (runs on a worker): one :class:`_FolderScan` each."""
    return [_scan_folder(fs, src, base, folder, only) for folder, only in batch]


def _scan_folder(fs, src: str, base: str, folder: str, only: str | None) -> _FolderScan:
    """Classify the files directly in ``folder`` (or only the file ``only``): volume cases, DICOM
    series (read from headers), label maps, skipped and unreadable files."""
    scan = _FolderScan(folder, None if only is None else posixpath.join(folder, only))
    names = [only] if only is not None else _entries(fs, folder)[0]
    parent, kind = posixpath.dirname(folder), posixpath.basename(folder).lower()
    masks: dict[str, str] = {}  # image stem -> its label map
    if only is None and kind in _LABEL_FOLDERS and any(_volume_names(fs, d) for d in
                                                        _siblings(fs, parent, _LABEL_FOLDERS[kind])):
        # a label-map folder: its volumes are masks of the images beside, never cases
        images = {_image_stem(d, n) for d in _siblings(fs, parent, _LABEL_FOLDERS[kind])
                  for n in _volume_names(fs, d)}
        unpaired = sorted(posixpath.join(folder, n) for n in names
                          if _strip_suffix(n)[1] is not None and _strip_suffix(n)[0] not in images)
        scan.unpaired = (len(unpaired), tuple(unpaired[:_FIRST_NAMES]))
        names = [n for n in names if _strip_suffix(n)[1] is None]
    elif only is None and kind in set(_LABEL_FOLDERS.values()):
        for label_kind in sorted(k for k, v in _LABEL_FOLDERS.items() if v == kind):
            for d in _siblings(fs, parent, label_kind):
                for n in _volume_names(fs, d):  # sorted: the last of a name wins, as before
                    masks[_strip_suffix(n)[0]] = posixpath.join(d, n)
    claimed: set[str] = set()
    unknown: list[str] = []
    for name in names:
        f = posixpath.join(folder, name)
        stem, fmt = _strip_suffix(name)
        if fmt is None:
            unknown.append(f)
            continue
        members = [f]
        if fmt == "metaimage" and f.lower().endswith(".mhd"):
            data = _mhd_data(fs, f)
            if data is not None:
                members.append(data)
                claimed.add(data)
        stem = _image_stem(folder, name)
        mask = masks.get(stem)
        levels = _levels(posixpath.relpath(folder, base)) + [stem]
        scan.volumes.append((levels, CaseSource(_case_id(stem), fmt, _url(fs, f, src),
                                                tuple(_url(fs, m, src) for m in sorted(members)),
                                                mask=None if mask is None else _url(fs, mask, src))))
    ignored = []
    for f in unknown:
        header = _scan_file(fs, f)
        scan.files_read += 1
        if header is None:
            if f not in claimed:
                ignored.append(f)
        else:
            _add_dicom(scan, src, fs, base, f, header)
    scan.ignored = (len(ignored), tuple(ignored[:_FIRST_NAMES]))
    return scan


def _skip_reason(header: dict) -> str | None:
    """Why a DICOM file is not part of a CT series (None: it is)."""
    modality, sop = header["Modality"], header["SOPClassUID"]
    if modality in _NON_IMAGE_MODALITIES or sop.startswith(_NON_IMAGE_SOP_PREFIXES):
        return f"non-image object ({modality or sop})"
    if modality != "CT":
        return f"modality {modality or 'unknown'} is not CT"
    if "LOCALIZER" in header["ImageType"]:
        return "localizer image"
    return None


def _series_key(header: dict) -> str:
    # Anonymisers sometimes blank the UID: then a folder and series number make the series
    return header["SeriesInstanceUID"] or f"#{header['SeriesNumber']}"


def _add_dicom(scan: _FolderScan, src: str, fs, base: str, f: str, header: dict | str) -> None:
    if isinstance(header, str):
        rel = posixpath.relpath(f, base)
        scan.failures.append({"case": _case_id(rel), "source": _url(fs, f, src),
                              "error": f"unreadable DICOM file {_url(fs, f, src)}: {header}"})
        return
    if is_segmentation(header):  # the mask of the series it references (pair_segmentations)
        scan.segs.append(f)
        return
    why = _skip_reason(header)
    if why is not None:
        key = (posixpath.relpath(scan.folder, base), why)
        scan.skipped[key] = scan.skipped.get(key, 0) + 1
        return
    entry = scan.series.setdefault(_series_key(header), {
        "count": 0, "first": f, "meta": {"patient_id": header["PatientID"],
                                         "series_uid": header["SeriesInstanceUID"], "modality": header["Modality"]}})
    entry["count"] += 1


def series_candidates(folders) -> list[str]:
    """The files directly in the local ``folders`` that may belong to a DICOM series (every file but
    the volume files discovery reads as cases of their own)."""
    fs, out = LocalFileSystem(), []
    for folder in map(str, folders):
        # a folder, or the file itself when the source was one DICOM file
        names = [posixpath.basename(folder)] if os.path.isfile(folder) else _entries(fs, folder)[0]
        folder = posixpath.dirname(folder) if os.path.isfile(folder) else folder
        out += [posixpath.join(folder, name) for name in names if _strip_suffix(name)[1] is None]
    return out


def in_series(header: dict | str | None, series: str) -> bool:
    """Whether a file with this header (as :func:`scan_header` returns it) is an image of DICOM
    series ``series`` (a :attr:`CaseSource.series`)."""
    return isinstance(header, dict) and _skip_reason(header) is None and _series_key(header) == series


def series_files(folders, series: str) -> list[str]:
    """The files of DICOM series ``series`` (a :attr:`CaseSource.series`) directly in the local
    ``folders``, sorted: what discovery counted, listed again on the worker that reads them."""
    fs = LocalFileSystem()
    return sorted(f for f in series_candidates(folders) if in_series(_scan_file(fs, f), series))


class _Summary:
    """The client's view of one source: per case and per folder records, never per file."""

    def __init__(self, src: str, fs, root: str):
        self.src, self.fs, self.root = src, fs, root
        self.is_file = fs.isfile(root)
        self.base = posixpath.dirname(root) if self.is_file else root
        self.visible = self.is_file
        self.empty: list[str] = []
        self.volumes: list = []
        self.series: dict[tuple[str, str], dict] = {}  # (folder or "", key) -> merged record
        self.failures: list[dict] = []
        self.segs: list[str] = []  # DICOM-SEG objects: one per segmented series at most
        self.skipped: dict = defaultdict(int)
        self.ignored: tuple = (0, ())
        self.unpaired: tuple = (0, ())

    def add(self, scan: _FolderScan) -> None:
        """Merge one folder's scan; the result does not depend on the order of the merges."""
        self.volumes += scan.volumes
        self.failures += scan.failures
        self.segs += scan.segs
        for k, n in scan.skipped.items():
            self.skipped[k] += n
        self.ignored = _first(self.ignored, scan.ignored)
        self.unpaired = _first(self.unpaired, scan.unpaired)
        for key, entry in scan.series.items():
            # a UID groups files across folders; a series without one stays in its folder
            k = (scan.folder, key) if key.startswith("#") else ("", key)
            merged = self.series.setdefault(k, {"count": 0, "first": entry["first"], "meta": entry["meta"],
                                                "folders": [], "key": key if k[0] == "" else scan.folder + key})
            merged["count"] += entry["count"]
            merged["folders"].append(scan.only or scan.folder)  # a file source: that file alone
            if entry["first"] < merged["first"]:  # the first file's header names the series
                merged["first"], merged["meta"] = entry["first"], entry["meta"]

    def finish(self, found: Discovery) -> list[tuple[list[str], CaseSource]]:
        """Failures and notes into ``found``; the candidates (levels, case with a provisional id)."""
        src, fs, base = self.src, self.fs, self.base
        if not self.visible:
            found.failures.append({"case": _case_id(posixpath.basename(self.root) or "source"),
                                   "source": src, "error": f"empty folder: no files under {src}"})
            return []
        for d in sorted(self.empty):
            found.failures.append({"case": _case_id(posixpath.relpath(d, self.root)), "source": _url(fs, d, src),
                                   "error": f"empty folder: {_url(fs, d, src)} holds no files"})
        n, first = self.unpaired
        if n:
            names = ", ".join(posixpath.relpath(f, base) for f in first) + (" ..." if n > len(first) else "")
            found.notes.append(f"{src}: ignored {n} label map(s) with no image of the same name ({names})")
        n, first = self.ignored
        if n:
            names = ", ".join(posixpath.basename(f) for f in first) + (" ..." if n > len(first) else "")
            found.notes.append(f"{src}: ignored {n} file(s) that are neither images nor DICOM ({names})")
        found.failures += sorted(self.failures, key=lambda r: r["source"])
        for (folder, why), n in sorted(self.skipped.items()):
            found.notes.append(f"{src}: skipped {n} DICOM file(s) in {folder}: {why}")
        for (folder, key), s in sorted(self.series.items()):
            if folder:
                found.notes.append(f"{src}: {s['count']} DICOM file(s) in {posixpath.relpath(folder, base)} "
                                   f"have no SeriesInstanceUID; grouped by folder and SeriesNumber")
        cases = sorted(self.volumes, key=lambda c: c[1].source) + self._series_cases()
        return pair_segmentations(fs, src, base, cases, sorted(self.segs), found.notes, _url)

    def _series_cases(self) -> list[tuple[list[str], CaseSource]]:
        src, fs, base = self.src, self.fs, self.base
        levels_of = {}
        by_levels: dict[tuple[str, ...], list] = defaultdict(list)
        for k, s in self.series.items():
            folder = posixpath.commonpath([posixpath.dirname(f) if f == self.root and self.is_file else f
                                           for f in s["folders"]])
            levels = _levels(posixpath.relpath(folder, base))
            if not levels:  # the series sits in UID-named folders: name it after the nearest other one
                up = folder
                while up not in ("", "/") and _UID_NAME.fullmatch(posixpath.basename(up)):
                    up = posixpath.dirname(up)
                levels = [posixpath.basename(up) or posixpath.basename(folder) or "series"]
            levels_of[k] = (levels, folder)
            by_levels[tuple(levels)].append(k)
        out = []
        for k, (levels, folder) in sorted(levels_of.items(), key=lambda kv: self.series[kv[0]]["key"]):
            s = self.series[k]
            if len(by_levels[tuple(levels)]) > 1:  # several series in one folder: tell them apart
                tail = re.sub(r"\W", "", s["key"])[-8:]
                levels = levels[:-1] + [f"{levels[-1]}_{tail}"]
            out.append((levels, CaseSource(_case_id(levels[-1]), "dicom", _url(fs, folder, src),
                                           tuple(_url(fs, d, src) for d in sorted(s["folders"])),
                                           tuple(sorted(s["meta"].items())), series=k[1])))
        return out


@contextlib.contextmanager
def _scan_pool(fs, workers: int | None, scheduler: str | None):
    """A function that maps :func:`_scan_folders` over batches of folders, yielding the results
    as they complete (any order), with a bounded number of batches in flight.

    Local headers cost CPU (pydicom parses in Python): processes. Remote ones cost
    latency: threads, which also see in-memory filesystems. With a scheduler, the
    cluster's workers.
    """
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    local = "file" in protocols or "local" in protocols
    if scheduler is not None:
        from distributed import Client
        with Client(scheduler) as client:
            slots = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()) or 1
            yield _windowed(lambda task: client.submit(_scan_folders, *task, pure=False), 2 * slots, dask=True)
        return
    n = (workers or os.cpu_count() or 1) if local else 16
    if n <= 1:
        yield lambda tasks: (_scan_folders(*task) for task in tasks)
        return
    with (ProcessPoolExecutor if local else ThreadPoolExecutor)(n) as pool:
        yield _windowed(lambda task: pool.submit(_scan_folders, *task), 2 * n)


def _windowed(submit, window: int, dask: bool = False):
    def run(tasks):
        if dask:
            from distributed import wait
        else:
            from concurrent.futures import wait

        pending = set()
        for task in tasks:
            pending.add(submit(task))
            if len(pending) >= window:
                done, pending = wait(pending, return_when="FIRST_COMPLETED")
                yield from (f.result() for f in done)
        while pending:
            done, pending = wait(pending, return_when="FIRST_COMPLETED")
            yield from (f.result() for f in done)
    return run


def _scan_file(fs, path: str) -> dict | str | None:
    """A file of unknown type: None if it is not DICOM, else its header tags, or the parse error.
    Runs in discovery's worker processes or threads."""
    try:
        # One open: on remote storage each costs a round trip. Local files through Python's own
        # buffered reader, which pydicom's many small reads cost far less than fsspec's.
        with (open(path, "rb") if isinstance(fs, LocalFileSystem) else fs.open(path, "rb")) as fh:
            return scan_header(fh, path)
    except Exception as exc:  # noqa: BLE001 - an unopenable file named as DICOM is that file's failure
        return _error_text(exc) if path.lower().endswith(_DICOM_SUFFIXES) else None


def scan_header(fh, path: str) -> dict | str | None:
    """:func:`_scan_file` of an open binary file (or ``io.BytesIO``) at its start, named ``path``.

    DICOM means the ``DICM`` preamble, or a DICOM suffix (preamble-less files
    are read with ``force``).
    """
    from pydicom.filereader import read_partial
    from pydicom.tag import Tag

    suffix, magic = path.lower().endswith(_DICOM_SUFFIXES), False
    try:
        head = fh.read(132)
        magic = len(head) == 132 and head[128:] == b"DICM"
        if not magic and not suffix:
            return None
        if magic:  # the plain case without pydicom (it builds a dataset of every element up to the stop)
            header = dicomscan.scan_header(head + fh.read(_HEAD_BYTES - 132))
            if header is not None:
                return header
        fh.seek(0)
        ds = read_partial(fh, stop_when=_past_header_tags, specific_tags=[Tag(t) for t in _HEADER_TAGS], force=not magic)
        header = header_of(ds)
        if header is None:
            raise ValueError("no DICOM image header (no SeriesInstanceUID, Modality or SOPClassUID)")
        return header
    except Exception as exc:  # noqa: BLE001 - any parse error of a user's file is that file's failure
        if not magic and not suffix:  # unreadable, and nothing says it is DICOM
            return None
        return _error_text(exc)


def _error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)


def header_of(ds) -> dict | None:
    """The tags discovery groups DICOM files by, from a pydicom dataset; None when it has no image
    header (no SeriesInstanceUID, Modality or SOPClassUID)."""
    if not any(ds.get(t) for t in ("SeriesInstanceUID", "Modality", "SOPClassUID")):
        return None
    return {"SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "") or ""),
            "SeriesNumber": str(ds.get("SeriesNumber", "")),  # as before: series 0 stays "0"
            "Modality": str(ds.get("Modality", "") or ""),
            "SOPClassUID": str(ds.get("SOPClassUID", "") or ""),
            "ImageType": [str(t).upper() for t in (ds.get("ImageType") or [])],
            "PatientID": str(ds.get("PatientID", "") or "")}


def _past_header_tags(tag, vr, length) -> bool:
    """Stop parsing after the last tag discovery reads (Series Number): elements are stored in
    tag order, and the rest of a header (and its pixel data) is not needed to group files."""
    return tag > _LAST_HEADER_TAG


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
