"""Faults in the stages: kill -9 at any moment, a full disk, two runs on one store at once.

After each, a rerun's outputs equal a clean run's, and nothing half-written is visible.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli import main
from tcpc_data.ingest.stage import ingest
from tcpc_data.phantom import write_archive
from tcpc_data.store.volumes import list_cases, open_store, sweep_staging
from tcpc_train.loops.checkpoint import load_checkpoint
from tcpc_train.input.synthetic import write_synthetic_labelled, write_synthetic_paths

try:  # the test extra's tensorboard reads the runs' event files back
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:
    EventAccumulator = None

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


def _kill_preprocess_and_rerun(clean, tmp_path_factory, when: float) -> None:
    arch, clean_out, seconds = clean
    out = tmp_path_factory.mktemp("killed") / "out"
    proc = subprocess.Popen(_cli("preprocess", arch, "--out", out, *ARGS), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(when * seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The rerun is a subprocess like the clean run, never this process: other tests may have changed its
    # state (thread counts, configs), and the property is about what the kill left on disk.
    r = subprocess.run(_cli("preprocess", arch, "--out", out, *ARGS), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _shard_digests(out / "shards") == _shard_digests(clean_out / "shards")
    got, want = (json.loads((d / "shards" / "manifest.json").read_text()) for d in (out, clean_out))
    assert (got["digest"], got["shards"], got["cases"]) == (want["digest"], want["shards"], want["cases"])
    # A kill inside a store write leaves its staging folder, never visible as a case; runs sweep only
    # folders older than an hour (a younger one may be a concurrent run's), so sweep as a later run would.
    sweep_staging(out / "volumes.zarr", older_than_s=0)
    assert not [p for p in out.iterdir() if p.name.startswith(".") and "staging" in p.name]
    assert not [p for p in (out / "shards").iterdir() if p.name.endswith(".tmp")]


# Each kill costs a partial run and a full rerun (10-30 s on a loaded 2-core machine): the default suite
# draws two kill times, the slow campaign ten more.
@pytest.mark.timeout(900)
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(when=st.floats(0.05, 0.95))
def test_preprocess_killed_at_a_drawn_moment_then_rerun_equals_a_clean_run(clean, tmp_path_factory, when):
    _kill_preprocess_and_rerun(clean, tmp_path_factory, when)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(when=st.floats(0.05, 0.95))
def test_preprocess_killed_at_many_moments_then_rerun_equals_a_clean_run(clean, tmp_path_factory, when):
    _kill_preprocess_and_rerun(clean, tmp_path_factory, when)


SHARD_ARGS = ["--crop-size", "32", "--cube-size", "8", "--shard-size", "5", "--workers", "1", "--no-progress"]


def _start_shards(store: Path, out: Path) -> subprocess.Popen:
    """Start ``tcpc shards`` and return once it has created ``out`` (after its imports and planning)."""
    proc = subprocess.Popen(_cli("shards", store, *SHARD_ARGS, "--out", out), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not out.exists() and proc.poll() is None:
        time.sleep(0.002)
    return proc


@pytest.fixture(scope="module")
def shards_clean(tmp_path_factory, phantom_store):
    """A store of six phantom cases, its clean shard set (a subprocess) and the seconds from the creation
    of the output to its manifest: the window a drawn kill time falls in."""
    d = tmp_path_factory.mktemp("shards-clean")
    phantom_store(d / "v.zarr", n_cases=6)
    proc = _start_shards(d / "v.zarr", d / "clean")
    t0 = time.monotonic()
    while not (d / "clean" / "manifest.json").exists() and proc.poll() is None:
        time.sleep(0.002)
    seconds = time.monotonic() - t0
    assert proc.wait() == 0
    return d / "v.zarr", d / "clean", seconds


@pytest.mark.timeout(600)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(when=st.floats(0.0, 1.0))
def test_shards_killed_while_writing_then_rerun_leave_exactly_the_clean_set(shards_clean, tmp_path_factory, when):
    store, clean_out, seconds = shards_clean
    out = tmp_path_factory.mktemp("shards-killed") / "out"
    proc = _start_shards(store, out)
    time.sleep(when * seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = sorted(p.name for p in out.iterdir())  # a partial set, or none, or all: then the rerun completes it
    assert subprocess.run(_cli("shards", store, *SHARD_ARGS, "--out", out), cwd=ROOT,
                          capture_output=True).returncode == 0
    # every file: the shards, the case records, the manifest; no leftover of the killed run
    assert _shard_digests(out) == _shard_digests(clean_out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean_out.iterdir())
    assert (out / "manifest.json").read_bytes() == (clean_out / "manifest.json").read_bytes(), left


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
    write_archive(tmp_path / "arch", n_cases=3, shape=(64, 128, 128))
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


TRAIN = {"pretrain": ["--steps", "6", "--batch-size", "4", "--warmup", "2", "--checkpoint-every", "1"],
         "finetune": ["--scratch", "--epochs", "3", "--batch-size", "4"]}
TINY = ["--width", "0.0625", "--workers", "0", "--shuffle-buffer", "8"]


def _train_cmd(command: str, data: Path, out: Path) -> list[str]:
    # with the tensorboard extra, the event file is checked too
    events = ["--tensorboard"] if EventAccumulator is not None else []
    return [command, str(data), "--out", str(out), *TRAIN[command], *TINY, *events]


def _start_training(args: list[str], out: Path) -> subprocess.Popen:
    """Start ``tcpc ARGS`` and return once its training starts (``out/config.json`` is written after
    the imports and data checks), so that a drawn kill time lands in training."""
    proc = subprocess.Popen(_cli(*args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (out / "config.json").exists() and proc.poll() is None:
        time.sleep(0.005)
    return proc


def _trained(out: Path) -> tuple[list, dict]:
    """(the log's rows without timings, the final weights) of a training run."""
    rows = [{k: v for k, v in json.loads(line).items() if k not in ("samples_per_s", "time_s", "wall_time")}
            for line in (out / "log.jsonl").read_text().splitlines()]
    return rows, load_checkpoint(out / "last.pt")["model"]


_TRAIN_DATA = {"pretrain": lambda d: write_synthetic_paths(d, 12, "u", cube=16, per_shard=4, seed=1),
               "finetune": lambda d: write_synthetic_labelled(d, (8, 4, 4), size=12, per_shard=4, seed=4)}


@pytest.fixture(scope="module")
def train_clean(tmp_path_factory):
    """``clean(command)``: a tiny data set for the command, its clean run (a subprocess, as the killed
    runs) and the seconds that run trains; each made once per module."""
    runs = {}

    def clean(command: str) -> tuple[Path, Path, float]:
        if command not in runs:
            d = tmp_path_factory.mktemp(command)
            data = _TRAIN_DATA[command](d / "data")
            proc = _start_training(_train_cmd(command, data, d / "run"), d / "run")
            t0 = time.monotonic()
            assert proc.wait() == 0
            runs[command] = (data, d / "run", time.monotonic() - t0)
        return runs[command]
    return clean


def _kill_and_rerun(clean, tmp_path_factory, command: str, when: float) -> None:
    data, clean_out, seconds = clean(command)
    out = tmp_path_factory.mktemp("killed") / "run"
    proc = _start_training(_train_cmd(command, data, out), out)
    time.sleep(when * seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The rerun is a subprocess like the clean run: in this process other tests may have changed torch's
    # thread count, and with it the rounding of reductions.
    r = subprocess.run(_cli(*_train_cmd(command, data, out)), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (rows, weights), (want_rows, want_weights) = _trained(out), _trained(clean_out)
    assert rows == want_rows  # the same losses, step by step
    if EventAccumulator is not None:  # and TensorBoard shows each of them once
        events = EventAccumulator(str(out)).Reload()
        assert [(e.step, e.value) for e in events.Scalars("loss")] == \
            [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows if "loss" in r]
    assert weights.keys() == want_weights.keys()
    assert all(torch.equal(weights[k], want_weights[k]) for k in want_weights)


# Each kill costs two subprocesses and their imports (5-10 s on a loaded 2-core machine): the default
# suite draws one kill time per command, the slow campaign four more.
@pytest.mark.timeout(900)  # training subprocesses; slow on a loaded machine
@pytest.mark.parametrize("command", ["pretrain", "finetune"])
@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(when=st.floats(0.0, 1.0))
def test_training_killed_at_a_drawn_moment_then_rerun_equals_a_clean_run(train_clean, tmp_path_factory, command,
                                                                          when):
    _kill_and_rerun(train_clean, tmp_path_factory, command, when)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("command", ["pretrain", "finetune"])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(when=st.floats(0.0, 1.0))
def test_training_killed_at_many_moments_then_rerun_equals_a_clean_run(train_clean, tmp_path_factory, command, when):
    _kill_and_rerun(train_clean, tmp_path_factory, command, when)


def _visible_set(out: Path, finished: bool = True) -> dict:
    """What a reader of ``out`` can see: the manifest's shards, each checked against its SHA-256, and
    no temporary file left. Shards the manifest does not list are invisible to readers (a failed run
    keeps its finished cases' shards for the rerun); after a finished run, every ``.tar`` is listed."""
    manifest = out / "manifest.json"
    listed = json.loads(manifest.read_text())["shards"] if manifest.exists() else []
    for s in listed:
        assert hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["sha256"]
    if finished:
        assert sorted(p.name for p in out.glob("*.tar")) == sorted(s["name"] for s in listed)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    return {s["name"]: s["sha256"] for s in listed}


# 200k: one case's shards fit (192 KiB and a 4 KiB record), the other cases' do not; 588k: every case's shards
# and record fit exactly (147 pages), the manifest does not.
@pytest.mark.parametrize("size", ["200k", "588k"])
def test_a_full_disk_during_a_shard_write_fails_in_one_line_and_a_rerun_equals_a_clean_run(
        small_disk, tmp_path, phantom_store, size):
    phantom_store(tmp_path / "v.zarr", n_cases=3)
    subprocess.run(["mount", "-o", f"remount,size={size}", str(small_disk)], check=True)
    args = ["shards", str(tmp_path / "v.zarr"), "--crop-size", "32", "--cube-size", "8", "--shard-size", "10",
            "--workers", "1", "--no-progress", "--out"]
    out = small_disk / "shards"
    r = CliRunner().invoke(main, [*args, str(out)])
    assert r.exit_code in (1, 2) and "Traceback" not in r.output, r.output
    failures = out / "failures-shards.jsonl"
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    errors += [json.loads(line)["error"] for line in failures.read_text().splitlines()] if failures.exists() else []
    assert errors and all("No space left on device" in e for e in errors), r.output
    _visible_set(out, finished=False)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    r = CliRunner().invoke(main, [*args, str(out)])
    assert r.exit_code == 0, r.output
    assert CliRunner().invoke(main, [*args, str(tmp_path / "clean")]).exit_code == 0
    assert _visible_set(out) == _visible_set(tmp_path / "clean")
    assert _shard_digests(out) == _shard_digests(tmp_path / "clean")


def _grows(payload):
    """Take 1.5 GB, more than the worker's limit, so that its nanny stops it: always, or on the first attempt only."""
    kind, marker = payload
    if kind == "always" or (kind == "once" and not os.path.exists(marker)):
        open(marker, "w").close()
        _hold(np.ones(1_500_000_000, np.uint8))
    return "done", kind


def _hold(block: np.ndarray) -> None:
    """Keep ``block`` alive for 20 s: the nanny's monitor looks every 0.1 s, so a worker still alive after
    this was never stopped (and its case comes back done, failing the test)."""
    time.sleep(20)


@pytest.mark.timeout(600)
def test_a_worker_over_its_memory_limit_costs_at_most_its_case(tmp_path):
    from tcpc_data.runner import Task, run_cases

    tasks = [Task(name, name, (kind, str(tmp_path / name)))
             for name, kind in [("a", "ok"), ("b", "once"), ("c", "always"), ("d", "ok")]]
    # A worker that unpickles this module imports torch (about 330 MB): the limit leaves room for that, or the
    # worker would pause (at 80 %) before its first case.
    rep = run_cases("t", tasks, _grows, workers=1, memory_limit="800MB", failures_path=tmp_path / "f.jsonl")
    assert rep.done == ["a", "b", "d"], rep.failures  # b went over once: retried on a fresh worker
    recs = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [r["case"] for r in recs] == ["c"] and "over its memory limit" in recs[0]["error"]


@pytest.mark.parametrize("command", ["ingest", "supervoxels", "shards", "preprocess"])
def test_every_stage_takes_a_memory_limit_and_refuses_a_bad_one_in_one_line(command, tmp_path):
    assert "--memory-limit SIZE" in CliRunner().invoke(main, [command, "--help"]).output
    where = ["--out", str(tmp_path / "o")] if command != "supervoxels" else []
    r = CliRunner().invoke(main, [command, str(tmp_path), *where, "--memory-limit", "lots"])
    assert r.exit_code == 2 and r.output == "error: memory limit 'lots' is not a size such as 4GiB or 500MB\n"
    r = CliRunner().invoke(main, [command, str(tmp_path), *where, "--memory-limit", "1GiB", "--scheduler",
                                  "tcp://127.0.0.1:1"])
    assert r.exit_code == 2 and "workers of a running scheduler have theirs" in r.output, r.output
