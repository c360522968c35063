"""The shards and inspect commands: exit codes, one-line errors, summaries."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from tcpc_data.store.volumes import commit_arrays


@pytest.fixture()
def store(tmp_path, phantom_store):
    phantom_store(tmp_path / "v.zarr")
    return tmp_path / "v.zarr"


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_shards_then_inspect(store, tmp_path):
    out = tmp_path / "sh"
    r = _run("shards", store, "--out", out, "--crop-size", 32, "--cube-size", 8, "--path", "straight",
             "--path-size", 2, "--shard-size", 10, "--workers", 1, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "32 samples in 4 shards from 2 cases" in r.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["path"] == "straight" and man["members"]["cubes.npy"]["shape"] == [3, 8, 8, 8]
    r = _run("inspect", out, "--png", tmp_path / "m.png")
    assert r.exit_code == 0 and "straight" in r.output and (tmp_path / "m.png").exists()


def test_case_options_pick_cases(store, tmp_path):
    for args in (["--case", "ph-01"], ["--cases", "ph-01"]):  # the old comma-separated form still works
        r = _run("shards", store, "--out", tmp_path / args[0], "--crop-size", 32, "--cube-size", 8, *args,
                 "--workers", 1, "--no-progress")
        assert r.exit_code == 0 and "16 samples in 1 shards from 1 cases" in r.output, r.output


def test_a_failed_case_exits_1(store, tmp_path):
    commit_arrays(store, "ph-01", {"candidates": np.array([[900, 0, 0]], np.int32)}, {"candidates": {"digest": "x"}})
    r = _run("shards", store, "--out", tmp_path / "sh", "--crop-size", 32, "--cube-size", 8,
             "--workers", 1, "--no-progress")
    assert r.exit_code == 1 and "1 failed" in r.output
    rec = json.loads((tmp_path / "sh" / "failures-shards.jsonl").read_text())
    assert rec["case"] == "ph-01" and "outside the volume" in rec["error"]


@pytest.mark.parametrize("args, message", [
    (["shards", "missing.zarr", "--out", "o"], "error: no volume store at missing.zarr"),
    (["shards", "{store}", "--out", "o", "--crop-size", "30"], "error: no target fits"),
    (["inspect", "nowhere"], "error: nothing to inspect at nowhere"),
    (["shards", "m.npz", "--out", "o", "--case", "a"], "error: a labels CSV and a case list apply to a volume store"),
    (["shards", "m.npz", "--out", "o", "--cases", "a,b"], "error: a labels CSV and a case list apply to a volume"),
    (["shards", "{store}", "--out", "o", "--task", "finetune"], "error: fine-tuning shards from a volume store need"),
])
def test_user_errors_are_one_line_and_exit_2(store, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    r = _run(*[a.format(store=store) for a in args])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [r.output.strip()]
    assert r.output.startswith(message), r.output


def test_npz_finetune_and_pretrain(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", **{f"{s}_{k}": (rng.integers(0, 256, (3, 28, 28, 28)).astype(np.uint8)
                                                 if k == "images" else np.array([[0], [1], [1]]))
                                    for s in ("train", "val", "test") for k in ("images", "labels")})
    r = _run("shards", tmp_path / "m.npz", "--out", tmp_path / "ft", "--no-progress")
    assert r.exit_code == 0, r.output
    for s in ("train", "val", "test"):
        shards = json.loads((tmp_path / "ft" / s / "manifest.json").read_text())["shards"]
        assert shards and all((tmp_path / "ft" / s / e["name"]).exists() for e in shards)
    r = _run("shards", tmp_path / "m.npz", "--out", tmp_path / "pre", "--task", "pretrain", "--path", "block",
             "--no-progress")
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "pre" / "manifest.json").read_text())
    assert man["config"]["crop_size"] == 28 and man["config"]["cube_size"] == 8 and man["totals"]["samples"] == 12


def test_shards_to_a_url_then_pretrain_from_it(store, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.chdir(tmp_path)  # a URL output's default failures report goes to the working directory
    url = f"memory://cli-{tmp_path.name}/u"
    try:
        r = _run("shards", store, "--out", url, "--crop-size", 32, "--cube-size", 8, "--shard-size", 8,
                 "--workers", 1, "--no-progress")
        assert r.exit_code == 0, r.output
        assert f"{url}: 32 samples in 4 shards from 2 cases" in r.output
        r = _run("pretrain", url, "--steps", 1, "--batch-size", 4, "--width", 0.0625, "--workers", 0,
                 "--out", tmp_path / "run")
        assert r.exit_code == 0, r.output
        assert (tmp_path / "run" / "last.pt").is_file()
    finally:
        fsspec.filesystem("memory").rm(f"/cli-{tmp_path.name}", recursive=True)
