"""Streaming loader: manifest checks, layouts, deterministic order, rank/worker splits, resume skips,
and augmentation that keeps a path's cubes and positions consistent."""
from __future__ import annotations

import io
import itertools
import json
import platform
import resource

import numpy as np
import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_train.input.loader import (ShardStream, augment_path, decode_path_sample, first_sample, labelled_splits,
                               make_loader, open_shards, raw_samples, sample_rng, shuffled)


def _keys(stream_or_loader, n=None):
    out = []
    for i, b in enumerate(stream_or_loader):
        if n is not None and i == n:
            break
        out.append(tuple(b["key"]))
    return out


def _decode(raw, epoch):
    s = decode_path_sample(raw)
    return {"key": s["key"], "cubes": s["cubes"]}


def test_open_shards_reads_manifest(u_shards):
    data = open_shards(u_shards)
    assert data.total == 24 and len(data.urls) == 6 and data.counts == (4,) * 6
    assert data.config["kind"] == "u" and len(data.digest) == 64


def test_open_shards_bad_input(tmp_path, u_shards, shard_manifest):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_shards(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="manifest.json not found"):
        open_shards(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        open_shards(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "shards": [], "total": 0}))
    with pytest.raises(ValueError, match="not a tcpc shard manifest"):  # the old synthetic shape
        open_shards(tmp_path)
    shard_manifest(tmp_path, [])
    with pytest.raises(ValueError, match="empty manifest"):
        open_shards(tmp_path)
    shard_manifest(tmp_path, [("x-000000.tar", 3)])
    with pytest.raises(FileNotFoundError, match="lists shard x-000000.tar"):
        open_shards(tmp_path)
    with pytest.raises(FileNotFoundError, match="train not found"):
        labelled_splits(u_shards.parent / "u")


def _one_sample_shards(tmp_path, sample, shard_manifest):
    with wds.TarWriter(str(tmp_path / "bad-000000.tar")) as tw:
        tw.write({"__key__": "s0", **sample})
    shard_manifest(tmp_path, [("bad-000000.tar", 1)])
    return open_shards(tmp_path)


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("sample,match", [
    ({"volume.npy": _npy(np.zeros((4, 4, 4), np.float16)), "cls": b"1"}, "no 'cubes.npy' member"),
    ({"cubes.npy": _npy(np.zeros((3, 4, 4, 4), np.float16)), "path.npy": _npy(np.zeros((2, 3), np.int16))},
     r"path.npy must be \(3, 3\)"),
    ({"cubes.npy": _npy(np.zeros((3, 4, 5, 4), np.float16)), "path.npy": _npy(np.zeros((3, 3), np.int16))},
     r"must be \(P\+1, c, c, c\)"),
    ({"cubes.npy": b"not numpy", "path.npy": _npy(np.zeros((3, 3), np.int16))}, "not a plain .npy"),
    ({"cubes.npy": _npy(np.array([{"a": 1}] * 3, dtype=object)), "path.npy": _npy(np.zeros((3, 3)))},
     "not a plain .npy"),  # pickled object arrays are refused
])
def test_bad_sample_layouts_are_named(tmp_path, sample, match, shard_manifest):
    data = _one_sample_shards(tmp_path, sample, shard_manifest)
    with pytest.raises(ValueError, match=match) as exc:
        next(iter(ShardStream(data, _decode, 1, rank=0, world=1)))
    assert "bad-000000.tar: sample s0" in str(exc.value)


def test_order_is_a_pure_function_of_seed_and_epoch(u_shards):
    data = open_shards(u_shards)
    a = _keys(ShardStream(data, _decode, 4, seed=3, shuffle_buffer=8, rank=0, world=1), 12)
    b = _keys(ShardStream(data, _decode, 4, seed=3, shuffle_buffer=8, rank=0, world=1), 12)
    c = _keys(ShardStream(data, _decode, 4, seed=4, shuffle_buffer=8, rank=0, world=1), 12)
    assert a == b and a != c
    first_epoch = [k for batch in a[:6] for k in batch]
    assert sorted(first_epoch) == sorted(f"synthetic{i:05d}_c0" for i in range(24))  # each sample once per epoch
    assert a[:6] != a[6:12]  # the next epoch is shuffled differently


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 200), size=st.integers(1, 80), seed=st.text(max_size=12))
def test_shuffle_buffer_keeps_webdatasets_order(n, size, seed):
    """The loader's own shuffle buffer yields WebDataset's order, so orders (and resumes) carry over."""
    assert list(shuffled(iter(range(n)), size, seed)) == list(wds.shuffle(size, size, seed=seed)(iter(range(n))))


