"""3D SLIC supervoxels: a Numba-parallel drop-in for ``skimage.segmentation.slic`` on grayscale volumes.

The public :func:`slic` validates and converts its input exactly like
scikit-image (rescale to [0, 1] over the mask, Gaussian smoothing with sigma
divided by spacing, intensity scaled by ``1 / compactness``, spatial distance
weighted by spacing and divided by the grid step), then calls private Numba
kernels that trust their input:

- assignment runs voxel-major in blocks of 16 voxels of a row: per slice, the
  centres whose search window reaches each (band of rows, block) are listed
  once, and each costs one branch-free vector step on the block; no
  full-volume distance array is kept;
- distances are written with explicit FMAs and no fastmath, so every build
  (first compile or reloaded from Numba's cache) rounds alike and exact ties
  go to the lowest centre index;
- centre sums are accumulated per fixed z-slab while labels are written and
  reduced in slab order, so results do not depend on the thread count;
- connectivity is union-find over runs along x, read in memory order, in
  parallel over chunks of slices (the same labels for any chunking);
- no serial pass touches a fresh volume-sized buffer: first touches (page
  faults) are spread over the threads.
"""
from __future__ import annotations

import math
import mmap
import numbers

import numba
import numpy as np
from numba import prange
from skimage.util import regular_grid

from tcpc_data.supervoxels.fma import fma
from tcpc_data.supervoxels.smoothing import gaussian

# Half-width of a centre's search window in grid steps. scikit-image uses 2 (and
# evaluates 64 voxel-centre pairs per voxel in 3D); Achanta et al. (2012) use 1
# (8 pairs), which lost 3-4 % boundary recall against scikit-image on LIDC;
# 1.25 (16 pairs) stays within 1.5 % on every metric (bench/slic.py).
WINDOW_STEPS = 1.25
# Labels of the raw assignment: voxels outside the mask, and mask voxels no window reached.
_OUTSIDE, _ORPHAN = -2, -1
# A finite 'infinity' for distances: fastmath code may assume no inf.
_FAR = np.float32(3e38)
# Labels travel as float32 through the assignment: exact up to 2**24.
_MAX_CENTRES = 1 << 24
# Upper bound on slab partial sums (slabs x centres) to keep their memory small.
_MAX_PARTIALS = 1 << 22
# Voxels per block of the assignment: one AVX-512 vector of float32.
_LANES = 16
# Rows per band of the assignment, whose rows share their candidate lists.
_BAND_ROWS = 8
# Input dtypes the preparation kernels read directly (others are converted to float32 first).
_KERNEL_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.int8, np.int16, np.int32,
                                             np.int64, np.uint8, np.uint16, np.uint32, np.uint64))


