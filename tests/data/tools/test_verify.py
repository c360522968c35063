"""tcpc verify: an intact store or shard set passes; each kind of damage is named in one line, exit 1."""
import json

import pytest
import zarr
from click.testing import CliRunner

from cli import main
from tcpc_data.phantom import write_archive

ARGS = ["--clip", "-1024,3071", "--n-segments", "200", "--top-k", "3", "--crop-size", "32",
        "--cube-size", "8", "--targets-per-crop", "2", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    labels = write_archive(d / "arch", n_cases=2, shape=(32, 64, 64))
    r = CliRunner().invoke(main, ["preprocess", str(d / "arch"), "--out", str(d / "out"), "--labels", str(labels),
                                  *ARGS])
    assert r.exit_code == 0, r.output
    return d / "out"


@pytest.fixture
def copy(run, tmp_path):
    import shutil
    shutil.copytree(run, tmp_path / "out")
    return tmp_path / "out"


def _verify(path):
    return CliRunner().invoke(main, ["verify", str(path)])


@pytest.mark.parametrize("what", ["volumes.zarr", "shards", "labelled"])
def test_intact_outputs_pass(run, what):
    r = _verify(run / what)
    assert r.exit_code == 0 and r.output.strip().endswith(": ok"), r.output


def test_a_flipped_byte_in_a_stored_chunk_is_found(copy):
    chunk = next(p for p in sorted((copy / "volumes.zarr").rglob("image/c/*/*/*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = _verify(copy / "volumes.zarr")
    assert r.exit_code == 1 and "/image: a chunk does not read" in r.output, r.output


def test_an_unfinished_array_and_a_bad_attribute_are_found(copy):
    store = zarr.open_group(str(copy / "volumes.zarr"), mode="r+", zarr_format=3)
    case = sorted(store.group_keys())[0]
    del store[case]["supervoxels"].attrs["digest"]
    store[case]["image"].attrs["spacing_zyx"] = [1.0, 0.0, 1.0]
    r = _verify(copy / "volumes.zarr")
    assert r.exit_code == 1, r.output
    assert f"{case}/supervoxels: incomplete" in r.output and "spacing_zyx must be 3 positive" in r.output


def test_a_changed_missing_or_truncated_shard_is_found(copy):
    shard = next((copy / "shards").glob("*.tar"))
    data = bytearray(shard.read_bytes())
    data[-2000] ^= 0x01  # inside the last sample's data: the tar still parses
    shard.write_bytes(bytes(data))
    r = _verify(copy / "shards")
    assert r.exit_code == 1 and "SHA-256 differs" in r.output, r.output
    shard.write_bytes(bytes(data[:3000]))
    r = _verify(copy / "shards")
    assert "truncated tar" in r.output and r.exit_code == 1
    shard.unlink()
    assert "but missing" in _verify(copy / "shards").output


def test_a_sample_off_the_schema_and_a_broken_manifest_are_found(copy):
    m = json.loads((copy / "labelled" / "manifest.json").read_text())
    m["members"]["volume.npy"]["shape"] = [16, 16, 16]
    (copy / "labelled" / "manifest.json").write_text(json.dumps(m))
    r = _verify(copy / "labelled")
    assert r.exit_code == 1 and "volume.npy has shape [32, 32, 32], the schema says [16, 16, 16]" in r.output
    (copy / "shards" / "manifest.json").write_text("{not json")
    r = _verify(copy / "shards")
    assert r.exit_code == 1 and "not valid JSON" in r.output


def test_nothing_there_is_a_one_line_error(tmp_path):
    r = _verify(tmp_path / "nope")
    assert r.exit_code == 2 and r.output.startswith("error: nothing to verify at")


def test_a_shard_listed_under_another_case_is_found(copy):
    m = json.loads((copy / "shards" / "manifest.json").read_text())
    first, second = sorted(m["cases"])
    for s in m["shards"]:
        s["case"] = first  # every shard claimed by the first case
    m["cases"] = {first: m["totals"]["samples"]}
    m["case_digests"] = {first: m["case_digests"][first]}
    m["totals"]["cases"] = 1
    (copy / "shards" / "manifest.json").write_text(json.dumps(m))
    r = _verify(copy / "shards")
    assert r.exit_code == 1, r.output
    assert f"json names case '{second}', the manifest lists the shard under case '{first}'" in r.output
