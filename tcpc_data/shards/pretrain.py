"""Pretraining shards: cut each candidate's crop into path samples (support cubes + target) as WebDataset.

One sample per (case, candidate, target draw): members ``cubes.npy``
(P+1, c, c, c) float16 in path order, the target last; ``path.npy`` (P+1, 3)
int16 grid positions; ``json`` (case, candidate, centre, crop box, path kind,
plane, opening, ``origins``: each cube's first voxel in the crop, ...). The
pure functions ``path_sample``/``crop_samples`` work on any crop array, so
callers with data outside a store (MedMNIST images, tests) reuse them;
``write_shards`` maps them over a volume store.

Default geometry (``docs/design.md``, Geometry): neighbouring grid cubes are
a quarter cube apart (overlap −0.25: 4 voxels between 16-voxel cubes), so no
support cube holds a target voxel (:func:`tcpc_data.shards.cubepaths.target_share`
is 0 for every kind, against 100 % for the paper's U and 50 % for its line)
and a predictor cannot copy the target. A gap rather than touching cubes or
jitter alone: ``bench/probe.py`` (24 phantoms, 64³ crops, 16³ cubes, a head
trained on a frozen random encoder, 2 seeds) measured held-out InfoNCE
0.59 nats below chance (log 32 = 3.47) for the paper's U, 0.45 with touching
cubes (no shared voxel, but continuous edges) and 0.37 with the gap; a jitter
small enough to keep cubes apart would need a wider gap that 28³ images
with 8-voxel cubes cannot hold. ``ShardConfig.preset("paper")`` keeps
the paper's 50 % overlap and adjacent target for the ablation. 3D CPC reads
as many support cubes as TCPC's U (7) and has TCPC's targets: when its line
is longer than the crop's grid, it continues past the crop along its axis
(cut from the volume; background outside it). Rubik's-cube and Jigsaw blocks
get the gaps and jitter of their papers (Noroozi & Favaro 2016; Zhuang et
al. 2019): each cube moves at random within its cell, never touching its
neighbours.
"""
from __future__ import annotations

