"""tcpc inspect: summaries of stores, cases and shard dirs, montage PNGs, and bad paths."""
import re

import fsspec
import matplotlib.image as mpimg
import numpy as np
import pytest

from tcpc_data.tools.overview import inspect_path
from tcpc_data.shards.labelled import write_npz_shards
from tcpc_data.shards.pretrain import ShardConfig, write_shards


@pytest.fixture(scope="module")
def made(tmp_path_factory, phantom_store):
    d = tmp_path_factory.mktemp("i")
    phantom_store(d / "v.zarr")
    write_shards(d / "v.zarr", d / "sh", ShardConfig(crop_size=32, cube_size=8, shard_size=5), workers=1)
    return d


def _colour_fraction(png, rgb):
    img = mpimg.imread(png)[..., :3]
    return np.mean(np.all(np.abs(img - np.asarray(rgb)) < 0.1, axis=-1))


def test_store_summary_lists_cases(made):
    text = inspect_path(made / "v.zarr")
    assert "2 case(s)" in text and "ph-00" in text and "ph-01" in text and "spacing [2.5, 1.4, 1.4]" in text


def test_case_summary_and_montage(made, tmp_path):
    text = inspect_path(made / "v.zarr" / "ph-00", png=tmp_path / "c.png")
    assert "image: (32, 64, 64) float32 range [-1" in text
    # the stored values' HU resolution over the store's [-1024, 3071] window: 6.1e-05 HU for float32
    assert re.search(r"image: \(32, 64, 64\) float32 range \[-1, \S+\] \(HU to within 6.1e-05\)", text), text
    assert "candidates (z, y, x), best first" in text and "0: (" in text and "labels" in text
    assert "img-0" in text  # digests shown
    assert _colour_fraction(tmp_path / "c.png", (1, 0, 0)) > 0  # the best candidate's red box


def test_shard_summary_and_path_montage(made, tmp_path):
    text = inspect_path(made / "sh", png=tmp_path / "s.png", sample=6)
    assert "32 samples in 8 shards from 2 cases" in text  # 16 a case: 5 + 5 + 5 + 1 and "digest " in text
    assert "cubes.npy: (8, 8, 8, 8) float16" in text and "path.npy: (8, 3) int16" in text
    assert "sample 6: key ph-00_c00001_t02" in text
    assert _colour_fraction(tmp_path / "s.png", (1, 0, 0)) > 0  # target frame
    assert _colour_fraction(tmp_path / "s.png", (0, 1, 0)) > 0  # support frames


def test_labelled_shard_montage(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", **{f"{s}_{k}": (rng.integers(0, 256, (2, 8, 8, 8)).astype(np.uint8)
                                                 if k == "images" else np.array([[0], [1]]))
                                    for s in ("train", "val", "test") for k in ("images", "labels")})
    write_npz_shards(tmp_path / "m.npz", tmp_path / "o")
    text = inspect_path(tmp_path / "o" / "test", png=tmp_path / "l.png", sample=1)
    assert "cls: 1" in text and "finetune set" in text and (tmp_path / "l.png").stat().st_size > 1000
    text = inspect_path(tmp_path / "o")  # the split root: every split summarised
    assert all(f"split: {s}" in text for s in ("train", "val", "test"))


def test_bad_paths_are_clear_errors(made, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to inspect"):
        inspect_path(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither a volume store"):
        inspect_path(tmp_path / "empty")
    with pytest.raises(ValueError, match="sample 99 does not exist"):
        inspect_path(made / "sh", sample=99)


def test_shards_behind_a_url_read_like_local_ones(made, tmp_path):
    url = f"memory://inspect-{tmp_path.name}/sh"
    write_shards(made / "v.zarr", url, ShardConfig(crop_size=32, cube_size=8, shard_size=5), workers=1)
    try:
        text = inspect_path(url, png=tmp_path / "u.png", sample=6)
        assert text == inspect_path(made / "sh", sample=6).replace(str(made / "sh"), url)
        assert _colour_fraction(tmp_path / "u.png", (1, 0, 0)) > 0
    finally:
        fsspec.filesystem("memory").rm(f"/inspect-{tmp_path.name}", recursive=True)