def slic(image, n_segments=100, compactness=10.0, max_num_iter=10, sigma=0, spacing=None,
         mask=None, enforce_connectivity=True, min_size_factor=0.5, max_size_factor=3,
         start_label=1, channel_axis=None):
    """Segment a grayscale 2D/3D image into SLIC supervoxels (k-means in intensity + space).

    Keyword arguments and their meaning follow ``skimage.segmentation.slic``.

    Parameters
    ----------
    image : (Z, Y, X) or (Y, X) array
        Grayscale volume; NaN/inf allowed only outside ``mask``.
    n_segments : int
        Approximate number of supervoxels (inside ``mask`` when one is given), >= 1.
    compactness : float
        > 0. Balances intensity (image rescaled to [0, 1]) against space; higher is more cubic.
    max_num_iter : int
        >= 1. Maximum k-means iterations; stops early when no voxel changes label.
    sigma : float or sequence of floats
        >= 0. Gaussian smoothing width in voxels per axis; a scalar is divided by ``spacing``.
    spacing : sequence of floats, optional
        Voxel size per axis (e.g. mm), > 0; weights the spatial distance. Default all 1.
    mask : bool array of the image's shape, optional
        Supervoxels cover only True voxels; the rest get label ``start_label - 1``.
    enforce_connectivity : bool
        Make every supervoxel one 6-connected component; components smaller than
        ``min_size_factor`` times the mean segment size merge into a neighbour.
    min_size_factor : float
        >= 0, below ``max_size_factor``.
    max_size_factor : float
        > 0. Connected components are cut at this multiple of the mean segment size.
    start_label : {0, 1}
        First label.
    channel_axis : None
        Only grayscale images are supported; any other value raises ValueError.

    Returns
    -------
    labels : int32 array of the image's shape
        Supervoxel labels from ``start_label``.

    Notes
    -----
    Deviations from scikit-image 0.26 (documented; quality is compared in
    ``bench/slic.py``):

    - search window: half-width ``WINDOW_STEPS`` (1.25) grid steps per axis;
      scikit-image searches 2 steps (4x more work for about the same quality);
    - with a mask, seeds are the centroids of the mask voxels in each cell of a
      regular grid over the mask's bounding box (deterministic), instead of
      random k-means seeding followed by a spatial-only k-means pass;
    - computation in float32 with Deriche's recursive Gaussian for sigma >= 2
      voxels (exact FIR below; within 5e-4 of the kernel peak), so values
      differ at float32 and filter-approximation level;
    - mask voxels that no search window reaches are merged into a touching
      supervoxel by the connectivity pass (left at ``start_label - 1`` when
      ``enforce_connectivity`` is False);
    - a small component merges into the supervoxel just before its first voxel
      in raster order (scikit-image: the last labelled neighbour its
      breadth-first search met);
    - ``convert2lab`` and ``slic_zero`` (colour and SLIC-zero modes) are not offered.
    """
    if channel_axis is not None:
        raise ValueError(f"channel_axis must be None (grayscale only), got {channel_axis!r}")
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"image must be 2D or 3D grayscale, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise ValueError(f"image must be real-valued, got dtype {image.dtype}")
    is_2d = image.ndim == 2
    ndim = image.ndim
    n_segments = _int_param("n_segments", n_segments, 1)
    max_num_iter = _int_param("max_num_iter", max_num_iter, 1)
    compactness = _float_param("compactness", compactness, 0.0, strict=True)
    min_size_factor = _float_param("min_size_factor", min_size_factor, 0.0)
    max_size_factor = _float_param("max_size_factor", max_size_factor, 0.0, strict=True)
    if enforce_connectivity and min_size_factor >= max_size_factor:
        raise ValueError(f"min_size_factor must be below max_size_factor, got "
                         f"{min_size_factor} >= {max_size_factor}")
    if start_label not in (0, 1) or isinstance(start_label, bool):
        raise ValueError(f"start_label must be 0 or 1, got {start_label!r}")
    spacing = _vector_param("spacing", 1.0 if spacing is None else spacing, ndim, positive=True)
    if np.ndim(sigma) == 0:
        sig = _vector_param("sigma", sigma, ndim, positive=False) / spacing
    else:
        sig = _vector_param("sigma", sigma, ndim, positive=False)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != image.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
        mask = mask.astype(bool, copy=False)
    if is_2d:
        image, spacing, sig = image[None], np.r_[1.0, spacing], np.r_[0.0, sig]
        mask = None if mask is None else mask[None]
    shape = image.shape
    n_threads = numba.get_num_threads()
    mask8 = np.ones((1, 1, 1), dtype=np.uint8) if mask is None else mask.view(np.uint8)
    row_lo, row_hi, row_count = _row_extent(mask8, shape, n_threads)
    n_mask = int(row_count.sum())
    if n_mask == 0:
        raise ValueError("mask is empty: no voxel to segment")

    if image.dtype not in _KERNEL_DTYPES:
        image = image.astype(np.float32)  # e.g. float16 or non-native byte order
    finite, lo, hi = _finite_min_max(image, mask8, mask is not None, n_threads)
    if not finite:
        raise ValueError("image has NaN or infinite values inside the mask (or no mask given)")
    # Rescale to [0, 1], then scale by 1/compactness (linear, so before smoothing is the same);
    # outside the mask 0, so its values (maybe NaN) do not leak into smoothing.
    scale = (1.0 / (hi - lo) if hi > lo else 1.0) / compactness
    img = _volume_buffer(image.shape, np.float32)
    _scaled_copy(image, mask8, mask is not None, np.float32(lo), np.float32(scale), img, n_threads)
    if np.any(sig > 0):
        gaussian(img, sig, out=img)

    if mask is None:
        slices = regular_grid(shape, n_segments)
        steps = np.array([s.step or 1 for s in slices], dtype=np.float64)
        grid = np.stack(np.meshgrid(*[np.arange(n)[s] for n, s in zip(shape, slices)],
                                    indexing="ij"), -1).reshape(-1, 3)
        centres = np.zeros((len(grid), 4), dtype=np.float64)
        centres[:, :3] = grid
    else:
        centres, steps = _mask_seeds(mask8, n_segments, row_lo, row_hi, row_count, n_threads)
    n_centres = len(centres)
    if n_centres > _MAX_CENTRES:
        raise ValueError(f"n_segments gives {n_centres} supervoxels; at most {_MAX_CENTRES} are supported")

    labels = _volume_buffer(shape, np.int32)
    _touch(labels, n_threads)
    half = np.maximum(WINDOW_STEPS * steps, 1.0)
    _kmeans(img, mask8, mask is not None, row_lo, row_hi, centres, spacing.astype(np.float64),
            1.0 / float(steps.max()) ** 2, half, max_num_iter, labels, n_threads)
    if enforce_connectivity:
        segment_size = n_mask / n_centres
        min_size = int(min_size_factor * segment_size)
        max_size = max(1, int(max_size_factor * segment_size))
        labels = _connectivity(labels, min_size, max_size, start_label, img.reshape(-1).view(np.uint8),
                               n_threads)
    else:
        _shift_labels(labels, start_label)
    del img
    return labels[0] if is_2d else labels


def _volume_buffer(shape, dtype):
    """An uninitialised C-contiguous array in its own anonymous mapping, without a huge-page hint.

    NumPy asks the kernel for transparent huge pages on large arrays
    (``madvise``); where THP defrag is ``madvise`` (a common default) a fault on
    a fragmented host then compacts memory synchronously: first-touching the
    two volume-sized buffers cost 0.3-0.5 CPU s on a 128 MB volume, against
    0.1 s for plain pages. The mapping is released with the array.
    """
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _int_param(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float_param(name, value, minimum, strict=False):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if strict else value < minimum):
        rel = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {rel} {minimum}, got {value!r}")
    return float(value)


def _vector_param(name, value, ndim, positive):
    try:
        v = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or {ndim} numbers, got {value!r}") from None
    v = np.broadcast_to(v, (ndim,)).copy() if v.ndim == 0 else v
    rel = "> 0" if positive else ">= 0"
    if v.shape != (ndim,) or not np.all(np.isfinite(v)) or not np.all(v > 0 if positive else v >= 0):
        raise ValueError(f"{name} must be {ndim} finite numbers {rel}, got {value!r}")
    return v


