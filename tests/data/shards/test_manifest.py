"""The shard contract: one reader and writer of manifest.json, checked once, read by name (no listing)."""
import json

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_data.shards.manifest import (FORMAT, FORMAT_VERSION, check_manifest, describe, find_manifest, new_manifest,
                                       read_manifest, write_manifest)
from tcpc_data.urls import is_local, is_remote, join, local_path


def _manifest(shards=(("s-000000.tar", 3), ("s-000001.tar", 2)), **extra):
    return new_manifest(kind="pretrain", name="s", stage="test", config={"seed": 1}, digest="d" * 64, shard_size=3,
                        members={"cubes.npy": {"dtype": "float16"}},
                        shards=[{"name": n, "samples": c} for n, c in shards], cases={"a": 3, "b": 2},
                        case_digests={"a": "1", "b": "2"}, **extra)


counts = st.lists(st.integers(0, 10_000), max_size=6)


@settings(max_examples=30, deadline=None)
@given(counts=counts, failed=st.lists(st.sampled_from(["x", "y", "z"]), unique=True))
def test_written_manifests_read_back_equal_with_totals_counted(tmp_path_factory, counts, failed):
    out = tmp_path_factory.mktemp("m")
    m = new_manifest(kind="finetune", name="l", stage="t", config={}, digest="d", shard_size=max(counts, default=1),
                     members={}, shards=[{"name": f"l-{i:06d}.tar", "samples": n} for i, n in enumerate(counts)],
                     cases={"a": sum(counts)}, case_digests={"a": "1"}, failed_cases=failed, split="train")
    path = write_manifest(out, m)
    assert read_manifest(out) == m and json.loads(path.read_text()) == m
    assert m["totals"] == {"samples": sum(counts), "shards": len(counts), "cases": 1}
    assert m["format"] == FORMAT and m["format_version"] == FORMAT_VERSION and m["failed_cases"] == sorted(failed)
    assert [p.name for p in out.iterdir()] == ["manifest.json"]  # no temporary file left
    write_manifest(out, m)
    assert path.read_bytes() == json.dumps(m, indent=1, sort_keys=True).encode() + b"\n"  # same content, same bytes


@pytest.mark.parametrize("change, match", [
    (lambda m: m.pop("format"), "not a tcpc shard manifest \\(format None"),
    (lambda m: m.update(format="webdataset"), "not a tcpc shard manifest \\(format 'webdataset'"),
    (lambda m: m.update(format_version=1), "format version 1; this tcpc reads version 2 \\(rerun the command"),
    (lambda m: m["shards"][0].update(case="zz"), "holds case 'zz', which 'cases' lacks"),
    (lambda m: [s.update(case="a") for s in m["shards"]], "case 'a' has 5 samples in its shards, 'cases' says 3"),
    (lambda m: m.pop("digest"), "manifest lacks digest"),
    (lambda m: m.update(kind="u"), "kind must be one of pretrain, finetune"),
    (lambda m: m.update(shards={"s-000000.tar": 3}), "'shards' must list"),
    (lambda m: m["shards"][0].update(samples="3"), "shard 's-000000.tar' has no valid sample count"),
    (lambda m: m["shards"][0].update(name="../etc/passwd"), "must be a file name"),
    (lambda m: m["totals"].update(samples=4), "totals .* disagree with the shards listed"),
])
def test_contract_breaks_are_one_line_errors_naming_the_file(tmp_path, change, match):
    m = _manifest()
    change(m)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match=match) as exc:
        read_manifest(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path}/manifest.json: ") and "\n" not in str(exc.value)


def test_malformed_or_missing_files(tmp_path):
    assert find_manifest(tmp_path) is None and find_manifest(tmp_path / "nope") is None
    with pytest.raises(FileNotFoundError, match="has no manifest: .*/nope/manifest.json not found \\(it does not exist"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=f"{tmp_path}/manifest.json: not valid JSON"):
        find_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a JSON list, not an object"):
        find_manifest(tmp_path)
    (tmp_path / "file").write_text("x")
    assert find_manifest(tmp_path / "file") is None  # a file where the directory should be


def test_the_writer_refuses_what_readers_refuse_and_keeps_the_old_file(tmp_path):
    good = write_manifest(tmp_path, _manifest())
    before = good.read_bytes()
    bad = _manifest()
    bad["shards"][1]["samples"] = -1
    with pytest.raises(ValueError, match="no valid sample count"):
        write_manifest(tmp_path, bad)
    with pytest.raises(ValueError, match="kind must be one of"):
        new_manifest(**{**{k: v for k, v in _manifest().items() if k not in ("format", "format_version", "totals")},
                        "kind": "labelled"})
    assert good.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_a_manifest_behind_a_url_is_read_by_name_without_listing(tmp_path, monkeypatch):
    mem = fsspec.filesystem("memory")
    m = _manifest(source="memory://x")
    mem.pipe("/tcpc-manifest/set/manifest.json", json.dumps(m).encode())

    def no_listing(*args, **kwargs):
        raise AssertionError("a manifest read listed a directory")
    for name in ("ls", "glob", "find", "isdir", "walk"):
        monkeypatch.setattr(type(mem), name, no_listing)
    try:
        assert read_manifest("memory://tcpc-manifest/set") == m
        assert find_manifest("memory://tcpc-manifest/other") is None
    finally:
        monkeypatch.undo()
        mem.rm("/tcpc-manifest", recursive=True)


def test_describe_and_check_on_a_dict():
    m = _manifest()
    assert describe(m) == "5 samples in 2 shards from 2 cases"
    assert check_manifest(m, "x") is m


@pytest.mark.parametrize("url, remote", [("out/shards", False), ("/abs/shards", False), ("file:///abs/x", False),
                                         ("s3://bucket/shards", True), ("memory://x", True)])
def test_urls_local_and_remote(url, remote):
    assert is_remote(url) is remote and is_local(url) is not remote
    assert join(url + "/", "a", "b.tar") == f"{url}/a/b.tar"
    if not remote:
        assert str(local_path(url)) == url.removeprefix("file://")
