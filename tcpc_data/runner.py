"""Parallel runner over cases: Dask (local cluster or a running scheduler), progress, failures report.

Every stage (ingest, supervoxels, shards) is a function applied to one case at
a time. The runner maps it over cases, shows live progress (done, skipped,
failed, cases/s), catches each case's error into a JSON-lines failures
report, and never lets one bad case stop the run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

from tcpc_data.outputs import check_replaceable

DONE, SKIPPED = "done", "skipped"


@dataclasses.dataclass(frozen=True)
class Task:
    """One unit of work: a case id, where it came from, and what the stage function needs."""

    case: str
    source: str
    payload: Any


@dataclasses.dataclass
class RunReport:
    """What a stage run did: case ids per outcome and failure records."""

    stage: str
    done: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failures: list[dict] = dataclasses.field(default_factory=list)
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    failures_path: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)  # stage remarks for the user (skipped files...)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        rate = (len(self.done) + len(self.skipped)) / self.seconds if self.seconds > 0 else 0.0
        s = (f"{self.stage}: {len(self.done)} done, {len(self.skipped)} skipped (digest matched), "
             f"{len(self.failures)} failed in {self.seconds:.1f} s ({rate:.2f} cases/s)")
        if self.failures and self.failures_path:
            s += f"; failures in {self.failures_path}"
        return s


def _call(fn: Callable[[Any], Any], task: Task) -> tuple[str, str, Any]:
    """Run one task to its end; turn any exception into a failure record (runs on the worker)."""
    started = _start(fn, task)
    return _finish(task, started) if inspect.isgenerator(started) else started


def _start(fn: Callable[[Any], Any], task: Task):
    """Run one task up to its pause: its record, or a generator paused at its ``yield``."""
    try:
        out = fn(task.payload)
        if not inspect.isgenerator(out):
            return (task.case, *out)
        next(out)
        return out
    except StopIteration as stop:  # a generator that finished without pausing
        return (task.case, *stop.value)
    except Exception as exc:  # noqa: BLE001 - every case error is reported, none stops the run
        return _failure(task, exc)


def _finish(task: Task, paused) -> tuple[str, str, Any]:
    """Run a paused task (:func:`_start`) to its end."""
    try:
        next(paused)
        raise RuntimeError("a task function may pause (yield) once")
    except StopIteration as stop:
        return (task.case, *stop.value)
    except Exception as exc:  # noqa: BLE001 - as in _start
        return _failure(task, exc)


def _failure(task: Task, exc: Exception) -> tuple[str, str, dict]:
    msg = f"{type(exc).__name__}: {exc}"
    return task.case, "failed", {"case": task.case, "source": task.source, "error": msg,
                                 "traceback": traceback.format_exc(limit=8)}


def _run_here(tasks: Iterable[Task], fn: Callable[[Any], Any], record) -> None:
    """Cases one after another in this process. A task that pauses (yields) after its reads
    finishes in a thread while the next case reads: writes (Blosc compression, file writes)
    release the GIL, so on two cores they take little of the wall time; one case at most is in
    flight."""
    from concurrent.futures import ThreadPoolExecutor

    pending = None  # the future of the paused case's finish
    with ThreadPoolExecutor(1, thread_name_prefix="tcpc-finish") as pool:
        try:
            for t in tasks:
                started = _start(fn, t)
                if pending is not None:
                    record(*pending.result())
                    pending = None
                if inspect.isgenerator(started):
                    pending = pool.submit(_finish, t, started)
                else:
                    record(*started)
        finally:  # also on Ctrl-C: the case being written is completed and recorded
            if pending is not None:
                record(*pending.result())


def progress_display():
    """A live display (rich) with a line per stage: done/skipped/failed counts, cases/s, times.

    Pass one display as ``progress`` to several :func:`run_cases` calls to show
    a multi-stage command (``tcpc preprocess``) in a single display; the caller
    starts and stops it (``with display:``).
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    transient=False)


