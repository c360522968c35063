"""SLIC: known answers, a plain NumPy reference, mask/connectivity, determinism, bad parameters, Gaussian."""
import os
import subprocess
import sys
from itertools import product
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from bench import segmetrics
from tcpc_data.supervoxels.smoothing import gaussian
from tcpc_data.phantom import make_phantom
from tcpc_data.supervoxels.slic import (WINDOW_STEPS, _connectivity, _mask_seeds, _row_extent, _slab_cuts,
                                         slic)


def _octants(shape=(20, 21, 22), seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros(shape)
    halves = [(slice(None, n // 2), slice(n // 2, None)) for n in shape]
    slices = list(product(*halves))
    for s, shade in zip(slices, np.arange(0, 1.000001, 1.0 / 7)):
        img[s] = shade
    img += 0.001 * rng.normal(size=shape)
    return np.clip(img, 0, 1), slices


def test_eight_shaded_octants_give_eight_labels():
    # scikit-image's test_gray_3d known answer
    img, slices = _octants()
    seg = slic(img, sigma=0, n_segments=8, compactness=1, start_label=0)
    assert seg.dtype == np.int32 and len(np.unique(seg)) == 8
    for s, c in zip(slices, range(8)):
        assert np.all(seg[s] == c)


def test_spacing_weights_the_spatial_distance():
    # scikit-image's test_spacing known answer: 2 rows x 5 columns, 2 segments
    rng = np.random.default_rng(0)
    img = np.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], float) + 0.1 * rng.normal(size=(2, 5))
    plain = slic(img, n_segments=2, sigma=0, compactness=1.0, start_label=0)
    spaced = slic(img, n_segments=2, sigma=0, spacing=[500, 1], compactness=1.0, start_label=0)
    assert np.array_equal(plain, [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]])
    assert np.array_equal(spaced, [[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])


def test_scalar_sigma_is_divided_by_spacing():
    rng = np.random.default_rng(1)
    img = ndi.gaussian_filter(rng.random((12, 24, 24)), 2)
    kw = dict(n_segments=20, compactness=0.1)
    a = slic(img, sigma=4.0, spacing=(4, 1, 2), **kw)
    b = slic(img, sigma=(1.0, 4.0, 2.0), spacing=(4, 1, 2), **kw)
    assert np.array_equal(a, b)


def _reference_kmeans(img, n_segments, compactness, n_iter, spacing):
    """Plain NumPy SLIC (no smoothing, no mask, no connectivity): centre-major like scikit-image."""
    from skimage.util import regular_grid

    x = (img - img.min()) / (img.max() - img.min()) / compactness
    slices = regular_grid(x.shape, n_segments)
    steps = np.array([s.step or 1 for s in slices], float)
    grid = np.stack(np.meshgrid(*[np.arange(n)[s] for n, s in zip(x.shape, slices)], indexing="ij"), -1)
    cen = np.concatenate([grid.reshape(-1, 3), np.zeros((grid[..., 0].size, 1))], 1)
    half = WINDOW_STEPS * steps
    zz, yy, xx = np.indices(x.shape)
    for it in range(n_iter):
        dist = np.full(x.shape, np.inf)
        lab = np.full(x.shape, -1)
        for k, c in enumerate(cen):
            if np.isnan(c[0]):
                continue
            lo = [int(max(c[a] - half[a], 0)) for a in range(3)]
            hi = [int(min(c[a] + half[a] + 1, x.shape[a])) for a in range(3)]
            win = tuple(slice(lo[a], hi[a]) for a in range(3))
            d = (((spacing[0] * (c[0] - zz[win])) ** 2 + (spacing[1] * (c[1] - yy[win])) ** 2
                  + (spacing[2] * (c[2] - xx[win])) ** 2) / steps.max() ** 2 + (x[win] - c[3]) ** 2)
            better = d < dist[win]
            dist[win][better] = d[better]
            lab[win][better] = k
        if it == n_iter - 1:
            break
        for k in range(len(cen)):
            m = lab == k
            cen[k] = [zz[m].mean(), yy[m].mean(), xx[m].mean(), x[m].mean()] if m.any() else np.nan
    return lab


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_numba_equals_numpy_reference_on_tiny_volumes(seed):
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.random((10, 14, 16)), 1.5)
    spacing = (2.0, 1.0, 0.8)
    got = slic(img, n_segments=12, compactness=0.3, max_num_iter=5, spacing=spacing,
               enforce_connectivity=False, start_label=0)
    want = _reference_kmeans(img, 12, 0.3, 5, spacing)
    # float32 kernel vs float64 reference: only exact ties may differ
    assert np.mean(got == want) > 0.998


@settings(max_examples=15, deadline=None)
@given(st.tuples(st.integers(3, 9), st.integers(5, 30), st.integers(3, 45)), st.integers(0, 2 ** 16),
       st.integers(2, 12))
def test_numba_equals_numpy_reference_on_any_shape(shape, seed, n_segments):
    # rows of any length (partial 16-voxel blocks) and any number of rows (partial bands)
    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.random(shape), 1.0)
    spacing = (1.5, 1.0, 0.9)
    got = slic(img, n_segments=n_segments, compactness=0.3, max_num_iter=3, spacing=spacing,
               enforce_connectivity=False, start_label=0)
    want = _reference_kmeans(img, n_segments, 0.3, 3, spacing)
    assert np.mean(got == want) > 0.99  # float32 kernel vs float64 reference: near-ties only


