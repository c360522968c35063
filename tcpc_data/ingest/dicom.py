"""Reading one DICOM CT series into a volume: slice order, HU, decoding, geometry checks.

- Slices are ordered by their position along the slice normal
  (ImagePositionPatient projected on row x column direction), never by file
  name or InstanceNumber.
- Stored values become HU through each slice's RescaleSlope/RescaleIntercept.
- A plain uncompressed slice is read by :mod:`tcpc_data.ingest.dicomscan` (the
  elements needed, straight from its bytes); anything else by pydicom, with the
  same values. Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000) decode
  through pydicom's pixel handlers (pylibjpeg plugins).
- Geometry is checked, never assumed: duplicate positions and missing slices
  (a gap that is a whole multiple of the series' spacing) are refused; gantry
  tilt (slices sheared in-plane) and uneven gaps yield an irregular volume that
  the ingest resamples onto a regular grid (or refuses, by config).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tcpc_data.ingest.dicomscan import EXPLICIT_LE, IMPLICIT_LE, ScannedSlice, scan_slice
from tcpc_data.volume import Volume, check_size, one_line, reader

# Relative deviation of a slice gap from the median gap still counted as even
_GAP_TOL = 0.02
# In-plane shift between slices (mm) above which a series counts as sheared (tilted)
_SHEAR_TOL_MM = 0.01


def _floats(ds, keyword: str, n: int, path: Path, case: str) -> np.ndarray:
    value = ds.get(keyword)
    if value is None:
        raise ValueError(f"{case}: {path.name} lacks {keyword}; cannot place the slice in space")
    try:
        vals = np.array([float(v) for v in (value if n > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{case}: {path.name} has a non-numeric {keyword}: {value!r}")
    if vals.shape != (n,) or not np.all(np.isfinite(vals)):
        raise ValueError(f"{case}: {path.name} has an invalid {keyword}: {value!r}")
    return vals


@reader
def read_series(files, *, max_voxels: int, case: str, irregular: str = "resample") -> Volume:
    """Read the files of one CT series into a :class:`Volume` in HU.

    Parameters
    ----------
    files
        Paths of the series' DICOM files (any order).
    max_voxels
        Refuse series larger than this (checked from the headers, before decoding).
    case
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
    _check_count(paths, case)
    slices = [parse_slice(p.read_bytes(), p, case) for p in paths]
    return series_volume(paths, slices, max_voxels=max_voxels, case=case, irregular=irregular)


def parse_slice(data: bytes, path: Path, case: str):
    """One file's bytes as :func:`series_volume` takes them: a :class:`~tcpc_data.ingest.dicomscan.ScannedSlice`
    in the plain case, else the pydicom dataset (:func:`parse_file`)."""
    return scan_slice(data) or parse_file(data, path, case)


def parse_file(data: bytes, path: Path, case: str):
    """The pydicom dataset of one file's bytes (pixels not yet decoded); a damaged file is a
    one-line ValueError that names it."""
    import pydicom

    try:
        # from bytes already in memory: pydicom reads a file in many small calls, which cost
        # more than the copy
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files; name the file
        raise ValueError(f"{case}: cannot read DICOM file {path}: {one_line(exc)}") from exc


def _check_count(paths: list[Path], case: str) -> None:
    if len(paths) < 2:
        raise ValueError(f"{case}: the series has {len(paths)} slice(s) ({paths[0].name if paths else 'none'}); "
                         f"a volume needs at least 2")


