"""Benchmark: share of crops that contain a lesion, SLIC candidates vs random vs centre crops.

The TCPC paper's central claim is that crops centred on SLIC lesion
candidates show the network lesions more often than crops placed without
task knowledge. Where lesions are known, this prints, per case and overall,
the share of the top-K candidate crops holding a lesion centre, of K random
crops (seeded; and the exact expectation) and of the centre crop
(``bench.lesioncrops``):

- phantoms with lesions (``tcpc_data.phantom``), written as NIfTI and run
  through ``tcpc ingest`` and the supervoxels stage with the defaults;
- the LIDC series of ``../shared/data/ct/lidc`` (nodule centres from its
  ``nodules.csv``: pixel row/col and ``z_position_mm``), ingested at 1 mm.

    python bench/lesion_crops.py [--phantoms 6] [--no-lidc] [--top-k 32] [--crop 64]
        [--phantom-top-k 8] [--phantom-crop 24]

Phantoms (48 x 96 x 96 voxels) get smaller crops than the chest CTs, so a
crop does not cover most of the volume. Random crops are drawn with a seed
per case; ``exact`` is their expected share.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lidc import SHARED_DATA  # noqa: E402


def _lidc_lesions(store, nodules_csv) -> dict[str, np.ndarray]:
    """Case -> (L, 3) nodule centres in voxels of the stored (resampled) image."""
    from tcpc_data.store.volumes import open_store
    from tcpc_data.volume import index_to_world, world_to_index

    root = open_store(store, "r")
    out: dict[str, list] = {}
    with open(nodules_csv, newline="") as f:
        for row in csv.DictReader(f):
            a = dict(root[row["patient_id"]]["image"].attrs)
            # in-plane: the native pixel grid (ingest keeps origin and direction); z: the slice position
            world = index_to_world((0.0, float(row["row"]), float(row["col"])), a["origin_zyx"],
                                   a["source_spacing_zyx"], a["direction"])
            world[0] = float(row["z_position_mm"])
            idx = world_to_index(world, a["origin_zyx"], a["spacing_zyx"], a["direction"])
            out.setdefault(row["patient_id"], []).append(idx)
    return {c: np.asarray(v) for c, v in out.items()}


def _report(name: str, store, lesions: dict[str, np.ndarray], crop: int, seed: int) -> dict:
    from bench.lesioncrops import lesion_shares
    from tcpc_data.store.volumes import open_store

    root = open_store(store, "r")
    totals = {"slic": [], "random": [], "centre": [], "random_expected": []}
    print(f"\n{name}: {'case':<16}{'K':>4}{'slic':>8}{'random':>8}{'exact':>8}{'centre':>8}")
    for i, (case, les) in enumerate(sorted(lesions.items())):
        cands = root[case]["candidates"][...]
        s = lesion_shares(cands, les, root[case]["image"].shape, crop, seed + i)
        for k in totals:
            totals[k] += [s[k]] * (s["k"] if k != "random_expected" else 1)
        print(f"{'':<{len(name) + 2}}{case:<16}{s['k']:>4}{s['slic']:>8.3f}{s['random']:>8.3f}"
              f"{s['random_expected']:>8.3f}{s['centre']:>8.3f}")
    means = {k: float(np.mean(v)) for k, v in totals.items()}
    print(f"{'':<{len(name) + 2}}{'all crops':<16}{len(totals['slic']):>4}{means['slic']:>8.3f}"
          f"{means['random']:>8.3f}{means['random_expected']:>8.3f}{means['centre']:>8.3f}")
    return means


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phantoms", type=int, default=6, help="phantoms with lesions (0: none)")
    ap.add_argument("--lidc", default=str(SHARED_DATA / "ct" / "lidc"))
    ap.add_argument("--no-lidc", action="store_true")
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--crop", type=int, default=64, help="crop side in voxels (1 mm for LIDC)")
    ap.add_argument("--phantom-top-k", type=int, default=8)
    ap.add_argument("--phantom-crop", type=int, default=24, help="crop side in phantom voxels")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from tcpc_data.ingest.stage import IngestConfig, ingest
    from tcpc_data.phantom import write_nifti, make_phantom
    from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels

    config = SupervoxelConfig(top_k=args.top_k, crop_size=args.crop)
    print(f"supervoxels (LIDC; phantoms top_k={args.phantom_top_k}, crop_size={args.phantom_crop}): {config}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.phantoms:
            src, store = Path(tmp) / "phantoms", Path(tmp) / "phantoms.zarr"
            src.mkdir()
            lesions = {}
            for i in range(args.phantoms):
                ph = make_phantom(seed=args.seed + i)
                write_nifti(src / f"ph-{i:03d}.nii.gz", ph.hu, ph.spacing_zyx)
                lesions[f"ph-{i:03d}"] = np.array([les.centre_zyx for les in ph.lesions])
            t0 = time.perf_counter()
            assert ingest(src, store, IngestConfig(clip=(-1024, 3071)), workers=1).ok
            small = SupervoxelConfig(top_k=args.phantom_top_k, crop_size=args.phantom_crop)
            rep = supervoxels(store, small, workers=1)
            print(f"phantoms: {rep.summary()} ({time.perf_counter() - t0:.0f} s with ingest)")
            _report("phantoms", store, {c: v for c, v in lesions.items() if c in rep.done}, args.phantom_crop,
                    args.seed)
        lidc = Path(args.lidc)
        if not args.no_lidc and (lidc / "nodules.csv").is_file():
            store = Path(tmp) / "lidc.zarr"
            t0 = time.perf_counter()
            cases = sorted({r["patient_id"] for r in csv.DictReader(open(lidc / "nodules.csv", newline=""))})
            assert ingest([lidc / c for c in cases], store,
                          IngestConfig(clip=(-1024, 3071), spacing_zyx=(1.0, 1.0, 1.0)), workers=1).ok
            rep = supervoxels(store, config, workers=1)
            print(f"\nLIDC: {rep.summary()} ({time.perf_counter() - t0:.0f} s with ingest)")
            _report("LIDC", store, _lidc_lesions(store, lidc / "nodules.csv"), args.crop, args.seed)


if __name__ == "__main__":
    main()
