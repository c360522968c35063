"""Crops: the cube of side S centred on a voxel, padded with a background value at the volume border.

A crop centred on voxel c covers [c − S//2, c − S//2 + S) on every axis (for
even S the centre is the voxel just after the middle). The box may reach past
the volume; voxels outside are filled with ``background`` and the box (start
and stop, possibly negative or past the end) is recorded with each sample so
a reader knows which voxels are padding.
"""
from __future__ import annotations

import numpy as np


def crop_box(centre, size: int) -> np.ndarray:
    """Start and stop (2, 3) int64 voxel indices of the crop of side ``size`` centred on ``centre``."""
    start = np.asarray(centre, dtype=np.int64) - size // 2
    return np.stack([start, start + size])


def crop_padding(box, shape) -> list[list[int]]:
    """Voxels of background before and after the volume on each axis, ``[[z0, z1], [y0, y1], [x0, x1]]``.

    A thin volume (a nodule VOI a few slices deep) gives large z padding: a
    reader sees how much of a crop is real data without knowing the volume.
    """
    b = np.asarray(box, dtype=np.int64)
    n = np.asarray(shape, dtype=np.int64)
    return np.stack([np.clip(-b[0], 0, None), np.clip(b[1] - n, 0, None)], axis=1).tolist()


def crop(volume, centre, size: int, background: float) -> tuple[np.ndarray, np.ndarray]:
    """Cut a (size, size, size) crop centred on ``centre``, padding outside the volume.

    Parameters
    ----------
    volume
        (Z, Y, X) array or anything sliceable like one (a ``zarr.Array``: only
        the crop's region is read).
    centre
        Voxel (z, y, x) at the crop centre; may lie outside the volume only if
        the crop still overlaps it.
    size
        Crop side S in voxels (>= 1).
    background
        Value of voxels outside the volume (for tcpc images, −1: the bottom
        of the normalised range).

    Returns
    -------
    crop
        (S, S, S) array of the volume's dtype.
    box
        (2, 3) int64 start/stop of the crop in volume voxels (see ``crop_box``).

    Raises
    ------
    ValueError
        When ``volume`` is not 3-D, ``size`` < 1, or the crop misses the volume.
    """
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3:
        raise ValueError(f"crops need a 3-D volume, got shape {shape}")
    if int(size) < 1:
        raise ValueError(f"crop size must be >= 1, got {size}")
    box = crop_box(centre, int(size))
    if np.any(box[1] <= 0) or np.any(box[0] >= shape):
        raise ValueError(f"crop of side {size} centred on {tuple(int(c) for c in centre)} lies outside "
                         f"the volume of shape {shape}")
    return _crop(volume, box, shape, background), box


def _crop(volume, box: np.ndarray, shape: tuple[int, int, int], background: float) -> np.ndarray:
    """Read the part of ``box`` inside the volume and pad the rest (trusts its inputs)."""
    lo = np.maximum(box[0], 0)
    hi = np.minimum(box[1], shape)
    inside = np.asarray(volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    size = int(box[1, 0] - box[0, 0])
    out = np.full((size,) * 3, background, dtype=inside.dtype)
    a = lo - box[0]
    b = a + (hi - lo)
    out[a[0]:b[0], a[1]:b[1], a[2]:b[2]] = inside
    return out
