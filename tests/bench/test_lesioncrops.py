"""Share of crops holding a lesion: SLIC candidates vs random vs centre crops, known answers."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from bench.lesioncrops import (centre_crops, contains_lesion, lesion_shares, random_centres,
                                   random_centres_in, random_share_exact)
from tcpc_data.phantom import make_phantom
from tcpc_data.store.volumes import commit_arrays, open_store
from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels


def test_box_edges_follow_the_crop_convention():
    # side 4 at (10, 10, 10): box [8, 12) on every axis
    centre = [[10, 10, 10]]
    for lesion, inside in (([8, 8, 8], True), ([11, 11, 11], True), ([12, 10, 10], False),
                           ([7, 10, 10], False), ([10, 10, 12], False)):
        assert contains_lesion(centre, [lesion], 4).tolist() == [inside]
    assert contains_lesion(centre, np.zeros((0, 3)), 4).tolist() == [False]
    assert contains_lesion([[0, 0, 0], [10, 10, 9]], [[30, 30, 30], [9, 9, 10]], 4).tolist() == [False, True]


@settings(max_examples=30, deadline=None)
@given(st.tuples(*[st.integers(2, 9)] * 3), st.integers(1, 6),
       st.lists(st.tuples(*[st.integers(0, 8)] * 3), min_size=1, max_size=3))
def test_exact_random_share_is_the_share_over_every_voxel(shape, size, lesions):
    lesions = [tuple(min(v, n - 1) for v, n in zip(les, shape)) for les in lesions]
    every = np.argwhere(np.ones(shape, bool))
    assert random_share_exact(shape, lesions, size) == contains_lesion(every, lesions, size).mean()


def test_random_draws_converge_and_the_centre_crop_is_one_box():
    shape, lesions = (20, 40, 40), [(5, 10, 30)]
    exact = random_share_exact(shape, lesions, 16)
    assert exact == 14 * 16 * 16 / (20 * 40 * 40)  # z centres 0..13 (the box starts at c - 8), y 3..18, x 23..38
    got = contains_lesion(random_centres(shape, 20000, seed=3), lesions, 16).mean()
    assert abs(got - exact) < 4 * np.sqrt(exact * (1 - exact) / 20000)
    assert np.array_equal(centre_crops(shape, 3), [[10, 20, 20]] * 3)
    assert lesion_shares(np.zeros((0, 3)), lesions, shape, 16)["slic"] is None
    assert lesion_shares([[5, 10, 30]] * 4, lesions, shape, 16)["centre"] == 0.0  # (10, 20, 20) is 10 voxels off


def test_random_centres_in_a_mask_stay_inside_it_and_cover_it_evenly():
    mask = np.zeros((6, 8, 8), bool)
    mask[1, 2, 3] = mask[4, 5, 6] = True
    got = random_centres_in(mask, 4000, seed=1)
    assert got.shape == (4000, 3) and mask[tuple(got.T)].all()
    assert abs((got[:, 0] == 1).mean() - 0.5) < 0.05  # two voxels, drawn alike
    assert np.array_equal(got, random_centres_in(mask, 4000, seed=1))
    with pytest.raises(ValueError, match="no voxel"):
        random_centres_in(np.zeros((2, 2, 2), bool), 1, 0)


def test_slic_candidates_on_a_phantom_hold_its_lesions_more_often_than_random_crops(tmp_path):
    lo, hi = -1024.0, 3071.0
    ph = make_phantom((32, 72, 72), seed=11, n_lesions=2, classes=(1,))
    img = ((np.clip(ph.hu, lo, hi) - lo) / (hi - lo) * 2 - 1).astype(np.float32)
    store = tmp_path / "v.zarr"
    commit_arrays(store, "p", {"image": img}, {"image": {
        "spacing_zyx": list(ph.spacing_zyx), "origin_zyx": [0.0, 0.0, 0.0], "direction": np.eye(3).tolist(),
        "intensity_range": [lo, hi], "digest": "p"}})
    assert supervoxels(store, SupervoxelConfig(n_segments=250, sigma=2.0, top_k=6, crop_size=16), workers=1).ok
    cands = open_store(store, "r")["p/candidates"][...]
    shares = lesion_shares(cands, [les.centre_zyx for les in ph.lesions], ph.hu.shape, 16, seed=0)
    assert shares["k"] == 6 and shares["random_expected"] < 0.1
    assert shares["slic"] >= 2 / 6 > shares["random_expected"]  # both lesions found among 6 crops
