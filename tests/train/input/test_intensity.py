"""The compiled augmentation kernels: float16 conversions, noise statistics, and the batch augmentation
equal to its per-sample definition whatever the batch around a sample."""
from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_data import float16 as K
from tcpc_train.input.augment import _cube_view, _move_positions, augment_path_batch, sample_key, uniforms
from tcpc_train.input.intensity import affine_noise, affine_noise_inplace


@numba.njit
def _to_float(bits, out, hardware):
    for i in range(bits.size):
        out[i] = K._hw_half_to_float(bits[i]) if hardware else K._sw_half_to_float(bits[i])


@numba.njit
def _to_half(values, out, hardware):
    for i in range(values.size):
        out[i] = K._hw_float_to_half(values[i]) if hardware else K._sw_float_to_half(values[i])


def _float_cases() -> np.ndarray:
    """Random floats over float16's range and beyond, every float16 value, its neighbours and the
    midpoints between consecutive float16 values (where rounding to even decides)."""
    rng = np.random.default_rng(0)
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)
    finite = np.sort(every[np.isfinite(every)])
    mids = ((finite[:-1].astype(np.float64) + finite[1:]) / 2).astype(np.float32)
    wide = (rng.standard_normal(200_000) * np.exp(rng.uniform(-40, 15, 200_000))).astype(np.float32)
    every = every[~np.isnan(every)]  # NaN payloads need not survive; a NaN stays NaN (checked apart)
    return np.concatenate([wide, every, np.nextafter(finite, np.float32(np.inf)), mids,
                           np.float32([0, -0.0, np.inf, -np.inf, 65504, 65520, 1e-10])])


@pytest.mark.parametrize("hardware", [False] + ([True] if K._hardware_half() else []))
def test_float16_conversions_match_numpy_bit_for_bit(hardware):
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    got = np.empty(bits.size, np.float32)
    _to_float(bits, got, hardware)
    want = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32)) and np.isnan(got[nan]).all()
    values = _float_cases()
    half = np.empty(values.size, np.uint16)
    _to_half(values, half, hardware)
    with np.errstate(over="ignore"):
        assert np.array_equal(half, values.astype(np.float16).view(np.uint16))
    nans = np.empty(1, np.uint16)
    _to_half(np.float32([np.nan]), nans, hardware)
    assert np.isnan(nans.view(np.float16)[0])


def test_noise_is_standardised_irwin_hall_and_keyed():
    zeros = np.zeros((8, 16, 16, 16), np.float32)
    ones = np.ones(8)
    noise = affine_noise(zeros, ones, 0 * ones, ones, key=12345)
    g = noise.reshape(8, -1).astype(np.float64)
    assert abs(g.mean()) < 0.02 and abs(g.std() - 1) < 0.01
    assert abs(((g / g.std()) ** 4).mean() - 2.7) < 0.05  # Irwin–Hall(4): 3 - 6/(5·4)
    assert np.abs(g).max() <= np.sqrt(12) + 1e-5
    corr = np.corrcoef(g)[np.triu_indices(8, 1)]  # cube against cube
    assert np.abs(corr).max() < 0.05
    lag = np.corrcoef(g[0, :-1], g[0, 1:])[0, 1]  # voxel against its neighbour
    assert abs(lag) < 0.05
    assert np.array_equal(noise, affine_noise(zeros, ones, 0 * ones, ones, key=12345))
    other = affine_noise(zeros, ones, 0 * ones, ones, key=12346)
    assert abs(np.corrcoef(g.ravel(), other.ravel())[0, 1]) < 0.02


def test_affine_noise_applies_scale_and_shift_per_cube_in_float16():
    rng = np.random.default_rng(1)
    cubes = rng.uniform(-1, 1, (3, 4, 4, 4)).astype(np.float16)
    scale, shift = np.array([0.9, 1.0, 1.1]), np.array([0.1, -0.05, 0.0])
    out = affine_noise(cubes, scale, shift, np.zeros(3), key=7)
    want = (cubes.astype(np.float32) * scale.astype(np.float32)[:, None, None, None]
            + shift.astype(np.float32)[:, None, None, None]).astype(np.float16)
    assert out.dtype == np.float16 and np.array_equal(out, want)
    with pytest.raises(TypeError, match="float16 or float32"):
        affine_noise_inplace(np.zeros((1, 3, 64)), scale[None], shift[None], scale[None], np.zeros(1))
    with pytest.raises(TypeError, match="C-contiguous"):
        affine_noise_inplace(np.zeros((1, 3, 128), np.float16)[..., ::2], scale[None], shift[None], scale[None],
                             np.zeros(1))


def _batch(rng, b, n=8, c=6):
    cubes = [rng.uniform(-1, 1, (n, c, c, c)).astype(np.float16) for _ in range(b)]
    paths = rng.integers(0, 4, (b, n, 3))
    keys = np.array([sample_key(3, 1, f"s{i}") for i in range(b)], np.uint64)
    return cubes, paths, keys


