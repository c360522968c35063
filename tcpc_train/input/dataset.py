"""``ShardDataset``: tcpc shards as a PyTorch dataset for your own training loop (MONAI, TorchIO, plain torch).

The samples are those :mod:`tcpc_train.input.loader` streams to tcpc's own loops, in
the same order: a pure function of (seed, epoch, rank), split over ranks
without overlap, the same with any number of DataLoader workers, resumable
at a batch. Each
sample is decoded to a dict of tensors, passed through your ``transform`` and
batched by your ``DataLoader``::

    from torch.utils.data import DataLoader
    from tcpc_train import ShardDataset

    ds = ShardDataset("labelled/train", transform=my_transform, batch_size=8)
    for epoch in range(10):
        ds.set_epoch(epoch)
        for batch in DataLoader(ds, batch_size=8, num_workers=2):
            ...  # batch["image"] (8, 1, S, S, S), batch["label"] (8,)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from tcpc_train.input.loader import ShardStream, decode_labelled_sample, decode_path_sample, open_shards


def decode_sample(raw: dict) -> dict:
    """A raw shard sample as tensors, by its layout.

    Labelled shards: ``{"image": (1, S, S, S) float32, "label": int, "key": str}``
    (MONAI's key names, channel first). Pretraining shards: ``{"cubes": (P+1,
    c, c, c) float32, "path": (P+1, 3) int64 grid positions, "key": str}``.

    Raises
    ------
    ValueError
        The sample has neither layout, or a member is not a plain array (one line naming it).
    """
    if "volume.npy" in raw:
        s = decode_labelled_sample(raw)
        return {"image": torch.from_numpy(s["volume"][None]), "label": s["label"], "key": s["key"]}
    s = decode_path_sample(raw)
    return {"cubes": torch.from_numpy(s["cubes"].astype("float32")), "path": torch.from_numpy(s["path"]),
            "key": s["key"]}


class ShardDataset(IterableDataset):
    """The samples of a tcpc shard directory, for any DataLoader loop.

    Parameters
    ----------
    root : str or path
        A shard directory with ``manifest.json`` (a labelled split such as
        ``labelled/train``, or pretraining shards), or an fsspec URL of one.
    transform : callable, optional
        ``transform(sample) -> item``, applied to every decoded sample
        (:func:`decode_sample`) in the loader workers: a MONAI dictionary
        transform (``keys="image"``), a function around a TorchIO transform,
        anything. With workers started by ``spawn`` it must pickle.
    batch_size : int
        The ``batch_size`` of the DataLoader that reads this dataset. Worker
        ``w`` of ``W`` hands over batches ``w``, ``w + W``, ... of the rank's
        stream (the DataLoader's round-robin), so it must know where batches
        begin.
    epoch : int or None
        One pass over this epoch's order (change it with :meth:`set_epoch`),
        or None: an endless stream over epochs 0, 1, 2, ...
    seed, shuffle_buffer : int
        The order: shard order seeded by (seed, epoch), then a seeded buffer of
        ``shuffle_buffer`` samples (1: no sample shuffle).
    start_batch : int
        Batches of this rank's DataLoader already consumed: they are skipped
        without decoding, and the next batches equal those an uninterrupted
        loop would have seen.
    keys : set of str, optional
        Only these sample keys (e.g. a label fraction).
    rank, world : int, optional
        This process's share; defaults from ``torch.distributed`` when it is
        initialised, else 0 and 1. Ranks read disjoint samples; the workers of
        one rank each read its whole stream and decode their own batches.

    Raises
    ------
    FileNotFoundError, ValueError
        ``root`` has no (valid) manifest, or it lists a missing shard (:func:`tcpc_train.input.loader.open_shards`);
        ValueError also for a rank without a world (or the reverse) or out of it.
    """

    def __init__(self, root: str | Path, transform: Callable[[dict], object] | None = None, *, batch_size: int = 1,
                 epoch: int | None = 0, seed: int = 0, shuffle_buffer: int = 256, start_batch: int = 0,
                 keys: frozenset | set | None = None, rank: int | None = None, world: int | None = None):
        super().__init__()
        if (rank is None) != (world is None) or (world is not None and not 0 <= rank < world):
            raise ValueError(f"give both rank and world (0 <= rank < world) or neither, got rank {rank}, world {world}")
        self.stream = ShardStream(open_shards(root), decode_sample, batch_size, seed=seed,
                                  shuffle_buffer=shuffle_buffer, epoch=epoch, start_batch=start_batch,
                                  keys=None if keys is None else frozenset(keys), rank=rank, world=world)
        self.transform = transform

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch``'s order from the next iteration on (as ``DistributedSampler.set_epoch``).

        Workers get a copy of the dataset when an iteration starts, so this
        reaches them unless the DataLoader keeps ``persistent_workers``.
        """
        self.stream.epoch = epoch

    def __iter__(self) -> Iterator[object]:
        info = get_worker_info()
        for chunk in self.stream.raw_batches(*((info.id, info.num_workers) if info else (0, 1))):
            for _, raw in chunk:
                sample = decode_sample(raw)
                yield sample if self.transform is None else self.transform(sample)
