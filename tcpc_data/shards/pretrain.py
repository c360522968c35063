"""Pretraining shards: cut each candidate's crop into path samples (support cubes + target) as WebDataset.

One sample per (case, candidate, target draw): members ``cubes.npy``
(P+1, c, c, c) float16 in path order, the target last; ``path.npy`` (P+1, 3)
int16 grid positions; ``json`` (case, candidate, centre, crop box, path kind,
plane, opening, ...). The pure functions ``path_sample``/``crop_samples`` work
on any crop array, so callers with data outside a store (MedMNIST images,
tests) reuse them; ``write_shards`` maps them over a volume store.
"""
from __future__ import annotations

import dataclasses
import os
import zlib
from dataclasses import field
from functools import lru_cache
from typing import Iterator, Literal

import numpy as np

import tcpc_data.shards.cubepaths as P
from tcpc_data.crops import crop, crop_padding
from tcpc_data.digest import digest
from tcpc_data.runner import RunReport
from tcpc_data.shards.shardset import build_shard_set, encode_json
from tcpc_data.shards.tario import Sample, encode_npy
from tcpc_data.store import list_cases, open_store


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """How crops are cut into path samples and packed into shards (saved in the manifest)."""

    crop_size: int = field(default=64, metadata={"help": "Crop side S in voxels around each candidate."})
    cube_size: int = field(default=16, metadata={"help": "Cube side c in voxels."})
    overlap: float = field(default=0.5, metadata={
        "help": "Fraction of a cube shared with its grid neighbour (0.5: stride c/2)."})
    path: Literal[tuple(P.PATHS)] = field(default="u", metadata={
        "help": "Path kind: u (TCPC), straight (3D CPC), block (Rubik's cube / Jigsaw)."})
    # The block default keeps cubes from overlapping, so a Jigsaw or Rubik's-cube net cannot solve
    # its puzzle from shared voxels.
    path_size: int | None = field(default=None, metadata={
        "help": "U radius, straight length or block step in cubes; none: the kind's default "
                "(1, 3, and for blocks the step at which cubes touch: 2 at overlap 0.5)."})
    plane: Literal[tuple(P.PLANES)] | None = field(default=None, metadata={
        "help": "Fix the path plane; none draws it per sample from the seed."})
    opening: Literal[P.OPENINGS] | None = field(default=None, metadata={
        "help": "Fix the path opening; none draws it per sample from the seed."})
    targets_per_crop: int = field(default=4, metadata={"help": "Samples (target draws) per candidate crop."})
    target_radius: int | None = field(default=1, metadata={
        "help": "Targets lie within this many grid steps of the crop centre; none: anywhere the path fits."})
    candidates_per_case: int | None = field(default=None, metadata={
        "help": "Use the best this many candidates of each case; none: all."})
    background: float = field(default=-1.0, metadata={
        "help": "Value of crop voxels outside the volume (-1: the bottom of [-1, 1])."})
    shard_size: int = field(default=1000, metadata={"help": "Samples per shard file."})
    name: str = field(default="tcpc", metadata={"help": "Shard file prefix: <name>-%06d.tar."})
    # A sample's draws depend only on (seed, case, candidate, draw index), never on the worker count.
    seed: int = field(default=0, metadata={"help": "Seed of every draw."})

    def variants(self) -> tuple[tuple[str, str], ...]:
        """The (plane, opening) variants samples are drawn from."""
        if self.path not in P.PATHS:
            raise ValueError(f"unknown path kind {self.path!r}; known: {', '.join(sorted(P.PATHS))}")
        vs = tuple(v for v in P.PATHS[self.path].variants
                   if self.plane in (None, v[0]) and self.opening in (None, v[1]))
        if not vs:
            raise ValueError(f"path kind {self.path!r} has no variant with plane={self.plane!r}, "
                             f"opening={self.opening!r}; variants: {list(P.PATHS[self.path].variants)}")
        return vs

    def size(self) -> int:
        """The path size used: ``path_size`` or the kind's default (see ``path_size``)."""
        if self.path_size is not None:
            return self.path_size
        if self.path == "block":
            return max(1, round(1 / (1 - self.overlap)))
        return P.PATHS[self.path].default_size

    def validate(self) -> tuple[int, int]:
        """Check every field; returns the grid (g, stride). Raises ValueError naming the field."""
        g, stride = P.grid_size(self.crop_size, self.cube_size, self.overlap)
        for field in ("targets_per_crop", "shard_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.candidates_per_case is not None and self.candidates_per_case < 1:
            raise ValueError(f"candidates_per_case must be >= 1 or None, got {self.candidates_per_case}")
        if self.path_size is not None and self.path_size < 1:
            raise ValueError(f"path_size must be >= 1, got {self.path_size}")
        for v in self.variants():
            if not len(_targets(self.path, g, self.size(), self.target_radius, v)):
                raise ValueError(
                    f"no target fits a {self.path!r} path (size {self.size()}, variant {v}) in a "
                    f"{g}^3 cube grid (crop {self.crop_size}, cube {self.cube_size}, overlap "
                    f"{self.overlap}) within target_radius {self.target_radius}: use a bigger crop, "
                    "smaller cubes, a shorter path or a larger target_radius")
        return g, stride

    def sample_config(self) -> "ShardConfig":
        """This config without the packing fields: what a sample's bytes depend on."""
        return dataclasses.replace(self, shard_size=1, name="x")


@lru_cache(maxsize=256)
def _targets(kind, grid, size, radius, variant) -> np.ndarray:
    return P.valid_targets(kind, grid, size, radius, (variant,))


def draw_rng(seed: int, case: str, candidate: int, draw: int) -> np.random.Generator:
    """The generator of one cut sample's variant and target: keyed by its identity (seed, case,
    candidate, draw) only, so shards are the same bytes whatever the worker count. (The trainer's
    per-epoch augmentation has its own key: ``tcpc_train.loader.sample_rng``.)"""
    return np.random.default_rng([seed, zlib.crc32(case.encode()), candidate, draw])


def path_sample(crop_arr: np.ndarray, config: ShardConfig, rng: np.random.Generator,
                grid: tuple[int, int] | None = None) -> dict:
    """Draw a variant and a target, then cut one path sample from a crop.

    Parameters
    ----------
    crop_arr
        (S, S, S) crop, S = ``config.crop_size``.
    config
        Path kind, size, variants, target radius, cube grid.
    rng
        Source of the variant and target draws.
    grid
        (g, stride) when already validated; None validates ``config``.

    Returns
    -------
    dict
        ``cubes`` (P+1, c, c, c) float16 in path order, target last;
        ``path`` (P+1, 3) int16 grid positions; ``plane``, ``opening``.
    """
    g, stride = config.validate() if grid is None else grid
    if crop_arr.shape != (config.crop_size,) * 3:
        raise ValueError(f"crop has shape {crop_arr.shape}, config.crop_size is {config.crop_size}")
    variants = config.variants()
    plane, opening = variants[int(rng.integers(len(variants)))]
    targets = _targets(config.path, g, config.size(), config.target_radius, (plane, opening))
    target = targets[int(rng.integers(len(targets)))]
    pos = P.path_positions(config.path, target, plane, opening, config.size())
    cubes = np.stack([crop_arr[P.cube_slices(p, stride, config.cube_size)] for p in pos])
    return {"cubes": cubes.astype(np.float16), "path": pos.astype(np.int16),
            "plane": plane, "opening": opening}


def crop_samples(crop_arr: np.ndarray, config: ShardConfig, case: str, candidate: int,
                 info: dict) -> list[Sample]:
    """All ``targets_per_crop`` encoded samples of one crop, keyed ``<case>_c<candidate>_t<draw>``.

    ``info`` (centre, crop box, ...) is merged into each sample's ``json``.
    """
    grid = config.validate()
    out = []
    for t in range(config.targets_per_crop):
        s = path_sample(crop_arr, config, draw_rng(config.seed, case, candidate, t), grid)
        meta = {"case": case, "candidate": candidate, "draw": t, "kind": config.path,
                "size": config.size(),
                "plane": s["plane"], "opening": s["opening"], "target": s["path"][-1].tolist(),
                "cube_size": config.cube_size, "stride": grid[1], "grid": grid[0],
                "crop_size": config.crop_size, "background": config.background, **info}
        key = f"{case}_c{candidate:05d}_t{t:02d}"
        out.append((key, {"cubes.npy": encode_npy(s["cubes"]), "path.npy": encode_npy(s["path"]),
                          "json": encode_json(meta)}))
    return out


def _case_samples(payload) -> Iterator[Sample]:
    """All samples of one store case, crop by crop (runs on a worker)."""
    url, case, config = payload
    grp = open_store(url, mode="r")[case]
    cands = np.asarray(grp["candidates"][...])
    if cands.ndim != 2 or cands.shape[1] != 3:
        raise ValueError(f"case {case}: candidates must be (K, 3), got shape {cands.shape} in {url}")
    scores = (np.asarray(grp["candidate_scores"][...]) if "candidate_scores" in grp
              else np.full(len(cands), np.nan, dtype=np.float32))
    k = len(cands) if config.candidates_per_case is None else min(len(cands), config.candidates_per_case)
    image = np.asarray(grp["image"][...])  # one read; crops are views of memory
    for i in range(k):
        arr, box = crop(image, cands[i], config.crop_size, config.background)
        info = {"centre": cands[i].tolist(), "crop_box": box.tolist(),
                "padding": crop_padding(box, image.shape),
                "score": None if np.isnan(scores[i]) else float(scores[i])}
        yield from crop_samples(arr, config, case, i, info)


def pretrain_members(config: ShardConfig) -> dict:
    """The manifest's member schema of pretraining samples cut with ``config``."""
    n = len(P.path_positions(config.path, (0, 0, 0), *config.variants()[0], config.size()))
    c = config.cube_size
    return {"cubes.npy": {"shape": [n, c, c, c], "dtype": "float16", "order": "path order, target last"},
            "path.npy": {"shape": [n, 3], "dtype": "int16", "unit": "cube grid position z, y, x"},
            "json": {"keys": ["case", "candidate", "draw", "centre", "crop_box", "padding", "kind", "plane",
                              "opening", "target", "size", "cube_size", "stride", "grid"]}}


def write_shards(store, out_dir, config: ShardConfig = ShardConfig(), *, cases=None,
                 workers: int | None = None, scheduler: str | None = None, progress: bool = False,
                 failures_path: str | os.PathLike | None = None) -> tuple[RunReport, dict]:
    """Cut every candidate crop of a volume store into path samples and write WebDataset shards.

    Parameters
    ----------
    store
        Volume store path or URL with ``<case>/image`` and ``<case>/candidates``.
    out_dir
        Shard directory (path or fsspec URL): ``<name>-%06d.tar`` and ``manifest.json``.
    config
        Crop, grid, path and packing settings (saved in the manifest).
    cases
        Case ids to use; None = every case with complete image and candidates.
    workers, scheduler, progress, failures_path
        As in ``tcpc_data.runner.run_cases`` (parallel over cases).

    Returns
    -------
    report, manifest
        Per-case outcomes and the manifest written (``totals`` has the counts).

    Raises
    ------
    ValueError
        Bad config, or requested cases missing from the store.
    FileNotFoundError
        No store at ``store``.
    """
    config.validate()
    ready = list_cases(store, require=("image", "candidates"))
    if cases is not None:
        missing = sorted(set(cases) - set(ready))
        if missing:
            raise ValueError(f"cases without complete image and candidates in {store}: {missing}")
        ready = sorted(set(cases))
    if not ready:
        raise ValueError(f"no case in {store} has complete image and candidates arrays "
                         "(run ingest and supervoxels first)")
    root = open_store(store, mode="r")
    inputs = {c: digest(root[c]["image"].attrs["digest"], root[c]["candidates"].attrs["digest"],
                        config.sample_config()) for c in ready}
    payloads = {c: (str(store), c, config) for c in ready}
    return build_shard_set("shards", out_dir, name=config.name, shard_size=config.shard_size,
                           config=config, inputs=inputs, payloads=payloads,
                           make_samples=_case_samples, members=pretrain_members(config),
                           extra={"kind": "pretrain", "source": str(store)}, workers=workers,
                           scheduler=scheduler, progress=progress, failures_path=failures_path)
