import json
import os
import signal

import numpy as np
import pytest

from tcpc_data.store import volumes as store
from tcpc_data.runner import DONE, SKIPPED, Task, run_cases


def test_commit_arrays_round_trip_and_replace(tmp_path):
    url = tmp_path / "v.zarr"
    store.commit_arrays(url, "c1", {"image": np.ones((70, 9, 9), "f4")},
                        {"image": {"spacing_zyx": [1, 2, 3], "digest": "d1"}}, {"source": "x"})
    store.commit_arrays(url, "c1", {"supervoxels": np.full((70, 9, 9), 2, "i4")}, {"supervoxels": {"digest": "s1"}})
    store.commit_arrays(url, "c1", {"supervoxels": np.full((70, 9, 9), 3, "i4")}, {"supervoxels": {"digest": "s2"}})
    root = store.open_store(url, "r")
    assert root["c1/image"].attrs["spacing_zyx"] == [1, 2, 3]
    assert int(root["c1/supervoxels"][0, 0, 0]) == 3 and root["c1/supervoxels"].attrs["digest"] == "s2"
    assert store.list_cases(url, ("image", "supervoxels")) == ["c1"]
    assert not (tmp_path / ".v.zarr.staging").exists()


@pytest.mark.parametrize("zero_chunk", [False, True])
def test_stored_bytes_equal_zarrs_own_write_with_or_without_an_empty_chunk(tmp_path, zero_chunk):
    # commit_arrays tells zarr to skip its per-chunk empty test only when no chunk is empty:
    # the shard it writes is zarr's, byte for byte, either way (an all-zero chunk is left out)
    import zarr

    data = np.random.default_rng(0).normal(size=(70, 80, 9)).astype("f4")
    if zero_chunk:
        data[:64, 64:, :] = 0.0  # one whole (edge) chunk of zeros
    assert store._has_empty_chunk(data, (64, 64, 9)) == zero_chunk
    store.commit_arrays(tmp_path / "v.zarr", "c", {"image": data}, {"image": {"digest": "d"}})
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    arr = plain.create_array("image", shape=data.shape, dtype=data.dtype, chunks=(64, 64, 9),
                             shards=(128, 128, 9), compressors=store._COMPRESSORS)
    arr[...] = data
    ours = (tmp_path / "v.zarr" / "c" / "image" / "c" / "0" / "0" / "0").read_bytes()
    assert ours == (tmp_path / "plain.zarr" / "image" / "c" / "0" / "0" / "0").read_bytes()
    np.testing.assert_array_equal(store.open_store(tmp_path / "v.zarr", "r")["c/image"][...], data)


def test_list_cases_reads_every_case_once_and_needs_every_required_array(tmp_path):
    url = tmp_path / "v.zarr"
    for i in range(12):
        arrays = {"image": np.ones((2, 2, 2), "f4")}
        if i % 3:
            arrays["supervoxels"] = np.ones((2, 2, 2), "i4")
        store.commit_arrays(url, f"c{i:02d}", arrays, {name: {"digest": "d"} for name in arrays})
    store.commit_arrays(url, "c99", {"image": np.ones((2, 2, 2), "f4")}, {"image": {}})  # unfinished
    assert store.list_cases(url) == [f"c{i:02d}" for i in range(12)]
    assert store.list_cases(url, ("image", "supervoxels")) == [f"c{i:02d}" for i in range(12) if i % 3]


def test_arrays_without_digest_count_as_absent(tmp_path):
    url = tmp_path / "v.zarr"
    store.commit_arrays(url, "c1", {"image": np.ones((4, 4, 4), "f4")}, {"image": {}})
    assert store.list_cases(url) == []


def test_case_ids_are_sanitised():
    assert store.sanitize_case_id("a b/c.d") == "a_b_c_d"
    with pytest.raises(ValueError):
        store.commit_arrays("memory://x", "bad id", {"image": np.ones((2, 2, 2))})


def _work(x):
    if x < 0:
        raise ValueError(f"negative input {x}")
    return (DONE if x % 2 else SKIPPED), x * 10


def test_runner_collects_failures_and_goes_on(tmp_path):
    tasks = [Task(f"c{i}", f"src{i}", v) for i, v in enumerate([1, 2, -1, 3])]
    rep = run_cases("t", tasks, _work, workers=1, failures_path=tmp_path / "f.jsonl")
    assert rep.done == ["c0", "c3"] and rep.skipped == ["c1"] and rep.results["c3"] == 30
    recs = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [(r["case"], r["source"]) for r in recs] == [("c2", "src2")]
    assert "negative input -1" in recs[0]["error"] and not rep.ok


def test_runner_with_two_dask_processes_equals_serial():
    tasks = [Task(f"c{i}", "s", i) for i in range(6)]
    serial = run_cases("t", tasks, _work, workers=1)
    dask = run_cases("t", tasks, _work, workers=2)
    assert (serial.done, serial.skipped, serial.results) == (dask.done, dask.skipped, dask.results)


