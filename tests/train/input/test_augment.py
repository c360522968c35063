"""Per-cube intensity augmentation: independent draws per cube, one shared geometric transform."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_data.shards.pretrain import ShardConfig, path_sample
from tcpc_data.shards.tario import encode_npy
from tcpc_train.input.loader import augment_intensity, augment_path
from tcpc_train.loops.pretraining import PretrainConfig, TaskSample


def _fit(x, y):
    """Least-squares (scale, offset) of y ≈ scale·x + offset."""
    a = np.vstack([x.ravel(), np.ones(x.size)]).T
    return np.linalg.lstsq(a, y.ravel(), rcond=None)[0]


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_two_cubes_of_one_sample_get_different_intensity_draws(seed):
    rng = np.random.default_rng(seed)
    cube = rng.uniform(-1, 1, (8, 8, 8)).astype(np.float32)
    cubes = np.stack([cube, cube])  # the same content twice
    out = augment_intensity(cubes, np.random.default_rng(seed + 1), 0.1)
    (s0, b0), (s1, b1) = _fit(cube, out[0]), _fit(cube, out[1])
    assert 0.88 < s0 < 1.12 and 0.88 < s1 < 1.12 and abs(b0) < 0.12 and abs(b1) < 0.12
    assert abs(s0 - s1) > 1e-4 or abs(b0 - b1) > 1e-4  # one draw per cube, not per sample
    assert out.dtype == cubes.dtype


def test_intensity_draws_are_independent_across_cubes():
    cubes = np.zeros((8, 4, 4, 4), np.float32)
    offsets = np.array([augment_intensity(cubes, np.random.default_rng(s), 0.1).mean((1, 2, 3))
                        for s in range(400)])  # (draws, cubes)
    corr = np.corrcoef(offsets.T)[np.triu_indices(8, 1)]
    assert np.abs(corr).max() < 0.2  # ~0 for independent draws; 1 for a shared draw
    assert np.all(np.abs(offsets) <= 0.1 + 0.02 * 5)


def test_zero_strength_is_the_identity():
    cubes = np.random.default_rng(0).normal(size=(3, 4, 4, 4)).astype(np.float16)
    assert augment_intensity(cubes, np.random.default_rng(0), 0.0) is cubes


@pytest.mark.parametrize("kind", ["u", "straight", "block"])
def test_geometric_transform_stays_consistent_across_the_cubes(kind):
    """After the shared flip/rotation, each cube is still the crop's cube at its (moved) place."""
    crop = np.random.default_rng(3).normal(size=(32, 32, 32)).astype(np.float32)
    cfg = ShardConfig.preset("paper", crop_size=32, cube_size=8, path=kind)
    for seed in range(10):
        s = path_sample(crop, cfg, np.random.default_rng(seed))
        cubes, path = augment_path(s["cubes"].astype(np.float32), s["path"].astype(np.int64),
                                   np.random.default_rng(100 + seed))
        # assemble the transformed sub-volume and check every cube reads back from it
        lo = path.min(0)
        vol = np.full(tuple((path.max(0) - lo) * 4 + 8), np.nan, np.float32)
        for p, cube in zip(path, cubes):
            sl = tuple(slice(int(a) * 4, int(a) * 4 + 8) for a in p - lo)
            known = ~np.isnan(vol[sl])
            assert np.array_equal(vol[sl][known], cube[known])  # overlapping cubes agree voxel by voxel
            vol[sl] = cube


def test_task_sample_draws_per_cube_intensities_and_is_reproducible():
    cubes = np.zeros((8, 8, 8, 8), np.float16)
    raw = {"__key__": "k", "__url__": "u", "cubes.npy": encode_npy(cubes),
           "path.npy": encode_npy(np.array([[1, 0, 0], [1, 1, 0], [1, 2, 0], [1, 2, 1], [1, 2, 2], [1, 1, 2],
                                            [1, 0, 2], [1, 1, 1]], np.int16))}
    fn = TaskSample(PretrainConfig(task="tcpc"))
    a, b = fn(raw, 0)["cubes"], fn(raw, 0)["cubes"]
    assert np.array_equal(a, b)
    means = a.astype(np.float32).mean((1, 2, 3))
    assert len(np.unique(np.round(means, 3))) == 8  # every cube its own offset
    off = TaskSample(PretrainConfig(task="tcpc", cube_intensity=0.0))(raw, 0)["cubes"]
    assert not off.any()  # the paper: no intensity change
    with pytest.raises(ValueError, match="cube_intensity"):
        PretrainConfig(cube_intensity=-1).validate()
