"""Labelled shards: store + CSV crops, MedMNIST npz splits, pretraining from npz, and bad input."""
import io
import json
import tarfile

import numpy as np
import pytest

from tcpc_data.crops import crop
from tcpc_data.shards.labelled import LabelledConfig, write_labelled_shards, write_npz_shards
from tcpc_data.shards.pretrain import ShardConfig
from tcpc_data.store.volumes import open_store


def _samples(shard_dir):
    out = {}
    for tar_path in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                out.setdefault(key, {})[ext] = (np.load(io.BytesIO(data), allow_pickle=False)
                                                if ext.endswith("npy") else data)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory, phantom_store):
    url = tmp_path_factory.mktemp("l") / "v.zarr"
    phantoms = phantom_store(url)
    return url, phantoms


def test_store_and_csv_give_crops_with_classes(store, tmp_path):
    url, phantoms = store
    csv = tmp_path / "labels.csv"
    rows = [(c, *les.centre_zyx, les.cls) for c, ph in phantoms.items() for les in ph.lesions]
    csv.write_text("case,z,y,x,label\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    rep, man = write_labelled_shards(url, csv, tmp_path / "o", LabelledConfig(crop_size=24, shard_size=4), workers=1)
    assert rep.ok and man["totals"]["samples"] == len(rows) and man["kind"] == "finetune"
    got = _samples(tmp_path / "o")
    root = open_store(url, "r")
    for key, s in got.items():
        meta = json.loads(s["json"])
        assert int(s["cls"]) == meta["label"]
        expect, _ = crop(root[meta["case"]]["image"][...], meta["centre"], 24, -1.0)
        np.testing.assert_array_equal(s["volume.npy"], expect.astype(np.float16))
    assert sorted((json.loads(s["json"])["case"], *json.loads(s["json"])["centre"], int(s["cls"]))
                  for s in got.values()) == sorted(rows)


def test_csv_case_missing_from_store_fails_only_that_case(store, tmp_path):
    url, phantoms = store
    csv = tmp_path / "labels.csv"
    csv.write_text("case,z,y,x,label\nph-00,16,32,32,1\nnot-there,1,1,1,0\n")
    rep, man = write_labelled_shards(url, csv, tmp_path / "o", LabelledConfig(crop_size=16), workers=1)
    assert [f["case"] for f in rep.failures] == ["not-there"] and "labels.csv" in rep.failures[0]["error"]
    assert man["totals"]["samples"] == 1 and man["failed_cases"] == ["not-there"]


@pytest.mark.parametrize("text, err, match", [
    ("case,z,y\nph-00,1,2\n", ValueError, "missing column"),
    ("case,z,y,x,label\nph-00,1,2,three,0\n", ValueError, "line 2"),
    ("case,z,y,x,label\n", ValueError, "no rows")])
def test_bad_csv_is_a_clear_error(store, tmp_path, text, err, match):
    csv = tmp_path / "l.csv"
    csv.write_text(text)
    with pytest.raises(err, match=match):
        write_labelled_shards(store[0], csv, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    with pytest.raises(FileNotFoundError, match="labels CSV"):
        write_labelled_shards(store[0], tmp_path / "nope.csv", tmp_path / "o")


def _npz(path, side=8, dtype=np.uint8, n=(10, 3, 4)):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        imgs = rng.integers(0, 256, size=(k, side, side, side)).astype(np.uint8)
        arrays[f"{split}_images"] = imgs if dtype == np.uint8 else (imgs / 255.0).astype(dtype)
        arrays[f"{split}_labels"] = rng.integers(0, 2, size=(k, 1)).astype(np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_npz_splits_become_separate_labelled_sets(tmp_path):
    arrays = _npz(tmp_path / "m.npz")
    res = write_npz_shards(tmp_path / "m.npz", tmp_path / "o", config=LabelledConfig(shard_size=4))
    for split in ("train", "val", "test"):
        rep, man = res[split]
        assert man["split"] == split and man["intensity_map"].startswith("uint8")
        got = _samples(tmp_path / "o" / split)
        assert len(got) == len(arrays[f"{split}_images"]) == man["totals"]["samples"]
        for i, key in enumerate(sorted(got)):
            np.testing.assert_allclose(got[key]["volume.npy"],
                                       arrays[f"{split}_images"][i] / 127.5 - 1, atol=1e-3)
            assert int(got[key]["cls"]) == arrays[f"{split}_labels"][i, 0]
    # float 0..1 images map to the same [-1, 1] values
    _npz(tmp_path / "f.npz", dtype=np.float32)
    write_npz_shards(tmp_path / "f.npz", tmp_path / "of")
    a, b = _samples(tmp_path / "o" / "val"), _samples(tmp_path / "of" / "val")
    for key in a:
        np.testing.assert_allclose(a[key]["volume.npy"], b[key]["volume.npy"], atol=2e-3)


def test_npz_pretrain_cuts_path_samples_from_training_images(tmp_path):
    _npz(tmp_path / "m.npz", side=28, n=(3, 1, 1))
    res = write_npz_shards(tmp_path / "m.npz", tmp_path / "p", task="pretrain")
    rep, man = res["pretrain"]
    assert man["config"]["crop_size"] == 28 and man["config"]["cube_size"] == 8
    got = _samples(tmp_path / "p")
    assert len(got) == 3 * 4 and all(s["cubes.npy"].shape == (8, 8, 8, 8) for s in got.values())
    with pytest.raises(ValueError, match="crop_size=28"):
        write_npz_shards(tmp_path / "m.npz", tmp_path / "q", task="pretrain", config=ShardConfig())


def test_bad_npz_is_a_clear_error_and_writes_nothing(tmp_path):
    np.savez(tmp_path / "x.npz", train_images=np.zeros((2, 8, 8, 8), np.uint8),
             train_labels=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="val_images"):
        write_npz_shards(tmp_path / "x.npz", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    np.savez(tmp_path / "y.npz", **{f"{s}_{k}": (np.full((2, 8, 8, 8), 3.0) if k == "images" else np.zeros(2))
                                    for s in ("train", "val", "test") for k in ("images", "labels")})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_npz_shards(tmp_path / "y.npz", tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="npz"):
        write_npz_shards(tmp_path / "none.npz", tmp_path / "o")
    with pytest.raises(ValueError, match="task"):
        write_npz_shards(tmp_path / "x.npz", tmp_path / "o", task="jigsaw")


def test_real_adrenalmnist3d_keeps_the_official_splits(shared_data, tmp_path):
    res = write_npz_shards(shared_data / "labeled" / "adrenalmnist3d.npz", tmp_path / "o")
    assert {s: m["totals"]["samples"] for s, (_, m) in res.items()} == {"train": 1188, "val": 98, "test": 298}
    import webdataset as wds
    ds = wds.WebDataset(str(tmp_path / "o" / "val" / res["val"][1]["shards"][0]["name"]), shardshuffle=False).decode()
    first = next(iter(ds))
    assert first["volume.npy"].shape == (28, 28, 28) and first["cls"] in (0, 1)
    assert -1.0 <= first["volume.npy"].min() and first["volume.npy"].max() <= 1.0
