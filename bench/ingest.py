"""Benchmark: `tcpc ingest` on the two LIDC series vs a plain single-process read-and-save-to-npy.

Usage: python bench/ingest.py [--data ../shared/data/ct/lidc] [--repeat 2]

Prints cases/s and MB/s (DICOM bytes read per second) for
- baseline: pydicom read, sort by z, rescale to HU, np.save — one process, no checks;
- tcpc ingest with 1 worker (in-process) and with 2 Dask worker processes (cluster start
  included, and on a cluster started beforehand), each into a fresh store;
- a rerun on the finished store (every case skipped by digest);
and each one's speed as a ratio to the baseline: wall time (best of --repeat runs) and
CPU seconds (this process plus its worker processes; mean), which a busy machine
disturbs less than wall time. ``--phases`` adds where the 1-worker ingest spends its
time: wall and CPU seconds (all threads of the process) of each step, summed over cases;
``--profile N`` the N functions of one 1-worker ingest with the most time of their own
(cProfile: the main thread only; the digest and compression threads show as lock waits).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcpc_data.ingest import IngestConfig, ingest  # noqa: E402


def baseline(series_dirs: list[Path], out: Path) -> None:
    """The plain way: read every slice, sort by z, rescale, save one .npy per series."""
    for d in series_dirs:
        dss = [pydicom.dcmread(p) for p in sorted(d.rglob("*.dcm"))]
        dss.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
        hu = np.stack([ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                       for ds in dss])
        np.save(out / f"{d.name}.npy", hu)


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (Dask worker processes), user + system."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def best_of(repeat: int, fn) -> tuple[float, float]:
    """(best wall seconds, mean CPU seconds) over ``repeat`` runs."""
    times, c0 = [], cpu_seconds()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), (cpu_seconds() - c0) / repeat


# a new DICOM case: read_series_once (each file read, scanned or parsed, and hashed once),
# series_volume (geometry checks, decoding to HU), normalise, commit_arrays (float16 cast,
# compression, write; in a thread that overlaps the next case's reads); series_files,
# _case_digest and _read are the stored-case path
_PHASES = ("discover", "read_series_once", "series_volume", "series_files", "_case_digest", "_read", "normalise",
           "commit_arrays")


def timed_phases(acc: dict) -> None:
    """Wrap the ingest stage's steps so that each call adds its (wall, CPU) seconds to ``acc``."""
    import functools

    import tcpc_data.ingest.stage as stage

    for name in _PHASES:
        fn = getattr(stage, name)

        @functools.wraps(fn)
        def wrapped(*args, _fn=fn, _name=name, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            try:
                return _fn(*args, **kwargs)
            finally:
                a = acc.setdefault(_name, [0.0, 0.0])
                a[0] += time.perf_counter() - w
                a[1] += time.process_time() - c
        setattr(stage, name, wrapped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ct/lidc")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--phases", action="store_true", help="also time each step of a 1-worker ingest")
    ap.add_argument("--one-worker", action="store_true", help="only the baseline and the 1-worker runs")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also print the N functions with the most own time in one 1-worker ingest")
    args = ap.parse_args()
    series = sorted(p for p in args.data.glob("LIDC-IDRI-*") if p.is_dir())
    if len(series) != 2:
        sys.exit(f"expected the two LIDC series under {args.data}, found {len(series)}")
    n_bytes = sum(f.stat().st_size for d in series for f in d.rglob("*.dcm"))
    config = IngestConfig(clip=(-1024, 3071))
    tmp = Path(tempfile.mkdtemp(prefix="tcpc-bench-"))

    def fresh(name: str) -> Path:
        p = tmp / name
        shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(tmp / f".{name}.staging", ignore_errors=True)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def run_ingest(name: str, **kw) -> None:
        report = ingest(args.data, fresh(name), config, **kw)
        assert report.ok and len(report.done) == 2, report.summary()

    rows = []
    npy = fresh("npy")
    npy.mkdir()
    # warm-up, untimed: file cache, imports, Numba's compiled kernels
    baseline(series, npy)
    run_ingest("warm.zarr", workers=1)
    rows.append(("baseline: pydicom -> npy (1 process)", best_of(args.repeat, lambda: baseline(series, npy))))
    rows.append(("tcpc ingest, 1 worker", best_of(args.repeat, lambda: run_ingest("w1.zarr", workers=1))))
    if not args.one_worker:
        rows.append(("tcpc ingest, 2 workers (incl. cluster start)",
                     best_of(args.repeat, lambda: run_ingest("w2.zarr", workers=2))))
        from distributed import LocalCluster

        c0 = cpu_seconds()
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            wall, _ = best_of(args.repeat, lambda: run_ingest("w2s.zarr", scheduler=cluster.scheduler_address))
        # the workers' CPU is counted once they exit: the cluster's whole life, per run
        rows.append(("tcpc ingest, 2 workers (running cluster)", (wall, (cpu_seconds() - c0) / args.repeat)))
    rows.append(("tcpc ingest rerun, all skipped (1 worker)",
                 best_of(args.repeat, lambda: ingest(args.data, tmp / "w1.zarr", config, workers=1))))
    profile = None
    if args.profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.runcall(run_ingest, "profile.zarr", workers=1)
        profile = io.StringIO()
        pstats.Stats(prof, stream=profile).sort_stats("tottime").print_stats(args.profile)
    phases: dict = {}
    if args.phases:
        timed_phases(phases)
        run_ingest("phases.zarr", workers=1)
    shutil.rmtree(tmp, ignore_errors=True)

    base, base_cpu = rows[0][1]
    load = os.getloadavg()[0]
    print(f"2 LIDC series, {n_bytes / 1e6:.0f} MB of DICOM; wall: best of {args.repeat}, CPU: mean; "
          f"{os.cpu_count()} cores, load average {load:.1f}")
    print(f"{'run':48s} {'wall s':>7s} {'cases/s':>8s} {'MB/s':>7s} {'vs baseline':>11s} {'CPU s':>7s} "
          f"{'CPU vs baseline':>15s}")
    for name, (sec, cpu) in rows:
        print(f"{name:48s} {sec:7.2f} {2 / sec:8.2f} {n_bytes / 1e6 / sec:7.1f} {base / sec:10.2f}x "
              f"{cpu:7.2f} {base_cpu / cpu:14.2f}x")
    if phases:
        print("1-worker ingest by step (seconds over both cases; CPU of all threads, so the digest's "
              "thread counts inside read_series_once, and the writes overlap the next case's reads and "
              "count there too):")
        for name, (w, c) in phases.items():
            print(f"  {name:16s} wall {w:6.2f}  CPU {c:6.2f}")
    if profile is not None:
        print(profile.getvalue())


if __name__ == "__main__":
    main()
