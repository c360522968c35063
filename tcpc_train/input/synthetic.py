"""Seeded synthetic shards in the shard contract layout, for tests, benchmarks and smoke runs.

They let the trainer be exercised without the preprocessing engine:
``write_synthetic_paths`` cuts cubes along a ``u``, ``straight`` or ``block`` path
(the geometry of :mod:`tcpc_data.shards.cubepaths`, its first variant) from
smooth random volumes (so the target is predictable from its neighbours);
``write_synthetic_labelled`` writes train/val/test splits of cubic volumes
whose class is whether a bright sphere is present (separable). Shards and
manifest are written as the engine writes them: ``<name>-%06d.tar`` by
:func:`tcpc_data.shards.tario.write_tar`, ``manifest.json`` by
:mod:`tcpc_data.shards.manifest`; each synthetic volume is one case.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from tcpc_data.digest import digest
from tcpc_data.shards.cubepaths import PATHS, path_positions
from tcpc_data.shards.manifest import SPLITS, new_manifest, write_manifest
from tcpc_data.shards.tario import Sample, encode_npy, write_tar


def _write(out: Path, kind: str, name: str, samples: list[tuple[str, Sample]], per_shard: int, config: dict,
           members: dict, **extra) -> Path:
    """Write (case, sample) pairs in order as shards of ``per_shard`` samples, then the manifest
    (``extra``: its optional fields)."""
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for i in range(0, len(samples), per_shard):
        fname = f"{name}-{i // per_shard:06d}.tar"
        n = write_tar(out / fname, [sample for _, sample in samples[i:i + per_shard]])
        shards.append({"name": fname, "samples": n})
    cases = Counter(case for case, _ in samples)
    write_manifest(out, new_manifest(kind=kind, name=name, stage="synthetic", config=config, digest=digest(config),
                                     shard_size=per_shard, members=members, shards=shards, cases=dict(cases),
                                     case_digests={c: digest(config, c) for c in cases}, source="synthetic",
                                     **extra))
    return out


def write_synthetic_paths(out: str | Path, n_samples: int, kind: str = "u", cube: int = 16,
                      per_shard: int = 8, seed: int = 0, name: str = "synthetic") -> Path:
    """Write pretraining shards of ``n_samples`` paths of ``kind`` with cubes of side ``cube``.

    The path is ``path_positions(kind, ...)`` of the kind's first variant
    (axial, opening up) on a grid of stride c/2, in a volume just large enough
    to hold it. Each sample, as the engine cuts them: ``cubes.npy``
    (P+1, c, c, c) float16 in [-1, 1], path order, target last; ``path.npy``
    (P+1, 3) int16 grid positions; ``json`` with case, kind, plane, opening,
    target and grid. Returns ``out``.
    """
    if kind not in PATHS:
        raise ValueError(f"unknown path kind {kind!r}; choose one of {', '.join(PATHS)}")
    plane, opening = PATHS[kind].variants[0]
    pos = path_positions(kind, (0, 0, 0), plane, opening)
    pos -= pos.min(0)  # the path's bounding box starts at grid position 0
    rng = np.random.default_rng(seed)
    s = cube // 2
    g = int(pos.max()) + 1
    side = (g - 1) * s + cube
    samples = []
    for i in range(n_samples):
        vol = ndimage.gaussian_filter(rng.standard_normal((side,) * 3), sigma=cube / 4)
        vol = np.clip(vol / (np.abs(vol).max() + 1e-9), -1, 1)
        cubes = np.stack([vol[z * s:z * s + cube, y * s:y * s + cube, x * s:x * s + cube] for z, y, x in pos])
        case = f"synthetic{i:05d}"
        meta = {"case": case, "candidate": 0, "draw": 0, "centre": [side // 2] * 3,
                "crop_box": [[0, 0, 0], [side] * 3], "kind": kind, "plane": plane, "opening": opening,
                "target": pos[-1].tolist(), "cube_size": cube, "stride": s, "grid": g}
        samples.append((case, (f"{case}_c0", {"cubes.npy": encode_npy(cubes.astype(np.float16)),
                                              "path.npy": encode_npy(pos.astype(np.int16)),
                                              "json": json.dumps(meta).encode()})))
    members = {"cubes.npy": {"shape": [len(pos), cube, cube, cube], "dtype": "float16",
                             "order": "path order, target last"},
               "path.npy": {"shape": [len(pos), 3], "dtype": "int16", "unit": "cube grid position z, y, x"},
               "json": {"keys": sorted(meta)}}
    return _write(Path(out), "pretrain", name, samples, per_shard,
                  {"kind": kind, "cube": cube, "n": n_samples, "seed": seed, "synthetic": True}, members)


def write_synthetic_labelled(out: str | Path, n_per_split: tuple[int, int, int] = (32, 16, 16), size: int = 16,
                          per_shard: int = 16, seed: int = 0) -> Path:
    """Write ``out/train``, ``out/val``, ``out/test`` of labelled volumes (S, S, S), two balanced classes.

    Class 1 volumes contain a bright sphere (radius S/5) at a random place in
    smooth noise; class 0 volumes are the noise alone. Returns ``out``.
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:size, :size, :size]
    r = size / 5
    members = {"volume.npy": {"shape": [size] * 3, "dtype": "float16"},
               "cls": {"dtype": "int", "encoding": "decimal text"}, "json": {"keys": ["case", "split"]}}
    for split, n in zip(SPLITS, n_per_split):
        samples = []
        for i in range(n):
            label = i % 2
            vol = 0.3 * ndimage.gaussian_filter(rng.standard_normal((size,) * 3), 1.0)
            if label:
                c = rng.uniform(r + 1, size - r - 1, 3)
                vol[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r] += 0.8
            case = f"{split}{i:05d}"
            samples.append((case, (case, {"volume.npy": encode_npy(vol.astype(np.float16)),
                                          "cls": str(label).encode(),
                                          "json": json.dumps({"case": case, "split": split}).encode()})))
        _write(Path(out) / split, "finetune", "labelled", samples, per_shard,
               {"split": split, "size": size, "n": n, "seed": seed, "synthetic": True}, members,
               split=split, classes=[0, 1])
    return Path(out)
