"""Intensity normalisation: optional HU window, then min/max onto [-1, 1] (the TCPC paper's choice).

The mapping is recorded as ``intensity_range = [lo, hi]`` (the values that map
to -1 and 1), so a stored value ``v`` maps back to HU as
``lo + (v + 1) / 2 * (hi - lo)`` (:func:`to_hu`).
"""
from __future__ import annotations

import numba
import numpy as np

from tcpc_data.float16 import float_to_half, numpy_casts


def check_clip(clip) -> tuple[float, float] | None:
    """Validate an HU window ``(lo, hi)`` with lo < hi; None means no window."""
    if clip is None:
        return None
    c = tuple(float(v) for v in clip)
    if len(c) != 2 or not all(np.isfinite(c)) or c[0] >= c[1]:
        raise ValueError(f"clip must be two finite HU values lo < hi, got {clip}")
    return c


def apply_clip(hu: np.ndarray, clip: tuple[float, float] | None) -> np.ndarray:
    """Clip HU (float32) to the window, in place when possible; a no-op without a window."""
    if clip is None:
        return hu
    return np.clip(hu, clip[0], clip[1], out=hu)


def normalise(hu: np.ndarray, case: str = "volume", out: np.ndarray | None = None
              ) -> tuple[np.ndarray, tuple[float, float]]:
    """Map ``hu`` linearly so its minimum becomes -1 and its maximum 1.

    Parameters
    ----------
    hu
        (Z, Y, X) float32, finite (already windowed if a window is wanted).
    case
        Case name for error messages.
    out
        (Z, Y, X) C-contiguous array for the result: float32, e.g. ``hu`` itself
        (each voxel is read before it is written; memory already touched spares
        the page faults of a fresh volume, which cost more than the mapping
        itself), or float16: the float32 result rounded as :func:`as_stored`
        rounds it, in the same pass (half the bytes to write, no second pass
        to cast). None: a new float32 array.

    Returns
    -------
    values
        (Z, Y, X) in [-1, 1], ``out``'s dtype.
    intensity_range
        ``(lo, hi)``: the HU that map to -1 and 1.
    """
    lo, hi = float(hu.min()), float(hu.max())
    if not hi > lo:
        raise ValueError(f"{case}: the image is constant ({lo} HU) after windowing; "
                         f"min/max normalisation is undefined")
    if out is None:
        out = np.empty(hu.shape, dtype=np.float32)
    elif out.shape != hu.shape or out.dtype not in (np.float32, np.float16) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 or float16 array of shape {hu.shape}")
    src, scale = np.ascontiguousarray(hu, dtype=np.float32), 2.0 / (hi - lo)
    # Waking Numba's threads costs milliseconds: small volumes run on this one
    parallel = hu.size >= _PARALLEL_VOXELS
    if out.dtype == np.float16 and numpy_casts():  # the library path: float32 values, NumPy's cast
        values = np.empty(hu.shape, dtype=np.float32)
        (_normalise_kernel if parallel else _normalise_kernel_serial)(src, lo, scale, values)
        np.copyto(out, values, casting="same_kind")
    elif out.dtype == np.float16:
        (_normalise_half if parallel else _normalise_half_serial)(src, lo, scale, out.view(np.uint16))
    else:
        (_normalise_kernel if parallel else _normalise_kernel_serial)(src, lo, scale, out)
    return out, (lo, hi)


_PARALLEL_VOXELS = 1 << 20


def _normalise_py(hu, lo, scale, out):  # pragma: no cover - compiled
    # float64 per voxel, so the minimum and maximum land exactly on -1 and 1
    for z in numba.prange(hu.shape[0]):
        for y in range(hu.shape[1]):
            for x in range(hu.shape[2]):
                v = (np.float64(hu[z, y, x]) - lo) * scale - 1.0
                out[z, y, x] = min(max(v, -1.0), 1.0)


_normalise_kernel = numba.njit(cache=True, parallel=True)(_normalise_py)
_normalise_kernel_serial = numba.njit(cache=True)(_normalise_py)  # prange runs as range


def _normalise_half_py(hu, lo, scale, out):  # pragma: no cover - compiled
    # _normalise_py's float32 values, a row at a time, then their float16 bits
    for z in numba.prange(hu.shape[0]):
        row = np.empty(hu.shape[2], dtype=np.float32)
        for y in range(hu.shape[1]):
            for x in range(hu.shape[2]):
                v = (np.float64(hu[z, y, x]) - lo) * scale - 1.0
                row[x] = min(max(v, -1.0), 1.0)
            for x in range(hu.shape[2]):
                out[z, y, x] = float_to_half(row[x])


def as_stored(values: np.ndarray, dtype) -> np.ndarray:
    """``values.astype(dtype)`` as the store keeps them; float32 -> float16 bit for bit as NumPy
    casts, but on every core (:mod:`tcpc_data.float16`; ``TCPC_FLOAT16=numpy``: NumPy's cast).

    Parameters
    ----------
    values
        (Z, Y, X) float32 (e.g. :func:`normalise`'s result); other dtypes take ``astype``.
    dtype
        The stored dtype: float16 or float32.
    """
    dtype = np.dtype(dtype)
    if dtype != np.float16 or values.dtype != np.float32 or numpy_casts():
        return values.astype(dtype, copy=False)
    src = np.ascontiguousarray(values).reshape(-1)
    out = np.empty(values.shape, dtype=np.uint16)
    kernel = _half_bits if src.size >= _PARALLEL_VOXELS else _half_bits_serial
    kernel(src, out.reshape(-1))
    return out.view(np.float16)


def _half_bits_py(f, out):  # pragma: no cover - compiled
    for i in numba.prange(f.size):
        out[i] = float_to_half(f[i])


_half_bits = numba.njit(cache=True, parallel=True)(_half_bits_py)
_half_bits_serial = numba.njit(cache=True)(_half_bits_py)
_normalise_half = numba.njit(cache=True, parallel=True)(_normalise_half_py)
_normalise_half_serial = numba.njit(cache=True)(_normalise_half_py)


def to_hu(values: np.ndarray, intensity_range) -> np.ndarray:
    """Inverse of :func:`normalise`: stored values in [-1, 1] back to HU (float64)."""
    lo, hi = (float(v) for v in intensity_range)
    return lo + (np.asarray(values, dtype=np.float64) + 1.0) / 2.0 * (hi - lo)


def hu_rounding(intensity_range, dtype) -> float:
    """Largest error, in HU, that storing normalised values as ``dtype`` adds to :func:`to_hu`.

    Half a unit in the last place of the largest magnitudes (|v| in [0.5, 1]: 2^-12 for float16,
    2^-25 for float32) times the HU per unit, (hi - lo) / 2: 0.5 HU for float16 over a 4095-HU
    window, so integer HU round back exactly below a 4096-HU range.
    """
    lo, hi = (float(v) for v in intensity_range)
    half_ulp = {np.dtype(np.float16): 2.0 ** -12, np.dtype(np.float32): 2.0 ** -25}[np.dtype(dtype)]
    return half_ulp * (hi - lo) / 2.0