class _Progress:
    """One stage's line in a live display: its own (``progress=True``), a shared one, or none."""

    def __init__(self, stage: str, total: int | None, progress):
        self.counts = {DONE: 0, SKIPPED: 0, "failed": 0}
        self.bar = None
        self.t0 = time.perf_counter()
        if progress and total != 0:  # None: a lazy iterable, its length unknown
            self.owned = isinstance(progress, bool)
            self.bar = progress_display() if self.owned else progress
            self.task = self.bar.add_task(stage, total=total, counts="")
            if self.owned:
                self.bar.start()

    def update(self, case: str, status: str, error: str | None = None) -> None:
        self.counts[status] += 1
        if self.bar is not None:
            c = self.counts
            rate = sum(c.values()) / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=1,
                            counts=f"done {c[DONE]} · skipped {c[SKIPPED]} · failed {c['failed']} · "
                                   f"{rate:.2f} cases/s")
            if error:
                self.bar.console.print(f"[red]failed[/red] {case}: {error}")

    def close(self) -> None:
        if self.bar is not None and self.owned:
            self.bar.stop()


def default_workers(n_tasks: int) -> int:
    """One worker process per core, never more than there are cases."""
    return max(1, min(os.cpu_count() or 1, n_tasks))


def run_cases(stage: str, tasks: Iterable[Task], fn: Callable[[Any], tuple[str, Any]], *,
              workers: int | None = None, scheduler: str | None = None,
              failures_path: str | os.PathLike | None = None, progress=False,
              memory_limit: str | None = None) -> RunReport:
    """Apply ``fn`` to every task's payload in parallel and collect a report.

    Parameters
    ----------
    stage
        Name shown in progress and the report ("ingest", "supervoxels", ...).
    tasks
        Cases to process: a sequence, or a lazy iterable (a generator) that is
        drawn from only as cases finish, so that the first cases run while later
        ones are still being found. ``fn(task.payload)`` must return
        ``(status, result)`` with status ``"done"`` or ``"skipped"``, or be a
        generator function that returns it and may pause (``yield``) once, after
        its reads: in this process, the rest of a paused case (its writes) then
        runs in a thread while the next case starts. It must be picklable (a
        module-level function or ``functools.partial`` of one).
    workers
        Local worker processes; None = one per core (capped at the number of
        tasks; one per core for a lazy iterable). 1 runs in this process
        without starting a cluster.
    scheduler
        Address of a running ``dask.distributed`` scheduler
        (``tcp://host:8786``); overrides ``workers``.
    failures_path
        JSON-lines file that receives one record per failed case
        (``case``, ``source``, ``error``, ``traceback``); written only when
        something failed.
    progress
        True: a live progress display of its own on the terminal; a display
        from :func:`progress_display`: a line in that shared display; False: none.
    memory_limit
        Memory of each local worker process (``"4GiB"``, ``"500MB"``); a worker
        past it is restarted by its nanny and its case retried once. Given,
        cases run in worker processes even with ``workers=1``. None: dask's
        default (the machine's memory shared between workers). A running
        ``scheduler``'s workers have the limits they were started with
        (``dask worker --memory-limit``), so both together are an error.

    Notes
    -----
    A case whose worker dies (killed, or over its memory limit) is submitted
    once more; if that worker dies too, the case is recorded as failed with the
    reason and the other cases go on. On Ctrl-C the failures report is still
    written, with every unfinished case recorded as interrupted, before the
    interrupt propagates.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if memory_limit is not None:
        check_memory_limit(memory_limit, scheduler)
    if failures_path is not None:
        check_replaceable(failures_path)  # replaced at the end: refused now if it is not a report of ours
    report = RunReport(stage=stage, failures_path=str(failures_path) if failures_path else None)
    t0 = time.perf_counter()
    total = len(tasks) if hasattr(tasks, "__len__") else None
    bar = _Progress(stage, total, progress)
    drawn: list[Task] = []  # what was taken from ``tasks``: on Ctrl-C, the unfinished ones are reported

    def draw():
        for t in tasks:
            drawn.append(t)
            yield t

    def record(case: str, status: str, result: Any) -> None:
        if status == "failed":
            report.failures.append({k: result[k] for k in ("case", "source", "error", "traceback")})
            bar.update(case, status, result["error"])
            return
        getattr(report, status).append(case)
        report.results[case] = result
        bar.update(case, status)

    try:
        n = workers or default_workers(total if total is not None else os.cpu_count() or 1)
        if scheduler is None and n <= 1 and memory_limit is None:
            _run_here(draw(), fn, record)
        else:
            _run_distributed(stage, draw(), fn, n, scheduler, memory_limit, record, bar)
    except KeyboardInterrupt:
        seen = set(report.done) | set(report.skipped) | {f["case"] for f in report.failures}
        rest = tasks if total is not None else drawn  # a generator is not drawn further
        report.failures += [{"case": t.case, "source": t.source, "error": "interrupted before this case finished",
                             "traceback": ""} for t in rest if t.case not in seen]
        raise
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t0
        report.failures.sort(key=lambda r: r["case"])
        if failures_path is not None and report.failures:
            _write_failures(failures_path, report.failures)
    report.done.sort()
    report.skipped.sort()
    return report


def check_memory_limit(memory_limit: str, scheduler: str | None) -> None:
    """Raise a one-line ValueError for a limit dask cannot parse, or one given with a running scheduler."""
    from dask.utils import parse_bytes

    if scheduler is not None:
        raise ValueError("a memory limit applies to the workers tcpc starts; the workers of a running scheduler "
                         "have theirs (dask worker --memory-limit)")
    try:
        limit = parse_bytes(memory_limit)
    except (ValueError, TypeError):
        raise ValueError(f"memory limit {memory_limit!r} is not a size such as 4GiB or 500MB") from None
    if limit <= 0:
        raise ValueError(f"memory limit must be positive, got {memory_limit!r}")


def _run_distributed(stage, tasks, fn, n, scheduler, memory_limit, record, bar) -> None:
    """Submit every task to a Dask cluster and record results as they complete; resubmit a
    case once when its worker dies."""
    import concurrent.futures

    import dask
    from distributed import Client, KilledWorker, LocalCluster, as_completed
    from distributed.comm import CommClosedError

    # What a future raises when its worker died rather than the case failing (the case's own
    # exceptions come back as records from _call); a cancelled future covers dask's FutureCancelledError.
    worker_deaths = (KilledWorker, CommClosedError, concurrent.futures.CancelledError)

    if scheduler is not None:
        client, cluster = Client(scheduler), None
    else:
        # Processes, one thread each: Numba parallelises inside a case. The dashboard
        # takes a free port, never colliding with a user's on 8787. allowed-failures 0:
        # a worker death surfaces at once, and the retry below is the only one.
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                   memory_limit=memory_limit if memory_limit is not None else "auto")
        client = Client(cluster)
    try:
        if client.dashboard_link:  # where to watch workers, memory and tasks live
            line = f"{stage}: dask dashboard at {client.dashboard_link}"
            if bar.bar is not None:
                bar.bar.console.print(line)
            else:
                print(line, file=sys.stderr, flush=True)
        # As many cases in flight as the cluster has threads: a worker holds only the case it runs,
        # so a worker's death costs that case alone, and the client holds one future per thread.
        workers = client.scheduler_info()["workers"]
        slots = sum(w["nthreads"] for w in workers.values()) or n
        by_key: dict[str, Task] = {}
        futures = as_completed()
        queue = iter(enumerate(tasks))

        def submit(task: Task, key: str) -> None:
            # After a death in our own cluster, wait for the nanny's replacement: with no retries
            # allowed, the next case would queue behind another on a surviving worker and share its
            # fate. A running scheduler retries lost tasks itself and may never see that worker again.
            if cluster is not None and len(client.scheduler_info()["workers"]) < len(workers):
                with contextlib.suppress(TimeoutError):
                    client.wait_for_workers(len(workers), timeout=120)
            by_key[key] = task
            futures.add(client.submit(_call, fn, task, key=key, pure=False))

        def submit_next() -> None:
            i, task = next(queue, (None, None))
            if task is not None:
                submit(task, f"{stage}-{task.case}-{i}")

        for _ in range(slots):
            submit_next()
        retried: set[str] = set()
        for fut in futures:
            task = by_key.pop(fut.key)
            try:
                record(*fut.result())
                # Recorded: released, so that a later worker death does not make the scheduler compute
                # this case again to restore a result nobody needs.
                fut.release()
            except Exception as exc:  # noqa: BLE001 - a lost worker costs at most its case
                if not isinstance(exc, worker_deaths):
                    raise
                fut.release()
                if task.case not in retried:
                    retried.add(task.case)
                    submit(task, f"{fut.key}-retry")
                    continue
                record(task.case, "failed", {"case": task.case, "source": task.source, "traceback": "",
                                             "error": f"the worker died twice while processing this case "
                                                      f"(killed, or over its memory limit): "
                                                      f"{type(exc).__name__}: {exc}"})
            submit_next()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _write_failures(path: str | os.PathLike, failures: list[dict]) -> None:
    text = "".join(json.dumps(rec) + "\n" for rec in failures)
    if "://" in str(path):  # beside a store or shard set on object storage
        import fsspec
        with fsspec.open(str(path), "w") as f:
            f.write(text)
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
