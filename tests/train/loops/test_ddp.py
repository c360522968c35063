"""Training across ranks, with two gloo processes on the CPU: InfoNCE over every rank's negatives
equals one process on the concatenated batch (loss and gradients), fine-tuning deals the samples
to the ranks and steps in lockstep, and resumed multi-rank runs continue at the same step with the
same losses as uninterrupted ones."""
from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tcpc_train.tasks.contrastive import ContrastivePredictiveCoding, info_nce
from tcpc_train.loops.finetuning import FinetuneConfig, VolumeSample, finetune, rank_keys, read_labels
from tcpc_train.input.loader import open_shards
from tcpc_train.loops.pretraining import PretrainConfig, pretrain
from tcpc_train.loops.runtime import RuntimeConfig, agree, lockstep

WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, labelled, u_shards):
    """Every rank's results of every scenario below, from one pair of processes (starting a pair
    costs more than all the scenarios together): {scenario: [rank 0's result, rank 1's]}."""
    tmp = tmp_path_factory.mktemp("ddp")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_entry, args=(port, str(tmp), str(labelled), str(u_shards)), nprocs=WORLD, join=True)
    results = [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return {name: [r[name] for r in results] for name in results[0]} | {"tmp": tmp}


def _entry(rank, port, tmp, labelled, u_shards):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        result = {f"info_nce{sizes}": _info_nce_ranks(rank, sizes) for sizes in ((4, 4), (3, 5))}
        result.update(ddp_grads=_ddp_grads(rank), lockstep=_lockstep_ranks(rank), agree=_agree_ranks(rank),
                      finetune=_finetune_ranks(rank, tmp, labelled), pretrain=_pretrain_ranks(rank, tmp, u_shards))
        with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
        torch.distributed.barrier()  # neither rank tears gloo down while the other is in a collective
    finally:
        torch.distributed.destroy_process_group()


def _features(n=8, d=16, k=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.randn(n, k, d, generator=g)


def _info_nce_ranks(rank, sizes):
    pred, targets, extra = (t.requires_grad_() for t in _features(sum(sizes)))
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    mine = [t[lo:hi].detach().clone().requires_grad_() for t in (pred, targets, extra)]
    loss = info_nce(mine[0], mine[1], 0.2, mine[2], all_ranks=True)
    loss.backward()
    local = info_nce(mine[0].detach(), mine[1].detach(), 0.2, mine[2].detach(), all_ranks=False)
    return {"loss": loss.item(), "local": local.item(), "grads": [t.grad.tolist() for t in mine]}


@pytest.mark.parametrize("sizes", [(4, 4), (3, 5)])
def test_info_nce_over_all_ranks_equals_one_process_on_the_concatenated_batch(ranks, sizes):
    ranks = ranks[f"info_nce{sizes}"]
    pred, targets, extra = (t.requires_grad_() for t in _features(sum(sizes)))
    whole = info_nce(pred, targets, 0.2, extra)
    whole.backward()
    # Each rank's loss is the mean over its own rows: weighted by the rows, they make the whole's.
    n = sum(sizes)
    assert sum(r["loss"] * s for r, s in zip(ranks, sizes)) / n == pytest.approx(whole.item(), abs=1e-6)
    assert all(r["local"] < r["loss"] for r in ranks)  # more negatives: a harder task at random features
    if sizes[0] == sizes[1]:
        # DDP averages the ranks' gradients: times 1/world, each rank's rows get the whole's gradient,
        # the targets' included (the gather's backward brings every rank's loss to them).
        for r, rank in enumerate(ranks):
            lo, hi = sum(sizes[:r]), sum(sizes[:r + 1])
            for got, full in zip(rank["grads"], (pred.grad, targets.grad, extra.grad)):
                assert torch.allclose(torch.tensor(got) / WORLD, full[lo:hi], atol=1e-6)


class TinyEncoder(nn.Module):
    """No batch norm: the per-rank forward is then exactly the whole batch's, so gradients compare."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 6, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))  # a feature map: averaged over its axes by the trainer


def _cubes():
    return torch.randn(8, 5, 6, 6, 6, generator=torch.Generator().manual_seed(1))


def _model():
    torch.manual_seed(0)
    enc = TinyEncoder()
    enc.out_dim = 6
    return ContrastivePredictiveCoding(enc, temperature=0.5)


def _ddp_grads(rank):
    net = DistributedDataParallel(_model())
    net(_cubes()[4 * rank:4 * rank + 4]).backward()
    return {k: p.grad.tolist() for k, p in net.module.named_parameters()}


def test_ddp_gradients_of_the_contrastive_model_match_one_process(ranks):
    model = _model()
    model(_cubes()).backward()
    for name, p in model.named_parameters():
        for r in ranks["ddp_grads"]:
            assert torch.allclose(torch.tensor(r[name]), p.grad, atol=1e-5), name


TINY_FT = dict(arch="vgg", width=1 / 16, batch_size=4, runtime=RuntimeConfig(workers=0, shuffle_buffer=512))


def _finetune_ranks(rank, tmp, labelled):
    seen: list[tuple[int, str]] = []
    call = VolumeSample.__call__

    def recording(self, raw, epoch):
        if self.augment:  # the training stream (selection and batch-norm passes do not augment)
            seen.append((epoch, raw["__key__"]))
        return call(self, raw, epoch)
    VolumeSample.__call__ = recording
    try:
        whole = finetune(labelled, os.path.join(tmp, "ft-whole"), FinetuneConfig(epochs=2, **TINY_FT))
        part = os.path.join(tmp, "ft-part")
        finetune(labelled, part, FinetuneConfig(epochs=1, **TINY_FT))
        resumed = finetune(labelled, part, FinetuneConfig(epochs=2, **TINY_FT))
    finally:
        VolumeSample.__call__ = call
    return {"whole": whole, "resumed": resumed, "seen": seen}


def _agree_ranks(rank):
    try:
        agree(rank, "a value each rank holds differently")
    except ValueError as exc:
        return {"same": agree(7, "seven"), "error": str(exc)}
    return {"same": agree(7, "seven"), "error": None}


def test_ranks_that_disagree_are_told_so(ranks):
    assert ranks["agree"] == 2 * [{"same": 7, "error": (
        "the ranks disagree on a value each rank holds differently: rank 0: 0, rank 1: 1; every rank must see "
        "the same run directory (a shared file system)")}]


def _losses(run):
    return [(r["step"], r.get("loss")) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]


def test_finetune_under_ddp_deals_the_samples_and_resumes_at_the_same_step(ranks, labelled):
    tmp_path = ranks["tmp"]
    ranks = r0, r1 = ranks["finetune"]
    assert r0["whole"] == r1["whole"] and r0["resumed"] == r1["resumed"]  # every rank returns rank 0's summary
    assert r0["whole"]["world_size"] == 2 and r0["whole"]["metrics"]["n"] == 16
    # The 32 training samples, dealt per epoch: disjoint halves covering all (16 each = 4 full batches).
    for epoch in (0, 1):
        keys = [{k for e, k in r["seen"] if e == epoch} for r in ranks]
        assert not keys[0] & keys[1] and len(keys[0]) == len(keys[1]) == 16
        assert keys[0] | keys[1] == set(read_labels(open_shards(labelled / "train")))
    assert {k for e, k in r0["seen"] if e == 0} != {k for e, k in r0["seen"] if e == 1}  # re-dealt each epoch
    # Rank 0 alone logs: 4 steps per epoch; the resumed run continues at step 4 with the same losses.
    whole, part = _losses(tmp_path / "ft-whole"), _losses(tmp_path / "ft-part")
    assert [s for s, loss in whole if loss is not None] == list(range(1, 9))
    assert [s for s, _ in part] == [s for s, _ in whole]
    assert [x for _, x in part] == pytest.approx([x for _, x in whole], abs=1e-5)
    assert r0["resumed"]["val"] == r0["whole"]["val"]


def test_rank_keys_deal_every_key_once_per_epoch():
    keys = frozenset(f"k{i}" for i in range(11))
    for epoch in range(3):
        shares = [rank_keys(keys, 5, epoch, r, 3) for r in range(3)]
        assert sorted(map(len, shares)) == [3, 4, 4] and frozenset().union(*shares) == keys
        assert sum(map(len, shares)) == len(keys)
    assert rank_keys(keys, 5, 0, 0, 1) is keys
    assert rank_keys(keys, 5, 0, 0, 3) != rank_keys(keys, 5, 1, 0, 3)


def test_lockstep_is_the_batches_in_one_process():
    assert list(lockstep(iter([{"a": 1}, {"a": 2}]))) == [{"a": 1}, {"a": 2}]


def _lockstep_ranks(rank):
    return {"got": [b["i"] for b in lockstep(iter([{"i": i} for i in range(3 + 2 * rank)]))]}


def test_lockstep_ends_every_rank_at_the_first_ranks_end(ranks):
    assert [r["got"] for r in ranks["lockstep"]] == [[0, 1, 2], [0, 1, 2]]


TINY_PRE = dict(width=1 / 16, batch_size=4, warmup=1, checkpoint_every=2,
                runtime=RuntimeConfig(workers=0, shuffle_buffer=8))


def _pretrain_ranks(rank, tmp, shards):
    whole = pretrain(shards, os.path.join(tmp, "whole"), PretrainConfig(steps=4, **TINY_PRE))
    pretrain(shards, os.path.join(tmp, "part"), PretrainConfig(steps=2, **TINY_PRE))
    resumed = pretrain(shards, os.path.join(tmp, "part"), PretrainConfig(steps=4, **TINY_PRE))
    return {"whole": whole, "start": resumed["start_step"]}


def test_pretrain_under_ddp_resumes_at_the_same_step_with_the_same_losses(ranks):
    tmp_path = ranks["tmp"]
    ranks = ranks["pretrain"]
    assert [r["start"] for r in ranks] == [2, 2]
    # Negatives from both ranks: an untrained model's loss is near log(2 ranks x 4), not log(4).
    assert ranks[0]["whole"]["chance_loss"] == pytest.approx(math.log(8))
    whole, part = _losses(tmp_path / "whole"), _losses(tmp_path / "part")
    assert abs(whole[0][1] - math.log(8)) < abs(whole[0][1] - math.log(4))
    assert [s for s, _ in part] == [1, 2, 3, 4] and [x for _, x in part] == pytest.approx([x for _, x in whole],
                                                                                          abs=1e-5)


def _gpu_entry(rank, port, tmp, labelled, u_shards):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # NCCL refuses two ranks on one device, so the ranks talk over gloo; the CUDA code paths
    # (SyncBatchNorm in training and in the lockstep batch-norm recalibration, the gather of
    # CUDA features) are the same.
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    converted = []
    convert = torch.nn.SyncBatchNorm.convert_sync_batchnorm
    torch.nn.SyncBatchNorm.convert_sync_batchnorm = lambda *a: converted.append(1) or convert(*a)
    cuda = RuntimeConfig(workers=0, device="cuda", shuffle_buffer=512)
    try:
        ft = finetune(labelled, os.path.join(tmp, "ft"), FinetuneConfig(arch="vgg", width=1 / 16, batch_size=4,
                                                                         epochs=2, runtime=cuda))
        pre = pretrain(u_shards, os.path.join(tmp, "pre"), PretrainConfig(steps=3, **{**TINY_PRE, "runtime": cuda}))
        with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
            json.dump({"ft": ft, "pre": pre, "syncbn": len(converted)}, f)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_finetune_and_pretrain_ranks_sharing_one_gpu(labelled, u_shards, tmp_path, free_port):
    mp.spawn(_gpu_entry, args=(free_port, str(tmp_path), str(labelled), str(u_shards)), nprocs=WORLD, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["ft"] == r1["ft"] and r0["syncbn"] == r1["syncbn"] == 2  # fine-tuning's and pretraining's models
    assert r0["ft"]["metrics"]["n"] == 16 and math.isfinite(r0["ft"]["metrics"]["acc"])
    assert r0["pre"]["chance_loss"] == pytest.approx(math.log(8)) and math.isfinite(r0["pre"]["final_loss"])