@pytest.mark.parametrize("nshards_enough", [True, False])
def test_ranks_get_disjoint_parts_covering_the_epoch(u_shards, nshards_enough):
    data = open_shards(u_shards)
    world = 3 if nshards_enough else 8  # 6 shards: split by shard, or stride samples when streams outnumber shards
    seen = []
    for rank in range(world):
        stream = ShardStream(data, _decode, 1, seed=0, shuffle_buffer=4, epoch=0, rank=rank, world=world)
        seen.append({k for b in _keys(stream) for k in b})
    assert sum(len(s) for s in seen) == 24 and len(set().union(*seen)) == 24


def test_any_worker_count_gives_the_same_batches(u_shards):
    """0, 1, 2 or 3 loader processes hand over the same batches in the same order, on a finite pass
    (ending in a partial batch, whatever worker holds it) and on an endless stream."""
    data = open_shards(u_shards)

    def keys(workers, epoch, n=None):
        stream = ShardStream(data, _decode, 5, seed=2, shuffle_buffer=6, epoch=epoch, rank=0, world=1)
        return _keys(make_loader(stream, workers), n)
    finite = keys(0, 1)
    assert [len(b) for b in finite] == [5] * 4 + [4]
    endless = keys(0, None, 13)
    for workers in (1, 2, 3):
        assert keys(workers, 1) == finite and keys(workers, None, 13) == endless


@settings(max_examples=25, deadline=None)
@given(nworkers=st.integers(1, 5), start=st.integers(0, 7), batch=st.integers(1, 7))
def test_workers_share_the_batches_without_overlap(u_shards, nworkers, start, batch):
    """Worker w of W hands over batches start + w, start + w + W, ... of the one stream: taken
    round-robin, as the DataLoader does, they are the stream's batches from ``start`` on."""
    data = open_shards(u_shards)

    def stream(first):
        return ShardStream(data, _decode, batch, seed=1, shuffle_buffer=4, epoch=0, start_batch=first,
                           rank=0, world=1)
    whole = [b["key"] for b in stream(0).batches()]
    parts = [[b["key"] for b in stream(start).batches(w, nworkers)] for w in range(nworkers)]
    assert [b for group in itertools.zip_longest(*parts) for b in group if b is not None] == whole[start:]


@pytest.mark.parametrize("workers,resumed_with", [(0, 0), (2, 2), (2, 0), (0, 3)])
def test_resume_skip_reproduces_the_stream(u_shards, workers, resumed_with):
    """A resume at batch 5 continues the uninterrupted stream, also with another worker count."""
    data = open_shards(u_shards)

    def loader(start, w):
        stream = ShardStream(data, _decode, 3, seed=5, shuffle_buffer=6, start_batch=start, rank=0, world=1)
        return make_loader(stream, w)
    full = _keys(loader(0, workers), 14)
    assert _keys(loader(5, resumed_with), 9) == full[5:14]


def test_key_filter_and_finite_epoch(labelled):
    data = open_shards(labelled / "train")

    def dec(raw, epoch):
        return {"key": raw["__key__"], "y": np.int64(0)}
    keys = frozenset(["train00001", "train00007", "train00030"])
    got = _keys(ShardStream(data, dec, 2, epoch=1, keys=keys, rank=0, world=1))
    assert sorted(k for b in got for k in b) == sorted(keys) and [len(b) for b in got] == [2, 1]
    got = _keys(ShardStream(data, dec, 2, epoch=1, keys=keys, drop_last=True, rank=0, world=1))
    assert [len(b) for b in got] == [2]


def _assemble(cubes, path, s):
    """Sub-volume covered by cubes on a grid of stride s (positions relative to their min corner)."""
    q = path - path.min(0)
    c = cubes.shape[1]
    vol = np.full(tuple(q.max(0) * s + c), np.nan)
    for cube, (z, y, x) in zip(cubes, q):
        vol[z * s:z * s + c, y * s:y * s + c, x * s:x * s + c] = cube
    return vol


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), extent=st.tuples(*[st.integers(1, 3)] * 3), n=st.integers(2, 8))
def test_augmentation_is_consistent_over_the_path(box_paths, seed, extent, n):
    """Cubes cut from a volume, augmented together, tile the same transform of that volume."""
    lo, path, vol, cubes = box_paths.cut_path(np.random.default_rng(seed), extent, n, dtype=np.float64)
    aug_cubes, aug_path = augment_path(cubes, path, np.random.default_rng(seed + 1))
    assert aug_path.min(0).tolist() == lo.tolist()  # anchored at the same corner
    got = _assemble(aug_cubes, aug_path, box_paths.S)
    # Recover the transform by trying the 48 axis-aligned symmetries of the box on the volume.
    assert any(cand.shape == got.shape and np.array_equal(np.nan_to_num(got, nan=0) * ~np.isnan(got),
                                                          cand * ~np.isnan(got)) for cand in box_paths.symmetries(vol))
    # Every cube lies where its position says, in the same transformed volume (checked above), and
    # the sample's generator is a pure function of (seed, epoch, key).
    assert sample_rng(1, 2, "k").random() == sample_rng(1, 2, "k").random()


