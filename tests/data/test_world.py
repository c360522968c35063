"""World <-> voxel coordinates: one function pair for flipped, permuted and oblique volumes."""
from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_data.ingest.readers import read_nifti
from tcpc_data.supervoxels.candidates import csv_centres
from tcpc_data.volume import index_to_world, lps_xyz_to_zyx, stored_geometry, world_to_index, world_to_voxel

PERMS = list(itertools.permutations(range(3)))
SIGNS = list(itertools.product((1.0, -1.0), repeat=3))


def _rotation(a: float, b: float, c: float) -> np.ndarray:
    """A proper rotation from three angles (radians): an oblique set of axes."""
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rz = np.array([[ca, -sa, 0], [sa, ca, 0], [0, 0, 1]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rx = np.array([[1, 0, 0], [0, cc, -sc], [0, sc, cc]])
    return rz @ ry @ rx


directions = st.builds(
    lambda perm, signs, angles, oblique: (np.eye(3)[list(perm)] * np.array(signs)[:, None])
    @ (_rotation(*angles) if oblique else np.eye(3)),
    st.sampled_from(PERMS), st.sampled_from(SIGNS), st.tuples(*[st.floats(-np.pi, np.pi)] * 3), st.booleans())


@settings(max_examples=200, deadline=None)
@given(directions, st.tuples(*[st.floats(0.2, 5.0)] * 3), st.tuples(*[st.floats(-400, 400)] * 3),
       st.tuples(*[st.integers(0, 300)] * 3))
def test_index_matches_brute_force_and_round_trips(direction, spacing, origin, index):
    # Brute force: walk index[i] steps of spacing[i] mm along image axis i's unit vector.
    world = np.array(origin, float)
    for axis in range(3):
        for _ in range(index[axis]):
            world = world + spacing[axis] * direction[axis]
    assert np.allclose(index_to_world(index, origin, spacing, direction), world, atol=1e-6)
    assert np.allclose(world_to_index(world, origin, spacing, direction), index, atol=1e-6)
    geometry = {"origin_zyx": origin, "spacing_zyx": spacing, "direction": direction.tolist()}
    assert world_to_voxel(world, geometry, (301, 301, 301), "c").tolist() == list(index)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(PERMS), st.sampled_from(SIGNS), st.tuples(*[st.floats(0.5, 3.0)] * 3),
       st.tuples(*[st.floats(-200, 200)] * 3), st.data())
def test_nifti_voxel_lands_where_its_affine_says(tmp_path_factory, perm, signs, spacing, offset, data):
    """A NIfTI with permuted and flipped axes: the point its RAS affine gives for a voxel maps back to
    that voxel after reading (LPS, z/y/x order), and a centre CSV row in mm finds it."""
    shape = (5, 6, 7)
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3)[:, list(perm)] * np.array(signs)) * np.array(spacing)
    affine[:3, 3] = offset
    path = tmp_path_factory.mktemp("nii") / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), affine), str(path))
    vol = read_nifti(path, max_voxels=1 << 20, case="v")
    ijk = data.draw(st.tuples(*[st.integers(0, n - 1) for n in shape]))
    ras = affine @ np.array([*ijk, 1.0])
    lps_zyx = lps_xyz_to_zyx(-ras[0], -ras[1], ras[2])
    zyx = world_to_index(lps_zyx, vol.origin_zyx, vol.spacing_zyx, vol.direction)
    assert np.allclose(zyx, ijk[::-1], atol=1e-4)  # readers store NIfTI (i, j, k) as (k, j, i)
    assert vol.hu[tuple(np.rint(zyx).astype(int))] == np.ravel_multi_index(ijk, shape)
    got = csv_centres([("mm", lps_zyx)], case="v", shape=vol.hu.shape, spacing_zyx=vol.spacing_zyx,
                      origin_zyx=vol.origin_zyx, direction=vol.direction)
    assert got.tolist() == [list(ijk[::-1])]


def test_flipped_centre_is_found_and_an_identity_guess_is_refused():
    direction = np.diag([1.0, -1.0, 1.0])  # y axis stored reversed (anterior first)
    origin, spacing = (0.0, 50.0, 0.0), (2.0, 1.0, 1.0)
    point = index_to_world((3, 10, 4), origin, spacing, direction)
    got = csv_centres([("mm", tuple(point))], case="c", shape=(8, 40, 40), spacing_zyx=spacing,
                      origin_zyx=origin, direction=direction)
    assert got.tolist() == [[3, 10, 4]]
    with pytest.raises(ValueError, match="case c: candidate.*outside"):  # (mm - origin) / spacing: y = -10
        csv_centres([("mm", tuple(point))], case="c", shape=(8, 40, 40), spacing_zyx=spacing,
                    origin_zyx=origin, direction=np.eye(3))
    with pytest.raises(ValueError, match="no direction attribute"):
        stored_geometry({"origin_zyx": origin, "spacing_zyx": spacing}, "c")
    with pytest.raises(ValueError, match="not orthonormal"):
        stored_geometry({"origin_zyx": origin, "spacing_zyx": spacing, "direction": [[1, 1, 0]] * 3}, "c")
