"""Geometry of the cube grid and the path registry: known answers and hypothesis properties."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_data.shards import cubepaths as P

KINDS = sorted(P.PATHS)


def test_grid_of_the_design_example():
    assert P.grid_size(64, 16, 0.5) == (7, 8)
    assert P.grid_size(28, 8, 0.5) == (6, 4)
    assert P.grid_size(64, 16, 0.0) == (4, 16)
    assert P.grid_size(64, 16, -0.25) == (3, 20)  # the default gap: 4 voxels between cubes
    assert P.grid_size(64, 16, -0.25, jitter=2) == (3, 20)


def test_grid_is_centred_when_the_cubes_do_not_tile_the_crop():
    g, s = P.grid_size(64, 16, -0.25)
    assert P.grid_margin(64, 16, g, s) == 4  # 64 - (16 + 2*20) = 8 voxels left, 4 on each side
    assert P.grid_margin(64, 16, *P.grid_size(64, 16, 0.5)) == 0  # the paper's grid tiles exactly
    assert P.grid_size(30, 8, 0.5) == (6, 4) and P.grid_margin(30, 8, 6, 4) == 1


@pytest.mark.parametrize("args, match", [((64, 16, 1.0), "overlap"), ((64, 80, 0.5), "fit the crop"),
                                         ((64, 5, 0.5), "stride"), ((64, 16, -0.1), "stride"),
                                         ((20, 16, 0.5, 3), "jitter")])
def test_grid_rejects_bad_geometry(args, match):
    with pytest.raises(ValueError, match=match):
        P.grid_size(*args)


def test_u_path_is_the_drawing_of_design_md():
    # axial, opening up: 1 . 7 / 2 T 6 / 3 4 5 around target (z, y, x) = (3, 3, 3)
    got = P.path_positions("u", (3, 3, 3), "axial", "up").tolist()
    assert got == [[3, 2, 2], [3, 3, 2], [3, 4, 2], [3, 4, 3], [3, 4, 4], [3, 3, 4], [3, 2, 4], [3, 3, 3]]


def test_straight_and_block_known_answers():
    assert P.path_positions("straight", (3, 3, 3), "coronal", "up", 3).tolist() == [
        [6, 3, 3], [5, 3, 3], [4, 3, 3], [3, 3, 3]]
    # by default a line reads as many support cubes as the default U
    assert len(P.path_positions("straight", (0, 0, 0), "axial", "up")) == len(P.path_positions("u", (0, 0, 0), "axial", "up"))
    blk = P.path_positions("block", (3, 3, 3), "axial", "up", 2)
    assert blk[-1].tolist() == [3, 3, 3] and blk[0].tolist() == [1, 1, 1]
    assert {tuple(p) for p in blk} == set(itertools.product((1, 3), repeat=3))


def test_unknown_kind_and_variant_are_rejected():
    with pytest.raises(ValueError, match="unknown path kind 'zigzag'"):
        P.path_positions("zigzag", (0, 0, 0), "axial", "up")
    with pytest.raises(ValueError, match="no variant"):
        P.path_positions("u", (0, 0, 0), "oblique", "up")
    with pytest.raises(ValueError, match="size"):
        P.path_positions("u", (0, 0, 0), "axial", "up", 0)


geometry = st.sampled_from([(64, 16, 0.5), (28, 8, 0.5), (48, 8, 0.5), (64, 16, 0.75), (40, 8, 0.0)])


@settings(max_examples=60, deadline=None)
@given(geometry, st.sampled_from(KINDS), st.integers(1, 3), st.data())
def test_every_position_inside_the_grid_and_target_not_in_support(geom, kind, size, data):
    g, _ = P.grid_size(*geom)
    variant = data.draw(st.sampled_from(P.PATHS[kind].variants))
    targets = P.valid_targets(kind, g, size, None, (variant,))
    if not len(targets):
        return
    t = targets[data.draw(st.integers(0, len(targets) - 1))]
    pos = P.path_positions(kind, t, *variant, size)
    assert np.all((pos >= 0) & (pos < g))
    assert pos[-1].tolist() == t.tolist()
    assert t.tolist() not in pos[:-1].tolist()
    assert len({tuple(p) for p in pos}) == len(pos)  # no cube twice


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(P.PATHS["u"].variants), st.integers(1, 3))
def test_u_neighbours_are_adjacent_in_the_plane_around_the_target(variant, r):
    t = np.array([5, 5, 5])
    pos = P.path_positions("u", t, *variant, r)
    sup = pos[:-1]
    assert len(sup) == 6 * r + 1
    steps = np.abs(np.diff(sup, axis=0)).sum(1)
    assert np.all(steps == 1)  # consecutive support cubes share a face
    assert np.all(np.abs(sup - t).max(1) == r)  # all on the ring of radius r
    normal = ({0, 1, 2} - set(P.PLANES[variant[0]])).pop()
    assert np.all(pos[:, normal] == t[normal])  # in the plane


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(P.PATHS["straight"].variants), st.integers(1, 4))
def test_straight_reads_a_line_towards_the_target(variant, n):
    t = np.array([5, 5, 5])
    pos = P.path_positions("straight", t, *variant, n)
    d = np.diff(pos, axis=0)
    assert np.all(np.abs(d).sum(1) == 1) and np.all(d == d[0])  # one direction, step 1


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3), dtype=int)
            m[range(3), perm] = signs
            yield m


@pytest.mark.parametrize("kind", KINDS)
def test_variants_are_rotations_or_reflections_of_each_other(kind):
    base = P.path_positions(kind, (0, 0, 0), *P.PATHS[kind].variants[0])
    mats = list(_signed_permutations())
    for v in P.PATHS[kind].variants:
        off = P.path_positions(kind, (0, 0, 0), *v)
        assert any(np.array_equal(base @ m.T, off) for m in mats), v


def test_targets_near_the_centre():
    g = 7
    near = P.valid_targets("u", g, 1, 1)
    assert len(near) == 27 and np.all(np.abs(near - 3).max(1) <= 1)
    even = P.valid_targets("u", 6, 1, 0)  # g = 6: the 8 central positions
    assert {tuple(p) for p in even} == set(itertools.product((2, 3), repeat=3))
    assert len(P.valid_targets("straight", 7, 4, None)) == 0  # a line of 4 + target never fits every side
