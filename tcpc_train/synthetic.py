"""Seeded synthetic shards in the shard contract layout, for tests, benchmarks and smoke runs.

They let the trainer be exercised without the preprocessing engine:
``write_synthetic_paths`` cuts cubes along a ``u``, ``straight`` or ``block`` path
from smooth random volumes (so the target is predictable from its
neighbours); ``write_synthetic_labelled`` writes train/val/test splits of cubic
volumes whose class is whether a bright sphere is present (separable).
Layout and manifest as in DESIGN.md: ``<name>-%06d.tar`` + ``manifest.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from tcpc_data.digest import digest
from tcpc_data.shards.tario import encode_npy, write_tar

# Grid offsets (relative to the target) of the support set, in reading order, then the target.
_U_AXIAL_UP = [(0, -1, -1), (0, 0, -1), (0, 1, -1), (0, 1, 0), (0, 1, 1), (0, 0, 1), (0, -1, 1), (0, 0, 0)]
_STRAIGHT_Z = [(-3, 0, 0), (-2, 0, 0), (-1, 0, 0), (0, 0, 0)]
_BLOCK = [(z, y, x) for z in (0, 1) for y in (0, 1) for x in (0, 1)]
PATHS = {"u": _U_AXIAL_UP, "straight": _STRAIGHT_Z, "block": _BLOCK}


def _write(out: Path, name: str, samples: list[dict], per_shard: int, config: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(0, len(samples), per_shard):
        fname = f"{name}-{i // per_shard:06d}.tar"
        write_tar(out / fname, [(s["__key__"], {k: v for k, v in s.items() if k != "__key__"})
                                for s in samples[i:i + per_shard]])
        entries.append({"name": fname, "samples": len(samples[i:i + per_shard])})
    manifest = {"format_version": 1, "config": config, "digest": digest(config),
                "shards": entries, "total": len(samples)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def write_synthetic_paths(out: str | Path, n_samples: int, kind: str = "u", cube: int = 16,
                      per_shard: int = 8, seed: int = 0, name: str = "synthetic") -> Path:
    """Write pretraining shards of ``n_samples`` paths of ``kind`` with cubes of side ``cube``.

    Each sample: ``cubes.npy`` (P+1, c, c, c) float16 in [-1, 1], path order,
    target last; ``path.npy`` (P+1, 3) int16 grid positions (stride c/2);
    ``json`` with case, path kind, plane and opening. Returns ``out``.
    """
    if kind not in PATHS:
        raise ValueError(f"unknown path kind {kind!r}; choose one of {', '.join(PATHS)}")
    offsets = np.array(PATHS[kind])
    rng = np.random.default_rng(seed)
    s = cube // 2
    base = -offsets.min(0)
    g = int((offsets.max(0) - offsets.min(0)).max()) + 1
    side = (g - 1) * s + cube
    samples = []
    for i in range(n_samples):
        vol = ndimage.gaussian_filter(rng.standard_normal((side,) * 3), sigma=cube / 4)
        vol = np.clip(vol / (np.abs(vol).max() + 1e-9), -1, 1)
        pos = offsets + base
        cubes = np.stack([vol[z * s:z * s + cube, y * s:y * s + cube, x * s:x * s + cube] for z, y, x in pos])
        meta = {"case": f"synthetic{i:05d}", "candidate": 0, "centre": [side // 2] * 3,
                "crop_box": [[0, side]] * 3, "path_kind": kind, "plane": "axial", "opening": "up"}
        samples.append({"__key__": f"synthetic{i:05d}_c0", "cubes.npy": encode_npy(cubes.astype(np.float16)),
                        "path.npy": encode_npy(pos.astype(np.int16)), "json": json.dumps(meta).encode()})
    return _write(Path(out), name, samples, per_shard,
                  {"kind": kind, "cube": cube, "n": n_samples, "seed": seed, "synthetic": True})


def write_synthetic_labelled(out: str | Path, n_per_split: tuple[int, int, int] = (32, 16, 16), size: int = 16,
                          per_shard: int = 16, seed: int = 0) -> Path:
    """Write ``out/train``, ``out/val``, ``out/test`` of labelled volumes (S, S, S), two balanced classes.

    Class 1 volumes contain a bright sphere (radius S/5) at a random place in
    smooth noise; class 0 volumes are the noise alone. Returns ``out``.
    """
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:size, :size, :size]
    r = size / 5
    for split, n in zip(("train", "val", "test"), n_per_split):
        samples = []
        for i in range(n):
            label = i % 2
            vol = 0.3 * ndimage.gaussian_filter(rng.standard_normal((size,) * 3), 1.0)
            if label:
                c = rng.uniform(r + 1, size - r - 1, 3)
                vol[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r] += 0.8
            samples.append({"__key__": f"{split}{i:05d}", "volume.npy": encode_npy(vol.astype(np.float16)),
                            "cls": str(label).encode(),
                            "json": json.dumps({"case": f"{split}{i:05d}", "split": split}).encode()})
        _write(Path(out) / split, "labelled", samples, per_shard,
               {"split": split, "size": size, "n": n, "seed": seed, "synthetic": True})
    return Path(out)
