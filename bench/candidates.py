"""Benchmark: do the default SLIC candidates cover the LIDC nodules?

For every nodule in ``../shared/data/ct/lidc/nodules.csv``, the case's DICOM
series is resampled to 1 mm (as ingest does when asked for a spacing),
normalised like ingest (clip [-1024, 3071] HU to [-1, 1]) into a temporary
store, and the supervoxels stage runs with the default ``SupervoxelConfig``.
A nodule counts as found when its centre lies inside one of the top-32
candidate crops of 64 voxels (64 mm) — |candidate - centre| <= 32 on every
axis. Prints per-nodule rank of the first covering crop and the recall.

    python bench/candidates.py [--top-k 32] [--crop 64]
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lidc import SHARED_DATA, read_series  # noqa: E402

LO, HI = -1024.0, 3071.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lidc", default=str(SHARED_DATA / "ct" / "lidc"))
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--crop", type=int, default=64, help="crop side in voxels at 1 mm")
    args = ap.parse_args(argv)

    from tcpc_data.store.volumes import commit_arrays, open_store
    from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels

    lidc = Path(args.lidc)
    nodules: dict[str, list[dict]] = {}
    with open(lidc / "nodules.csv", newline="") as f:
        for row in csv.DictReader(f):
            nodules.setdefault(row["patient_id"], []).append(row)
    config = SupervoxelConfig()  # the defaults, not tuned to these cases
    if (args.top_k, args.crop) != (config.top_k, config.crop_size):
        config = SupervoxelConfig(top_k=args.top_k, crop_size=args.crop)
    print(f"config: {config}")
    found, total = 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "volumes.zarr"
        scale = {}
        for case in sorted(nodules):
            hu, spacing, origin = read_series(lidc / case)
            new_shape = tuple(int(round(n * s)) for n, s in zip(hu.shape, spacing))
            hu1 = ndi.zoom(hu, [a / b for a, b in zip(new_shape, hu.shape)], order=1)
            # zoom maps corners onto corners: old index i -> i * (new - 1) / (old - 1)
            scale[case] = np.array([(a - 1) / (b - 1) for a, b in zip(hu1.shape, hu.shape)])
            img = ((np.clip(hu1, LO, HI) - LO) / (HI - LO) * 2 - 1).astype(np.float32)
            sp1 = [float(s * (b - 1) / (a - 1)) for s, a, b in zip(spacing, hu1.shape, hu.shape)]
            commit_arrays(store, case, {"image": img},
                          {"image": {"spacing_zyx": sp1, "origin_zyx": list(origin),
                                     "intensity_range": [LO, HI], "clip": [LO, HI],
                                     "digest": f"bench-{case}"}})
            print(f"{case}: {hu.shape} at {spacing} mm -> {img.shape} at ~1 mm")
        t0 = time.perf_counter()
        report = supervoxels(store, config, workers=1)
        seconds = time.perf_counter() - t0
        print(report.summary())
        for f in report.failures:
            print(f"  failed {f['case']}: {f['error']}")
        root = open_store(store, "r")
        print(f"\n{'case':<16}{'nodule':>7}{'diam mm':>9}{'centre (1 mm voxels)':>24}{'rank':>6}{'max |d|':>9}")
        for case, rows in sorted(nodules.items()):
            if case not in report.done:
                continue
            cands = root[f"{case}/candidates"][...].astype(float)
            for row in rows:
                centre = np.array([float(row["slice_index"]), float(row["row"]), float(row["col"])]) * scale[case]
                d = np.abs(cands - centre).max(axis=1) if len(cands) else np.array([np.inf])
                inside = np.flatnonzero(d <= config.crop_size / 2)
                rank = int(inside[0]) + 1 if len(inside) else None
                total += 1
                found += rank is not None
                print(f"{case:<16}{row['nodule']:>7}{float(row['diameter_mm']):>9.1f}"
                      f"{str(tuple(np.round(centre).astype(int).tolist())):>24}{str(rank or '-'):>6}"
                      f"{d.min():>9.1f}")
    print(f"\nrecall: {found}/{total} nodule centres inside a top-{config.top_k} crop of "
          f"{config.crop_size} mm; stage time {seconds:.1f} s for {len(report.done)} cases")


if __name__ == "__main__":
    main()