@reader
def series_volume(paths: list[Path], slices: list, *, max_voxels: int, case: str,
                  irregular: str = "resample") -> Volume:
    """:func:`read_series` on files already parsed: ``slices[i]`` is what :func:`parse_slice` made of
    ``paths[i]`` (a scanned slice or a pydicom dataset)."""
    _check_count(paths, case)
    first = slices[0]
    rows, cols = _dims(first)[1:]
    check_size((len(paths), rows, cols), max_voxels, case)
    # every slice's numbers first, then each check once over all slices: the first slice that fails
    # one is named, with the checks in the order a slice-by-slice loop makes them
    vectors = [_vectors(x, p, case) for x, p in zip(slices, paths)]
    spacings, orientations, positions = (np.stack(v) for v in zip(*vectors))
    iop, pixel = orientations[0], spacings[0]
    if np.any(pixel <= 0):
        raise ValueError(f"{case}: {paths[0].name} has a non-positive PixelSpacing {pixel.tolist()}")
    dims = np.array([_dims(x) for x in slices]).reshape(-1, 3)
    checks = (dims[:, 0] > 1, np.any(dims[:, 1:] != (rows, cols), axis=1),
              ~np.all(np.isclose(spacings, pixel, rtol=1e-4, atol=1e-5), axis=1),
              ~np.all(np.isclose(orientations, iop, atol=1e-4), axis=1))
    failing = np.flatnonzero(np.any(checks, axis=0))
    if failing.size:
        i = int(failing[0])
        _refuse_slice([bool(c[i]) for c in checks], slices[i], paths[i], dims[i], paths[0], (rows, cols), pixel, case)

    u, v = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    n = np.cross(u, v)
    order = np.argsort(positions @ n, kind="stable")
    paths = [paths[i] for i in order]
    slices = [slices[i] for i in order]
    rel = positions[order] - positions[order[0]]
    d, a, b = rel @ n, rel @ v, rel @ u  # along normal, column (y) and row (x) directions
    gaps = np.diff(d)
    _check_gaps(gaps, d, paths, case)
    notes: list[str] = []
    median = float(np.median(gaps))
    uneven = bool(np.any(np.abs(gaps - median) > _GAP_TOL * median))
    shift = float(np.hypot(a[-1], b[-1]))
    tilted = bool(np.max(np.hypot(a, b)) > _SHEAR_TOL_MM)

    hu = np.empty((len(paths), rows, cols), dtype=np.float32)
    for k, (p, x) in enumerate(zip(paths, slices)):
        _slice_hu(x, p, (rows, cols), case, out=hu[k])

    direction = np.stack([n[::-1], v[::-1], u[::-1]])  # image axes z, y, x; components z, y, x
    origin = tuple(float(x) for x in positions[order[0]][::-1])
    if not (uneven or tilted):
        spacing_z = float(d[-1] / (len(d) - 1))
        return Volume(hu, (spacing_z, float(pixel[0]), float(pixel[1])), origin, direction)

    if tilted:
        angle = float(np.degrees(np.arctan2(shift, d[-1])))
        tag = first.gantry_tilt if isinstance(first, ScannedSlice) else first.get("GantryDetectorTilt")
        notes.append(f"gantry tilt: slices sheared {shift:.1f} mm over {d[-1]:.1f} mm ({angle:.1f} deg"
                     + (f"; header GantryDetectorTilt {float(tag):g} deg" if tag not in (None, "") else "") + ")")
    if uneven:
        notes.append(f"uneven slice gaps {gaps.min():.2f}-{gaps.max():.2f} mm (median {median:.2f} mm)")
    if irregular == "refuse":
        raise ValueError(f"{case}: irregular series refused: {'; '.join(notes)}; "
                         f"ingest with irregular='resample' (--irregular resample) to resample it onto a regular grid")
    offsets = np.stack([d, a, b], axis=1)
    return Volume(hu, (median, float(pixel[0]), float(pixel[1])), origin, direction,
                  slice_offsets=offsets, notes=tuple(notes))


def _check_gaps(gaps: np.ndarray, d: np.ndarray, paths: list[Path], case: str) -> None:
    """Refuse duplicate slice positions and missing slices (a gap of about k >= 2 median gaps)."""
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise ValueError(f"{case}: {paths[i].name} and {paths[i + 1].name} lie at the same position "
                         f"({d[i]:.3f} mm along the normal); two stacks mixed in one series?")
    median = float(np.median(gaps))
    ratio = gaps / median
    whole = np.round(ratio)
    missing = np.flatnonzero((whole >= 2) & (np.abs(ratio - whole) < 0.1))
    if missing.size:
        i = int(missing[0])
        raise ValueError(f"{case}: missing slices: a gap of {gaps[i]:.2f} mm between {paths[i].name} and "
                         f"{paths[i + 1].name} where the series' spacing is {median:.2f} mm "
                         f"(about {int(whole[i]) - 1} slice(s) missing)")


def _dims(x) -> tuple[int, int, int]:
    """(NumberOfFrames, Rows, Columns) of a scanned slice or a dataset."""
    if isinstance(x, ScannedSlice):
        return x.frames, x.rows, x.columns
    return int(x.get("NumberOfFrames", 1) or 1), int(x.get("Rows", 0)), int(x.get("Columns", 0))


