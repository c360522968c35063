"""Resampling a volume, regular or an irregular slice stack, onto a regular grid (linear interpolation).

One kernel serves both cases. A volume is a stack of slices, each with its own
offset (mm) along the image axes z, y, x from voxel (0, 0, 0); a regular
volume has offsets ``(k * dz, 0, 0)``, a gantry-tilted series a y shift that
grows with k, an unevenly spaced one uneven z offsets. The output grid keeps
the volume's orientation (``direction``) and covers every slice's footprint;
points outside the data get ``fill`` (the volume minimum: background, so the
min/max normalisation is unchanged). Interpolation is bilinear within a slice
and linear between the two slices that bracket the output plane.
"""
from __future__ import annotations

import dataclasses

import numba
import numpy as np

from tcpc_data.volume import Volume, check_size

_EPS = 1e-4  # index-space tolerance: a point this close to the edge is inside


def to_grid(volume: Volume, spacing_zyx: tuple[float, float, float] | None = None, *,
            max_voxels: int = 2 ** 31, case: str = "volume") -> Volume:
    """Resample ``volume`` onto a regular grid of ``spacing_zyx`` mm (default: its own spacing).

    Parameters
    ----------
    volume
        Regular or irregular (``slice_offsets`` set) volume in HU.
    spacing_zyx
        Output voxel size in mm, all > 0. None keeps ``volume.spacing_zyx``;
        a regular volume at its own spacing is returned unchanged.
    max_voxels
        Refuse outputs larger than this (a tiny spacing would otherwise fill memory).
    case
        Name of the case, used in error messages.

    Returns
    -------
    Volume
        Regular volume (Z', Y', X') float32 with the same direction; ``origin_zyx``
        is the world position of the new voxel (0, 0, 0).
    """
    target = tuple(float(s) for s in (spacing_zyx if spacing_zyx is not None else volume.spacing_zyx))
    if len(target) != 3 or not all(np.isfinite(s) and s > 0 for s in target):
        raise ValueError(f"{case}: spacing must be three positive numbers in mm, got {spacing_zyx}")
    if volume.regular and np.allclose(target, volume.spacing_zyx, rtol=1e-6, atol=0):
        return volume
    Z, Y, X = volume.hu.shape
    sz, sy, sx = volume.spacing_zyx
    off = (volume.slice_offsets if volume.slice_offsets is not None
           else np.stack([np.arange(Z) * sz, np.zeros(Z), np.zeros(Z)], axis=1)).astype(np.float64)
    if np.any(np.diff(off[:, 0]) <= 0):
        raise ValueError(f"{case}: slice offsets must increase strictly along z")
    lo = np.array([off[0, 0], off[:, 1].min(), off[:, 2].min()])
    hi = np.array([off[-1, 0], off[:, 1].max() + (Y - 1) * sy, off[:, 2].max() + (X - 1) * sx])
    shape = tuple(int(np.floor((h - l) / t + 1e-6)) + 1 for l, h, t in zip(lo, hi, target))
    check_size(shape, max_voxels, f"{case} resampled to {target} mm")
    hu = np.ascontiguousarray(volume.hu, dtype=np.float32)
    out = np.empty(shape, dtype=np.float32)
    _resample_kernel(hu, off, np.array([sy, sx]), lo, np.array(target), np.float32(hu.min()), out)
    origin = np.asarray(volume.origin_zyx, float) + lo @ np.asarray(volume.direction, float)
    return dataclasses.replace(volume, hu=out, spacing_zyx=target,
                               origin_zyx=tuple(float(v) for v in origin), slice_offsets=None)


@numba.njit(cache=True, parallel=True, fastmath=False)
def _resample_kernel(src, off, pix, start, step, fill, out):  # pragma: no cover - compiled
    S, Y, X = src.shape
    Zo, Yo, Xo = out.shape
    for k in numba.prange(Zo):
        d = start[0] + k * step[0]
        # the two slices bracketing plane d, and the weight of the upper one
        if d < off[0, 0] - _EPS * step[0] or d > off[S - 1, 0] + _EPS * step[0]:
            out[k] = fill
            continue
        s = np.searchsorted(off[:, 0], d) - 1
        s = min(max(s, 0), S - 2)
        w = (d - off[s, 0]) / (off[s + 1, 0] - off[s, 0])
        w = min(max(w, 0.0), 1.0)
        if w > 1.0 - 1e-9:
            w = 1.0
        for j in range(Yo):
            ymm = start[1] + j * step[1]
            for i in range(Xo):
                xmm = start[2] + i * step[2]
                acc = 0.0
                inside = True
                for t in range(2):
                    wt = (1.0 - w) if t == 0 else w
                    if wt < 1e-9:  # a plane through a slice needs no neighbour (which may not cover it)
                        continue
                    sl = s + t
                    r = (ymm - off[sl, 1]) / pix[0]
                    c = (xmm - off[sl, 2]) / pix[1]
                    if r < -_EPS or r > Y - 1 + _EPS or c < -_EPS or c > X - 1 + _EPS:
                        inside = False
                        break
                    r0 = min(max(int(np.floor(r)), 0), Y - 2)
                    c0 = min(max(int(np.floor(c)), 0), X - 2)
                    fr = min(max(r - r0, 0.0), 1.0)
                    fc = min(max(c - c0, 0.0), 1.0)
                    v = ((1 - fr) * ((1 - fc) * src[sl, r0, c0] + fc * src[sl, r0, c0 + 1])
                         + fr * ((1 - fc) * src[sl, r0 + 1, c0] + fc * src[sl, r0 + 1, c0 + 1]))
                    acc += wt * v
                out[k, j, i] = acc if inside else fill
