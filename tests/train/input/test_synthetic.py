"""Synthetic shards follow the engine's contract: its manifest writer, its path geometry, its sample layout."""
import json

import numpy as np
import pytest

from tcpc_data.shards.cubepaths import PATHS, path_positions
from tcpc_data.shards.manifest import SPLITS, read_manifest
from tcpc_data.shards.tario import read_npy, tar_samples
from tcpc_train.input.synthetic import write_synthetic_paths


@pytest.mark.parametrize("kind, n, cube", [("u", 24, 16), ("straight", 16, 16), ("block", 16, 8)])
def test_path_shards_are_cut_along_the_registered_geometry(shard_root, kind, n, cube):
    m = read_manifest(shard_root / kind)
    assert m["kind"] == "pretrain" and m["totals"] == {"samples": n, "shards": n // 4, "cases": n}
    assert [s["samples"] for s in m["shards"]] == [4] * (n // 4) and m["config"]["kind"] == kind
    plane, opening = PATHS[kind].variants[0]
    expected = path_positions(kind, (0, 0, 0), plane, opening)
    key, members = next(tar_samples(shard_root / kind / m["shards"][0]["name"]))
    path, cubes, meta = read_npy(members["path.npy"]), read_npy(members["cubes.npy"]), json.loads(members["json"])
    np.testing.assert_array_equal(path, expected - expected.min(0))  # the same path, moved into the grid
    assert cubes.shape == (len(expected), cube, cube, cube) and cubes.dtype == np.float16
    assert (meta["kind"], meta["plane"], meta["opening"]) == (kind, plane, opening) and key == "synthetic00000_c0"
    assert m["members"]["cubes.npy"]["shape"] == list(cubes.shape) and set(m["members"]["json"]["keys"]) == set(meta)


def test_labelled_splits_are_finetune_sets(labelled):
    for split, n in zip(SPLITS, (32, 16, 16)):
        m = read_manifest(labelled / split)
        assert m["kind"] == "finetune" and m["split"] == split and m["classes"] == [0, 1]
        assert m["totals"]["samples"] == n and sum(m["cases"].values()) == n


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown path kind 'spiral'"):
        write_synthetic_paths(tmp_path, 4, "spiral")
    assert not tmp_path.joinpath("manifest.json").exists()
