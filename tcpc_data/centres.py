"""Centre tables: points (and optional labels, splits, patients) per case, from tcpc, nodule or LUNA16 CSVs.

One reader serves every place that takes centres or labels (supervoxel
candidates, labelled shards, pretraining case lists). A CSV names its case,
its point and, optionally, a label, a split and a patient by these columns:

===========  ==========================================================================
what         columns (first match wins)
===========  ==========================================================================
case         ``case`` or ``name`` (the case id, sanitised like ingest does), else
             ``seriesuid`` (LUNA16: DICOM SeriesInstanceUID)
point        ``z, y, x`` (voxels of the stored image) | ``z_mm, y_mm, x_mm`` (LPS mm,
             z/y/x order) | ``coordX, coordY, coordZ`` (LUNA16: LPS mm, x/y/z order)
label        ``label`` | ``diagnosis`` (nodule tables: 1 malignant, 0 benign) |
             ``class`` (LUNA16 ``candidates.csv``: 1 nodule, 0 not)
split        ``split`` (train / val / test ...)
patient      ``patient_id``
===========  ==========================================================================

So LUNA16's ``annotations.csv`` (seriesuid, coordX/Y/Z, diameter_mm) gives
centres, its ``candidates.csv`` (seriesuid, coordX/Y/Z, class) centres and
labels, and a nodule table (name, patient_id, split, diagnosis, coordX/Y/Z,
as in ``lidc-nodules/nodules.csv``) all of them.

Matching rows to cases (:func:`match_cases`): a ``case``/``name`` column names
the case directly. A ``seriesuid`` matches the case whose ``series_uid``
attribute (recorded by ingest for DICOM series) equals it, else the case whose
id is the sanitised UID, as LUNA16's ``<seriesuid>.mhd`` files become after
ingest. Files without a UID in their header (NIfTI, like the nodule VOIs)
therefore need a ``name`` column or UID-named files. World points map to
voxels through :func:`tcpc_data.volume.world_to_voxel` (origin, spacing and
direction of the stored image).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from pathlib import Path

from tcpc_data.store.volumes import list_cases, open_store, sanitize_case_id
from tcpc_data.volume import lps_xyz_to_zyx

_POINTS = ((("z", "y", "x"), "vox"), (("z_mm", "y_mm", "x_mm"), "mm"), (("coordX", "coordY", "coordZ"), "luna"))
_LABELS = ("label", "diagnosis", "class")


@dataclasses.dataclass(frozen=True)
class CentreRow:
    """One CSV row.

    Attributes
    ----------
    line
        Line number in the file (the header is line 1).
    key
        Case name or SeriesInstanceUID as written in the file.
    by
        ``case`` or ``seriesuid``: how :func:`match_cases` finds the case.
    unit
        ``vox`` (voxel indices of the stored image) or ``mm`` (LPS world, z/y/x).
    zyx
        The point, z/y/x, in ``unit``.
    label, split, patient
        None when the file has no such column.
    """

    line: int
    key: str
    by: str
    unit: str
    zyx: tuple[float, float, float]
    label: int | None = None
    split: str | None = None
    patient: str | None = None

    def where(self, source: str) -> str:
        """``<file> line N`` for error messages."""
        return f"{source} line {self.line}"


def read_centres(path: str | os.PathLike, *, need_label: bool = False, what: str = "centres CSV"
                 ) -> list[CentreRow]:
    """Rows of a centre table (module docstring), in file order.

    Parameters
    ----------
    path
        CSV file.
    need_label
        Refuse a file without a label column.
    what
        Its role, for the not-found message (``labels CSV``, ``candidates CSV``).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Missing columns (names them and the formats accepted), or a row whose
        point or label is not a number (names the file and line), or no rows.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    with open(p, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or ()]
        reader.fieldnames = cols
        key = next((c for c in ("case", "name", "seriesuid") if c in cols), None)
        point = next(((keys, unit) for keys, unit in _POINTS if set(keys) <= set(cols)), None)
        label = next((c for c in _LABELS if c in cols), None)
        if key is None or point is None or (need_label and label is None):
            raise ValueError(f"{p}: missing column(s); need case,z,y,x (voxels), case,z_mm,y_mm,x_mm (LPS mm) "
                             f"or name|seriesuid with coordX,coordY,coordZ (LUNA16)"
                             f"{', and label|diagnosis|class' if need_label else ''}; got {cols}")
        rows = [_row(p, line, r, key, point, label) for line, r in enumerate(reader, start=2)]
    if not rows:
        raise ValueError(f"{p} has no rows")
    return rows


