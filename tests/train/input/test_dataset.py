"""ShardDataset in a user's own loop: decoded samples through a transform, DataLoader workers that
split the samples without overlap or gap, ranks likewise, and an exact resume at a batch."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, get_worker_info

from tcpc_train import ShardDataset
from tcpc_train.loops.finetuning import read_labels
from tcpc_train.input.loader import decode_labelled_sample, first_sample, open_shards


class Negate:
    """A user's transform: negates the image and notes which loader worker ran it."""

    def __call__(self, s):
        info = get_worker_info()
        return {**s, "image": -s["image"], "worker": -1 if info is None else info.id}


def _keys(batches):
    return [k for b in batches for k in b["key"]]


def test_a_plain_loop_with_a_transform_trains_on_every_sample(labelled):
    train = labelled / "train"
    ds = ShardDataset(train, transform=Negate(), batch_size=8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12 ** 3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen, losses = [], []
    for epoch in range(2):
        ds.set_epoch(epoch)
        keys = []
        for batch in DataLoader(ds, batch_size=8):
            assert batch["image"].shape == (8, 1, 12, 12, 12) and batch["image"].dtype == torch.float32
            loss = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            keys += batch["key"]
        seen.append(keys)
    labels = read_labels(open_shards(train))
    assert sorted(seen[0]) == sorted(seen[1]) == sorted(labels) and seen[0] != seen[1]  # reshuffled per epoch
    assert np.isfinite(losses).all()
    # The transform ran on the decoded sample: the image is the stored volume, negated.
    raw = first_sample(open_shards(train))
    one = next(s for s in ShardDataset(train, transform=Negate(), shuffle_buffer=1) if s["key"] == raw["__key__"])
    stored = decode_labelled_sample(raw)
    assert torch.equal(one["image"][0], -torch.from_numpy(stored["volume"])) and one["label"] == stored["label"]


def test_two_workers_read_disjoint_halves_that_cover_the_set(labelled):
    train = labelled / "train"
    batches = list(DataLoader(ShardDataset(train, transform=Negate(), batch_size=4), batch_size=4, num_workers=2))
    keys = _keys(batches)
    assert sorted(keys) == sorted(read_labels(open_shards(train)))  # each sample once
    by_worker = [{k for b in batches for k, w in zip(b["key"], b["worker"].tolist()) if w == i} for i in (0, 1)]
    assert len(by_worker[0]) == len(by_worker[1]) == 16 and not by_worker[0] & by_worker[1]


def test_ranks_read_disjoint_shares(labelled):
    train = labelled / "train"
    shares = [{s["key"] for s in ShardDataset(train, rank=r, world=2)} for r in (0, 1)]
    assert not shares[0] & shares[1] and shares[0] | shares[1] == set(read_labels(open_shards(train)))


@pytest.mark.parametrize("epoch", [0, None])
def test_resume_at_a_batch_gives_the_batches_an_uninterrupted_loop_would(u_shards, epoch):
    def batches(start):
        ds = ShardDataset(u_shards, batch_size=4, epoch=epoch, start_batch=start)
        return _keys(itertools.islice(DataLoader(ds, batch_size=4, num_workers=2), 5 - start))

    whole = batches(0)
    assert len(whole) == 20 and len(set(whole)) == 20
    assert batches(3) == whole[12:] and batches(2) == whole[8:]


def test_pretraining_samples_decode_to_cubes_and_paths(u_shards):
    s = next(iter(ShardDataset(u_shards)))
    assert s["cubes"].dtype == torch.float32 and s["cubes"].shape[1:] == (16, 16, 16)
    assert s["path"].shape == (s["cubes"].shape[0], 3) and s["path"].dtype == torch.int64


def test_a_missing_directory_or_a_bad_rank_fails_clearly(tmp_path, u_shards):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ShardDataset(tmp_path / "nowhere")
    for rank, world in ((1, None), (None, 2), (2, 2)):
        with pytest.raises(ValueError, match=rf"give both rank and world .* got rank {rank}, world {world}"):
            ShardDataset(u_shards, rank=rank, world=world)


def test_monai_dictionary_transforms_in_the_loop(labelled):
    transforms = pytest.importorskip("monai.transforms", reason="monai not installed (pip install 'tcpc[monai]')")
    t = transforms.Compose([transforms.RandFlipd(keys="image", prob=1.0, spatial_axis=0),
                            transforms.ScaleIntensityd(keys="image", minv=0.0, maxv=1.0)])
    batch = next(iter(DataLoader(ShardDataset(labelled / "train", transform=t, batch_size=4), batch_size=4)))
    img = batch["image"]
    assert img.shape == (4, 1, 12, 12, 12)
    assert torch.allclose(img.amin((1, 2, 3, 4)), torch.zeros(4)) and torch.allclose(img.amax((1, 2, 3, 4)),
                                                                                       torch.ones(4))
