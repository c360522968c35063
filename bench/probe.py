"""Probe of the copy shortcut: paper geometry vs the default, on phantom CT through the normal preprocess path.

Phantom chest CTs (``tcpc_data.phantom``) go through ingest, SLIC
candidates and the shard stage once; the same candidate crops are then cut
with the paper's geometry (``ShardConfig.preset("paper")``: 50 % overlap,
target next to its support), with touching cubes (overlap 0) and with the
default one (a quarter-cube gap). For
each, a GRU + predictor head is trained on a frozen random encoder
(:mod:`tcpc_train.evaluation.shortcut`), without and with per-cube intensity augmentation;
the table shows how far held-out InfoNCE falls below chance, log(batch).
A few minutes on 2 CPU cores:

    python bench/probe.py                     # 12 phantoms, 64^3 crops, 16^3 cubes
    python bench/probe.py --cases 6 --steps 200 --json out.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcpc_data.phantom import write_archive  # noqa: E402
from tcpc_data.pipeline import preprocess  # noqa: E402
from tcpc_data.shards.pretrain import ShardConfig, write_shards  # noqa: E402
from tcpc_data.supervoxels.stage import SupervoxelConfig  # noqa: E402
from tcpc_train.evaluation.shortcut import ProbeConfig, probe  # noqa: E402
from tcpc_train.loops.runtime import RuntimeConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=12, help="phantom CTs")
    ap.add_argument("--top-k", type=int, default=16, help="candidate crops per case")
    ap.add_argument("--targets", type=int, default=4, help="samples per crop")
    ap.add_argument("--kinds", default="u,straight", help="path kinds to probe")
    ap.add_argument("--geometries", default="paper,touching,default",
                    help="paper, touching (overlap 0) and/or default (overlap -0.25)")
    ap.add_argument("--steps", type=int, default=400, help="head optimiser steps")
    ap.add_argument("--width", type=float, default=0.25, help="encoder channel multiplier")
    ap.add_argument("--seeds", type=int, default=2, help="probe seeds (encoder, split, batches)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()

    # the head's settings of every row; only cube_intensity and the seed vary per row
    base = ProbeConfig(dataclasses.replace(ProbeConfig().pretrain, steps=args.steps, width=args.width))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_archive(tmp / "archive", n_cases=args.cases, seed=0, n_lesions=4, classes=(0, 1))
        svc = SupervoxelConfig(n_segments=300, sigma=1.0, top_k=args.top_k, crop_size=64)
        rep = preprocess([str(tmp / "archive")], tmp / "pre", workers=1, supervoxel_config=svc,
                         shard_config=ShardConfig(targets_per_crop=args.targets))
        if not rep.ok:
            raise SystemExit(f"preprocessing failed:\n{rep.summary()}")
        store = tmp / "pre" / "volumes.zarr"
        print(f"preprocessed {args.cases} phantoms in {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        for kind in args.kinds.split(","):
            for geometry in args.geometries.split(","):
                cfg = ShardConfig.preset("default" if geometry == "touching" else geometry, path=kind,
                                         targets_per_crop=args.targets, name="p",
                                         **({"overlap": 0.0} if geometry == "touching" else {}))
                out = tmp / f"{kind}-{geometry}"
                write_shards(store, out, cfg, workers=1)
                for intensity in (0.0, 0.1):
                    for seed in range(args.seeds):
                        pc = ProbeConfig(dataclasses.replace(base.pretrain, cube_intensity=intensity,
                                                             runtime=RuntimeConfig(seed=seed)))
                        r = probe(out, pc)
                        rows.append({"kind": kind, "geometry": geometry, "target_share": cfg.target_share(),
                                     "cube_intensity": intensity,
                                     "seed": seed, **{k: r[k] for k in ("chance", "train_loss", "held_out_loss",
                                                                        "drop", "n_train", "n_held_out")}})
                        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| path | geometry | target share | per-cube intensity | held-out InfoNCE (chance {rows[0]['chance']:.2f})"
          " | train InfoNCE |")
    print("|---|---|---|---|---|---|")
    keys = dict.fromkeys((r["kind"], r["geometry"], r["cube_intensity"]) for r in rows)
    for kind, geometry, intensity in keys:
        sel = [r for r in rows if (r["kind"], r["geometry"], r["cube_intensity"]) == (kind, geometry, intensity)]
        held = [r["held_out_loss"] for r in sel]
        train = [r["train_loss"] for r in sel]
        print(f"| {kind} | {geometry} | {sel[0]['target_share']:.0%} | {intensity} | "
              f"{sum(held) / len(held):.2f} ({min(held):.2f}-{max(held):.2f}) | {sum(train) / len(train):.2f} |")
    print(f"\n{len(sel)} seeds each; {rows[0]['n_train']} train / {rows[0]['n_held_out']} held-out samples; "
          f"{time.perf_counter() - t0:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "probe": dataclasses.asdict(base),
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
