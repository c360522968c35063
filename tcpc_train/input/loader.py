"""Streaming shard loader: manifest checks, sample decoding, path-consistent augmentation, batching.

Shards are WebDataset tars listed in ``manifest.json`` (``docs/design.md``, Shard contract). The data
order is a pure function of (seed, epoch, rank): every epoch shuffles
the shard list with ``seed + epoch``, splits it over ranks (or, when there are
fewer shards than ranks, strides the samples), passes the samples through a
seeded shuffle buffer, and batches them. Every random choice
of a sample's augmentation is a pure function of (seed, epoch, sample key)
(:mod:`tcpc_train.input.augment`), so skipping the first batches on resume
reproduces the uninterrupted order exactly, without decoding what it skips.
The number of loader processes changes nothing: the DataLoader takes batch j
from worker j mod W, so each of W workers reads its rank's whole stream and
prepares only every W-th batch. Reading a sample it skips costs about a third
of preparing one (``bench/train.py --only loader`` prints both), a price paid
for runs that give the same batches on a laptop and on a GPU node, and for a
resume that may change ``workers``.

Tars and ``.npy`` members are read by :mod:`tcpc_data.shards.tario` (4 MiB blocks,
their headers checked in one compiled pass, no pickle; a small fraction of the work
of ``tarfile`` and ``np.load`` per sample); the shuffle buffer is WebDataset's,
sample for sample, and stock WebDataset readers and writers stay compatible with
these shards. A sample function may
split into a per-sample ``decode`` and a per-batch ``collate`` (see
:class:`ShardStream`): pretraining gathers, flips/rotates and intensity-augments
a whole batch in one compiled pass there.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import zlib
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from tcpc_data.store.malloc import retain_freed_memory
from tcpc_data.shards.manifest import SPLITS, find_manifest, manifest_url, read_manifest
from tcpc_data.shards.tario import read_npy, tar_samples
from tcpc_data.urls import filesystem, join
# The augmentations live in tcpc_train.input.augment; callers have imported them from here.
from tcpc_train.input.augment import augment_intensity, augment_path, augment_volume  # noqa: F401


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """The shards of one directory as its manifest lists them."""

    root: str
    urls: tuple[str, ...]
    counts: tuple[int, ...]
    total: int
    digest: str
    config: dict


def open_shards(root: str | Path) -> ShardSet:
    """Read and check ``root/manifest.json`` (:mod:`tcpc_data.shards.manifest`): every listed shard
    exists and there are samples.

    ``root`` is a local directory or an fsspec URL of one (``s3://bucket/shards``,
    ``file://...``); training then streams the shards from there.

    Raises
    ------
    FileNotFoundError
        The directory, its manifest or a listed shard is missing.
    ValueError
        The manifest breaks the shard contract or lists no samples.
    """
    root = str(root)
    manifest = read_manifest(root)
    entries = [(s["name"], s["samples"]) for s in manifest["shards"] if s["samples"] > 0]
    total = sum(c for _, c in entries)
    if total == 0:
        raise ValueError(f"{manifest_url(root)}: lists no samples (empty manifest)")
    fs, path = filesystem(root)
    for name, _ in entries:
        if not fs.isfile(join(path, name)):
            raise FileNotFoundError(f"{manifest_url(root)} lists shard {name} but {join(root, name)} is missing")
    return ShardSet(root=root, urls=tuple(join(root, n) for n, _ in entries),
                    counts=tuple(c for _, c in entries), total=total,
                    digest=manifest["digest"], config=manifest["config"])


def _where(raw: dict) -> str:
    """How errors name a raw sample: "url: sample key" (built only for an error: it runs per sample)."""
    return f"{raw.get('__url__', '?')}: sample {raw.get('__key__', '?')}"


def _npy(raw: dict, member: str, layout: str) -> np.ndarray:
    if member not in raw:
        found = sorted(k for k in raw if not k.startswith("__"))
        raise ValueError(f"{_where(raw)} has no {member!r} member (has {found}); expected the {layout} layout")
    try:
        return read_npy(raw[member])
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{_where(raw)}: {member} is not a plain .npy array ({exc})") from None


def decode_path_sample(raw: dict) -> dict:
    """Pretraining sample -> {key, cubes (P+1, c, c, c) as stored (float16), path (P+1, 3) int64}.

    Cubes stay in their stored precision up to the device (half the bytes to
    copy, collate and transfer); the training step converts them to float32.
    """
    layout = "pretraining (cubes.npy, path.npy, json)"
    cubes, path = _npy(raw, "cubes.npy", layout), _npy(raw, "path.npy", layout)
    shape = cubes.shape
    if len(shape) != 4 or not shape[1] == shape[2] == shape[3] or shape[0] < 2:
        raise ValueError(f"{_where(raw)}: cubes.npy must be (P+1, c, c, c) with P >= 1, got {shape}")
    if path.shape != (shape[0], 3):
        raise ValueError(f"{_where(raw)}: path.npy must be ({shape[0]}, 3) to match cubes.npy, got {path.shape}")
    if cubes.dtype.kind != "f":
        raise ValueError(f"{_where(raw)}: cubes.npy must hold floats, got {cubes.dtype}")
    return {"key": raw["__key__"], "cubes": cubes, "path": path.astype(np.int64)}


def decode_labelled_sample(raw: dict) -> dict:
    """Fine-tuning sample -> {key, volume (S, S, S) float32, label int}."""
    layout = "labelled (volume.npy, cls, json)"
    volume = _npy(raw, "volume.npy", layout)
    if volume.ndim != 3:
        raise ValueError(f"{_where(raw)}: volume.npy must be (S, S, S), got {volume.shape}")
    return {"key": raw["__key__"], "volume": volume.astype(np.float32), "label": read_label(raw)}


def read_label(raw: dict) -> int:
    """The integer class of a labelled sample's ``cls`` member."""
    where = _where(raw)
    if "cls" not in raw:
        raise ValueError(f"{where} has no 'cls' member; expected the labelled layout (volume.npy, cls, json)")
    try:
        label = int(raw["cls"].decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{where}: cls must be an integer as text, got {raw['cls'][:20]!r}") from None
    if label < 0:
        raise ValueError(f"{where}: cls must be >= 0, got {label}")
    return label


def sample_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The generator for one sample's random choices: a pure function of (seed, epoch, key)."""
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def raw_samples(url: str) -> Iterator[dict]:
    """Samples of one shard as WebDataset dicts: ``__key__``, ``__url__`` and one entry per member."""
    for key, members in tar_samples(url):
        members["__key__"], members["__url__"] = key, url  # the reader's fresh dict: no copy
        yield members


def first_sample(data: ShardSet) -> dict:
    """The first raw sample of the first shard: lets a caller check the layout in-process, where
    an error reads clearly, before loader workers start."""
    for raw in raw_samples(data.urls[0]):
        return raw
    raise ValueError(f"{data.urls[0]}: holds no samples although {manifest_url(data.root)} counts some")


def shuffled(samples: Iterator, size: int, seed: str) -> Iterator:
    """``samples`` through a shuffle buffer of ``size``: the order of WebDataset's
    ``wds.shuffle(size, size, seed=seed)`` (fill the buffer two samples per pick, then swap a
    random pick with the last), without its per-sample call layers."""
    rng, buf = random.Random(seed), []
    for sample in samples:
        buf.append(sample)
        if len(buf) < size:
            try:
                buf.append(next(samples))
            except StopIteration:
                pass
        if len(buf) >= size:
            k = rng.randrange(len(buf))  # randint(0, len - 1)'s draw
            picked, buf[k] = buf[k], buf[-1]
            buf.pop()
            yield picked
    while buf:
        k = rng.randrange(len(buf))
        picked, buf[k] = buf[k], buf[-1]
        buf.pop()
        yield picked


def _shape(value) -> tuple:
    if isinstance(value, np.ndarray):
        return value.shape
    return () if isinstance(value, (int, float, str, bytes)) else np.shape(value)


def _usual_shapes(items: list[dict]) -> dict[str, tuple]:
    """The most common shape of each array member of a batch (ties go to the shape seen first)."""
    return {k: Counter(_shape(it[k]) for it in items).most_common(1)[0][0] for k in items[0] if k != "key"}


def _stack(items: list[dict]) -> dict:
    """The default batch: each array member stacked, ``key`` as a list."""
    return {k: [it[k] for it in items] if k == "key" else np.stack([np.asarray(it[k]) for it in items])
            for k in items[0]}


def _collate(items: list[dict], raws: list[dict], skip_bad: bool = False, skipped: int = 0,
             stack: Callable[[list[dict]], dict] = _stack) -> dict:
    """Stack prepared samples into a batch, with ``skipped`` (an int: samples dropped from it).

    ``raws`` (the raw samples, for their url and key) let a sample whose array
    shapes differ from the rest of its batch be named in a one-line
    ValueError, or, when ``skip_bad``, dropped and counted. ``stack`` makes the
    batch's members from the remaining samples (arrays become tensors).
    """
    members = [k for k in items[0] if k != "key"]
    first = [_shape(items[0][k]) for k in members]
    if all([_shape(it[k]) for k in members] == first for it in items):  # the usual case, one pass
        return _batch_of(stack(items), skipped)
    usual = _usual_shapes(items)
    for i in reversed(range(len(items))):
        shapes = {k: _shape(items[i][k]) for k in usual}
        if shapes == usual:
            continue
        message = f"{_where(raws[i])}: array shapes {shapes} differ from the other samples of its batch ({usual})"
        if not skip_bad:
            raise ValueError(message)
        _warn_skipped(message)
        del items[i], raws[i]
        skipped += 1
    return _batch_of(stack(items), skipped)


def _batch_of(stacked: dict, skipped: int) -> dict:
    """The batch: NumPy members as tensors (no copy), and ``skipped``."""
    out = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in stacked.items()}
    out["skipped"] = skipped
    return out


def _warn_skipped(message: str) -> None:
    logging.getLogger(__name__).warning("skipped %s", message)


class ShardStream(IterableDataset):
    """Batches from shards, deterministic in (seed, epoch, rank) whatever the number of loader processes.

    Parameters
    ----------
    shards : ShardSet
    sample_fn : callable(raw sample dict, epoch) -> dict of arrays
        Decodes, augments and prepares one sample (runs in the loader workers; must pickle).
        When it has ``decode(raw, epoch) -> dict`` and ``collate(items) -> dict``
        methods, the stream calls ``decode`` per sample and ``collate`` on each
        batch's samples (after the shape checks) instead of stacking them:
        pretraining augments a whole batch there in one pass.
    batch_size : int
    seed : int
    shuffle_buffer : int
        Samples held by the shuffle buffer (1: no sample shuffle).
    epoch : int or None
        None: an endless stream over epochs 0, 1, 2, ... (pretraining);
        an int: one pass over that epoch (fine-tuning, evaluation).
    start_batch : int
        Batches of this rank's loader to skip (resume); skipped samples are not decoded.
    keys : frozenset of str, optional
        Keep only samples whose ``__key__`` is in it (a label fraction).
    drop_last : bool
        Drop a last partial batch (finite passes).
    rank, world : int, optional
        Defaults: from ``torch.distributed`` when it is initialised, else 0 and 1.
    skip_bad : bool
        A sample that ``sample_fn`` rejects (ValueError) or whose array shapes
        differ from the rest of its batch is dropped from its batch and counted
        in the batch's ``skipped`` member, instead of ending the stream with
        that error. Batches keep their places in the stream, so a resume stays
        exact, unless every sample of a batch was bad: that batch is left out
        and its count passes on to the next batch the same loader process
        hands over (lost at the end of a pass).

    Every batch is a dict of stacked tensors plus ``key`` (a list, when the
    samples have one) and ``skipped`` (an int).
    """

    def __init__(self, shards: ShardSet, sample_fn: Callable[[dict, int], dict], batch_size: int,
                 seed: int = 0, shuffle_buffer: int = 256, epoch: int | None = None, start_batch: int = 0,
                 keys: frozenset | None = None, drop_last: bool = False,
                 rank: int | None = None, world: int | None = None, skip_bad: bool = False):
        super().__init__()
        if batch_size < 1 or shuffle_buffer < 1 or start_batch < 0:
            raise ValueError(f"batch_size and shuffle_buffer must be >= 1 and start_batch >= 0, got "
                             f"{batch_size}, {shuffle_buffer}, {start_batch}")
        if rank is None:
            dist = torch.distributed
            initialised = dist.is_available() and dist.is_initialized()
            rank, world = (dist.get_rank(), dist.get_world_size()) if initialised else (0, 1)
        self.shards, self.sample_fn, self.batch_size = shards, sample_fn, batch_size
        self.seed, self.shuffle_buffer, self.epoch = seed, shuffle_buffer, epoch
        self.start_batch, self.keys, self.drop_last = start_batch, keys, drop_last
        self.rank, self.world, self.skip_bad = rank, world, skip_bad

    def _epoch_samples(self, epoch: int) -> Iterator[dict]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards.urls))
        urls = [self.shards.urls[i] for i in order]
        by_shard = len(urls) >= self.world
        raw = itertools.chain.from_iterable(map(raw_samples, urls[self.rank::self.world] if by_shard else urls))
        if not by_shard:  # samples rank, rank + world, ...
            raw = itertools.islice(raw, self.rank, None, self.world)
        if self.keys is not None:
            keys = self.keys
            raw = (s for s in raw if s["__key__"] in keys)
        return raw

    def _stream(self) -> Iterator[tuple[int, dict]]:
        """(epoch, raw sample) of this rank's stream, shuffled."""
        epochs = itertools.count() if self.epoch is None else (self.epoch,)
        for epoch in epochs:
            n = 0
            for s in shuffled(self._epoch_samples(epoch), self.shuffle_buffer, f"{self.seed}-{epoch}-{self.rank}"):
                n += 1
                yield epoch, s
            if n == 0 and self.epoch is None:
                raise ValueError(f"{self.shards.root}: rank {self.rank} of {self.world} got no samples "
                                 f"({self.shards.total} samples in {len(self.shards.urls)} shards); "
                                 "use fewer processes")

    def raw_batches(self, worker: int, nworkers: int) -> Iterator[list[tuple[int, dict]]]:
        """The raw samples of the batches worker ``worker`` of ``nworkers`` hands over: batches
        ``start_batch + worker``, then every ``nworkers``-th, of the rank's stream. The others
        are read but not decoded."""
        samples, skip = self._stream(), self.start_batch + worker
        while True:
            chunk = list(itertools.islice(samples, self.batch_size))
            if not chunk or (self.drop_last and len(chunk) < self.batch_size):
                return
            if skip:
                skip -= 1
                continue
            skip = nworkers - 1
            yield chunk

    def __iter__(self) -> Iterator[dict]:
        retain_freed_memory()
        info = get_worker_info()
        return self.batches(*((info.id, info.num_workers) if info else (0, 1)))

    def batches(self, worker: int = 0, nworkers: int = 1) -> Iterator[dict]:
        """The batches loader process ``worker`` of ``nworkers`` hands over (the DataLoader's
        round-robin puts them back in order; iterating the stream calls this for its worker)."""
        carried = failing = 0  # samples dropped from batches not yet yielded; bad samples in a row
        batched = hasattr(self.sample_fn, "decode") and hasattr(self.sample_fn, "collate")
        prepare, stack = (self.sample_fn.decode, self.sample_fn.collate) if batched else (self.sample_fn, _stack)
        for chunk in self.raw_batches(worker, nworkers):
            items, raws = [], []
            for epoch, s in chunk:
                try:
                    items.append(prepare(s, epoch))
                    raws.append(s)
                    failing = 0
                except ValueError as exc:
                    if not self.skip_bad:
                        raise
                    _warn_skipped(str(exc))
                    carried, failing = carried + 1, failing + 1
                    # More bad samples in a row than the set holds: none is usable, and an endless
                    # stream would otherwise spin for ever.
                    if failing > self.shards.total:
                        raise ValueError(f"{self.shards.root}: every sample failed to load; the last: {exc}") \
                            from None
            if items:
                batch = _collate(items, raws, self.skip_bad, carried, stack)
                carried = 0
                yield batch


def make_loader(stream: ShardStream, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over a :class:`ShardStream` (which batches itself) with prefetching workers."""
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=4 if workers else None, persistent_workers=False)


def labelled_splits(root: str | Path) -> dict[str, ShardSet]:
    """The train/val/test shard sets of a labelled directory (or URL); train and test are required."""
    root = str(root)
    present = [s for s in SPLITS if find_manifest(join(root, s)) is not None]
    for s in ("train", "test"):
        if s not in present:
            raise FileNotFoundError(f"{join(root, s)} not found ({root} does not exist or has no finished {s} "
                                    "set): a labelled set needs train/, val/ (optional) and test/ shard directories")
    return {s: open_shards(join(root, s)) for s in present}


def split_or_set(root: str | Path, split: str = "test") -> str:
    """``root`` when it is a shard directory (has a manifest), else its ``split`` set if it has one."""
    root = str(root)
    if find_manifest(root) is None and find_manifest(join(root, split)) is not None:
        return join(root, split)
    return root