def _mask_seeds(mask8, n_segments, row_lo, row_hi, row_count, n_threads):
    """Seeds for a masked volume: centroids of mask voxels per cell of a grid over its bounding box.

    The grid gets ``n_segments * box / mask`` points so about ``n_segments``
    cells hold mask voxels. ``row_lo``, ``row_hi``, ``row_count`` (Z, Y): see
    :func:`_row_extent`. Returns centres (K, 4) (z, y, x, intensity 0) and the grid steps.
    """
    full = row_count > 0
    zs, ys = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    box0 = np.array([zs[0], ys[0], row_lo[full].min()])
    box_shape = np.array([zs[-1] + 1, ys[-1] + 1, row_hi[full].max()]) - box0
    n_mask = int(row_count.sum())
    n_box = max(1, int(round(n_segments * math.prod(box_shape) / n_mask)))
    slices = regular_grid(tuple(box_shape), n_box)
    steps = np.array([s.step or 1 for s in slices], dtype=np.int64)
    n_cells = np.array([len(range(*s.indices(int(n)))) for s, n in zip(slices, box_shape)])
    sums = _cell_sums(mask8, row_lo, row_hi, box0, box_shape, steps, n_cells, n_threads)
    sums = sums.reshape(-1, 4)
    keep = sums[:, 0] > 0
    centres = np.zeros((int(keep.sum()), 4), dtype=np.float64)
    centres[:, :3] = sums[keep, 1:] / sums[keep, :1]
    return centres, steps.astype(np.float64)


