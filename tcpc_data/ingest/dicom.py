"""Reading one DICOM CT series into a volume: slice order, HU, decoding, geometry checks.

- Slices are ordered by their position along the slice normal
  (ImagePositionPatient projected on row x column direction), never by file
  name or InstanceNumber.
- Stored values become HU through each slice's RescaleSlope/RescaleIntercept.
- Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000) decode through
  pydicom's pixel handlers (pylibjpeg plugins).
- Geometry is checked, never assumed: duplicate positions and missing slices
  (a gap that is a whole multiple of the series' spacing) are refused; gantry
  tilt (slices sheared in-plane) and uneven gaps yield an irregular volume that
  the ingest resamples onto a regular grid (or refuses, by config).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tcpc_data.volume import Volume, check_size, one_line, reader

# Relative deviation of a slice gap from the median gap still counted as even
_GAP_TOL = 0.02
# In-plane shift between slices (mm) above which a series counts as sheared (tilted)
_SHEAR_TOL_MM = 0.01


def _floats(ds, keyword: str, n: int, path: Path, what: str) -> np.ndarray:
    value = ds.get(keyword)
    if value is None:
        raise ValueError(f"{what}: {path.name} lacks {keyword}; cannot place the slice in space")
    try:
        vals = np.array([float(v) for v in (value if n > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {path.name} has a non-numeric {keyword}: {value!r}")
    if vals.shape != (n,) or not np.all(np.isfinite(vals)):
        raise ValueError(f"{what}: {path.name} has an invalid {keyword}: {value!r}")
    return vals


@reader
def read_series(files, *, max_voxels: int, what: str, irregular: str = "resample") -> Volume:
    """Read the files of one CT series into a :class:`Volume` in HU.

    Parameters
    ----------
    files
        Paths of the series' DICOM files (any order).
    max_voxels
        Refuse series larger than this (checked from the headers, before decoding).
    what
        Case name used in error messages.
    irregular
        ``"resample"``: a tilted or unevenly spaced series is returned with
        ``slice_offsets`` for resampling; ``"refuse"``: it raises ValueError.

    Returns
    -------
    Volume
        (Z, Y, X) float32 HU, slices sorted along the normal; z spacing is the
        mean gap (regular) or the median gap (irregular).
    """
    paths = [Path(f) for f in files]
    _check_count(paths, what)
    datasets = [parse_file(p.read_bytes(), p, what) for p in paths]
    return series_volume(paths, datasets, max_voxels=max_voxels, what=what, irregular=irregular)


def parse_file(data: bytes, path: Path, what: str):
    """The pydicom dataset of one file's bytes (pixels not yet decoded); a damaged file is a
    one-line ValueError that names it."""
    import pydicom

    try:
        # from bytes already in memory: pydicom reads a file in many small calls, which cost
        # more than the copy
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files; name the file
        raise ValueError(f"{what}: cannot read DICOM file {path}: {one_line(exc)}") from exc


def _check_count(paths: list[Path], what: str) -> None:
    if len(paths) < 2:
        raise ValueError(f"{what}: the series has {len(paths)} slice(s) ({paths[0].name if paths else 'none'}); "
                         f"a volume needs at least 2")


@reader
def series_volume(paths: list[Path], datasets: list, *, max_voxels: int, what: str,
                  irregular: str = "resample") -> Volume:
    """:func:`read_series` on files already parsed: ``datasets[i]`` is the dataset of ``paths[i]``."""
    _check_count(paths, what)
    first = datasets[0]
    rows, cols = int(first.get("Rows", 0)), int(first.get("Columns", 0))
    check_size((len(paths), rows, cols), max_voxels, what)
    iop = _floats(first, "ImageOrientationPatient", 6, paths[0], what)
    pixel = _floats(first, "PixelSpacing", 2, paths[0], what)
    if np.any(pixel <= 0):
        raise ValueError(f"{what}: {paths[0].name} has a non-positive PixelSpacing {pixel.tolist()}")
    positions = np.empty((len(paths), 3))
    for i, (p, ds) in enumerate(zip(paths, datasets)):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise ValueError(f"{what}: {p.name} is a multi-frame image; only single-frame CT series are supported")
        if (int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) != (rows, cols):
            raise ValueError(f"{what}: inconsistent slice size: {p.name} is {ds.get('Rows')}x{ds.get('Columns')}, "
                             f"{paths[0].name} is {rows}x{cols}")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, p, what), pixel, rtol=1e-4, atol=1e-5):
            raise ValueError(f"{what}: inconsistent pixel sizes: {p.name} has PixelSpacing "
                             f"{list(ds.PixelSpacing)}, {paths[0].name} has {pixel.tolist()}")
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, p, what), iop, atol=1e-4):
            raise ValueError(f"{what}: inconsistent slice orientation: {p.name} differs from {paths[0].name}")
        positions[i] = _floats(ds, "ImagePositionPatient", 3, p, what)

    u, v = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    n = np.cross(u, v)
    order = np.argsort(positions @ n, kind="stable")
    paths = [paths[i] for i in order]
    datasets = [datasets[i] for i in order]
    rel = positions[order] - positions[order[0]]
    d, a, b = rel @ n, rel @ v, rel @ u  # along normal, column (y) and row (x) directions
    gaps = np.diff(d)
    _check_gaps(gaps, d, paths, what)
    notes: list[str] = []
    median = float(np.median(gaps))
    uneven = bool(np.any(np.abs(gaps - median) > _GAP_TOL * median))
    shift = float(np.hypot(a[-1], b[-1]))
    tilted = bool(np.max(np.hypot(a, b)) > _SHEAR_TOL_MM)

    hu = np.empty((len(paths), rows, cols), dtype=np.float32)
    for k, (p, ds) in enumerate(zip(paths, datasets)):
        _slice_hu(ds, p, (rows, cols), what, out=hu[k])

    direction = np.stack([n[::-1], v[::-1], u[::-1]])  # image axes z, y, x; components z, y, x
    origin = tuple(float(x) for x in positions[order[0]][::-1])
    if not (uneven or tilted):
        spacing_z = float(d[-1] / (len(d) - 1))
        return Volume(hu, (spacing_z, float(pixel[0]), float(pixel[1])), origin, direction)

    if tilted:
        angle = float(np.degrees(np.arctan2(shift, d[-1])))
        tag = first.get("GantryDetectorTilt")
        notes.append(f"gantry tilt: slices sheared {shift:.1f} mm over {d[-1]:.1f} mm ({angle:.1f} deg"
                     + (f"; header GantryDetectorTilt {float(tag):g} deg" if tag not in (None, "") else "") + ")")
    if uneven:
        notes.append(f"uneven slice gaps {gaps.min():.2f}-{gaps.max():.2f} mm (median {median:.2f} mm)")
    if irregular == "refuse":
        raise ValueError(f"{what}: irregular series refused: {'; '.join(notes)}; "
                         f"ingest with irregular='resample' (--irregular resample) to resample it onto a regular grid")
    offsets = np.stack([d, a, b], axis=1)
    return Volume(hu, (median, float(pixel[0]), float(pixel[1])), origin, direction,
                  slice_offsets=offsets, notes=tuple(notes))


def _check_gaps(gaps: np.ndarray, d: np.ndarray, paths: list[Path], what: str) -> None:
    """Refuse duplicate slice positions and missing slices (a gap of about k >= 2 median gaps)."""
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise ValueError(f"{what}: {paths[i].name} and {paths[i + 1].name} lie at the same position "
                         f"({d[i]:.3f} mm along the normal); two stacks mixed in one series?")
    median = float(np.median(gaps))
    ratio = gaps / median
    whole = np.round(ratio)
    missing = np.flatnonzero((whole >= 2) & (np.abs(ratio - whole) < 0.1))
    if missing.size:
        i = int(missing[0])
        raise ValueError(f"{what}: missing slices: a gap of {gaps[i]:.2f} mm between {paths[i].name} and "
                         f"{paths[i + 1].name} where the series' spacing is {median:.2f} mm "
                         f"(about {int(whole[i]) - 1} slice(s) missing)")


def _slice_hu(ds, path: Path, shape: tuple[int, int], what: str, out: np.ndarray) -> None:
    """Decode one slice and write it rescaled to HU into ``out`` (float32)."""
    if "PixelData" not in ds:
        raise ValueError(f"{what}: {path.name} has no pixel data")
    try:
        arr = _native_pixels(ds, shape)
        if arr is None:
            arr = ds.pixel_array
    except Exception as exc:  # decoders raise many types for truncated/corrupt data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise ValueError(f"{what}: cannot decode the pixel data of {path.name} (transfer syntax {name}): "
                         f"{one_line(exc)}") from exc
    if arr.shape != shape:
        raise ValueError(f"{what}: {path.name} decodes to shape {arr.shape}, expected {shape}")
    slope, intercept = _rescale(ds, path, what)
    # float32 values times a float32 slope plus a float32 intercept, written in place
    np.multiply(arr, np.float32(slope), out=out, dtype=np.float32)
    out += np.float32(intercept)


# Uncompressed little-endian transfer syntaxes, whose pixel data are the array's bytes
_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _native_pixels(ds, shape: tuple[int, int]) -> np.ndarray | None:
    """The stored values of an uncompressed little-endian 16-bit slice, straight from its bytes;
    None for anything else, which goes through pydicom's pixel handlers.

    Only the plain case is taken: one sample per pixel, all 16 bits stored (no sign
    extension or masking of unused bits to do) and exactly one frame's worth of bytes.
    It skips pydicom's per-slice option parsing, which costs more than the copy.
    """
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if (ts not in _NATIVE_LE or ds.get("BitsAllocated") != 16 or ds.get("BitsStored") != 16
            or int(ds.get("SamplesPerPixel", 1) or 1) != 1 or ds.get("PixelRepresentation") not in (0, 1)):
        return None
    data = ds.PixelData
    if len(data) != shape[0] * shape[1] * 2:
        return None
    return np.frombuffer(data, dtype="<i2" if ds.PixelRepresentation == 1 else "<u2").reshape(shape)


def _rescale(ds, path: Path, what: str) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of a slice (1 and 0 when absent), refusing values that are
    not finite numbers and a slope of 0, which would map every voxel to the intercept."""
    def value(keyword, default):
        v = ds.get(keyword)
        return default if v is None or v == "" else float(v)  # an empty element counts as absent
    try:
        slope, intercept = value("RescaleSlope", 1.0), value("RescaleIntercept", 0.0)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: {path.name} has a non-numeric RescaleSlope/RescaleIntercept: {one_line(exc)}") from exc
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise ValueError(f"{what}: {path.name} has RescaleSlope {slope} and RescaleIntercept {intercept}; "
                         f"HU are undefined (the slope must be a finite non-zero number)")
    return slope, intercept