def test_stages_share_one_live_display():
    import io

    from rich.console import Console

    from tcpc_data.runner import progress_display
    display = progress_display()
    display.live.console = Console(file=io.StringIO(), force_terminal=False)
    tasks = [Task(f"c{i}", "s", i) for i in range(3)]
    with display:
        run_cases("ingest", tasks, _work, workers=1, progress=display)
        run_cases("shards", tasks[:2], _work, workers=1, progress=display)
        assert display.live.is_started  # a shared display is left to its owner
    assert [(t.description, t.completed, t.total) for t in display.tasks] == [("ingest", 3, 3), ("shards", 2, 2)]


def _dies(payload):
    """Kill this worker process: always, or on the first attempt only (a marker file remembers it)."""
    kind, marker = payload
    if kind == "always" or (kind == "once" and not os.path.exists(marker)):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "done", kind


def test_a_killed_worker_costs_at_most_its_case_retried_once(tmp_path):
    tasks = [Task(name, name, (kind, str(tmp_path / name)))
             for name, kind in [("a", "ok"), ("b", "once"), ("c", "always"), ("d", "ok")]]
    rep = run_cases("t", tasks, _dies, workers=2, failures_path=tmp_path / "f.jsonl")
    assert rep.done == ["a", "b", "d"] and rep.results["b"] == "once", rep.failures  # b died once: retried
    recs = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [r["case"] for r in recs] == ["c"] and "worker died twice" in recs[0]["error"]


def _interrupted_at_2(payload):
    if payload == 2:
        raise KeyboardInterrupt
    return "done", payload


def test_ctrl_c_still_writes_the_failures_report(tmp_path):
    tasks = [Task(f"c{i}", f"s{i}", i) for i in range(4)]
    with pytest.raises(KeyboardInterrupt):
        run_cases("t", tasks, _interrupted_at_2, workers=1, failures_path=tmp_path / "f.jsonl")
    recs = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [r["case"] for r in recs] == ["c2", "c3"] and all("interrupted" in r["error"] for r in recs)


def _paused(payload):
    """A task that pauses after its 'reads'. Case "first" writes only once case "ok" has started
    its reads (so only an overlapping runner finishes it); kinds also: skip, fail-after, twice."""
    kind, started, log = payload
    log.append(("start", kind))
    if kind == "skip":
        return SKIPPED, kind
    if kind == "ok":
        started.set()
    yield
    if kind == "first":
        assert started.wait(10), "case ok never started while case first was writing"
    if kind == "fail-after":
        raise ValueError("disk full")
    if kind == "twice":
        yield
    log.append(("end", kind))
    return DONE, kind


def test_a_paused_task_writes_while_the_next_case_reads_and_results_stay_in_order(tmp_path):
    import threading

    log, started = [], threading.Event()
    kinds = ["first", "ok", "skip", "fail-after", "twice", "ok2"]
    rep = run_cases("t", [Task(k, k, (k, started, log)) for k in kinds], _paused, workers=1,
                    failures_path=tmp_path / "f.jsonl")
    assert rep.done == ["first", "ok", "ok2"] and rep.skipped == ["skip"] and rep.results["ok"] == "ok"
    errors = {f["case"]: f["error"] for f in rep.failures}
    assert errors == {"fail-after": "ValueError: disk full",
                      "twice": "RuntimeError: a task function may pause (yield) once"}
    assert log.index(("start", "ok")) < log.index(("end", "first"))  # the overlap
    dask = run_cases("t", [Task(k, k, (k, None, [])) for k in ("ok2", "skip", "fail-after")], _paused, workers=2)
    assert (dask.done, dask.skipped, [f["case"] for f in dask.failures]) == (["ok2"], ["skip"], ["fail-after"])


def _paused_then_interrupted(payload):
    if payload == 1:
        raise KeyboardInterrupt
    yield
    return DONE, payload


def test_ctrl_c_while_a_case_writes_completes_and_records_it(tmp_path):
    tasks = [Task(f"c{i}", f"s{i}", i) for i in range(3)]
    with pytest.raises(KeyboardInterrupt):
        run_cases("t", tasks, _paused_then_interrupted, workers=1, failures_path=tmp_path / "f.jsonl")
    recs = [json.loads(line) for line in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert [r["case"] for r in recs] == ["c1", "c2"]  # c0 was written and counts as done


def test_a_new_case_another_process_commits_first_still_commits(tmp_path, monkeypatch):
    # Two ingests of one store: the other process's whole case lands between this one's
    # "is the case new?" check and its rename, which then finds a non-empty directory.
    url = str(tmp_path / "v.zarr")
    store.open_store(url)
    real_replace, raced = os.replace, []

    def replace(src, dst):
        if not raced and os.path.basename(dst) == "c1":
            raced.append(True)
            monkeypatch.setattr(store.os, "replace", real_replace)
            store.commit_arrays(url, "c1", {"image": np.zeros((2, 2, 2), np.float32)},
                                {"image": {"digest": "other"}})
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", replace)
    store.commit_arrays(url, "c1", {"image": np.ones((2, 2, 2), np.float32)}, {"image": {"digest": "mine"}})
    assert raced
    case = store.open_store(url, mode="r")["c1"]
    assert case["image"].attrs["digest"] == "mine" and np.array_equal(case["image"][...], np.ones((2, 2, 2)))
    assert store.list_cases(url) == ["c1"]
