"""Faults in the stages: kill -9 at any moment, a full disk, two runs on one store at once.

After each, a rerun's outputs equal a clean run's, and nothing half-written is visible.
"""
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli import main
from tcpc_data.ingest.stage import ingest
from tcpc_data.phantom import write_archive
from tcpc_data.store import list_cases, open_store

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--clip", "-1024,3071", "--n-segments", "200", "--top-k", "3", "--crop-size", "32",
        "--cube-size", "8", "--targets-per-crop", "2", "--workers", "1", "--no-progress"]


def _cli(*args):
    return [sys.executable, "-c", "from cli import main; main()", *map(str, args)]


def _shard_digests(shards: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(shards.glob("*.tar"))}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """A phantom archive and its clean preprocess run, timed as a subprocess (imports included)."""
    d = tmp_path_factory.mktemp("clean")
    write_archive(d / "arch", n_cases=3, shape=(32, 64, 64))
    t0 = time.monotonic()
    subprocess.run(_cli("preprocess", d / "arch", "--out", d / "out", *ARGS), cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return d / "arch", d / "out", time.monotonic() - t0


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(when=st.floats(0.05, 0.95))
def test_preprocess_killed_at_any_moment_then_rerun_equals_a_clean_run(clean, tmp_path_factory, when):
    arch, clean_out, seconds = clean
    out = tmp_path_factory.mktemp("killed") / "out"
    proc = subprocess.Popen(_cli("preprocess", arch, "--out", out, *ARGS), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(when * seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = CliRunner().invoke(main, ["preprocess", str(arch), "--out", str(out), *ARGS])
    assert r.exit_code == 0, r.output
    assert _shard_digests(out / "shards") == _shard_digests(clean_out / "shards")
    assert (json.loads((out / "shards" / "manifest.json").read_text())["digest"]
            == json.loads((clean_out / "shards" / "manifest.json").read_text())["digest"])
    assert not [p for p in out.iterdir() if p.name.startswith(".") and "staging" in p.name]


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only: skipped where mounting is not allowed)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip() or 'mount failed'}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _images(store) -> dict:
    root = open_store(store, mode="r")
    return {c: np.asarray(root[c]["image"]) for c in list_cases(store)}


def test_a_full_disk_fails_cases_in_one_line_and_a_rerun_after_freeing_space_completes(small_disk, tmp_path):
    write_archive(tmp_path / "arch", n_cases=3, shape=(48, 96, 96))
    store = small_disk / "volumes.zarr"
    report = ingest(tmp_path / "arch", store, workers=1)
    assert report.failures, "the disk was expected to fill up"
    assert all("No space left on device" in f["error"] and "\n" not in f["error"] for f in report.failures)
    assert sorted(list_cases(store)) == sorted(report.done)  # what is visible is complete
    assert not [p for p in small_disk.iterdir() if "staging" in p.name]
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    rerun = ingest(tmp_path / "arch", store, workers=1)
    assert rerun.ok and sorted(rerun.skipped) == sorted(report.done)
    ingest(tmp_path / "arch", tmp_path / "clean.zarr", workers=1)
    got, want = _images(store), _images(tmp_path / "clean.zarr")
    assert got.keys() == want.keys() and all(np.array_equal(got[c], want[c]) for c in want)


def test_two_ingests_on_one_store_at_once_both_complete_and_agree(tmp_path):
    write_archive(tmp_path / "arch", n_cases=4, shape=(32, 64, 64))
    store = tmp_path / "volumes.zarr"
    procs = [subprocess.Popen(_cli("ingest", tmp_path / "arch", "--out", store, "--workers", "1", "--no-progress"),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    ingest(tmp_path / "arch", tmp_path / "clean.zarr", workers=1)
    got, want = _images(store), _images(tmp_path / "clean.zarr")
    assert got.keys() == want.keys() and all(np.array_equal(got[c], want[c]) for c in want)