import dataclasses
import math
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
from tcpc_data.store.volumes import case_digests, open_store
from tcpc_data.urls import is_remote, local_path


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """How crops are cut into path samples and packed into shards (saved in the manifest)."""

    crop_size: int = field(default=64, metadata={"help": "Crop side S in voxels around each candidate."})
    cube_size: int = field(default=16, metadata={"help": "Cube side c in voxels."})
    # The default gap keeps every target voxel out of the support cubes (target_share 0): with the
    # paper's 0.5 a U's support holds the whole target and InfoNCE can fall by copying voxels.
    overlap: float = field(default=-0.25, metadata={
        "help": "Fraction of a cube shared with its grid neighbour: 0.5 the paper (stride c/2), 0 touching, "
                "negative a gap of -overlap*c voxels (default: a quarter cube, no copy shortcut)."})
    path: Literal[tuple(P.PATHS)] = field(default="u", metadata={
        "help": "Path kind: u (TCPC), straight (3D CPC), block (Rubik's cube / Jigsaw)."})
    # The block default keeps cubes apart, so a Jigsaw or Rubik's-cube net cannot solve its puzzle
    # from shared voxels.
    path_size: int | None = field(default=None, metadata={
        "help": "U radius, straight length or block step in cubes; none: the kind's default "
                "(1; 7, as many support cubes as the U; for blocks the step at which cubes stop overlapping)."})
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
    shard_size: int = field(default=1000, metadata={
        "help": "Most samples per shard file (each case's samples fill shards of their own)."})
    name: str = field(default="tcpc", metadata={"help": "Shard file prefix: <name>-<case>-<key>-%05d.tar."})
    # A sample's draws depend only on (seed, case, candidate, draw index), never on the worker count.
    seed: int = field(default=0, metadata={"help": "Seed of every draw."})
    jitter: float | None = field(default=None, metadata={
        "help": "Largest shift of each cube from its grid place per axis, as a fraction of the cube side "
                "(floor(jitter*c) voxels, drawn per cube); None: for blocks as far as keeps cubes apart, else 0."})

    @classmethod
    def preset(cls, geometry: str, /, **overrides) -> "ShardConfig":
        """A named geometry with ``overrides`` applied.

        ``default``: the field defaults (a gap between cubes; no copy shortcut).
        ``paper``: the TCPC paper's grid, 50 % overlap with the target next to
        its support (a U holds every target voxel, a line half of them), a
        3-cube line for 3D CPC and touching blocks: the ablation row of the
        copy shortcut, cut exactly as tcpc cut it before the gap.
        """
        presets = {"default": {}, "paper": {"overlap": 0.5, "jitter": 0.0,
                                            "path_size": 3 if overrides.get("path") == "straight" else None}}
        if geometry not in presets:
            raise ValueError(f"unknown geometry preset {geometry!r}; known: {', '.join(presets)}")
        return cls(**{**presets[geometry], **overrides})

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
            return max(1, math.ceil(1 / (1 - self.overlap) - 1e-9))
        return P.PATHS[self.path].default_size

    def jitter_voxels(self) -> int:
        """Largest per-axis cube shift j in voxels: ``jitter`` or the kind's default (see ``jitter``)."""
        if self.jitter is not None:
            return P.jitter_voxels(self.cube_size, self.jitter)
        if self.path == "block" and self.overlap < 0:
            # as far as each cube can move with neighbours still at least one voxel apart
            gap = P.grid_stride(self.cube_size, self.overlap) - self.cube_size
            return max(0, (gap - 1) // 2)
        return 0

    def target_share(self) -> float:
        """Expected share of target voxels that also lie in a support cube, over every variant (the
        largest); see :func:`tcpc_data.shards.cubepaths.target_share`."""
        return max(P.target_share(self.path, self.cube_size, self.overlap, self.size(), self.jitter_voxels(),
                                  plane, opening) for plane, opening in self.variants())

    def validate(self) -> tuple[int, int]:
        """Check every field; returns the grid (g, stride). Raises ValueError naming the field."""
        g, stride = P.grid_size(self.crop_size, self.cube_size, self.overlap, self.jitter_voxels())
        for field in ("targets_per_crop", "shard_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")
        if self.candidates_per_case is not None and self.candidates_per_case < 1:
            raise ValueError(f"candidates_per_case must be >= 1 or None, got {self.candidates_per_case}")
        if self.path_size is not None and self.path_size < 1:
            raise ValueError(f"path_size must be >= 1, got {self.path_size}")
        for v in self.variants():
            if not len(self.targets(g, v)):
                raise ValueError(
                    f"no target fits a {self.path!r} path (size {self.size()}, variant {v}) in a "
                    f"{g}^3 cube grid (crop {self.crop_size}, cube {self.cube_size}, overlap "
                    f"{self.overlap}) within target_radius {self.target_radius}: use a bigger crop, "
                    "smaller cubes, a shorter path or a larger target_radius")
        return g, stride

    def extends(self, grid: int) -> bool:
        """Whether a straight path continues past the crop: its line does not fit the grid anywhere."""
        return self.path == "straight" and not any(
            len(_targets(self.path, grid, self.size(), None, v)) for v in self.variants())

    def targets(self, grid: int, variant: tuple[str, str]) -> np.ndarray:
        """(T, 3) grid positions a target of ``variant`` is drawn from; a line longer than the grid
        (see ``extends``) takes TCPC's targets, those of the default U of the same variant."""
        if self.extends(grid):
            return _targets("u", grid, P.PATHS["u"].default_size, self.target_radius, variant)
        return _targets(self.path, grid, self.size(), self.target_radius, variant)

    def sample_config(self) -> "ShardConfig":
        """This config without the packing fields: what a sample's bytes depend on."""
        return dataclasses.replace(self, shard_size=1, name="x")


@lru_cache(maxsize=256)
def _targets(kind, grid, size, radius, variant) -> np.ndarray:
    return P.valid_targets(kind, grid, size, radius, (variant,))


def draw_rng(seed: int, case: str, candidate: int, draw: int) -> np.random.Generator:
    """The generator of one cut sample's variant and target: keyed by its identity (seed, case,
    candidate, draw) only, so shards are the same bytes whatever the worker count. (The trainer's
    per-epoch augmentation has its own key: ``tcpc_train.input.loader.sample_rng``.)"""
    return np.random.default_rng([seed, zlib.crc32(case.encode()), candidate, draw])


def path_sample(crop_arr: np.ndarray, config: ShardConfig, rng: np.random.Generator,
                grid: tuple[int, int] | None = None, volume=None, start=None) -> dict:
    """Draw a variant, a target and the cubes' jitter, then cut one path sample from a crop.

    Parameters
    ----------
    crop_arr
        (S, S, S) crop, S = ``config.crop_size``.
    config
        Path kind, size, variants, target radius, cube grid and jitter.
    rng
        Source of the variant, target and jitter draws (in that order; no
        jitter draw when the jitter is 0, so such samples are cut as before).
    grid
        (g, stride) when already validated; None validates ``config``.
    volume, start
        The volume the crop was cut from and the crop's first voxel in it:
        cubes of a line that continues past the crop are cut from there
        (background outside it); None: background past the crop.

    Returns
    -------
    dict
        ``cubes`` (P+1, c, c, c) float16 in path order, target last;
        ``path`` (P+1, 3) int16 grid positions; ``origins`` (P+1, 3) int64
        first voxel of each cube in the crop; ``plane``, ``opening``.
    """
    g, stride = config.validate() if grid is None else grid
    if crop_arr.shape != (config.crop_size,) * 3:
        raise ValueError(f"crop has shape {crop_arr.shape}, config.crop_size is {config.crop_size}")
    variants = config.variants()
    plane, opening = variants[int(rng.integers(len(variants)))]
    targets = config.targets(g, (plane, opening))
    target = targets[int(rng.integers(len(targets)))]
    pos = P.path_positions(config.path, target, plane, opening, config.size())
    c, j = config.cube_size, config.jitter_voxels()
    origins = P.grid_margin(config.crop_size, c, g, stride) + pos * stride
    if j:
        origins = origins + rng.integers(-j, j + 1, size=origins.shape)
    if ((origins >= 0) & (origins + c <= config.crop_size)).all():
        cubes = np.stack([crop_arr[tuple(slice(a, a + c) for a in o)] for o in origins])
    else:  # a line longer than the grid: cut past the crop (docs/design.md, Geometry)
        src, off = (crop_arr, 0) if volume is None else (volume, np.asarray(start, dtype=np.int64))
        cubes = np.stack([_cut(src, off + o, c, config.background) for o in origins])
    return {"cubes": cubes.astype(np.float16), "path": pos.astype(np.int16), "origins": origins,
            "plane": plane, "opening": opening}


def _cut(volume, first, size: int, background: float) -> np.ndarray:
    """The (size,)*3 box of ``volume`` from voxel ``first``; background where it leaves the volume."""
    out = np.full((size,) * 3, background, dtype=volume.dtype)
    lo = np.maximum(first, 0)
    hi = np.minimum(np.asarray(first) + size, volume.shape)
    if (hi > lo).all():
        out[tuple(slice(a - f, b - f) for a, b, f in zip(lo, hi, first))] = \
            volume[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return out


def crop_samples(crop_arr: np.ndarray, config: ShardConfig, case: str, candidate: int,
                 info: dict, volume=None, start=None) -> list[Sample]:
    """All ``targets_per_crop`` encoded samples of one crop, keyed ``<case>_c<candidate>_t<draw>``.

    ``info`` (centre, crop box, ...) is merged into each sample's ``json``;
    ``volume``/``start`` as in :func:`path_sample`.
    """
    grid = config.validate()
    out = []
    for t in range(config.targets_per_crop):
        s = path_sample(crop_arr, config, draw_rng(config.seed, case, candidate, t), grid, volume, start)
        meta = {"case": case, "candidate": candidate, "draw": t, "kind": config.path,
                "size": config.size(),
                "plane": s["plane"], "opening": s["opening"], "target": s["path"][-1].tolist(),
                "cube_size": config.cube_size, "stride": grid[1], "grid": grid[0],
                "origins": s["origins"].tolist(),
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
        yield from crop_samples(arr, config, case, i, info, image, box[0])


def store_location(store) -> str:
    """A store's URL, or its absolute path: what a worker in another directory (or host) opens."""
    return str(store) if is_remote(store) else str(local_path(store).resolve())


def pretrain_members(config: ShardConfig) -> dict:
    """The manifest's member schema of pretraining samples cut with ``config``."""
    n = len(P.path_positions(config.path, (0, 0, 0), *config.variants()[0], config.size()))
    c = config.cube_size
    return {"cubes.npy": {"shape": [n, c, c, c], "dtype": "float16", "order": "path order, target last"},
            "path.npy": {"shape": [n, 3], "dtype": "int16", "unit": "cube grid position z, y, x"},
            "json": {"keys": ["case", "candidate", "draw", "centre", "crop_box", "padding", "kind", "plane",
                              "opening", "target", "size", "cube_size", "stride", "grid", "origins"]}}


def write_shards(store, out_dir, config: ShardConfig = ShardConfig(), *, cases=None,
                 workers: int | None = None, scheduler: str | None = None, progress: bool = False,
                 failures_path: str | os.PathLike | None = None,
                 memory_limit: str | None = None) -> tuple[RunReport, dict]:
    """Cut every candidate crop of a volume store into path samples and write WebDataset shards.

    Parameters
    ----------
    store
        Volume store path or URL with ``<case>/image`` and ``<case>/candidates``.
    out_dir
        Shard directory (path or fsspec URL): per-case ``<name>-<case>-<key>-%05d.tar`` and
        ``manifest.json`` (:mod:`tcpc_data.shards.shardset`).
    config
        Crop, grid, path and packing settings (saved in the manifest).
    cases
        Case ids to use; None = every case with complete image and candidates.
    workers, scheduler, progress, failures_path, memory_limit
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
    stored = case_digests(store, require=("image", "candidates"))  # one concurrent listing
    ready = sorted(stored)
    if cases is not None:
        missing = sorted(set(cases) - set(ready))
        if missing:
            raise ValueError(f"cases without complete image and candidates in {store}: {missing}")
        ready = sorted(set(cases))
    if not ready:
        raise ValueError(f"no case in {store} has complete image and candidates arrays "
                         "(run ingest and supervoxels first)")
    inputs = {c: digest(stored[c]["image"], stored[c]["candidates"], config.sample_config()) for c in ready}
    where = store_location(store)
    payloads = {c: (where, c, config) for c in ready}
    return build_shard_set("shards", out_dir, name=config.name, shard_size=config.shard_size,
                           config=config, inputs=inputs, payloads=payloads,
                           make_samples=_case_samples, members=pretrain_members(config),
                           extra={"kind": "pretrain", "source": str(store)}, reads=(store,), workers=workers,
                           scheduler=scheduler, progress=progress, failures_path=failures_path,
                           memory_limit=memory_limit)
