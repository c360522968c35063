"""Benchmark: the client's memory and the per-case scheduling overhead at archive scale.

Usage: python bench/scale.py [--cases 100 1000 10000] [--workers 1 2 4]

For each number of cases N, writes N tiny synthetic DICOM CT series (two 8x8 slices,
one folder each: discovery reads 2N headers) into a temporary folder. For each worker
count, a fresh process starts a ``dask scheduler`` and ``dask worker --nworkers W --nthreads 1``
from the command line and runs against that scheduler, as a user with a cluster would
(the measured client process holds no scheduler state):

- discovery alone (the folder scans run on the workers);
- ``tcpc ingest`` of every case into a fresh store (discovery included);
- a no-op stage over the N cases through the same runner: the per-case cost of
  scheduling (submit, run, gather, record), with nothing to compute;

and samples the client process's RSS every 10 ms: its peak over the runs, and the
growth of that peak over the RSS after a 2-case warm-up (imports, cluster, caches).
Prints one table row per (cases, workers).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, _ROOT)  # here and, through PYTHONPATH, in the scheduler and workers

_UID = b"1.2.826.0.1.3680043.10.1.999999999999"  # placeholder, replaced by a same-length UID per case


def write_cases(root: Path, n: int) -> None:
    """``n`` tiny DICOM series ``case-00000/`` ...: one template pair of slices, its series UID
    replaced by a same-length one per case (the element lengths stay valid)."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    templates = []
    for k in range(2):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, f"1.2.826.0.1.3680043.10.2.{k}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("t", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.PatientID = "CT", _UID.decode(), "P"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.5 * k], [1.0, 0, 0, 0, 1.0, 0]
        ds.PixelSpacing, ds.Rows, ds.Columns = [1.0, 1.0], 8, 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.PixelData = (np.arange(64, dtype=np.int16) * (k + 1)).tobytes()
        path = root / f"t{k}.dcm"
        root.mkdir(parents=True, exist_ok=True)
        ds.save_as(str(path), enforce_file_format=True)
        templates.append(path.read_bytes())
        path.unlink()
    for i in range(n):
        uid = _UID[:-12] + str(10**11 + i).encode()  # 12 digits, no leading zero (a UID rule)
        folder = root / f"case-{i:05d}"
        folder.mkdir()
        for k, data in enumerate(templates):
            (folder / f"s{k}.dcm").write_bytes(data.replace(_UID, uid))


def _noop(payload):
    return "done", None


@contextlib.contextmanager
def cluster(workers: int, tmp: Path):
    """A scheduler and ``workers`` worker processes (one thread each) started from the command
    line, as on a real cluster, so that the client process measured holds no scheduler state."""
    sched_file = tmp / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen(["dask", "scheduler", "--port", "0", "--no-dashboard", "--scheduler-file",
                               str(sched_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        while not sched_file.exists():
            time.sleep(0.1)
        time.sleep(0.5)  # written, maybe not yet complete
        addr = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen(["dask", "worker", addr, "--nworkers", str(workers), "--nthreads", "1",
                                       "--local-directory", str(tmp / "workers"), "--no-dashboard"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        from distributed import Client
        with Client(addr) as client:
            client.wait_for_workers(workers, timeout=300)
        yield addr
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=60)


def child(src: str, workers: int, out: str, discovery_only: bool = False) -> dict:
    """One measurement in this (fresh) process; returns the row."""
    import psutil

    from tcpc_data.ingest import ingest
    from tcpc_data.ingest.discover import discover
    from tcpc_data.runner import Task, run_cases

    proc, peak, stop = psutil.Process(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    with tempfile.TemporaryDirectory() as tmp, cluster(workers, Path(tmp)) as addr:
        # imports and first calls, outside the measure
        write_cases(Path(tmp) / "warm", 2)
        ingest(Path(tmp) / "warm", Path(tmp) / "warm.zarr", scheduler=addr)
        run_cases("noop", [Task("a", "a", None)], _noop, scheduler=addr)
        start_rss = proc.memory_info().rss
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        found = discover(src, scheduler=addr)
        t_discover = time.perf_counter() - t0
        n = len(found.cases)
        t_ingest = t_noop = float("nan")
        if not discovery_only:
            t0 = time.perf_counter()
            report = ingest(src, out, scheduler=addr)
            t_ingest = time.perf_counter() - t0
            assert report.ok and len(report.done) == n, (report.summary() + "".join(
                f"\n  {f['case']}: {f['error']}" for f in report.failures[:5]))
            tasks = [Task(c.case, c.source, None) for c in found.cases]
            t0 = time.perf_counter()
            run_cases("noop", tasks, _noop, scheduler=addr)
            t_noop = time.perf_counter() - t0
        stop.set()
        sampler.join()
    return {"cases": n, "workers": workers, "discover_s": t_discover, "ingest_s": t_ingest,
            "noop_ms_per_case": 1e3 * t_noop / n, "start_rss_mb": start_rss / 2**20,
            "peak_rss_mb": peak[0] / 2**20, "growth_mb": max(peak[0] - start_rss, 0) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--discovery-only", action="store_true",
                    help="measure discovery and the client's memory only (no ingest, no no-op stage)")
    ap.add_argument("--child", nargs=3, metavar=("SRC", "WORKERS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        src, workers, out = args.child
        print(json.dumps(child(src, int(workers), out, args.discovery_only)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="tcpc-scale-"))
    rows = []
    try:
        for n in args.cases:
            src = tmp / f"src-{n}"
            write_cases(src, n)
            for w in args.workers:
                out = tmp / f"v-{n}-{w}.zarr"
                res = subprocess.run([sys.executable, __file__, "--child", str(src), str(w), str(out)]
                                     + (["--discovery-only"] if args.discovery_only else []),
                                     capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"{n} cases, {w} workers failed:\n{res.stderr[-3000:]}")
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                shutil.rmtree(out, ignore_errors=True)
                r = rows[-1]
                print(f"{r['cases']:>7d} {r['workers']:>3d} {r['discover_s']:9.1f} {r['ingest_s']:9.1f} "
                      f"{r['cases'] / r['ingest_s']:8.1f} {r['noop_ms_per_case']:10.2f} "
                      f"{r['peak_rss_mb']:9.0f} {r['growth_mb']:8.1f}", file=sys.stderr, flush=True)
            shutil.rmtree(src, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; tiny DICOM cases (2 slices of 8x8); "
          f"dask scheduler + worker processes (CLI), 1 thread each")
    print(f"{'cases':>7s} {'wrk':>3s} {'discover':>9s} {'ingest':>9s} {'cases/s':>8s} {'sched ms/c':>10s} "
          f"{'client MB':>9s} {'growth':>8s}")
    for r in rows:
        print(f"{r['cases']:>7d} {r['workers']:>3d} {r['discover_s']:8.1f}s {r['ingest_s']:8.1f}s "
              f"{r['cases'] / r['ingest_s']:8.1f} {r['noop_ms_per_case']:10.2f} {r['peak_rss_mb']:9.0f} "
              f"{r['growth_mb']:7.1f}M")


if __name__ == "__main__":
    main()
