"""Benchmark: tcpc's Numba SLIC against scikit-image's on the same real CT volumes.

For each volume (default: the first 128 slices of LIDC-IDRI-0001 and of
LIDC-IDRI-0003, normalised as ingest stores them) and each call (with the
volume's ``spacing``, and scikit-image's plain call without it), with the same
kwargs (n_segments 1000, sigma 10, 10 iterations, compactness 0.1), it runs
tcpc with all Numba threads, tcpc with 1 thread and scikit-image, each once in
its own fresh process after an untimed warm-up on a small crop, and prints:

- wall seconds and CPU seconds (all threads of the process) of the call, the
  load average when it ended (the team machine is shared: compare within a run);
- peak extra memory (peak RSS during the call minus RSS before it, from
  ``/proc/self/status`` VmHWM) as a multiple of the float32 volume;
- speed ratios: scikit-image wall / tcpc wall (all threads), and scikit-image
  CPU / tcpc CPU with 1 thread;
- quality of both (explained variation, undersegmentation error, boundary
  recall against HU tissue-class regions, ``bench.segmetrics``)
  and tcpc's relative difference to scikit-image's in percent;
- whether tcpc's labels are identical with 1 and with all threads;
- with ``--profile``, tcpc's seconds per phase (input pass, Gaussian, labels
  buffer, k-means, connectivity, the rest) from two more fresh runs under
  cProfile: wall seconds with all threads, CPU seconds with 1 thread.

scikit-image takes minutes per volume, so its labels, times and memory are
cached on disk (``--cache-dir``, keyed by the volume's bytes, the kwargs and
the scikit-image version). A plain run always runs scikit-image afresh (and
refreshes the cache): the printed ratios then come from one run of both.
``--cached-skimage`` reuses a cached scikit-image result where one exists and
marks its rows ``(cached)``: for iterating on tcpc only, not for reporting.

    python bench/slic.py [--cases LIDC-IDRI-0001 LIDC-IDRI-0003] [--calls spacing plain]
                         [--slices 128] [--cached-skimage] [--profile] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lidc import SHARED_DATA, read_series  # noqa: E402

CALLS = ("spacing", "plain")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_bytes() -> int:
    """Peak RSS of this process image (VmHWM). Not ``ru_maxrss``: Linux carries that
    over an exec, so a child spawned by a large parent would report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _run(which: str, path: str, kw: dict, threads: int | None, out: str, queue) -> None:
    """In a fresh process: load the volume, warm up, run once; report wall and CPU seconds and peak extra bytes."""
    img = np.load(path)
    if which == "tcpc":
        import numba

        from tcpc_data.supervoxels.slic import slic
        if threads:
            numba.set_num_threads(threads)
        fn = slic
    else:
        from skimage.segmentation import slic as sk_slic

        def fn(image, **k):
            return sk_slic(image, channel_axis=None, start_label=1, **k)
    fn(np.ascontiguousarray(img[:8, :40, :40]), **kw)  # JIT compile / load the cache, import lazily loaded modules
    _reset_peak()
    base = _rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    labels = fn(img, **kw)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_bytes()
    np.save(out, labels.astype(np.int32))
    queue.put((seconds, cpu, max(0, peak - base), os.getloadavg()[0]))


# Phases of tcpc's call: the functions slic() calls whose cumulative time they are.
PHASES = {"input (min/max, scaled copy)": ("_finite_min_max", "_scaled_copy"),
          "mask rows and seeds": ("_row_extent", "_mask_seeds"), "Gaussian": ("gaussian",),
          "labels buffer": ("_touch",), "k-means": ("_kmeans",), "connectivity": ("_connectivity",)}


