"""DICOM-SEG objects as the ``mask`` of the series they segment (optional ``seg`` extra: highdicom).

Discovery pairs each Segmentation object found among the sources with the
DICOM series its ``ReferencedSeriesSequence`` names (:func:`pair_segmentations`);
that case then gets the SEG's segments as its ``mask`` array, like a label map
in nnU-Net's ``labelsTr/`` (``tcpc_data.ingest.discover``). A SEG whose series
is not among the sources, or a second SEG of one series, is left out with a
note.

Reading (:func:`read_seg_mask`) goes through highdicom: its segments become
one label map whose values are the segment numbers (0 = no segment), built
in the SEG's own frame geometry and copied, by nearest neighbour in world
coordinates, onto the image's native grid. A SEG may therefore store only the
frames that hold a segment, in any order, on the series' grid or another one
in the same frame of reference; the ingest stage then resamples the mask as it
resamples the image (``tcpc_data.ingest.stage.mask_on_grid``).
"""
from __future__ import annotations

import dataclasses
import posixpath

import numpy as np

from tcpc_data.volume import Volume

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def is_segmentation(header: dict) -> bool:
    """Whether discovery's header tags (Modality, SOPClassUID) are those of a DICOM-SEG object."""
    return header.get("Modality") == "SEG" or header.get("SOPClassUID") == SEG_SOP_CLASS


def pair_segmentations(fs, src: str, base: str, cases: list, segs: list[str], notes: list[str], url) -> list:
    """Give each DICOM case the SEG object that references its series as its ``mask``.

    Parameters
    ----------
    fs, src, base
        The source's filesystem, the source as given and its root folder.
    cases
        Discovery's ``(levels, CaseSource)`` pairs of this source.
    segs
        Paths of the SEG objects found in it.
    notes
        Discovery's notes; unpaired or extra SEGs are reported there.
    url
        Path -> the name recorded for it (a full URL for remote sources).

    Returns
    -------
    list
        ``cases`` with ``mask`` set on the paired ones.
    """
    by_uid = {dict(c.info).get("series_uid"): i for i, (_, c) in enumerate(cases) if c.format == "dicom"}
    by_uid.pop(None, None)
    by_uid.pop("", None)
    out = list(cases)
    unpaired, extra = [], []
    for path in sorted(segs):
        uid = _referenced_series(fs, path)
        i = by_uid.get(uid)
        if i is None:
            unpaired.append(path)
        elif out[i][1].mask is not None:
            extra.append(path)
        else:
            levels, cs = out[i]
            out[i] = (levels, dataclasses.replace(cs, mask=url(fs, path, src)))
    for case, paths in (("reference no series among the sources", unpaired),
                        ("segment a series that already has a mask", extra)):
        if paths:
            names = ", ".join(posixpath.relpath(p, base) for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
            notes.append(f"{src}: ignored {len(paths)} DICOM-SEG object(s) that {case} ({names})")
    return out


def _referenced_series(fs, path: str) -> str | None:
    """The SeriesInstanceUID a SEG object segments (its first ReferencedSeriesSequence item)."""
    import pydicom

    try:
        with fs.open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=["ReferencedSeriesSequence"])
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except Exception:  # noqa: BLE001 - an unreadable SEG pairs with nothing and is reported as unpaired
        return None


def read_seg_mask(path: str, volume: Volume, *, case: str) -> np.ndarray:
    """The segments of a DICOM-SEG object as a label map on ``volume``'s native grid.

    Parameters
    ----------
    path
        Local path of the SEG object.
    volume
        The image of the series it segments, on a regular grid (LPS geometry).
    case
        Case name for error messages.

    Returns
    -------
    np.ndarray
        (Z, Y, X) uint8/uint16 labels, the shape of ``volume.hu``: each voxel
        holds the number of the segment covering it, 0 where none does.

    Raises
    ------
    ModuleNotFoundError
        highdicom is not installed.
    ValueError
        Overlapping segments, an unreadable SEG, or an irregular image grid.
    """
    try:
        import highdicom
    except ImportError:
        raise ModuleNotFoundError(f"{case} {path}: reading a DICOM-SEG needs highdicom: "
                                  f"pip install 'tcpc[seg]'") from None
    if not volume.regular:
        raise ValueError(f"{case} {path}: the series is not on a regular grid (tilted or uneven slices); "
                         f"a DICOM-SEG mask needs a regular one")
    try:
        seg = highdicom.seg.segread(path)
        seg_volume = seg.get_volume(combine_segments=True, relabel=False)
    except Exception as exc:  # noqa: BLE001 - highdicom's errors about a user's file become one line
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{case} {path}: cannot read the DICOM-SEG: {msg}") from None
    labels = np.asarray(seg_volume.array)
    if labels.ndim != 3:
        raise ValueError(f"{case} {path}: expected one label per voxel, got an array of shape {labels.shape}")
    return _on_grid(labels, np.asarray(seg_volume.affine, np.float64), volume)


def _on_grid(labels: np.ndarray, affine: np.ndarray, volume: Volume) -> np.ndarray:
    """Nearest-neighbour copy of ``labels`` (indices -> LPS x/y/z through ``affine``) onto the image grid."""
    # image index (z, y, x) -> world z/y/x -> LPS x/y/z -> SEG index, one affine map
    to_world = np.asarray(volume.direction, np.float64).T * np.asarray(volume.spacing_zyx, np.float64)
    inv = np.linalg.inv(affine)
    lin = inv[:3, :3] @ to_world[::-1]
    off = inv[:3, :3] @ np.asarray(volume.origin_zyx, np.float64)[::-1] + inv[:3, 3]
    nz, ny, nx = volume.hu.shape
    yy, xx = np.meshgrid(np.arange(ny, dtype=np.float64), np.arange(nx, dtype=np.float64), indexing="ij")
    plane = lin[:, 1, None, None] * yy + lin[:, 2, None, None] * xx + off[:, None, None]
    top = int(labels.max(initial=0))
    out = np.zeros(volume.hu.shape, np.uint8 if top < 256 else np.uint16)
    bounds = np.asarray(labels.shape)[:, None, None]
    for z in range(nz):
        idx = np.rint(plane + lin[:, 0, None, None] * z).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < bounds), axis=0)
        out[z][inside] = labels[idx[0][inside], idx[1][inside], idx[2][inside]]
    return out
