"""Benchmark: precomputed U-path shards vs on-the-fly cube cropping from the Zarr volume store.

Builds a phantom volume store (normalised images + candidates), then in one run
measures, per worker (one process):

1. write: ``write_shards`` samples/s (crop, cut, encode, tar, assemble);
2. read shards: stock ``webdataset`` streaming + ``np.load`` → ``torch`` tensors,
   and the same with tcpc's own reader (``tcpc_data.shards.tario``, what the trainer uses);
3. on the fly (MONAI-style): for the very same samples (case, centre, path
   from each sample's json), read the crop from the Zarr volume and cut the
   cubes per sample, → tensors;
4. the same with whole volumes cached in RAM (MONAI's CacheDataset).

Prints samples/s and the ratio read-shards / on-the-fly; both readers read one shard untimed
first (imports; the tcpc reader loads its compiled header scan once per process). Not a test; run:

    python bench/shards.py [--cases 4] [--shape 96,160,160] [--candidates 24]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcpc_data.shards import cubepaths as P  # noqa: E402
from tcpc_data.crops import crop  # noqa: E402
from tcpc_data.phantom import make_phantom  # noqa: E402
from tcpc_data.shards.pretrain import ShardConfig, write_shards  # noqa: E402
from tcpc_data.store.volumes import commit_arrays, open_store  # noqa: E402
from tcpc_data.shards.tario import read_npy, tar_samples  # noqa: E402


def build_store(url: Path, cases: int, shape: tuple[int, int, int], candidates: int) -> None:
    for i in range(cases):
        ph = make_phantom(shape=shape, n_lesions=3, seed=i)
        img = ((np.clip(ph.hu, -1024, 3071) + 1024) / 4095 * 2 - 1).astype(np.float32)
        rng = np.random.default_rng(i)
        cands = np.stack([rng.integers(0, s, candidates) for s in shape], 1).astype(np.int32)
        commit_arrays(url, f"case-{i:03d}", {"image": img, "candidates": cands},
                      {"image": {"spacing_zyx": list(ph.spacing_zyx), "digest": f"i{i}"},
                       "candidates": {"digest": f"c{i}", "crop_size": 64, "source": "slic"}})


def read_shards(out: Path, names: list[str]) -> tuple[int, float, list[dict]]:
    import webdataset as wds
    urls = [str(out / name) for name in names]
    t0 = time.perf_counter()
    n, metas = 0, []
    for s in wds.WebDataset(urls, shardshuffle=False):
        cubes = torch.from_numpy(np.load(io.BytesIO(s["cubes.npy"]), allow_pickle=False))
        path = torch.from_numpy(np.load(io.BytesIO(s["path.npy"]), allow_pickle=False))
        assert cubes.ndim == 4 and path.ndim == 2
        metas.append(json.loads(s["json"]))
        n += 1
    return n, time.perf_counter() - t0, metas


def read_shards_tcpc(out: Path, names: list[str]) -> tuple[int, float]:
    """The same samples through tcpc's tar and .npy readers (the trainer's loader path)."""
    t0 = time.perf_counter()
    n = 0
    for name in names:
        for _, members in tar_samples(out / name):
            cubes = torch.from_numpy(read_npy(members["cubes.npy"]).copy())
            path = torch.from_numpy(read_npy(members["path.npy"]).copy())
            assert cubes.ndim == 4 and path.ndim == 2
            json.loads(members["json"])
            n += 1
    return n, time.perf_counter() - t0


def on_the_fly(store: Path, metas: list[dict], cfg: ShardConfig, stride: int,
               cached: bool = False) -> tuple[int, float]:
    """Cut the same cubes per sample from the Zarr store (opened once per case), or from
    volumes held in RAM (``cached``: MONAI's CacheDataset; loading is timed too)."""
    root = open_store(store, "r")
    arrays = {}
    t0 = time.perf_counter()
    for m in metas:
        if m["case"] not in arrays:
            a = root[m["case"]]["image"]
            arrays[m["case"]] = a[...] if cached else a
        arr = arrays[m["case"]]
        pos = P.path_positions(m["kind"], m["target"], m["plane"], m["opening"], m["size"])
        region, _ = crop(arr, m["centre"], cfg.crop_size, cfg.background)  # reads the chunks it needs
        cubes = np.stack([region[P.cube_slices(p, stride, cfg.cube_size)] for p in pos]).astype(np.float16)
        torch.from_numpy(cubes)
    return len(metas), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--shape", default="96,160,160", help="phantom Z,Y,X voxels")
    ap.add_argument("--candidates", type=int, default=24, help="crops per case")
    ap.add_argument("--targets", type=int, default=4, help="samples per crop")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    cfg = ShardConfig(targets_per_crop=args.targets, shard_size=500)
    g, stride = cfg.validate()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_store(tmp / "v.zarr", args.cases, shape, args.candidates)
        t0 = time.perf_counter()
        rep, man = write_shards(tmp / "v.zarr", tmp / "sh", cfg, workers=1)
        t_write = time.perf_counter() - t0
        n = man["totals"]["samples"]
        size_mb = sum(p.stat().st_size for p in (tmp / "sh").glob("*.tar")) / 2**20
        names = [s["name"] for s in man["shards"]]
        # untimed first reads: imports, and the tcpc reader's compiled header scan (Numba, loaded
        # once per process, ~0.4 s), which a loader process pays once, not per sample
        read_shards(tmp / "sh", names[:1])
        read_shards_tcpc(tmp / "sh", names[:1])
        n_read, t_read, metas = read_shards(tmp / "sh", names)
        n_tcpc, t_tcpc = read_shards_tcpc(tmp / "sh", names)
        n_fly, t_fly = on_the_fly(tmp / "v.zarr", metas, cfg, stride)
        n_ram, t_ram = on_the_fly(tmp / "v.zarr", metas, cfg, stride, cached=True)
    print(f"store: {args.cases} cases {shape}, {args.candidates} candidates, {args.targets} targets/crop; "
          f"samples {n} of {g}-grid u-paths, cubes {cfg.cube_size}^3, {size_mb:.1f} MiB of shards")
    print(f"write shards      : {n / t_write:9.1f} samples/s per worker ({t_write:.2f} s)")
    print(f"read shards       : {n_read / t_read:9.1f} samples/s per worker ({t_read:.2f} s) -> torch tensors")
    print(f"read shards (tcpc): {n_tcpc / t_tcpc:9.1f} samples/s per worker ({t_tcpc:.2f} s) -> torch tensors")
    print(f"on the fly (zarr) : {n_fly / t_fly:9.1f} samples/s per worker ({t_fly:.2f} s) -> torch tensors")
    print(f"on the fly (RAM)  : {n_ram / t_ram:9.1f} samples/s per worker ({t_ram:.2f} s) -> torch tensors, "
          "whole volumes cached")
    print(f"ratio read shards / on the fly (zarr): {t_fly / t_read:.1f}x; / on the fly (RAM): {t_ram / t_read:.1f}x; "
          f"with tcpc's reader: {t_fly / t_tcpc:.1f}x and {t_ram / t_tcpc:.1f}x")


if __name__ == "__main__":
    main()
