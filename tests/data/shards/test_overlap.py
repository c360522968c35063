"""The copy share of a path geometry, and the geometries that avoid it: known answers, brute force, presets."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_data.shards import cubepaths as P
from tcpc_data.shards.pretrain import ShardConfig, path_sample

KINDS = sorted(P.PATHS)


def _brute_share(origins: np.ndarray, c: int) -> float:
    """Share of the target box (last origin) painted by the support boxes, by counting voxels."""
    lo = origins.min(0)
    o = origins - lo
    paint = np.zeros(tuple(o.max(0) + c), bool)
    for a in o[:-1]:
        paint[tuple(slice(x, x + c) for x in a)] = True
    return float(paint[tuple(slice(x, x + c) for x in o[-1])].mean())


@pytest.mark.parametrize("kind, share", [("u", 1.0), ("straight", 0.5), ("block", 0.0)])
def test_paper_geometry_shares_all_half_or_none_of_the_target(kind, share):
    assert ShardConfig.preset("paper", path=kind).target_share() == share
    size = {"u": 1, "straight": 3, "block": 2}[kind]
    assert P.target_share(kind, 16, 0.5, size) == share


@pytest.mark.parametrize("crop, cube", [(64, 16), (32, 8), (28, 8)])
@pytest.mark.parametrize("kind", KINDS)
def test_default_geometries_share_nothing(kind, crop, cube):
    cfg = ShardConfig(crop_size=crop, cube_size=cube, path=kind)
    cfg.validate()
    assert cfg.target_share() == 0.0


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(KINDS), st.sampled_from([4, 6, 8]), st.sampled_from([0.5, 0.25, 0.0, -0.25, -0.5]),
       st.integers(1, 3), st.data())
def test_share_counts_the_voxels_a_support_cube_holds(kind, c, overlap, size, data):
    if abs(c * (1 - overlap) - round(c * (1 - overlap))) > 1e-9:
        return
    plane, opening = data.draw(st.sampled_from(P.PATHS[kind].variants))
    stride = P.grid_stride(c, overlap)
    pos = P.path_positions(kind, (5, 5, 5), plane, opening, size)
    share = P.target_share(kind, c, overlap, size, 0, plane, opening)
    assert share == pytest.approx(_brute_share(pos * stride, c), abs=1e-12)
    if stride >= c:
        assert share == 0.0


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(["u", "straight"]), st.sampled_from([(6, 0.0, 1), (8, 0.5, 1), (8, -0.25, 1), (6, -0.5, 2)]))
def test_expected_share_under_jitter_matches_sampled_draws(kind, geom):
    c, overlap, j = geom
    size = 1 if kind == "u" else 2
    plane, opening = P.PATHS[kind].variants[0]
    stride = P.grid_stride(c, overlap)
    base = P.path_positions(kind, (5, 5, 5), plane, opening, size) * stride
    rng = np.random.default_rng(0)
    draws = [_brute_share(base + rng.integers(-j, j + 1, base.shape), c) for _ in range(3000)]
    expected = P.target_share(kind, c, overlap, size, j, plane, opening)
    assert abs(np.mean(draws) - expected) < 4 * np.std(draws) / np.sqrt(len(draws)) + 1e-9
    if stride >= c + 2 * j:  # a gap of twice the jitter: never a shared voxel
        assert expected == 0.0 and max(draws) == 0.0


def test_the_shares_of_real_samples_agree_with_the_function():
    rng = np.random.default_rng(0)
    crop = rng.normal(size=(32, 32, 32)).astype(np.float32)
    for cfg in (ShardConfig.preset("paper", crop_size=32, cube_size=8), ShardConfig(crop_size=32, cube_size=8),
                ShardConfig(crop_size=32, cube_size=8, path="block")):
        shares = [_brute_share(path_sample(crop, cfg, rng)["origins"], 8) for _ in range(20)]
        assert np.allclose(shares, cfg.target_share())


def _old_cut(crop, kind, size, rng):
    """The cutting of tcpc before the gap: overlap 0.5 grid from voxel 0, targets where every
    variant... of the drawn variant fits within 1 step of the centre; no jitter draw."""
    c, stride, g = 8, 4, 7
    variants = P.PATHS[kind].variants
    v = variants[int(rng.integers(len(variants)))]
    targets = P.valid_targets(kind, g, size, 1, (v,))
    t = targets[int(rng.integers(len(targets)))]
    pos = P.path_positions(kind, t, *v, size)
    return np.stack([crop[tuple(slice(p * stride, p * stride + c) for p in q)] for q in pos]).astype(np.float16), pos


@pytest.mark.parametrize("kind, size", [("u", 1), ("straight", 3), ("block", 2)])
def test_paper_preset_cuts_exactly_the_old_samples(kind, size):
    crop = np.random.default_rng(1).normal(size=(32, 32, 32)).astype(np.float32)
    cfg = ShardConfig.preset("paper", crop_size=32, cube_size=8, path=kind)
    assert cfg.size() == size
    for seed in range(12):
        s = path_sample(crop, cfg, np.random.default_rng(seed))
        cubes, pos = _old_cut(crop, kind, size, np.random.default_rng(seed))
        assert s["cubes"].tobytes() == cubes.tobytes() and s["path"].tolist() == pos.tolist()


def test_equal_support_3d_cpc_has_tcpcs_support_count_targets_and_share():
    u, line = ShardConfig(), ShardConfig(path="straight")
    g, _ = u.validate()
    assert line.extends(g) and not u.extends(g)
    for v in u.variants():
        assert line.targets(g, v).tolist() == u.targets(g, v).tolist()
    assert line.target_share() == u.target_share() == 0.0
    # open upwards, the line comes from +y: a volume long enough along y holds it
    u, line = ShardConfig(plane="axial", opening="up"), ShardConfig(path="straight", plane="axial", opening="up")
    volume = np.random.default_rng(2).normal(size=(72, 200, 72)).astype(np.float32)
    start = np.array([4, 4, 4])
    crop = volume[4:68, 4:68, 4:68]
    for seed in range(8):
        su = path_sample(crop, u, np.random.default_rng(seed))
        sl = path_sample(crop, line, np.random.default_rng(seed), volume=volume, start=start)
        assert len(sl["path"]) == len(su["path"]) == 8
        assert sl["path"][-1].tolist() == su["path"][-1].tolist()  # same draws, same target
        for o, cube in zip(sl["origins"], sl["cubes"]):  # cut past the crop, from the volume
            a = start + o
            np.testing.assert_array_equal(cube, volume[a[0]:a[0] + 16, a[1]:a[1] + 16, a[2]:a[2] + 16]
                                          .astype(np.float16))
    # without the volume, the part past the crop is background
    far = path_sample(crop, line, np.random.default_rng(0))
    assert (far["cubes"][0] == -1).all()


@pytest.mark.parametrize("crop, cube", [(64, 16), (32, 8)])
def test_block_cubes_keep_gaps_and_move_within_their_cells(crop, cube):
    cfg = ShardConfig(crop_size=crop, cube_size=cube, path="block")
    arr = np.zeros((crop,) * 3, np.float32)
    seen = set()
    for seed in range(40):
        o = path_sample(arr, cfg, np.random.default_rng(seed))["origins"]
        assert ((o >= 0) & (o + cube <= crop)).all()
        for a in range(8):
            for b in range(a + 1, 8):
                apart = np.abs(o[a] - o[b]) - cube  # voxels between the boxes along each axis
                assert apart.max() >= 1  # no two cubes touch or overlap
        seen.add(tuple(o[0]))
    assert cfg.jitter_voxels() == (1 if cube == 16 else 0)
    assert len(seen) > 1 or cfg.jitter_voxels() == 0  # the jitter moves the cubes from draw to draw