def _profile(path: str, kw: dict, threads: int, queue) -> None:
    """In a fresh process: tcpc's seconds per phase under cProfile (on the Numba kernels' calls);
    CPU seconds with 1 thread, wall seconds with more (each kernel call spans its parallel region)."""
    import cProfile
    import pstats

    import numba

    from tcpc_data.supervoxels import slic as slic_mod
    numba.set_num_threads(threads)
    img = np.load(path)
    slic_mod.slic(np.ascontiguousarray(img[:8, :40, :40]), **kw)
    prof = cProfile.Profile(time.process_time if threads == 1 else time.perf_counter)
    prof.runcall(slic_mod.slic, img, **kw)
    stats = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    cum = {}
    for (_, _, name), (_, _, _, cumtime, _) in stats.items():
        cum[name] = cum.get(name, 0.0) + cumtime
    phases = {k: sum(cum.get(f, 0.0) for f in fs) for k, fs in PHASES.items()}
    phases = {k: v for k, v in phases.items() if v > 0}
    phases["rest (checks, grid, release)"] = cum["slic"] - sum(phases.values())
    phases["total"] = cum["slic"]
    queue.put(phases)


def profile(path, kw, threads):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_profile, args=(path, kw, threads, q))
    p.start()
    res = q.get()
    p.join()
    return res


def measure(which, path, kw, threads, out):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(which, path, kw, threads, out, q))
    p.start()
    res = q.get()
    p.join()
    return res


def cache_key(img: np.ndarray, kw: dict) -> str:
    import skimage

    h = hashlib.sha256(np.ascontiguousarray(img).tobytes())
    h.update(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(kw.items())}).encode())
    h.update(f"{img.shape}{img.dtype}skimage{skimage.__version__}".encode())
    return h.hexdigest()[:24]


def skimage_run(img_path, img, kw, tmp, cache_dir: Path, use_cache: bool):
    """(wall, cpu, extra bytes, load, labels, cached?) of scikit-image, fresh unless use_cache finds an entry."""
    entry = cache_dir / f"{cache_key(img, kw)}.npz"
    if use_cache and entry.exists():
        with np.load(entry, allow_pickle=False) as z:
            return (float(z["wall"]), float(z["cpu"]), float(z["extra"]), float(z["load"]),
                    z["labels"], True)
    out = str(Path(tmp) / "skimage.npy")
    wall, cpu, extra, load = measure("skimage", img_path, kw, None, out)
    labels = np.load(out)
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = entry.with_suffix(".part.npz")
    np.savez_compressed(part, labels=labels, wall=wall, cpu=cpu, extra=extra, load=load)
    os.replace(part, entry)
    return wall, cpu, extra, load, labels, False