def _strided(x):
    """The same values as ``x`` behind a non-contiguous array."""
    y = np.empty(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)[..., ::2]
    y[...] = x
    return y


@pytest.mark.parametrize("geometric,strength", [(True, 0.1), (True, 0.0), (False, 0.1)])
def test_a_sample_is_augmented_alike_in_any_batch(geometric, strength):
    """The compiled gather (contiguous float16 sources) and the NumPy path (any other source) agree,
    and a sample's result depends on its key alone, not on its companions or place."""
    rng = np.random.default_rng(2)
    cubes, paths, keys = _batch(rng, 12)
    out, pos = augment_path_batch(cubes, paths, keys, geometric, strength)
    slow, slow_pos = augment_path_batch([_strided(c) for c in cubes], paths, keys, geometric, strength)
    assert np.array_equal(out, slow) and np.array_equal(pos, slow_pos)
    order = rng.permutation(12)[:5]
    alone, alone_pos = augment_path_batch([cubes[i] for i in order], paths[order], keys[order], geometric, strength)
    assert np.array_equal(alone, out[order]) and np.array_equal(alone_pos, pos[order])
    changed = (out != np.stack(cubes)).mean()
    assert changed > 0.9 if strength else changed < 1  # noise reaches almost every voxel


def test_batch_augmentation_is_the_per_sample_transform_of_its_draws():
    """With strength 0, each sample's cubes are the view transform of its drawn flips/rotation and its
    positions the matching moved positions; the draws cover all 96 choices evenly."""
    rng = np.random.default_rng(3)
    cubes, paths, keys = _batch(rng, 40)
    out, pos = augment_path_batch(cubes, paths, keys, True, 0.0)
    u = uniforms(keys, 5)
    flips, plane, turns = u[:, :3] < 0.5, (u[:, 3] * 3).astype(int), (u[:, 4] * 4).astype(int)
    for i in range(40):
        assert np.array_equal(out[i], _cube_view(cubes[i], flips[i], plane[i], turns[i]))
    assert np.array_equal(pos, _move_positions(paths, flips, plane, turns))
    many = uniforms(np.arange(20000, dtype=np.uint64), 5)
    counts = np.bincount((many[:, 3] * 3).astype(int) * 4 + (many[:, 4] * 4).astype(int), minlength=12)
    assert counts.min() > 20000 / 12 * 0.9 and ((many[:, :3] < 0.5).mean(0) - 0.5 < 0.02).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), extent=st.tuples(*[st.integers(1, 3)] * 3), n=st.integers(2, 8))
def test_batch_augmentation_keeps_cubes_and_positions_consistent(box_paths, seed, extent, n):
    """Cubes cut from a volume and augmented as a batch tile one transform of that volume."""
    c, s = box_paths.C, box_paths.S
    lo, path, vol, cubes = box_paths.cut_path(np.random.default_rng(seed), extent, n)
    out, pos = augment_path_batch([cubes], path[None], np.array([seed], np.uint64), True, 0.0)
    assert pos[0].min(0).tolist() == lo.tolist()
    shape = tuple((pos[0].max(0) - lo) * s + c)
    got = np.full(shape, np.nan)
    for cube, p in zip(out[0], pos[0] - lo):
        sl = tuple(slice(int(a) * s, int(a) * s + c) for a in p)
        known = ~np.isnan(got[sl])
        assert np.array_equal(got[sl][known], cube[known])  # overlapping cubes agree
        got[sl] = cube
    seen = ~np.isnan(got)
    assert any(v.shape == got.shape and np.array_equal(v[seen], got[seen]) for v in box_paths.symmetries(vol))


@pytest.mark.parametrize("geometric,strength", [(True, 0.1), (False, 0.3)])
def test_numpys_casts_give_the_same_batches(geometric, strength, monkeypatch):
    """The switch to the library path (TCPC_FLOAT16=numpy: NumPy's float16 casts around float32
    kernels) gives the compiled conversion's batches bit for bit."""
    cubes, paths, keys = _batch(np.random.default_rng(4), 6)
    out, pos = augment_path_batch(cubes, paths, keys, geometric, strength)
    flat = np.stack(cubes).reshape(6, 8, -1).copy()
    params = [np.random.default_rng(5).uniform(0.5, 1.5, (6, 8)).astype(np.float32) for _ in range(3)]
    compiled = flat.copy()
    affine_noise_inplace(compiled, *params, keys)
    monkeypatch.setenv("TCPC_FLOAT16", "numpy")
    library, library_pos = augment_path_batch(cubes, paths, keys, geometric, strength)
    assert np.array_equal(library.view(np.uint16), out.view(np.uint16)) and np.array_equal(library_pos, pos)
    affine_noise_inplace(flat, *params, keys)
    assert np.array_equal(flat.view(np.uint16), compiled.view(np.uint16))
