"""Body mask of a CT volume: the patient, without air, table, clothing or padding outside the scan field.

Recipe (on a grid of about 1.5 mm in-plane for speed, then nearest-neighbour
back to the full grid): voxels denser than ``threshold_hu`` (-500 HU: tissue
and bone; air, lung and the -2048/-3024 padding are below), holes filled
slice by slice so the lungs, airways and the skull's contents are inside
(before the opening, which could break a thin body wall), a per-slice opening
of ``opening_mm`` that cuts thin bridges to the table and blankets, then the
largest 3D connected component (the patient). Voxels below ``PADDING_BELOW_HU`` are
never body: scanners write -2048/-3024 outside the scan field, air is -1000.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from scipy import ndimage as ndi

PADDING_BELOW_HU = -1500.0


def body_mask(hu: np.ndarray, spacing_zyx=(1.0, 1.0, 1.0), *, threshold_hu: float = -500.0,
              opening_mm: float = 3.0, grid_mm: float = 1.5) -> np.ndarray:
    """Boolean (Z, Y, X) mask of the patient's body.

    Parameters
    ----------
    hu : (Z, Y, X) array
        CT intensities in Hounsfield units.
    spacing_zyx : 3 floats
        Voxel size in mm.
    threshold_hu : float
        Voxels above are tissue; the default separates air and lung from the body wall.
    opening_mm : float
        Radius (mm) of the in-plane opening that detaches table and thin objects; 0 disables.
    grid_mm : float
        In-plane size (mm) of the working grid (the volume is subsampled to it).

    Returns
    -------
    (Z, Y, X) bool array

    Raises
    ------
    ValueError
        When no voxel is above ``threshold_hu`` (e.g. the volume is not in HU).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"body_mask needs a 3D (Z, Y, X) volume, got shape {hu.shape}")
    sp = np.asarray(spacing_zyx, dtype=float)
    if sp.shape != (3,) or not np.all(sp > 0):
        raise ValueError(f"spacing_zyx must be 3 positive numbers, got {spacing_zyx!r}")
    fy = max(1, int(round(grid_mm / sp[1])))
    fx = max(1, int(round(grid_mm / sp[2])))
    small = hu[:, ::fy, ::fx] > threshold_hu
    if not small.any():
        raise ValueError(f"no voxel above {threshold_hu} HU: not a CT volume in Hounsfield units?")
    for z in range(small.shape[0]):
        small[z] = ndi.binary_fill_holes(small[z])
    if opening_mm > 0:
        ry = opening_mm / (sp[1] * fy)
        rx = opening_mm / (sp[2] * fx)
        ny, nx = int(math.floor(ry)), int(math.floor(rx))
        if ny >= 1 or nx >= 1:
            yy, xx = np.ogrid[-ny:ny + 1, -nx:nx + 1]
            disk = ((yy / max(ry, 1e-9)) ** 2 + (xx / max(rx, 1e-9)) ** 2) <= 1.0
            opened = ndi.binary_opening(small, structure=disk[None])
            if opened.any():  # a tiny phantom can vanish under the opening; keep it then
                small = opened
    comp, n = ndi.label(small)
    if n > 1:
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        small = comp == int(np.argmax(sizes))
    del comp
    # Back to the full grid; filled holes may enclose padding where the body touches the
    # scan field's edge, so padding is cleared on the way.
    out = np.empty(hu.shape, dtype=np.bool_)
    _upsample_and_unpad(np.ascontiguousarray(small), np.ascontiguousarray(hu, dtype=np.float32),
                        fy, fx, np.float32(PADDING_BELOW_HU), out)
    return out


@numba.njit(parallel=True, cache=True)
def _upsample_and_unpad(small, hu, fy, fx, padding_below, out):
    """out = small[z, y // fy, x // fx] and hu > padding_below (nearest-neighbour upsampling)."""
    Z, Y, X = hu.shape
    for z in numba.prange(Z):
        for y in range(Y):
            s_row = small[z, y // fy]
            h_row = hu[z, y]
            o_row = out[z, y]
            for x in range(X):
                o_row[x] = s_row[x // fx] and h_row[x] > padding_below