@numba.njit(parallel=True, cache=True)
def _cell_sums(mask, row_lo, row_hi, box0, box_shape, steps, n_cells, n_threads):
    """Per grid cell: mask voxel count and coordinate sums, (cz, cy, cx, 4) float64.

    Only the rows' mask extents (``row_lo``, ``row_hi``) are read.

    Chunks of slices in parallel, each into its own copy; the sums are whole
    numbers (exact in float64), so adding the copies gives the same bits in any order.
    """
    n_chunks = max(1, min(box_shape[0], n_threads))
    parts = np.zeros((n_chunks, n_cells[0], n_cells[1], n_cells[2], 4), dtype=np.float64)
    for c in prange(n_chunks):
        out = parts[c]
        for z in range(box0[0] + c * box_shape[0] // n_chunks,
                       box0[0] + (c + 1) * box_shape[0] // n_chunks):
            iz = min((z - box0[0]) // steps[0], n_cells[0] - 1)
            for y in range(box0[1], box0[1] + box_shape[1]):
                iy = min((y - box0[1]) // steps[1], n_cells[1] - 1)
                for x in range(row_lo[z, y], row_hi[z, y]):
                    if mask[z, y, x]:
                        ix = min((x - box0[2]) // steps[2], n_cells[2] - 1)
                        cell = out[iz, iy, ix]
                        cell[0] += 1.0
                        cell[1] += z
                        cell[2] += y
                        cell[3] += x
    return parts.sum(axis=0)


@numba.njit(parallel=True, cache=True)
def _finite_min_max(image, mask, use_mask, n_threads):
    """(all finite, min, max) of the float32 values of ``image`` (Z, Y, X) inside ``mask``, in one pass.

    Chunks of slices in parallel; min and max are exact, so the result does not
    depend on the chunking.
    """
    Z, Y, X = image.shape
    n_chunks = max(1, min(Z, n_threads))
    lo = np.full(n_chunks, np.inf, dtype=np.float32)
    hi = np.full(n_chunks, -np.inf, dtype=np.float32)
    ok = np.ones(n_chunks, dtype=np.bool_)
    for c in prange(n_chunks):
        a, b, finite = np.float32(np.inf), np.float32(-np.inf), True
        for z in range(c * Z // n_chunks, (c + 1) * Z // n_chunks):
            for y in range(Y):
                for x in range(X):
                    if use_mask and not mask[z, y, x]:
                        continue
                    v = np.float32(image[z, y, x])
                    finite &= math.isfinite(v)
                    a = min(a, v)
                    b = max(b, v)
        lo[c], hi[c], ok[c] = a, b, finite
    return ok.all(), float(lo.min()), float(hi.max())


@numba.njit(parallel=True, cache=True)
def _scaled_copy(image, mask, use_mask, lo, scale, out, n_threads):
    """``out = (float32(image) - lo) * scale`` inside ``mask``, 0 outside; float32, parallel over slices.

    ``out`` is a fresh buffer: its first touch (page faults) is spread over the threads.
    """
    Z, Y, X = image.shape
    n_chunks = max(1, min(Z, n_threads))
    for c in prange(n_chunks):
        for z in range(c * Z // n_chunks, (c + 1) * Z // n_chunks):
            for y in range(Y):
                row = out[z, y]
                for x in range(X):
                    v = (np.float32(image[z, y, x]) - lo) * scale
                    row[x] = v if not use_mask or mask[z, y, x] else np.float32(0.0)


@numba.njit(parallel=True, cache=True)
def _touch(out, n_threads):
    """Zero a fresh (Z, ...) buffer in parallel chunks of slices, taking its page faults.

    Taken here they cost about half as much as in the first assignment pass,
    where they interrupt vector code.
    """
    Z = out.shape[0]
    n_chunks = max(1, min(Z, n_threads))
    for c in prange(n_chunks):
        for z in range(c * Z // n_chunks, (c + 1) * Z // n_chunks):
            out[z] = 0


@numba.njit(parallel=True, cache=True)
def _row_extent(mask, shape, n_threads):
    """First and one-past-last mask voxel, and number of mask voxels, of every (z, y) row.

    Three (Z, Y) int64 arrays; without a mask (``mask`` not of ``shape``) 0, X and X.
    Also gives the mask's voxel count and bounding box without another pass.
    """
    Z, Y, X = shape
    lo = np.zeros((Z, Y), dtype=np.int64)
    hi = np.full((Z, Y), X, dtype=np.int64)
    count = np.full((Z, Y), X, dtype=np.int64)
    if mask.shape[0] != Z or mask.shape[1] != Y or mask.shape[2] != X:
        return lo, hi, count
    n_chunks = max(1, min(Z, n_threads))
    for c in prange(n_chunks):
        for z in range(c * Z // n_chunks, (c + 1) * Z // n_chunks):
            for y in range(Y):
                row = mask[z, y]
                n = 0
                for x in range(X):
                    n += row[x]  # 0 or 1 (a bool array's bytes)
                a, b = X, X
                if n:
                    a, b = 0, X
                    while not row[a]:
                        a += 1
                    while not row[b - 1]:
                        b -= 1
                lo[z, y] = a
                hi[z, y] = b
                count[z, y] = n
    return lo, hi, count


@numba.njit(cache=True)
def _kmeans(img, mask, use_mask, row_lo, row_hi, centres, spacing, weight, half, n_iter, labels,
            n_threads):
    """Lloyd iterations: assign every voxel, then move centres to their members' means.

    ``centres`` (K, 4) z, y, x, intensity (scaled) is updated in place;
    ``labels`` receives centre indices, ``_ORPHAN`` or ``_OUTSIDE``.
    """
    Z = img.shape[0]
    K = centres.shape[0]
    n_slabs = max(1, min(Z, 64, _MAX_PARTIALS // max(K, 1)))
    partial = np.zeros((n_slabs, K, 5), dtype=np.float64)
    alive = np.ones(K, dtype=np.bool_)
    cuts = _slab_cuts(row_lo, row_hi, n_slabs, max(1, min(n_slabs, n_threads)))
    for it in range(n_iter):
        # The first pass has no previous labels to compare. The last pass moves
        # no centre: no sums.
        last = it == n_iter - 1
        changed = _assign(img, mask, use_mask, row_lo, row_hi, centres, alive, spacing, weight,
                          half, labels, partial, it > 0, not last, cuts)
        if last or changed == 0:
            break
        # Ordered reduction over slabs: the same sums whatever the thread count.
        for k in range(K):
            n = 0.0
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            s4 = 0.0
            for s in range(n_slabs):
                n += partial[s, k, 0]
                s1 += partial[s, k, 1]
                s2 += partial[s, k, 2]
                s3 += partial[s, k, 3]
                s4 += partial[s, k, 4]
            if n > 0:
                centres[k, 0] = s1 / n
                centres[k, 1] = s2 / n
                centres[k, 2] = s3 / n
                centres[k, 3] = s4 / n
            else:
                alive[k] = False  # an empty cluster stays empty (scikit-image: NaN centre)


@numba.njit(cache=True)
def _slab_cuts(row_lo, row_hi, n_slabs, n_chunks):
    """Runs of slabs for ``n_chunks`` threads holding about equal work: (n_chunks + 1,) first slabs.

    Work is counted in 16-voxel blocks of the rows' mask extents (plus one per
    row): with a mask (e.g. the body), slices differ in work and equal numbers
    of slices left one thread waiting for the other.
    """
    Z, Y = row_lo.shape
    cost = np.zeros(n_slabs + 1, dtype=np.float64)
    for s in range(n_slabs):
        c = 0
        for z in range(s * Z // n_slabs, (s + 1) * Z // n_slabs):
            for y in range(Y):
                a, b = row_lo[z, y], row_hi[z, y]
                c += 1 + ((b - 1) // _LANES + 1 - a // _LANES if a < b else 0)
        cost[s + 1] = cost[s] + c
    cuts = np.empty(n_chunks + 1, dtype=np.int64)
    cuts[0] = 0
    s = 0
    for c in range(1, n_chunks):
        target = cost[n_slabs] * c / n_chunks
        while s < n_slabs and cost[s + 1] < target:
            s += 1
        if s < n_slabs and cost[s + 1] - target < target - cost[s]:
            s += 1  # the nearer border
        cuts[c] = s
    cuts[n_chunks] = n_slabs
    return cuts


@numba.njit(parallel=True, cache=True, fastmath=True)
def _assign(img, mask, use_mask, row_lo, row_hi, centres, alive, spacing, weight, half, labels,
            partial, count, sums, cuts):
    """One assignment pass; fills ``partial`` (slab, centre, [n, Σz, Σy, Σx, ΣI]) if ``sums``.

    Returns the number of labels changed, or -1 without ``count`` (``labels``
    is then only written: the first pass has no previous labels)."""
    Z, Y, X = img.shape
    K = centres.shape[0]
    n_slabs = partial.shape[0]
    # Integer search windows per centre, [lo, hi) per axis, as scikit-image truncates them.
    lo = np.empty((K, 3), dtype=np.int64)
    hi = np.empty((K, 3), dtype=np.int64)
    dims = (Z, Y, X)
    for k in range(K):
        for a in range(3):
            if alive[k]:
                lo[k, a] = int(max(centres[k, a] - half[a], 0.0))
                hi[k, a] = int(min(centres[k, a] + half[a] + 1.0, float(dims[a])))
            else:
                lo[k, a] = 0
                hi[k, a] = 0
    changes = np.zeros(n_slabs, dtype=np.int64)
    sz, sy, sx = spacing[0], spacing[1], spacing[2]
    w = np.float32(weight * sx * sx)
    cx32 = centres[:, 2].astype(np.float32)
    ci32 = centres[:, 3].astype(np.float32)
    # Each thread takes a run of slabs (slabs cuts[c] to cuts[c + 1] - 1) and
    # allocates its buffers once; the sums stay per slab, so results do not
    # depend on the thread count.
    for c in prange(cuts.size - 1):
        n_blocks = (X + _LANES - 1) // _LANES
        work = np.zeros(n_blocks * 4 * _LANES, dtype=np.float32)
        for x in range(n_blocks * _LANES):
            work[(x // _LANES) * 4 * _LANES + _LANES + x % _LANES] = x
        lab = np.empty(n_blocks * _LANES, dtype=np.int32)  # padded to whole blocks
        for s in range(cuts[c], cuts[c + 1]):
            partial[s] = 0.0
            changes[s] = _assign_slab(img, mask, use_mask, row_lo, row_hi, centres, lo, hi, cx32,
                                      ci32, sz, sy, w, weight, s * Z // n_slabs,
                                      (s + 1) * Z // n_slabs, work, lab, labels, partial[s], count,
                                      sums)
    return changes.sum() if count else -1


@numba.njit(cache=True, fastmath=True)
def _assign_slab(img, mask, use_mask, row_lo, row_hi, centres, lo, hi, cx32, ci32, sz, sy, w,
                 weight, z0, z1, work, lab, labels, part, count, sums):
    """Assign slices z0..z1-1, accumulating their centre sums in ``part`` if ``sums``.

    Returns the number of labels changed (0 without ``count``: labels are then
    written without reading the previous ones).

    A row is cut into blocks of ``_LANES`` voxels; ``work`` holds per block the
    intensities, x positions, best distances and labels (as float32, exact below
    ``_MAX_CENTRES``) of its lanes, so every centre that reaches a block costs one
    branch-free vector step. The centres reaching each (band of ``_BAND_ROWS``
    rows, block) are listed once per slice.
    """
    Z, Y, X = img.shape
    K = centres.shape[0]
    n_blocks = (X + _LANES - 1) // _LANES
    n_changed = 0
    zlist = np.empty(K, dtype=np.int64)
    for z in range(z0, z1):
        # Centres whose window covers slice z, in increasing index (ties go to the lowest).
        nz = 0
        for k in range(K):
            if lo[k, 0] <= z < hi[k, 0]:
                zlist[nz] = k
                nz += 1
        # Bands of _BAND_ROWS rows; per band: the parameters of the centres reaching
        # any of its rows (one entry per band and centre); per (band, block): the
        # entries of the centres reaching it (CSR, index order kept). Window edges
        # in y are per row (see _row_bases); exact bands, cut at every edge, were
        # a row or two thin once the centres had moved, and listing them cost
        # more than the sweeps.
        n_bands = (Y + _BAND_ROWS - 1) // _BAND_ROWS
        bc_start = np.zeros(n_bands + 1, dtype=np.int64)
        cand_start = np.zeros(n_bands * n_blocks + 1, dtype=np.int64)
        for i in range(nz):
            k = zlist[i]
            bx0, bx1 = lo[k, 2] // _LANES, (hi[k, 2] - 1) // _LANES + 1
            for band in range(lo[k, 1] // _BAND_ROWS, (hi[k, 1] - 1) // _BAND_ROWS + 1):
                bc_start[band + 1] += 1
                for bx in range(bx0, bx1):
                    cand_start[band * n_blocks + bx + 1] += 1
        for i in range(n_bands):
            bc_start[i + 1] += bc_start[i]
        for i in range(n_bands * n_blocks):
            cand_start[i + 1] += cand_start[i]
        n_entries = bc_start[n_bands]
        e_dz2 = np.empty(n_entries, dtype=np.float64)
        e_cy = np.empty(n_entries, dtype=np.float64)
        e_rows = np.empty((n_entries, 2), dtype=np.int64)  # the centre's window in y, [lo, hi)
        e_base = np.empty(n_entries, dtype=np.float32)
        e_par = np.empty((n_entries, 5), dtype=np.float32)  # cx, intensity, x lo, x hi, label
        cand = np.empty(cand_start[n_bands * n_blocks], dtype=np.int32)
        bfill = bc_start[:n_bands].copy()
        cfill = cand_start[:n_bands * n_blocks].copy()
        for i in range(nz):
            k = zlist[i]
            dz = sz * (centres[k, 0] - z)
            bx0, bx1 = lo[k, 2] // _LANES, (hi[k, 2] - 1) // _LANES + 1
            for band in range(lo[k, 1] // _BAND_ROWS, (hi[k, 1] - 1) // _BAND_ROWS + 1):
                e = bfill[band]
                bfill[band] += 1
                e_dz2[e] = dz * dz
                e_cy[e] = centres[k, 1]
                e_rows[e, 0] = lo[k, 1]
                e_rows[e, 1] = hi[k, 1]
                e_par[e, 0] = cx32[k]
                e_par[e, 1] = ci32[k]
                e_par[e, 2] = lo[k, 2]
                e_par[e, 3] = hi[k, 2]
                e_par[e, 4] = k
                for bx in range(bx0, bx1):
                    j = band * n_blocks + bx
                    cand[cfill[j]] = e
                    cfill[j] += 1
        img_z = img[z]
        for y in range(Y):
            a, b = row_lo[z, y], row_hi[z, y]
            out_row = labels[z, y]
            if a >= b:
                if not count:
                    out_row[:] = _OUTSIDE
                else:
                    for x in range(X):
                        n_changed += out_row[x] != _OUTSIDE
                        out_row[x] = _OUTSIDE
                continue
            img_row = img_z[y]
            band = y // _BAND_ROWS
            _row_bases(e_base, e_cy, e_dz2, e_rows, bc_start[band], bc_start[band + 1], y, sy,
                       weight)
            bx0, bx1 = a // _LANES, (b - 1) // _LANES + 1
            for bx in range(bx0, bx1):
                o = np.uint64(bx * 4 * _LANES)
                if bx * _LANES + _LANES <= X:
                    x0 = np.uint64(bx * _LANES)
                    for j in range(np.uint64(_LANES)):
                        work[o + j] = img_row[x0 + j]
                else:
                    for j in range(X - bx * _LANES):
                        work[o + np.uint64(j)] = img_row[bx * _LANES + j]
                for j in range(np.uint64(_LANES)):
                    work[o + np.uint64(2 * _LANES) + j] = _FAR
                    work[o + np.uint64(3 * _LANES) + j] = _ORPHAN
                j = band * n_blocks + bx
                _sweep_block(work, o, cand, cand_start[j], cand_start[j + 1], e_base, e_par, w)
                x0 = np.uint64(bx * _LANES)
                for j in range(np.uint64(_LANES)):
                    lab[x0 + j] = np.int32(work[o + np.uint64(3 * _LANES) + j])
            # Write labels, count changes, accumulate run by run.
            for x in range(0, a):
                out_row[x] = _OUTSIDE
            for x in range(b, X):
                out_row[x] = _OUTSIDE
            if use_mask:
                mask_row = mask[z, y]
                for x in range(a, b):
                    if mask_row[x] == 0:
                        lab[x] = _OUTSIDE
            if not count:
                for x in range(np.uint64(a), np.uint64(b)):
                    out_row[x] = lab[x]
            else:
                for x in range(np.uint64(a), np.uint64(b)):
                    n_changed += out_row[x] != lab[x]
                    out_row[x] = lab[x]
            x = a if sums else b
            while x < b:
                k = lab[x]
                x0 = x
                x += 1
                while x < b and lab[x] == k:
                    x += 1
                if k >= 0:
                    # (fastmath: a vectorised sum, in an order fixed by the data alone)
                    si = 0.0
                    for j in range(np.uint64(x0), np.uint64(x)):
                        si += img_row[j]
                    n = x - x0
                    part[k, 0] += n
                    part[k, 1] += z * n
                    part[k, 2] += y * n
                    part[k, 3] += (x0 + x - 1) * n * 0.5
                    part[k, 4] += si
    return n_changed


@numba.njit(cache=True)
def _row_bases(e_base, e_cy, e_dz2, e_rows, e0, e1, y, sy, weight):
    """Spatial distance (dz, dy) x weight of row y to entries e0..e1-1, float32.

    ``_FAR`` where the entry's centre does not reach row y: its distances then
    round to ``_FAR`` or more and never win a voxel. Not fastmath, so LLVM may not
    reassociate it: every entry rounds alike, in vector or scalar code, and equal
    distances stay equal (ties go to the lowest index).
    """
    for e in range(e0, e1):
        dy = sy * (e_cy[e] - y)
        base = np.float32(fma(dy, dy, e_dz2[e]) * weight)
        e_base[e] = base if e_rows[e, 0] <= y < e_rows[e, 1] else _FAR


@numba.njit(cache=True)
def _sweep_block(work, o, cand, i0, i1, e_base, e_par, w):
    """Offer one block's lanes (``work[o:o + 4 * _LANES]``) to entries ``cand[i0:i1]`` in order.

    The lanes' layout (intensity, x, best distance, label) at constant offsets
    lets LLVM turn the lane loop into one branch-free vector step per entry;
    the window test does not depend on the best distance, so the loop-carried
    chain is one compare and one select. Not fastmath: the distance is
    ``fma(di, di, fma(dx * dx, w, base))`` in every compile, so equal distances
    stay equal and ties go to the lowest index.
    """
    for i in range(np.uint64(i0), np.uint64(i1)):
        e = np.uint64(cand[i])
        base = e_base[e]
        cx = e_par[e, 0]
        ci = e_par[e, 1]
        xl = e_par[e, 2]
        xh = e_par[e, 3]
        kv = e_par[e, 4]
        for j in range(np.uint64(_LANES)):
            xv = work[o + np.uint64(_LANES) + j]
            dx = cx - xv
            di = work[o + j] - ci
            d = fma(di, di, fma(dx * dx, w, base))
            d = d if (xv >= xl) & (xv < xh) else _FAR
            bd = work[o + np.uint64(2 * _LANES) + j]
            bk = work[o + np.uint64(3 * _LANES) + j]
            take = d < bd
            work[o + np.uint64(2 * _LANES) + j] = d if take else bd
            work[o + np.uint64(3 * _LANES) + j] = kv if take else bk


@numba.njit(cache=True)
def _shift_labels(labels, start_label):
    flat = labels.reshape(-1)
    for i in range(flat.size):
        v = flat[i]
        flat[i] = v + start_label if v >= 0 else start_label - 1


@numba.njit(cache=True)
def _find(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@numba.njit(cache=True)
def _run_at(x_lo, x_hi, first, last, x):
    """Index of the run of one row (runs first..last-1, sorted) that holds column x."""
    lo, hi = first, last - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if x_lo[mid] <= x:
            lo = mid
        else:
            hi = mid - 1
    return lo


@numba.njit(cache=True)
def _union_rows(parent, row_start, x_lo, x_hi, run_lab, r, q):
    """Union the runs of row r with the overlapping runs of equal label in row q (smaller root wins)."""
    i, i_end = row_start[r], row_start[r + 1]
    j, j_end = row_start[q], row_start[q + 1]
    while i < i_end and j < j_end:
        if run_lab[i] == run_lab[j] and run_lab[i] != _OUTSIDE \
                and max(x_lo[i], x_lo[j]) < min(x_hi[i], x_hi[j]):
            a = _find(parent, i)
            b = _find(parent, j)
            if a < b:
                parent[b] = a
            elif b < a:
                parent[a] = b
        if x_hi[i] <= x_hi[j]:
            i += 1
        else:
            j += 1


@numba.njit(parallel=True, cache=True)
def _connectivity(seg, min_size, max_size, start_label, scratch, n_threads):
    """Relabel ``seg`` (in place, returned) into 6-connected components, labels from ``start_label`` in raster order.

    Union-find over runs of equal labels along x (memory is read in order,
    unlike a voxel breadth-first search). A component smaller than
    ``min_size``, or made of orphan voxels, takes the label of the component
    just before its first voxel (along x, else y, else z), as scikit-image
    merges into an already labelled neighbour. A component larger than
    ``max_size`` is cut into breadth-first pieces of at most ``max_size``
    voxels. Outside voxels become ``start_label - 1``.

    Runs are found, united and written back in parallel over chunks of slices;
    unions link the larger root under the smaller, so every component's root is
    its first run in raster order whatever the order of the unions, and the
    labels do not depend on the chunking.

    ``scratch`` (bytes, uint8): memory for the per-run arrays (48 bytes a run),
    e.g. the float32 volume the k-means no longer needs, whose pages are
    already mapped; a new buffer is allocated when it is too small.
    """
    Z, Y, X = seg.shape
    n_rows = Z * Y
    n_chunks = max(1, min(Z, n_threads))
    row_start = np.zeros(n_rows + 1, dtype=np.int64)
    for c in prange(n_chunks):
        for r in range(c * Z // n_chunks * Y, (c + 1) * Z // n_chunks * Y):
            row = seg[r // Y, r % Y]
            n = 1
            for x in range(1, X):
                n += row[x] != row[x - 1]
            row_start[r + 1] = n
    for r in range(n_rows):
        row_start[r + 1] += row_start[r]
    n_runs = row_start[n_rows]
    buf = scratch if scratch.size >= 48 * n_runs else np.empty(48 * n_runs, dtype=np.uint8)
    run_row = buf[:8 * n_runs].view(np.int64)
    parent = buf[8 * n_runs:16 * n_runs].view(np.int64)
    size = buf[16 * n_runs:24 * n_runs].view(np.int64)  # at roots only, as are the next two
    roots = buf[24 * n_runs:32 * n_runs].view(np.int64)  # chunk c's roots from its first run's on
    final = buf[32 * n_runs:36 * n_runs].view(np.int32)
    x_lo = buf[36 * n_runs:40 * n_runs].view(np.int32)
    x_hi = buf[40 * n_runs:44 * n_runs].view(np.int32)
    run_lab = buf[44 * n_runs:48 * n_runs].view(np.int32)
    n_roots = np.zeros(n_chunks, dtype=np.int64)
    for c in prange(n_chunks):
        z0, z1 = c * Z // n_chunks, (c + 1) * Z // n_chunks
        for r in range(z0 * Y, z1 * Y):
            row = seg[r // Y, r % Y]
            i = row_start[r]
            x_lo[i] = 0
            run_lab[i] = row[0]
            for x in range(1, X):
                if row[x] != row[x - 1]:
                    x_hi[i] = x
                    i += 1
                    x_lo[i] = x
                    run_lab[i] = row[x]
            x_hi[i] = X
            for i in range(row_start[r], row_start[r + 1]):
                run_row[i] = r
                parent[i] = i
        # Union overlapping runs of equal label in the rows above (y - 1) and before
        # (z - 1) within the chunk: its runs are a range of their own.
        for r in range(z0 * Y, z1 * Y):
            if r % Y > 0:
                _union_rows(parent, row_start, x_lo, x_hi, run_lab, r, r - 1)
            if r - Y >= z0 * Y:
                _union_rows(parent, row_start, x_lo, x_hi, run_lab, r, r - Y)
        # Every run to its chunk root (parent[i] <= i, so one ascending sweep),
        # sizes summed at the chunk roots, which are listed from the chunk's first run on.
        i0 = row_start[z0 * Y]
        n = 0
        for i in range(i0, row_start[z1 * Y]):
            p = parent[parent[i]]
            parent[i] = p
            if p == i:
                size[i] = x_hi[i] - x_lo[i]
                roots[i0 + n] = i
                n += 1
            else:
                size[p] += x_hi[i] - x_lo[i]
        n_roots[c] = n
    # Across chunk borders (links chunk roots); then, in raster order, chunk roots
    # to their component's root, the first run of the component in raster order
    # (unions keep the smaller index), which receives their sizes.
    for c in range(1, n_chunks):
        z0 = c * Z // n_chunks
        for r in range(z0 * Y, (z0 + 1) * Y):
            _union_rows(parent, row_start, x_lo, x_hi, run_lab, r, r - Y)
    for c in range(n_chunks):  # (two roots of chunk 0 may meet in chunk 1)
        i0 = row_start[c * Z // n_chunks * Y]
        for j in range(i0, i0 + n_roots[c]):
            i = roots[j]
            root = _find(parent, i)
            parent[i] = root
            if root != i:
                size[root] += size[i]
    # Every run's parent is a chunk root, whose parent is now its component's root.
    for c in prange(n_chunks):
        for i in range(row_start[c * Z // n_chunks * Y], row_start[(c + 1) * Z // n_chunks * Y]):
            p = parent[parent[i]]
            if parent[i] != p:  # (chunk roots are read by other chunks' runs: not written)
                parent[i] = p
    # Labels of the components, in raster order of their roots.
    new = start_label
    for c in range(n_chunks):
        i0 = row_start[c * Z // n_chunks * Y]
        for j in range(i0, i0 + n_roots[c]):
            i = roots[j]
            if parent[i] != i:
                continue
            lab = run_lab[i]
            if lab == _OUTSIDE:
                final[i] = start_label - 1
                continue
            if size[i] < min_size or lab == _ORPHAN:
                r = run_row[i]
                z, y = r // Y, r % Y
                prev = -1
                if x_lo[i] > 0:
                    prev = i - 1
                elif y > 0:
                    prev = _run_at(x_lo, x_hi, row_start[r - 1], row_start[r], x_lo[i])
                elif z > 0:
                    prev = _run_at(x_lo, x_hi, row_start[r - Y], row_start[r - Y + 1], x_lo[i])
                if prev >= 0 and final[parent[prev]] >= start_label:
                    final[i] = final[parent[prev]]
                    continue
            final[i] = new
            new += 1
    out = seg  # the runs hold everything still needed: relabel in place (no second volume)
    for c in prange(n_chunks):
        for r in range(c * Z // n_chunks * Y, (c + 1) * Z // n_chunks * Y):
            row = out[r // Y, r % Y]
            for i in range(row_start[r], row_start[r + 1]):
                v = final[parent[i]]
                for x in range(x_lo[i], x_hi[i]):
                    row[x] = v
    # Cut oversized components (rare) into breadth-first pieces, as scikit-image does.
    big = np.zeros(new + 1, dtype=np.bool_)
    n_big = 0
    for c in range(n_chunks):
        i0 = row_start[c * Z // n_chunks * Y]
        for j in range(i0, i0 + n_roots[c]):
            i = roots[j]
            if parent[i] == i and final[i] >= start_label and size[i] > max_size:
                big[final[i]] = True
                n_big += 1
    if n_big:
        new = _split_big(out, big, max_size, new)
    return out


@numba.njit(cache=True)
def _split_big(out, big, max_size, new):
    """Relabel voxels of labels flagged in ``big`` into BFS pieces of <= max_size voxels.

    The first piece keeps the label; later pieces get labels from ``new`` on.
    Returns the next unused label.
    """
    Z, Y, X = out.shape
    done = np.zeros(big.size, dtype=np.bool_)  # first piece of a label already cut
    visited = np.zeros(out.shape, dtype=np.bool_)
    qz = np.empty(max_size, dtype=np.int32)
    qy = np.empty(max_size, dtype=np.int32)
    qx = np.empty(max_size, dtype=np.int32)
    for z0 in range(Z):
        for y0 in range(Y):
            for x0 in range(X):
                lab = out[z0, y0, x0]
                if lab < 0 or lab >= big.size or not big[lab] or visited[z0, y0, x0]:
                    continue
                piece = lab if not done[lab] else new
                if done[lab]:
                    new += 1
                done[lab] = True
                visited[z0, y0, x0] = True
                out[z0, y0, x0] = piece
                qz[0], qy[0], qx[0] = z0, y0, x0
                size = 1
                head = 0
                while head < size and size < max_size:
                    z, y, x = qz[head], qy[head], qx[head]
                    head += 1
                    for nb in range(6):
                        zz, yy, xx = z, y, x
                        if nb == 0:
                            xx += 1
                        elif nb == 1:
                            xx -= 1
                        elif nb == 2:
                            yy += 1
                        elif nb == 3:
                            yy -= 1
                        elif nb == 4:
                            zz += 1
                        else:
                            zz -= 1
                        if zz < 0 or yy < 0 or xx < 0 or zz >= Z or yy >= Y or xx >= X:
                            continue
                        if out[zz, yy, xx] == lab and not visited[zz, yy, xx]:
                            visited[zz, yy, xx] = True
                            out[zz, yy, xx] = piece
                            qz[size], qy[size], qx[size] = zz, yy, xx
                            size += 1
                            if size >= max_size:
                                break
    return new