def test_shards_stream_from_an_fsspec_url(u_shards, labelled, tmp_path):
    """The same batches from a memory:// copy of the shards as from the local directory."""
    import fsspec

    from tcpc_train.loops.finetuning import FinetuneConfig, evaluate, finetune
    from tcpc_train.input.loader import split_or_set
    from tcpc_train.loops.runtime import RuntimeConfig

    mem = fsspec.filesystem("memory")
    for src in (u_shards, labelled):
        for f in sorted(src.rglob("*")):
            if f.is_file():
                mem.pipe(f"/tcpc-url/{src.name}/{f.relative_to(src).as_posix()}", f.read_bytes())
    try:
        local, remote = open_shards(u_shards), open_shards("memory://tcpc-url/u")
        assert remote.total == local.total and remote.digest == local.digest
        assert remote.urls[0] == "memory://tcpc-url/u/synthetic-000000.tar"
        batches = [list(ShardStream(d, _decode, 4, epoch=0, rank=0, world=1)) for d in (local, remote)]
        assert [b["key"] for b in batches[0]] == [b["key"] for b in batches[1]]
        assert all(np.array_equal(a["cubes"], b["cubes"]) for a, b in zip(*batches))
        s = finetune("memory://tcpc-url/labelled", tmp_path / "ft",
                     FinetuneConfig(arch="vgg", epochs=1, width=1 / 16, batch_size=8,
                                    runtime=RuntimeConfig(workers=0, shuffle_buffer=512)))
        assert split_or_set("memory://tcpc-url/labelled") == "memory://tcpc-url/labelled/test"
        assert evaluate(tmp_path / "ft" / "best.pt", "memory://tcpc-url/labelled")["acc"] == s["metrics"]["acc"]
        mem.rm("/tcpc-url/u/synthetic-000001.tar")
        with pytest.raises(FileNotFoundError, match="memory://tcpc-url/u/synthetic-000001.tar is missing"):
            open_shards("memory://tcpc-url/u")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            open_shards("memory://tcpc-url/nothing")
    finally:
        mem.rm("/tcpc-url", recursive=True)


def test_pretraining_batches_are_augmented_alike_with_any_worker_count(u_shards):
    """Each sample's augmented cubes depend on (seed, epoch, key) alone: the same in whatever batch
    it lands (batches of 4 and of 5), every cube changed by its own intensity draw."""
    from tcpc_train.loops.pretraining import PretrainConfig, TaskSample
    data = open_shards(u_shards)
    fn = TaskSample(PretrainConfig(batch_size=4))

    def by_key(workers, batch_size):
        stream = ShardStream(data, fn, batch_size, seed=0, shuffle_buffer=8, epoch=0, rank=0, world=1)
        return {k: c for b in make_loader(stream, workers) for k, c in zip(b["key"], b["cubes"].numpy())}
    a, b = by_key(0, 4), by_key(2, 5)
    assert len(a) == 24 and a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    raw = {r["__key__"]: decode_path_sample(r)["cubes"] for url in data.urls for r in raw_samples(url)}
    k = next(iter(a))
    assert not np.array_equal(a[k], raw[k]) and fn(first_sample(data), 0)["cubes"].shape == raw[k].shape


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc settings are glibc's")
def test_loader_processes_reuse_batch_memory_without_page_faults():
    """A fresh 8 MiB batch array per batch costs no page faults once the loader's malloc settings
    are in place (without them, glibc maps each one anew: ~100 faults per array here, ~1,000 for ten)."""
    from tcpc_data.store.malloc import retain_freed_memory
    assert retain_freed_memory()
    for _ in range(2):
        np.ones(8 << 20, np.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        np.ones(8 << 20, np.uint8)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 200


def test_loader_workers_by_device(monkeypatch):
    """None picks 0 processes on the CPU and on a GPU up to 4, one core of the rank's share kept for
    training; a number is taken as given; a negative one is refused."""
    import torch

    from tcpc_train.loops.runtime import RuntimeConfig, loader_workers
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert loader_workers(None, cpu) == 0 and loader_workers(3, cpu) == 3 and loader_workers(0, gpu) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(None, gpu) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 2 cores per rank
    assert loader_workers(None, gpu) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert loader_workers(None, gpu) == 1
    with pytest.raises(ValueError, match="workers must be >= 0"):
        RuntimeConfig(workers=-1).validate()