def _row(p: Path, line: int, r: dict, key: str, point, label: str | None) -> CentreRow:
    keys, unit = point
    name = (r.get(key) or "").strip()
    if not name:
        raise ValueError(f"{p} line {line}: empty {key}")
    try:
        v = tuple(float(r[k]) for k in keys)
    except (TypeError, ValueError):
        raise ValueError(f"{p} line {line}: {', '.join(keys)} must be numbers, got "
                         f"{[r.get(k) for k in keys]}") from None
    if not all(math.isfinite(x) for x in v):
        raise ValueError(f"{p} line {line}: coordinates must be finite, got {v}")
    if unit == "luna":
        v, unit = lps_xyz_to_zyx(*v), "mm"
    lab = None
    if label is not None:
        try:
            lab = int(str(r[label]).strip())
        except (TypeError, ValueError):
            raise ValueError(f"{p} line {line}: {label} must be an integer, got {r.get(label)!r}") from None
    split = (r.get("split") or "").strip() or None
    patient = (r.get("patient_id") or "").strip() or None
    return CentreRow(line, name, "seriesuid" if key == "seriesuid" else "case", unit, v, lab, split, patient)


def match_cases(rows: list[CentreRow], store=None) -> dict[str, list[CentreRow]]:
    """Group rows by the store case they name (module docstring: matching rule).

    Parameters
    ----------
    rows
        From :func:`read_centres`.
    store
        Volume store; needed only to match ``seriesuid`` rows to DICOM cases
        by their ``series_uid`` attribute (without it, or when no case has
        that UID, the sanitised UID is the case id).

    Returns
    -------
    dict
        Case id -> its rows in file order. A row naming no case of the store
        still gets an id (its sanitised name), so the stage that reads it
        fails that case with the row's line.
    """
    by_uid: dict[str, str] = {}
    if store is not None and any(r.by == "seriesuid" for r in rows):
        root = open_store(store, mode="r")
        for case in list_cases(store):
            uid = root[case].attrs.get("series_uid")
            if uid:
                by_uid[str(uid)] = case
    out: dict[str, list[CentreRow]] = {}
    for r in rows:
        case = by_uid.get(r.key) if r.by == "seriesuid" else None
        out.setdefault(case or sanitize_case_id(r.key), []).append(r)
    return out


def check_patient_splits(rows: list[CentreRow], source: str) -> None:
    """Refuse a table in which one patient has rows in two splits (nodules leak across them)."""
    first: dict[str, CentreRow] = {}
    for r in rows:
        if r.patient is None or r.split is None:
            continue
        seen = first.setdefault(r.patient, r)
        if seen.split != r.split:
            raise ValueError(f"{r.where(source)}: patient {r.patient} is in split {r.split!r} here but in "
                             f"{seen.split!r} at line {seen.line}; split by patient")


def rename_splits(rows: list[CentreRow], split_as: str) -> list[CentreRow]:
    """Rows with their split renamed by ``'from=to,...'`` (e.g. ``val=test``); ``''`` keeps them."""
    mapping = parse_split_as(split_as)
    return [dataclasses.replace(r, split=mapping.get(r.split, r.split)) for r in rows]


def parse_split_as(split_as: str) -> dict[str, str]:
    """``'val=test,train=test'`` -> {'val': 'test', 'train': 'test'}; refuses malformed text."""
    mapping: dict[str, str] = {}
    for part in filter(None, (s.strip() for s in (split_as or "").split(","))):
        a, sep, b = part.partition("=")
        if not sep or not a.strip() or not b.strip():
            raise ValueError(f"split renaming must read FROM=TO[,FROM=TO...], got {split_as!r}")
        mapping[a.strip()] = b.strip()
    return mapping
