"""A CT volume in memory and its patient-space geometry (origin, spacing, direction).

Every reader returns a :class:`Volume`: HU values on axes (z, y, x) plus the
geometry that maps a voxel index to patient coordinates in mm. World
coordinates are LPS (DICOM's patient frame: x to the patient's left, y
posterior, z superior) in z/y/x order, whatever the file format; NIfTI's RAS
and NRRD's declared space are converted.

``direction`` is a 3x3 matrix whose row ``i`` is the unit vector of image axis
``i`` (z, y, x) in world (z, y, x) components, so that::

    world_zyx = origin_zyx + (index_zyx * spacing_zyx) @ direction

A slice stack whose slices are not evenly spaced along their normal, or are
sheared in-plane (gantry tilt), carries ``slice_offsets``: per slice, its
position relative to slice 0 in mm along (normal, column, row) directions.
Such a volume must be resampled (:mod:`tcpc_data.ingest.resample`) before storing.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Volume:
    """HU voxels (Z, Y, X) float32 and their geometry.

    Attributes
    ----------
    hu
        (Z, Y, X) float32, Hounsfield units.
    spacing_zyx
        Voxel size in mm; for an irregular stack, the median slice gap along z.
    origin_zyx
        LPS position in mm of voxel (0, 0, 0).
    direction
        (3, 3) unit row vectors of the image axes z, y, x in world z/y/x components.
    slice_offsets
        None for a regular grid; else (Z, 3) offsets in mm of each slice's first
        voxel from voxel (0, 0, 0), along the image axes (z, y, x).
    notes
        Human-readable remarks about the geometry (tilt, uneven gaps).
    """

    hu: np.ndarray
    spacing_zyx: tuple[float, float, float]
    origin_zyx: tuple[float, float, float]
    direction: np.ndarray
    slice_offsets: np.ndarray | None = None
    notes: tuple[str, ...] = ()

    @property
    def regular(self) -> bool:
        return self.slice_offsets is None


def index_to_world(index_zyx, origin_zyx, spacing_zyx, direction) -> np.ndarray:
    """Map voxel indices (..., 3) (fractional allowed) to LPS world coordinates (..., 3), z/y/x, mm."""
    idx = np.asarray(index_zyx, dtype=np.float64)
    return np.asarray(origin_zyx, float) + (idx * np.asarray(spacing_zyx, float)) @ np.asarray(direction, float)


def world_to_index(world_zyx, origin_zyx, spacing_zyx, direction) -> np.ndarray:
    """Inverse of :func:`index_to_world`: LPS z/y/x mm (..., 3) -> fractional voxel indices (..., 3)."""
    w = np.asarray(world_zyx, dtype=np.float64) - np.asarray(origin_zyx, float)
    # direction rows are orthonormal, so its inverse is its transpose
    return (w @ np.asarray(direction, float).T) / np.asarray(spacing_zyx, float)


def lps_xyz_to_zyx(x_mm, y_mm, z_mm) -> tuple[float, float, float]:
    """World z/y/x (this module's order) of a point given as LPS x, y, z in mm.

    LUNA16's ``coordX, coordY, coordZ`` and ITK/SimpleITK physical points are
    LPS in x/y/z order; only the order differs from :func:`world_to_index`'s input.
    """
    return float(z_mm), float(y_mm), float(x_mm)


def stored_geometry(attrs, case: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin_zyx, spacing_zyx, direction) of a stored image from its attributes, validated.

    Parameters
    ----------
    attrs
        Mapping with ``spacing_zyx`` (3 positive mm), ``origin_zyx`` (3 mm) and
        ``direction`` (3x3; ingest writes all three). A missing origin or
        direction is refused rather than assumed: an identity guess silently
        misplaces every point of a flipped or permuted volume.
    case
        Case name for error messages.
    """
    try:
        origin = np.asarray(attrs["origin_zyx"], dtype=np.float64).reshape(3)
        spacing = np.asarray(attrs["spacing_zyx"], dtype=np.float64).reshape(3)
        direction = attrs["direction"]
    except KeyError as exc:
        raise ValueError(f"{case}: image has no {exc.args[0]} attribute; world coordinates "
                         f"cannot be mapped to voxels") from None
    except (TypeError, ValueError):
        raise ValueError(f"{case}: image origin_zyx and spacing_zyx must be 3 numbers each") from None
    if not np.all(np.isfinite(origin)) or not np.all(spacing > 0):
        raise ValueError(f"{case}: image origin {origin.tolist()} / spacing {spacing.tolist()} invalid")
    return origin, spacing, orthonormal_direction(direction, case)


def world_to_voxel(world_zyx, attrs, shape, case: str) -> np.ndarray:
    """Nearest voxel (3,) int64 of one LPS z/y/x mm point in a stored image; outside raises.

    Uses :func:`world_to_index` with the image's full geometry (origin,
    spacing *and* direction), so flipped, permuted and oblique volumes agree
    with their world coordinates (module docstring).
    """
    idx = np.rint(world_to_index(world_zyx, *stored_geometry(attrs, case))).astype(np.int64)
    if np.any(idx < 0) or np.any(idx >= np.asarray(shape)):
        raise ValueError(f"{case}: world point z/y/x {tuple(round(float(v), 3) for v in world_zyx)} mm "
                         f"lies outside the volume (voxel {idx.tolist()}, shape {list(shape)})")
    return idx


def orthonormal_direction(direction, case: str) -> np.ndarray:
    """Validate a 3x3 direction matrix (rows unit length and mutually orthogonal)."""
    d = np.asarray(direction, dtype=np.float64)
    if d.shape != (3, 3) or not np.all(np.isfinite(d)):
        raise ValueError(f"{case}: direction must be a finite 3x3 matrix, got {d.tolist()}")
    if not np.allclose(d @ d.T, np.eye(3), atol=1e-3):
        raise ValueError(f"{case}: image axes are not orthonormal (direction {np.round(d, 4).tolist()})")
    return d


def check_size(shape, max_voxels: int, case: str) -> None:
    """Refuse volumes with fewer than 2 voxels along an axis or more than ``max_voxels`` in all."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"{case}: expected a 3-D volume, got shape {shape}")
    if min(shape) < 2:
        raise ValueError(f"{case}: shape {shape} has an axis of fewer than 2 voxels (a single slice is not a volume)")
    n = int(np.prod(shape, dtype=np.int64))
    if n > max_voxels:
        raise ValueError(f"{case}: shape {shape} has {n:,} voxels, over the limit of {max_voxels:,} "
                         f"(raise max_voxels if this is intended)")


def check_finite(hu: np.ndarray, case: str) -> None:
    """Refuse volumes with NaN or infinite voxels, naming how many."""
    bad = ~np.isfinite(hu)
    if bad.any():
        n = int(bad.sum())
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{case}: {n} voxels are NaN or infinite (first at z, y, x = {first})")


def one_line(exc: BaseException) -> str:
    """A library's exception text on one line (decoders' messages often span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def reader(read):
    """Make a reader's every failure a one-line ``ValueError`` that names the case and the file.

    A reader parses untrusted bytes with several libraries, each with its own
    exception types; the caller (the ingest stage) records any of them as that
    case's failure. Messages the reader wrote itself (starting with the case
    name) and missing files pass through unchanged.
    """
    @functools.wraps(read)
    def wrapper(path, *args, case: str, **kwargs):
        try:
            return read(path, *args, case=case, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - untrusted input: any library error is this case's failure
            if isinstance(exc, ValueError) and str(exc).startswith(f"{case}: ") and "\n" not in str(exc):
                raise
            first = path[0] if isinstance(path, (list, tuple)) and path else path
            raise ValueError(f"{case}: cannot read {Path(str(first)).name}: {type(exc).__name__}: "
                             f"{one_line(exc)}") from exc
    return wrapper
