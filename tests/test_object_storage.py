"""Object storage for real: a local S3-compatible server (moto), preprocess from and to s3://, inspect, train.

The server runs on 127.0.0.1 for this module only; endpoint and credentials reach
s3fs through the standard AWS environment variables, as they would for a user.
"""
import hashlib
import json
import time

import pytest
from click.testing import CliRunner

from cli import main
from tcpc_data.phantom import write_archive
from tests.s3server import moto_server, s3_environment

s3fs = pytest.importorskip("s3fs", reason="the s3 extra (pip install 'tcpc[s3]') is not installed")

ARGS = ["--clip", "-1024,3071", "--n-segments", "200", "--top-k", "3", "--crop-size", "32",
        "--cube-size", "8", "--targets-per-crop", "2", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def s3_endpoint():
    try:
        with moto_server() as endpoint:
            yield endpoint
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """An s3fs filesystem on a fresh bucket; the environment points every s3:// URL at the local server."""
    for key, value in s3_environment(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    bucket = f"tcpc-{time.monotonic_ns()}"
    fs.mkdir(bucket)
    fs.invalidate_cache()
    return fs, bucket


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_preprocess_from_and_to_s3_equals_a_local_run_then_inspect_and_pretrain(s3, tmp_path, monkeypatch):
    fs, bucket = s3
    monkeypatch.chdir(tmp_path)
    arch = tmp_path / "arch"
    write_archive(arch, n_cases=2, shape=(32, 64, 64))
    (arch / "broken.nii.gz").write_bytes(b"not a nifti file")
    fs.put(str(arch), f"{bucket}/arch", recursive=True)

    local = CliRunner().invoke(main, ["preprocess", str(arch), "--out", str(tmp_path / "local"), *ARGS])
    remote = CliRunner().invoke(main, ["preprocess", f"s3://{bucket}/arch", "--out", f"s3://{bucket}/run", *ARGS])
    assert local.exit_code == remote.exit_code == 1, remote.output  # the broken file fails in both
    assert not (tmp_path / "s3:").exists()  # nothing folded into a local 's3:' folder

    fs.invalidate_cache()
    failures = fs.cat(f"{bucket}/run/failures-ingest.jsonl").decode()
    assert "broken" in failures
    man = json.loads(fs.cat(f"{bucket}/run/shards/manifest.json"))
    local_man = json.loads((tmp_path / "local" / "shards" / "manifest.json").read_text())
    assert man["totals"] == local_man["totals"] and man["totals"]["cases"] == 2
    for shard in man["shards"]:
        assert _sha(fs.cat(f"{bucket}/run/shards/{shard['name']}")) == \
            _sha((tmp_path / "local" / "shards" / shard["name"]).read_bytes())

    r = CliRunner().invoke(main, ["inspect", f"s3://{bucket}/run/shards"])
    assert r.exit_code == 0 and f"{man['totals']['samples']} samples" in r.output, r.output

    run = tmp_path / "pretrain"
    r = CliRunner().invoke(main, ["pretrain", f"s3://{bucket}/run/shards", "--out", str(run), "--steps", "2",
                                  "--width", "0.125", "--batch-size", "4", "--workers", "0",
                                  "--device", "cpu", "--checkpoint-every", "2"])
    assert r.exit_code == 0, r.output
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 2 and all(0 < v < 100 for v in losses)