def test_exact_ties_go_to_the_lowest_centre_index():
    # After seeding, every centre's intensity is 0, so a voxel midway in x between two
    # centres of one grid row is at exactly equal distance from both: the lower index
    # takes it, as in the reference (and in scikit-image's centre-major loop).
    from skimage.util import regular_grid

    rng = np.random.default_rng(5)
    img = ndi.gaussian_filter(rng.random((12, 20, 70)), 2)
    kw = dict(n_segments=30, compactness=0.2, max_num_iter=1, enforce_connectivity=False, start_label=0)
    got = slic(img, **kw)
    want = _reference_kmeans(img, 30, 0.2, 1, (1.0, 1.0, 1.0))
    slices = regular_grid(img.shape, 30)
    zs, ys, xs = (np.arange(n)[s] for n, s in zip(img.shape, slices))
    assert len(xs) >= 2 and (xs[1] - xs[0]) % 2 == 0
    n_ties = 0
    for iz, z in enumerate(zs):
        for iy, y in enumerate(ys):
            for ix in range(len(xs) - 1):
                mid = (xs[ix] + xs[ix + 1]) // 2
                lower = (iz * len(ys) + iy) * len(xs) + ix
                assert got[z, y, mid] == want[z, y, mid] == lower
                n_ties += 1
    assert n_ties >= 8


def test_mask_is_respected_and_covered():
    img, _ = _octants((16, 24, 24))
    mask = np.zeros(img.shape, bool)
    mask[2:14, 3:20, 5:22] = True
    mask[6:9, 8:12, 8:12] = False  # a hole
    seg = slic(img, n_segments=30, compactness=0.5, mask=mask)
    assert np.all(seg[~mask] == 0) and np.all(seg[mask] > 0)
    seg0 = slic(img, n_segments=30, compactness=0.5, mask=mask, enforce_connectivity=False)
    assert np.all(seg0[~mask] == 0)


def test_every_supervoxel_is_one_connected_piece():
    rng = np.random.default_rng(3)
    img = ndi.gaussian_filter(rng.random((16, 32, 32)), 1)
    seg = slic(img, n_segments=40, compactness=0.05)
    sizes = np.bincount(seg.ravel())
    assert sizes[0] == 0 and np.all(sizes[1:] > 0)  # labels 1..N, consecutive
    for lab in range(1, seg.max() + 1):
        assert ndi.label(seg == lab)[1] == 1


def _reference_connectivity(seg, min_size, start_label):
    """scipy's component labelling with the documented rules (no size cap): components of equal
    labels numbered in raster order of their first voxel; a small or orphan one takes the label
    of the voxel just before its first voxel (along x, else y, else z) when that has one."""
    out = np.full(seg.shape, start_label - 1, dtype=np.int64)
    comps = []  # (first voxel's raster index, boolean mask)
    for lab in np.unique(seg):
        if lab == -2:  # outside
            continue
        parts, n = ndi.label(seg == lab)  # 6-connected
        for p in range(1, n + 1):
            m = parts == p
            comps.append((int(np.flatnonzero(m.ravel())[0]), lab, m))
    new = start_label
    for first, lab, m in sorted(comps, key=lambda c: c[0]):
        z, y, x = np.unravel_index(first, seg.shape)
        prev = (z, y, x - 1) if x > 0 else (z, y - 1, x) if y > 0 else (z - 1, y, x) if z > 0 else None
        if (m.sum() < min_size or lab == -1) and prev is not None and out[prev] >= start_label:
            out[m] = out[prev]
        else:
            out[m] = new
            new += 1
    return out


@settings(max_examples=40, deadline=None)
@given(st.tuples(st.integers(1, 7), st.integers(1, 9), st.integers(1, 12)), st.integers(0, 2 ** 16),
       st.integers(0, 12), st.integers(0, 1), st.integers(1, 4))
