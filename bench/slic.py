"""Benchmark: tcpc's Numba SLIC against scikit-image's on the same real CT volume.

Runs both on the first 128 slices of LIDC-IDRI-0001 (n_segments=1000,
sigma=10, max_num_iter=10, compactness=0.1, voxel spacing) and prints wall
and CPU time, the speed ratios, peak extra memory (each run in its own process: peak
RSS minus RSS before the call, as a multiple of the float32 volume), and the
quality metrics of both (explained variation, undersegmentation error and
boundary recall against HU tissue-class regions). Also checks that ours gives
identical labels with 1 and with all Numba threads.

    python bench/slic.py [--slices 128] [--n-segments 1000] [--no-spacing]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lidc import SHARED_DATA, read_series  # noqa: E402


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _run(which: str, path: str, kw: dict, threads: int | None, out: str, queue) -> None:
    """In a fresh process: load the volume, warm up, run once, report wall and CPU seconds and peak extra bytes."""
    img = np.load(path)
    if which == "tcpc":
        import numba

        from tcpc_data.supervoxels.slic import slic
        if threads:
            numba.set_num_threads(threads)
        slic(img[:8, :40, :40], **kw)  # JIT compile / load the cache outside the measurement
        fn = slic
    else:
        from skimage.segmentation import slic as sk_slic

        def fn(image, **k):
            return sk_slic(image, channel_axis=None, start_label=1, **k)
        fn(img[:8, :40, :40], **kw)
    base = _rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    labels = fn(img, **kw)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    np.save(out, labels.astype(np.int32))
    queue.put((seconds, cpu, max(0, peak - base)))


def measure(which, path, kw, threads, out):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(which, path, kw, threads, out, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", default=str(SHARED_DATA / "ct" / "lidc" / "LIDC-IDRI-0001"))
    ap.add_argument("--slices", type=int, default=128)
    ap.add_argument("--n-segments", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=10.0)
    ap.add_argument("--compactness", type=float, default=0.1)
    ap.add_argument("--max-num-iter", type=int, default=10)
    ap.add_argument("--no-spacing", action="store_true", help="isotropic voxels (sigma in voxels)")
    ap.add_argument("--skip-skimage", action="store_true", help="only time tcpc (no ratio)")
    args = ap.parse_args(argv)

    from tcpc_data.supervoxels import segmetrics

    hu, spacing, _ = read_series(args.series)
    hu = hu[:args.slices]
    # As ingest stores it: clipped to [-1024, 3071] HU, mapped to [-1, 1].
    img = ((np.clip(hu, -1024, 3071) + 1024) / 4095 * 2 - 1).astype(np.float32)
    kw = dict(n_segments=args.n_segments, compactness=args.compactness, sigma=args.sigma,
              max_num_iter=args.max_num_iter, spacing=None if args.no_spacing else spacing)
    vol_bytes = img.nbytes
    print(f"volume {img.shape} float32 ({vol_bytes / 2**20:.0f} MiB), spacing {spacing}, "
          f"{kw}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "img.npy")
        np.save(path, img)
        runs = {}
        import numba
        n_threads = numba.config.NUMBA_NUM_THREADS
        runs["tcpc"] = measure("tcpc", path, kw, None, str(Path(tmp) / "tcpc.npy"))
        runs["tcpc-1thread"] = measure("tcpc", path, kw, 1, str(Path(tmp) / "tcpc1.npy"))
        if not args.skip_skimage:
            runs["skimage"] = measure("skimage", path, kw, None, str(Path(tmp) / "skimage.npy"))
        labels = {k: np.load(Path(tmp) / f) for k, f in
                  (("tcpc", "tcpc.npy"), ("tcpc-1thread", "tcpc1.npy"), ("skimage", "skimage.npy"))
                  if (Path(tmp) / f).exists()}
    same = np.array_equal(labels["tcpc"], labels["tcpc-1thread"])
    print(f"\n{'run':<14}{'seconds':>9}{'CPU s':>8}{'extra MiB':>11}{'x volume':>10}{'segments':>10}")
    for name, (sec, cpu, extra) in runs.items():
        print(f"{name:<14}{sec:>9.2f}{cpu:>8.2f}{extra / 2**20:>11.0f}{extra / vol_bytes:>10.2f}"
              f"{len(np.unique(labels[name])):>10}")
    print(f"tcpc labels identical with {n_threads} threads and 1 thread: {same}")
    if "skimage" in runs:
        print(f"speed ratio skimage / tcpc, wall ({n_threads} threads): {runs['skimage'][0] / runs['tcpc'][0]:.1f}x;"
              f" 1 thread: {runs['skimage'][0] / runs['tcpc-1thread'][0]:.1f}x;"
              f" CPU seconds, 1 thread: {runs['skimage'][1] / runs['tcpc-1thread'][1]:.1f}x")
    truth = segmetrics.reference_segmentation(hu, spacing)
    print(f"\n{'quality':<10}{'EV':>8}{'UE':>8}{'BR':>8}   (EV, BR higher; UE lower is better)")
    for name in ("tcpc", "skimage"):
        if name in labels:
            lab = labels[name]
            print(f"{name:<10}{segmetrics.explained_variation(img, lab):>8.4f}"
                  f"{segmetrics.undersegmentation_error(truth, lab):>8.4f}"
                  f"{segmetrics.boundary_recall(truth, lab):>8.4f}")


if __name__ == "__main__":
    main()
