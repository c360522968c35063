"""Bad samples in training shards: a one-line error naming shard and sample, or, with
``--skip-bad-samples``, a finished run whose log counts what it dropped."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from tcpc_data.shards.tario import encode_npy, read_npy, tar_samples, write_tar
from tcpc_train.input.synthetic import write_synthetic_labelled, write_synthetic_paths

TINY = ["--width", "0.0625", "--workers", "0"]


def _spoil(tar: Path, member: str, how: tuple[str, ...]) -> list[str]:
    """Rewrite the first samples of ``tar``: ``corrupt`` replaces ``member`` by bytes that are no
    .npy, ``shape`` crops its array's last three axes by 4 voxels; returns the spoiled keys in order."""
    samples = list(tar_samples(tar))
    for (key, members), kind in zip(samples, how):
        if kind == "corrupt":
            members[member] = b"\x93NUMPY garbage"
        else:
            arr = read_npy(members[member])
            members[member] = encode_npy(arr[..., :-4, :-4, :-4])
    write_tar(tar, samples)
    return [key for key, _ in samples[:len(how)]]


@pytest.fixture
def paths(tmp_path):
    return write_synthetic_paths(tmp_path / "u", 16, "u", cube=16, per_shard=4, seed=1)


@pytest.fixture
def labelled(tmp_path):
    return write_synthetic_labelled(tmp_path / "labelled", (32, 8, 8), size=12, per_shard=8, seed=4)


def _pretrain(shards, out, *extra):
    return CliRunner().invoke(main, ["pretrain", str(shards), "--steps", "4", "--batch-size", "4", "--warmup", "1",
                                     "--out", str(out), *TINY, *extra])


def _finetune(labelled, out, *extra):
    return CliRunner().invoke(main, ["finetune", str(labelled), "--scratch", "--epochs", "1", "--batch-size", "8",
                                     "--out", str(out), *TINY, *extra])


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.mark.parametrize("kind,says", [("corrupt", "cubes.npy is not a plain .npy array"),
                                       ("shape", "array shapes")])
def test_pretraining_names_a_bad_sample_in_one_line(paths, tmp_path, kind, says):
    tar = paths / "synthetic-000001.tar"
    key, = _spoil(tar, "cubes.npy", (kind,))
    res = _pretrain(paths, tmp_path / "run")
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert f"{tar}: sample {key}" in line and says in line


@pytest.mark.parametrize("kind,says", [("corrupt", "volume.npy is not a plain .npy array"),
                                       ("shape", "differ from the other samples of its batch")])
def test_finetuning_names_a_bad_sample_in_one_line(labelled, tmp_path, kind, says):
    tar = labelled / "train" / "labelled-000001.tar"
    key, = _spoil(tar, "volume.npy", (kind,))
    res = _finetune(labelled, tmp_path / "run")
    assert res.exit_code == 2
    line = _error_line(res.output)
    assert f"{tar}: sample {key}" in line and says in line


@pytest.mark.parametrize("workers", ["0", "2"])  # with loader workers the counts travel in their batches
def test_pretraining_skips_and_counts_bad_samples(paths, tmp_path, workers):
    _spoil(paths / "synthetic-000001.tar", "cubes.npy", ("corrupt", "shape"))
    res = _pretrain(paths, tmp_path / "run", "--skip-bad-samples", "--workers", workers)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # four steps are one pass over the 16 samples
    assert sum(r["skipped"] for r in rows) == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_samples"] == 2


def test_finetuning_skips_and_counts_bad_samples(labelled, tmp_path):
    _spoil(labelled / "train" / "labelled-000001.tar", "volume.npy", ("corrupt", "shape"))
    res = _finetune(labelled, tmp_path / "run", "--skip-bad-samples")
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 4 and sum(r["skipped"] for r in steps) == 2  # one epoch of 32 samples
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_samples"] == 2 and summary["metrics"]["n"] == 8


def test_a_set_of_only_bad_samples_ends_with_one_line_even_when_skipping(tmp_path):
    shards = write_synthetic_paths(tmp_path / "u", 8, "u", cube=16, per_shard=4, seed=1)
    for tar in sorted(shards.glob("*.tar")):
        _spoil(tar, "cubes.npy", ("corrupt",) * 4)
    res = _pretrain(shards, tmp_path / "run", "--skip-bad-samples")
    assert res.exit_code == 2
    assert "every sample failed to load" in _error_line(res.output)
