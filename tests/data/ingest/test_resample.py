"""Geometry properties: voxel <-> world maps, and resampling reproduces linear fields exactly."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tcpc_data.ingest.normalise import normalise, to_hu
from tcpc_data.ingest.resample import to_grid
from tcpc_data.volume import Volume, index_to_world, world_to_index

spacing = st.floats(0.4, 3.0)
spacings = st.tuples(spacing, spacing, spacing)


def _rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _linear_volume(shape, sp, origin, direction, coef):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    world = index_to_world(idx, origin, sp, direction)
    return Volume((world @ coef).astype(np.float32), sp, origin, direction)


@settings(max_examples=30, deadline=None)
@given(sp=spacings, seed=st.integers(0, 10 ** 6),
       idx=st.lists(st.floats(-50, 50), min_size=3, max_size=3))
def test_world_to_index_inverts_index_to_world(sp, seed, idx):
    d, origin = _rotation(seed), np.random.default_rng(seed + 1).normal(size=3) * 100
    w = index_to_world(idx, origin, sp, d)
    np.testing.assert_allclose(world_to_index(w, origin, sp, d), idx, atol=1e-8)


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(2, 9), st.integers(2, 9), st.integers(2, 9)), sp=spacings,
       target=spacings, seed=st.integers(0, 10 ** 6))
def test_resampling_a_regular_volume_reproduces_a_linear_field(shape, sp, target, seed):
    assume(all((n - 1) * a >= t for n, a, t in zip(shape, sp, target)))  # else fewer than 2 voxels: refused
    rng = np.random.default_rng(seed)
    d, origin, coef = _rotation(seed), rng.normal(size=3) * 50, rng.normal(size=3) * 10
    vol = _linear_volume(shape, sp, tuple(origin), d, coef)
    out = to_grid(vol, target)
    assert out.spacing_zyx == pytest.approx(target)
    # the new grid starts at the old voxel 0 and stays within the old extent
    np.testing.assert_allclose(out.origin_zyx, origin, atol=1e-9)
    for ax in range(3):
        assert (out.hu.shape[ax] - 1) * target[ax] <= (shape[ax] - 1) * sp[ax] + 1e-6
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in out.hu.shape], indexing="ij"), axis=-1)
    expected = index_to_world(idx, out.origin_zyx, out.spacing_zyx, out.direction) @ coef
    scale = np.abs(vol.hu).max() + 1
    np.testing.assert_allclose(out.hu, expected, atol=2e-5 * scale)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 7), seed=st.integers(0, 10 ** 6), target=spacings)
def test_resampling_a_sheared_uneven_stack_reproduces_a_linear_field_inside(n, seed, target):
    rng = np.random.default_rng(seed)
    Y, X, sy, sx = 6, 7, 1.1, 0.9
    gaps = rng.uniform(0.5, 3.0, size=n - 1)
    assume(gaps.sum() >= target[0])
    offsets = np.zeros((n, 3))
    offsets[1:, 0] = np.cumsum(gaps)
    offsets[:, 1:] = rng.uniform(-2, 2, size=(n, 2))
    offsets[0, 1:] = 0.0
    coef = rng.normal(size=3) * 10
    # frame coordinates (mm along the image axes) of every voxel of every slice; direction = identity
    rr, cc = np.mgrid[:Y, :X]
    hu = np.stack([offsets[k, 0] * coef[0] + (offsets[k, 1] + rr * sy) * coef[1]
                   + (offsets[k, 2] + cc * sx) * coef[2] for k in range(n)]).astype(np.float32)
    vol = Volume(hu, (float(np.median(gaps)), sy, sx), (1.0, 2.0, 3.0), np.eye(3), slice_offsets=offsets)
    out = to_grid(vol, target)
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in out.hu.shape], indexing="ij"), axis=-1)
    expected = (index_to_world(idx, out.origin_zyx, out.spacing_zyx, out.direction) - (1.0, 2.0, 3.0)) @ coef
    inside = out.hu != np.float32(hu.min())
    scale = np.abs(hu).max() + 1
    np.testing.assert_allclose(out.hu[inside], expected[inside], atol=2e-5 * scale)
    assert inside.any()


def test_same_spacing_is_a_no_op_and_bad_spacing_is_refused():
    vol = Volume(np.zeros((3, 4, 5), np.float32), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), np.eye(3))
    assert to_grid(vol) is vol and to_grid(vol, (1.0, 2.0, 3.0)) is vol
    with pytest.raises(ValueError, match="positive"):
        to_grid(vol, (0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="over the limit"):
        to_grid(vol, (0.01, 0.01, 0.01), max_voxels=10 ** 6, case="c")


@settings(max_examples=30, deadline=None)
@given(lo=st.floats(-3000, 0), width=st.floats(1, 5000), seed=st.integers(0, 1000))
def test_normalise_maps_min_max_to_unit_range_and_back(lo, width, seed):
    hu = (lo + np.random.default_rng(seed).uniform(0, 1, (4, 5, 6)) * width).astype(np.float32)
    hu.flat[0], hu.flat[1] = np.float32(lo), np.float32(lo + width)
    v, rng = normalise(hu)
    assert v.min() == -1.0 and v.max() == 1.0 and v.dtype == np.float32
    np.testing.assert_allclose(to_hu(v, rng), hu, atol=1e-6 * width + 1e-3)


def test_constant_image_cannot_be_normalised():
    with pytest.raises(ValueError, match="c: the image is constant"):
        normalise(np.full((2, 2, 2), 5.0, np.float32), "c")

