"""The runner draws tasks from a lazy iterable as cases finish; planning reads digests in one listing."""
import os
import time

import numpy as np
import pytest

from tcpc_data.store import volumes as store
from tcpc_data.runner import Task, run_cases


def _touch(payload):
    """Mark the case as run (a file, seen from any process) and return its payload."""
    marker, value = payload
    open(marker, "w").close()
    return "done", value


def _after_first_ran(tmp_path, n, timeout_s=60.0):
    """Tasks 0..n-1; task k > 0 is yielded only once task 0 has run (else TimeoutError)."""
    first = tmp_path / "c0.ran"
    yield Task("c0", "s0", (str(first), 0))
    deadline = time.monotonic() + timeout_s
    while not first.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the first task had not run while later ones were still being made")
        time.sleep(0.01)
    for k in range(1, n):
        yield Task(f"c{k}", f"s{k}", (str(tmp_path / f"c{k}.ran"), k))


@pytest.mark.parametrize("workers", [1, 2])
def test_first_task_runs_before_the_iterable_is_exhausted(tmp_path, workers):
    lazy = run_cases("t", _after_first_ran(tmp_path, 5), _touch, workers=workers)
    eager = run_cases("t", [Task(f"c{k}", f"s{k}", (os.devnull, k)) for k in range(5)], _touch, workers=1)
    assert lazy.ok, lazy.failures
    assert lazy.done == eager.done == [f"c{k}" for k in range(5)]
    assert lazy.results == eager.results == {f"c{k}": k for k in range(5)}


def _interrupt_at(payload):
    if payload == 2:
        raise KeyboardInterrupt
    return "done", payload


def test_ctrl_c_reports_only_drawn_tasks_of_a_generator(tmp_path):
    drawn = []

    def tasks():
        for i in range(6):
            drawn.append(i)
            yield Task(f"c{i}", f"s{i}", i)

    with pytest.raises(KeyboardInterrupt):
        run_cases("t", tasks(), _interrupt_at, workers=1, failures_path=tmp_path / "f.jsonl")
    assert drawn == [0, 1, 2]  # never drawn further to fill the report
    assert (tmp_path / "f.jsonl").read_text().count("interrupted") == 1  # c2 alone


def test_case_digests_equal_per_case_reads(tmp_path):
    url = tmp_path / "v.zarr"
    for i in range(9):
        arrays = {"image": np.ones((2, 2, 2), "f4")}
        if i % 2:
            arrays["candidates"] = np.ones((1, 3), "i4")
        store.commit_arrays(url, f"c{i}", arrays, {name: {"digest": f"{name}-{i}"} for name in arrays})
    store.commit_arrays(url, "c9", {"image": np.ones((2, 2, 2), "f4")}, {"image": {}})  # unfinished
    root = store.open_store(url, "r")
    for require in [("image",), ("image", "candidates")]:
        got = store.case_digests(url, require)
        want = {c: {n: store.array_digest(root[c], n) for n in require}
                for c in sorted(root.group_keys()) if all(store.array_digest(root[c], n) for n in require)}
        assert got == want and list(got) == store.list_cases(url, require)
    assert store.case_digests(url, ("image", "candidates"))["c3"] == {"image": "image-3", "candidates": "candidates-3"}