def _vectors(x, path: Path, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(PixelSpacing (2,), ImageOrientationPatient (6,), ImagePositionPatient (3,)) of a slice."""
    if isinstance(x, ScannedSlice):
        return x.spacing, x.orientation, x.position
    iop = _floats(x, "ImageOrientationPatient", 6, path, case)
    return _floats(x, "PixelSpacing", 2, path, case), iop, _floats(x, "ImagePositionPatient", 3, path, case)


def _dataset(x, path: Path, case: str):
    """The pydicom dataset of a slice (a scanned one is parsed now, for pydicom's decoders or for a
    message that quotes its values)."""
    return parse_file(x.data, path, case) if isinstance(x, ScannedSlice) else x


def _refuse_slice(failed: list[bool], x, path: Path, dims, first_path: Path, shape, pixel, case: str):
    """Raise the first of the slice checks (multi-frame, size, pixel size, orientation) that ``x`` fails."""
    if failed[0]:
        raise ValueError(f"{case}: {path.name} is a multi-frame image; only single-frame CT series are supported")
    if failed[1]:
        raise ValueError(f"{case}: inconsistent slice size: {path.name} is {dims[1]}x{dims[2]}, "
                         f"{first_path.name} is {shape[0]}x{shape[1]}")
    if failed[2]:
        raise ValueError(f"{case}: inconsistent pixel sizes: {path.name} has PixelSpacing "
                         f"{list(_dataset(x, path, case).PixelSpacing)}, {first_path.name} has {pixel.tolist()}")
    raise ValueError(f"{case}: inconsistent slice orientation: {path.name} differs from {first_path.name}")


def _slice_hu(x, path: Path, shape: tuple[int, int], case: str, out: np.ndarray) -> None:
    """Decode one slice (scanned or a dataset) and write it rescaled to HU into ``out`` (float32)."""
    arr = _scanned_pixels(x, shape) if isinstance(x, ScannedSlice) else None
    if arr is None:
        ds = _dataset(x, path, case)
        if "PixelData" not in ds:
            raise ValueError(f"{case}: {path.name} has no pixel data")
        try:
            arr = _native_pixels(ds, shape)
            if arr is None:
                arr = ds.pixel_array
        except Exception as exc:  # decoders raise many types for truncated/corrupt data
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(ts, "name", ts)
            raise ValueError(f"{case}: cannot decode the pixel data of {path.name} (transfer syntax {name}): "
                             f"{one_line(exc)}") from exc
    if arr.shape != shape:
        raise ValueError(f"{case}: {path.name} decodes to shape {arr.shape}, expected {shape}")
    slope, intercept = (x.slope, x.intercept) if isinstance(x, ScannedSlice) else _rescale(x, path, case)
    _check_rescale(slope, intercept, path, case)
    if slope == 1:  # one pass: a product with 1 is exact, so the sum rounds as after the product
        np.add(arr, np.float32(intercept), out=out, dtype=np.float32)
        return
    # float32 values times a float32 slope plus a float32 intercept, written in place
    np.multiply(arr, np.float32(slope), out=out, dtype=np.float32)
    out += np.float32(intercept)


# Uncompressed little-endian transfer syntaxes, whose pixel data are the array's bytes
_NATIVE_LE = (IMPLICIT_LE, EXPLICIT_LE)


def _plain_pixels(data, shape: tuple[int, int], bits_allocated, bits_stored, samples, representation):
    """The stored values of an uncompressed little-endian 16-bit slice, straight from its bytes;
    None for anything else, which goes through pydicom's pixel handlers.

    Only the plain case is taken: one sample per pixel, 16 bits allocated, 1-16 of them
    stored, and exactly one frame's worth of bytes. Unused high bits are cleared (unsigned)
    or filled with the sign bit (signed), as pydicom does: a shift left and back. It skips
    pydicom's per-slice option parsing, which costs more than the copy.
    """
    if (bits_allocated != 16 or not isinstance(bits_stored, int) or not 1 <= bits_stored <= 16
            or int(samples or 1) != 1 or representation not in (0, 1) or len(data) != shape[0] * shape[1] * 2):
        return None
    arr = np.frombuffer(data, dtype="<i2" if representation == 1 else "<u2").reshape(shape)
    if bits_stored < 16:
        shift = 16 - bits_stored
        arr = np.left_shift(arr, shift)
        np.right_shift(arr, shift, out=arr)  # arithmetic for int16: the sign bit fills
    return arr


def _scanned_pixels(x: ScannedSlice, shape: tuple[int, int]) -> np.ndarray | None:
    return _plain_pixels(x.pixels, shape, x.bits_allocated, x.bits_stored, x.samples, x.pixel_representation)


def _native_pixels(ds, shape: tuple[int, int]) -> np.ndarray | None:
    """:func:`_plain_pixels` of a pydicom dataset in an uncompressed little-endian transfer syntax."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts not in _NATIVE_LE:
        return None
    return _plain_pixels(ds.PixelData, shape, ds.get("BitsAllocated"), ds.get("BitsStored"),
                         ds.get("SamplesPerPixel", 1), ds.get("PixelRepresentation"))


def _rescale(ds, path: Path, case: str) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of a dataset (1 and 0 when absent or empty)."""
    def value(keyword, default):
        v = ds.get(keyword)
        return default if v is None or v == "" else float(v)  # an empty element counts as absent
    try:
        return value("RescaleSlope", 1.0), value("RescaleIntercept", 0.0)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{case}: {path.name} has a non-numeric RescaleSlope/RescaleIntercept: {one_line(exc)}") from exc


def _check_rescale(slope: float, intercept: float, path: Path, case: str) -> None:
    """Refuse values that are not finite numbers and a slope of 0, which would map every voxel to
    the intercept."""
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise ValueError(f"{case}: {path.name} has RescaleSlope {slope} and RescaleIntercept {intercept}; "
                         f"HU are undefined (the slope must be a finite non-zero number)")