def test_connectivity_equals_a_scipy_reference_for_any_chunking(shape, seed, min_size, start_label,
                                                                n_labels):
    # raw assignment labels: centres 0.., orphans (-1) and outside voxels (-2), in blobs
    rng = np.random.default_rng(seed)
    seg = rng.integers(-2, n_labels, size=shape).astype(np.int32)
    seg = np.where(rng.random(shape) < 0.6, np.roll(seg, 1, axis=2), seg).astype(np.int32)
    want = _reference_connectivity(seg, min_size, start_label)
    for n_chunks in sorted({1, 2, 3, shape[0]}):  # the kernel's chunks of slices (one per thread)
        # per-run arrays in a given buffer holding garbage, or in a new one when it is too small
        for scratch in (np.full(48 * seg.size, 255, np.uint8), np.empty(0, np.uint8)):
            got = _connectivity(seg.copy(), min_size, 10 ** 9, start_label, scratch, n_chunks)
            assert np.array_equal(got, want), (n_chunks, scratch.size)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 64), st.integers(1, 5), st.integers(0, 2 ** 16))
def test_threads_get_runs_of_slabs_with_about_equal_work(Z, n_slabs, n_chunks, seed):
    # a body mask's row extents: empty rows at the ends, wide ones in the middle
    rng = np.random.default_rng(seed)
    Y, X = 6, 100
    width = rng.integers(0, X, size=(Z, Y)) * (rng.random((Z, 1)) < 0.7)
    row_lo = rng.integers(0, X - width + 1)
    row_hi = row_lo + width
    n_slabs = min(n_slabs, Z)
    cuts = _slab_cuts(row_lo, row_hi, n_slabs, n_chunks)
    assert cuts[0] == 0 and cuts[-1] == n_slabs and np.all(np.diff(cuts) >= 0)
    blocks = np.where(row_hi > row_lo, (row_hi - 1) // 16 + 1 - row_lo // 16, 0) + 1
    slab = np.array([blocks[s * Z // n_slabs:(s + 1) * Z // n_slabs].sum() for s in range(n_slabs)])
    work = np.array([slab[a:b].sum() for a, b in zip(cuts[:-1], cuts[1:])])
    assert work.max() - slab.sum() / n_chunks <= slab.max()  # off by at most one slab


@settings(max_examples=25, deadline=None)
@given(st.tuples(st.integers(1, 9), st.integers(1, 12), st.integers(1, 20)), st.integers(0, 2 ** 16),
       st.integers(1, 30), st.integers(1, 3))
def test_mask_seeds_are_cell_centroids_over_the_bounding_box(shape, seed, n_segments, n_threads):
    from skimage.util import regular_grid

    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < rng.uniform(0.05, 1)
    mask[tuple(rng.integers(0, n) for n in shape)] = True
    lo, hi, count = _row_extent(mask.view(np.uint8), shape, n_threads)
    assert np.array_equal(count, mask.sum(axis=2))
    got, steps = _mask_seeds(mask.view(np.uint8), n_segments, lo, hi, count, n_threads)
    # reference: NumPy over the mask's bounding box
    idx = np.argwhere(mask)
    box0, box1 = idx.min(0), idx.max(0) + 1
    n_box = max(1, int(round(n_segments * np.prod(box1 - box0) / mask.sum())))
    slices = regular_grid(tuple(box1 - box0), n_box)
    step = np.array([s.step or 1 for s in slices])
    n_cells = np.array([len(range(*s.indices(int(n)))) for s, n in zip(slices, box1 - box0)])
    cell = np.minimum((idx - box0) // step, n_cells - 1)
    flat = np.ravel_multi_index(cell.T, n_cells)
    sums = np.zeros((np.prod(n_cells), 4))
    np.add.at(sums, flat, np.c_[np.ones(len(idx)), idx])
    keep = sums[:, 0] > 0
    assert np.array_equal(steps, step) and np.array_equal(got[:, :3], sums[keep, 1:] / sums[keep, :1])


def test_connectivity_sizes_pieces_that_meet_only_in_a_later_chunk():
    # two pieces of label 0 in slice 0 (chunk 0) joined through slice 1 (chunk 1): one
    # component of 25 voxels, not small at min_size 21 (20 if a piece's size were lost)
    seg = np.zeros((2, 4, 5), np.int32)
    seg[0, 0] = seg[1, 0] = 3
    seg[0, 2] = 1
    want = _reference_connectivity(seg, 21, 1)
    assert len(np.unique(want)) == 2
    for n_chunks in (1, 2):
        assert np.array_equal(_connectivity(seg.copy(), 21, 10 ** 9, 1, np.empty(0, np.uint8), n_chunks), want)


def test_input_dtype_layout_and_byte_order_give_the_same_labels_and_input_is_kept():
    ph = make_phantom((16, 32, 32), seed=7)
    hu = np.clip(ph.hu, -1024, 3071).astype(np.int16)
    kw = dict(n_segments=30, compactness=0.1, sigma=2, spacing=ph.spacing_zyx)
    want = slic(hu.astype(np.float32), **kw)
    before = hu.copy()
    for image in (hu, hu.astype(np.float64), hu.astype(">f4"), hu.astype(np.float16),
                  np.asfortranarray(hu), hu.T.copy().T):
        assert np.array_equal(slic(image, **kw), want), (image.dtype, image.flags.c_contiguous)
    assert np.array_equal(hu, before)
    masked = slic(hu, mask=hu > -500, **kw)
    nan_outside = np.where(hu > -500, hu, np.nan).astype(np.float32)
    assert np.array_equal(slic(nan_outside, mask=hu > -500, **kw), masked)


def test_max_size_cuts_large_components():
    img = np.zeros((8, 16, 16))
    img[:, :, 8:] = 1.0
    seg = slic(img, n_segments=4, compactness=100, max_size_factor=0.6, min_size_factor=0.0)
    assert np.bincount(seg.ravel())[1:].max() <= int(0.6 * img.size / 4)


def test_deterministic_across_runs_and_thread_counts():
    ph = make_phantom((24, 48, 48), seed=2)
    img = np.clip(ph.hu, -1024, 3071).astype(np.float32)
    kw = dict(n_segments=60, compactness=0.1, sigma=3, spacing=ph.spacing_zyx, mask=img > -500)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = slic(img, **kw)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = slic(img, **kw)
    finally:
        numba.set_num_threads(before)
    assert np.array_equal(one, two) and np.array_equal(one, slic(img, **kw))


def test_quality_within_two_percent_of_scikit_image_on_a_phantom():
    from skimage.segmentation import slic as sk_slic

    ph = make_phantom((32, 64, 64), seed=4, n_lesions=3)
    hu = np.clip(ph.hu, -1024, 3071).astype(np.float32)
    kw = dict(n_segments=150, compactness=0.1, sigma=3.0, spacing=ph.spacing_zyx, max_num_iter=10)
    ours = slic(hu, **kw)
    ref_seg = sk_slic(hu, channel_axis=None, start_label=1, **kw)
    truth = segmetrics.reference_segmentation(hu, ph.spacing_zyx)
    for metric, higher_better in ((lambda s: segmetrics.explained_variation(hu, s), True),
                                  (lambda s: segmetrics.undersegmentation_error(truth, s), False),
                                  (lambda s: segmetrics.boundary_recall(truth, s), True)):
        a, b = metric(ours), metric(ref_seg)
        assert (a >= b * 0.98) if higher_better else (a <= b * 1.02 + 1e-3), (a, b)


@pytest.mark.parametrize("kw, name", [
    (dict(n_segments=0), "n_segments"),
    (dict(n_segments=2.5), "n_segments"),
    (dict(compactness=0), "compactness"),
    (dict(compactness=float("nan")), "compactness"),
    (dict(max_num_iter=0), "max_num_iter"),
    (dict(sigma=-1), "sigma"),
    (dict(sigma=(1, 2)), "sigma"),
    (dict(spacing=(1, 0, 1)), "spacing"),
    (dict(spacing=(1, 1)), "spacing"),
    (dict(min_size_factor=-0.1), "min_size_factor"),
    (dict(max_size_factor=0), "max_size_factor"),
    (dict(min_size_factor=3, max_size_factor=2), "min_size_factor"),
    (dict(start_label=2), "start_label"),
    (dict(channel_axis=-1), "channel_axis"),
    (dict(mask=np.ones((3, 3, 3), bool)), "mask"),
    (dict(mask=np.zeros((6, 6, 6), bool)), "mask"),
])
def test_bad_parameters_raise_value_error_naming_them(kw, name):
    img = np.random.default_rng(0).random((6, 6, 6))
    with pytest.raises(ValueError, match=name):
        slic(img, **kw)


def test_bad_images_raise_value_error():
    with pytest.raises(ValueError, match="2D or 3D"):
        slic(np.zeros((2, 2, 2, 2)))
    img = np.random.default_rng(0).random((6, 6, 6))
    img[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        slic(img)
    mask = np.ones(img.shape, bool)
    mask[0, 0, 0] = False
    assert slic(img, mask=mask, n_segments=4)[0, 0, 0] == 0  # NaN outside the mask is fine


@settings(max_examples=15, deadline=None)
@given(st.tuples(st.floats(0, 6), st.floats(0, 6), st.floats(0, 6)), st.integers(0, 2 ** 16))
def test_gaussian_matches_scipy(sigma, seed):
    rng = np.random.default_rng(seed)
    img = rng.random((9, 13, 40)).astype(np.float32)
    got = gaussian(img, sigma)
    eff = [s if int(4 * s + 0.5) > 0 else 0.0 for s in sigma]  # radius 0: identity
    want = ndi.gaussian_filter(img.astype(np.float64), eff, mode="reflect", truncate=4.0)
    # exact FIR below 2 voxels, Deriche recursion (5e-4 of the kernel peak) above
    assert np.abs(got - want).max() < 2e-3


def test_gaussian_rejects_bad_sigma_and_keeps_input():
    img = np.ones((4, 5, 6), np.float32)
    with pytest.raises(ValueError, match="sigma"):
        gaussian(img, (-1, 0, 0))
    out = gaussian(img, 3.0)
    assert np.allclose(out, 1.0, atol=1e-5) and np.all(img == 1)


@pytest.mark.parametrize("shape", [(9, 13, 40), (3, 50, 2)])  # (3, ., 2): radius past the line length
@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.9])
def test_small_sigma_fir_equals_scipy_per_axis(shape, sigma):
    # the parallel FIR replaces scipy's gaussian_filter1d below IIR_MIN_SIGMA: same kernel, float32 sums
    rng = np.random.default_rng(3)
    img = rng.normal(size=shape).astype(np.float32)
    for axis in range(3):
        sig = [0.0, 0.0, 0.0]
        sig[axis] = sigma
        want = ndi.gaussian_filter1d(img.astype(np.float64), sigma, axis=axis, mode="reflect", truncate=4.0)
        assert np.abs(gaussian(img, sig) - want).max() < 2e-6


@pytest.mark.parametrize("sigma", [1.0, 3.0])  # FIR and recursive paths
def test_gaussian_along_x_in_row_strips_matches_scipy(sigma):
    # 70 rows: two full strips of rows and a partial one along the last axis
    img = np.random.default_rng(4).normal(size=(3, 70, 45)).astype(np.float32)
    want = ndi.gaussian_filter1d(img.astype(np.float64), sigma, axis=2, mode="reflect", truncate=4.0)
    assert np.abs(gaussian(img, (0.0, 0.0, sigma)) - want).max() < 2e-3


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 40), st.integers(1, 30), st.integers(0, 9))
def test_strip_transposes_are_exact_for_any_strip(X, n, y0):
    # whole 8 x 8 tiles plus the edges in x and in rows
    from tcpc_data.supervoxels.smoothing import _transpose

    plane = np.random.default_rng(X * 100 + n).normal(size=(y0 + n + 3, X)).astype(np.float32)
    t = np.empty((X, n), np.float32)
    _transpose(plane[y0:y0 + n], t)
    assert np.array_equal(t, plane[y0:y0 + n].T)
    back = np.zeros_like(plane)
    _transpose(t, back[y0:y0 + n])
    assert np.array_equal(back[y0:y0 + n], plane[y0:y0 + n]) and not back[:y0].any() and not back[y0 + n:].any()


_COLD_WARM = """
import hashlib, sys
import numpy as np
from tcpc_data.phantom import make_phantom
from tcpc_data.supervoxels.slic import slic
from tcpc_data.supervoxels.smoothing import gaussian
ph = make_phantom((24, 48, 48), seed=6)
hu = np.clip(ph.hu, -1024, 3071).astype(np.float32)
smooth = gaussian(hu, (1.5, 4.0, 4.0))
seg = slic(hu, n_segments=80, compactness=0.1, sigma=6, spacing=ph.spacing_zyx, mask=hu > -500)
print(hashlib.sha256(smooth.tobytes()).hexdigest(), hashlib.sha256(seg.tobytes()).hexdigest())
"""


@pytest.mark.slow  # two fresh interpreters, the first compiling every kernel (~1 min)
def test_same_bits_on_a_cold_and_a_warm_numba_cache(tmp_path):
    # Reloaded code is optimised again: with fastmath the kernels rounded differently
    # on the first run than on later ones. The Gaussian and the assignment pin their
    # arithmetic with explicit FMAs.
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    cold, warm = (subprocess.run([sys.executable, "-c", _COLD_WARM], env=env, capture_output=True,
                                 text=True, check=True).stdout for _ in range(2))
    assert any((tmp_path / "numba").rglob("*.nbc"))  # the second run did load from the cache
    assert cold == warm
