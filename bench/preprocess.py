"""Benchmark: `tcpc preprocess` of one real CT from DICOM to shards, wall and CPU, per stage.

Runs the command a user runs (``cli.py preprocess SERIES --out TMP --clip -1024,3071``,
native spacing, default settings) in a fresh process each time and prints its wall
seconds, its CPU seconds (user + system, all threads and worker processes), the
load average of the machine during the run, and the per-stage line that every
preprocess run prints at its end (``time: start-up ... total ...``).

The first run with ``--cold`` uses an empty Numba cache directory, so it pays
for compiling every kernel (the cold-start cost); the other runs share that
directory and find the cache warm. Without ``--cold`` the runs use Numba's
default cache (``__pycache__`` beside the sources, or ``NUMBA_CACHE_DIR``), so
a first run after a source change compiles too: use ``--repeat 2`` or more.

    python bench/preprocess.py [--series DIR] [--repeat 3] [--cold]
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.lidc import SHARED_DATA  # noqa: E402


def run_once(series: str, out: Path, env: dict, extra: list[str]) -> tuple[float, float, float, str]:
    """(wall s, CPU s, load average, the run's 'time:' line) of one preprocess in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "preprocess", series, "--out", str(out),
                           "--clip", "-1024,3071", "--no-progress", *extra],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"preprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    timing = next((ln for ln in proc.stdout.splitlines() if ln.startswith("time: ")), "(no time line)")
    return wall, cpu, os.getloadavg()[0], timing


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", default=str(SHARED_DATA / "ct" / "lidc" / "LIDC-IDRI-0003"))
    ap.add_argument("--repeat", type=int, default=3, help="warm runs")
    ap.add_argument("--cold", action="store_true", help="first run with an empty Numba cache (compile cost)")
    ap.add_argument("extra", nargs="*", help="more preprocess options, after --")
    args = ap.parse_args(argv)

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"tcpc preprocess {args.series} --clip -1024,3071 {' '.join(args.extra)}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before")
    print(f"{'run':<8}{'wall s':>8}{'CPU s':>8}{'load':>6}  per-stage (printed by preprocess)")
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        if args.cold:
            env["NUMBA_CACHE_DIR"] = str(Path(tmp) / "numba-cache")
            runs.append("cold")
        runs += [f"warm {i + 1}" for i in range(args.repeat)]
        for i, name in enumerate(runs):
            out = Path(tmp) / f"out{i}"  # a fresh output: nothing skipped by digest
            wall, cpu, load, timing = run_once(args.series, out, env, args.extra)
            print(f"{name:<8}{wall:>8.2f}{cpu:>8.2f}{load:>6.1f}  {timing}", flush=True)


if __name__ == "__main__":
    main()
