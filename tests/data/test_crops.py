"""Crops: known answers, border padding, and a property test against direct indexing."""
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_data.crops import crop, crop_box


def test_centred_crop_known_answer():
    vol = np.arange(10 * 10 * 10, dtype=np.float32).reshape(10, 10, 10)
    arr, box = crop(vol, (5, 5, 5), 4, -1.0)
    assert box.tolist() == [[3, 3, 3], [7, 7, 7]]
    np.testing.assert_array_equal(arr, vol[3:7, 3:7, 3:7])


def test_border_is_padded_with_background_and_box_recorded():
    vol = np.ones((6, 6, 6), dtype=np.float32)
    arr, box = crop(vol, (0, 5, 2), 4, -1.0)
    assert box.tolist() == [[-2, 3, 0], [2, 7, 4]]
    assert np.all(arr[:2] == -1) and np.all(arr[:, 3:] == -1)
    assert np.all(arr[2:, :3] == 1)


def test_crop_reads_only_its_region_from_zarr(tmp_path):
    vol = np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=vol.shape, dtype=vol.dtype, chunks=(8, 8, 8))
    z[...] = vol
    a, _ = crop(z, (18, 3, 10), 8, -1.0)
    b, _ = crop(vol, (18, 3, 10), 8, -1.0)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("vol, centre, size, match", [
    (np.zeros((4, 4)), (1, 1, 1), 2, "3-D"), (np.zeros((4, 4, 4)), (1, 1, 1), 0, ">= 1"),
    (np.zeros((4, 4, 4)), (20, 1, 1), 4, "outside")])
def test_bad_crops_are_rejected(vol, centre, size, match):
    with pytest.raises(ValueError, match=match):
        crop(vol, centre, size, 0.0)


@settings(max_examples=60, deadline=None)
@given(st.tuples(*[st.integers(3, 12)] * 3), st.integers(1, 9), st.data())
def test_crop_matches_padded_indexing(shape, size, data):
    vol = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    centre = tuple(data.draw(st.integers(0, s - 1)) for s in shape)
    arr, box = crop(vol, centre, size, -7.0)
    assert arr.shape == (size,) * 3
    assert np.array_equal(box, crop_box(centre, size))
    pad = size
    padded = np.pad(vol, pad, constant_values=-7.0)
    lo = box[0] + pad
    np.testing.assert_array_equal(arr, padded[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size])
    assert arr[tuple(np.asarray(centre) - box[0])] == vol[centre]  # the centre voxel is the candidate