def bench_one(case: str, call: str, args, n_threads: int) -> dict:
    from bench import segmetrics

    hu, spacing, _ = read_series(Path(args.lidc) / case)
    hu = hu[:args.slices]
    # As ingest stores it: clipped to [-1024, 3071] HU, mapped to [-1, 1].
    img = ((np.clip(hu, -1024, 3071) + 1024) / 4095 * 2 - 1).astype(np.float32)
    kw = dict(n_segments=args.n_segments, compactness=args.compactness, sigma=args.sigma,
              max_num_iter=args.max_num_iter)
    if call == "spacing":
        kw["spacing"] = tuple(float(s) for s in spacing)
    vol = img.nbytes
    print(f"\n== {case}, first {img.shape[0]} slices {img.shape}, call {call}: {kw}")
    rows, labels = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "img.npy")
        np.save(path, img)
        for name, threads in (("tcpc", None), ("tcpc-1thread", 1)):
            out = str(Path(tmp) / f"{name}.npy")
            rows[name] = measure("tcpc", path, kw, threads, out)
            labels[name] = np.load(out)
        phases = {t: profile(path, kw, t) for t in (n_threads, 1)} if args.profile else None
        *sk, sk_labels, cached = skimage_run(path, img, kw, tmp, Path(args.cache_dir), args.cached_skimage)
        rows["skimage (cached)" if cached else "skimage"] = tuple(sk)
        labels["skimage (cached)" if cached else "skimage"] = sk_labels
    sk_name = "skimage (cached)" if cached else "skimage"
    truth = segmetrics.reference_segmentation(hu, spacing)
    quality = {name: (segmetrics.explained_variation(img, lab), segmetrics.undersegmentation_error(truth, lab),
                      segmetrics.boundary_recall(truth, lab)) for name, lab in labels.items()}
    print(f"{'run':<18}{'wall s':>8}{'CPU s':>8}{'load':>6}{'extra MiB':>11}{'x vol':>7}{'segments':>9}"
          f"{'EV':>8}{'UE':>8}{'BR':>8}")
    for name, (sec, cpu, extra, load) in rows.items():
        ev, ue, br = quality[name]
        print(f"{name:<18}{sec:>8.2f}{cpu:>8.2f}{load:>6.1f}{extra / 2**20:>11.0f}{extra / vol:>7.2f}"
              f"{len(np.unique(labels[name])):>9}{ev:>8.4f}{ue:>8.4f}{br:>8.4f}")
    wall_ratio = rows[sk_name][0] / rows["tcpc"][0]
    cpu_ratio = rows[sk_name][1] / rows["tcpc-1thread"][1]
    diffs = [100.0 * abs(a - b) / abs(b) for a, b in zip(quality["tcpc"], quality[sk_name])]
    same = np.array_equal(labels["tcpc"], labels["tcpc-1thread"])
    print(f"ratio {sk_name} / tcpc: wall ({n_threads} threads) {wall_ratio:.1f}x, CPU (1 thread) {cpu_ratio:.1f}x; "
          f"quality difference EV {diffs[0]:.2f} %, UE {diffs[1]:.2f} %, BR {diffs[2]:.2f} %; "
          f"tcpc extra memory {rows['tcpc'][2] / vol:.2f}x volume; "
          f"labels identical with {n_threads} threads and 1: {same}")
    for t, ph in (phases or {}).items():
        what = "CPU s" if t == 1 else "wall s"
        print(f"tcpc {t} thread{'s' if t > 1 else ''}, {what} per phase: "
              + ", ".join(f"{k} {v:.3f}" for k, v in ph.items()))
    return dict(case=case, call=call, wall_ratio=wall_ratio, cpu_ratio=cpu_ratio, diffs=diffs,
                memory=rows["tcpc"][2] / vol, same=same, cached=cached)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lidc", default=str(SHARED_DATA / "ct" / "lidc"))
    ap.add_argument("--cases", nargs="+", default=["LIDC-IDRI-0001", "LIDC-IDRI-0003"])
    ap.add_argument("--calls", nargs="+", choices=CALLS, default=list(CALLS),
                    help="spacing: with the volume's voxel spacing; plain: without (sigma in voxels)")
    ap.add_argument("--slices", type=int, default=128)
    ap.add_argument("--n-segments", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=10.0)
    ap.add_argument("--compactness", type=float, default=0.1)
    ap.add_argument("--max-num-iter", type=int, default=10)
    ap.add_argument("--cached-skimage", action="store_true",
                    help="reuse cached scikit-image results (development only; rows marked '(cached)')")
    ap.add_argument("--profile", action="store_true",
                    help="also run tcpc under cProfile, all threads and 1, and print wall and CPU s per phase")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "tcpc-bench" / "slic"))
    args = ap.parse_args(argv)

    import numba
    n_threads = numba.config.NUMBA_NUM_THREADS
    print(f"{os.cpu_count()} cores, {n_threads} Numba threads, load average {os.getloadavg()[0]:.1f} at start")
    results = [bench_one(case, call, args, n_threads) for case in args.cases for call in args.calls]
    print(f"\n{'case':<16}{'call':<9}{'wall x':>8}{'CPU x':>8}{'max quality diff %':>20}{'memory x vol':>14}")
    for r in results:
        print(f"{r['case']:<16}{r['call']:<9}{r['wall_ratio']:>8.1f}{r['cpu_ratio']:>8.1f}{max(r['diffs']):>20.2f}"
              f"{r['memory']:>14.2f}{'  (cached skimage)' if r['cached'] else ''}")


if __name__ == "__main__":
    main()
