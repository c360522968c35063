"""The CUDA paths: bfloat16 autocast, pinned-memory loading, resume, fine-tuning, and DDP with
SyncBatchNorm over two ranks sharing one GPU. Skipped where there is no GPU (CI has none);
``bench/gpu-check.sh`` runs them on a GPU machine."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from tcpc_train.loops.checkpoint import load_checkpoint
from tcpc_train.loops.finetuning import EvaluateConfig, FinetuneConfig, evaluate, finetune
from tcpc_train.models.encoders import build_encoder
from tcpc_train.loops.pretraining import PretrainConfig, pretrain
from tcpc_train.loops.runtime import RuntimeConfig, autocast

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = RuntimeConfig(workers=2, shuffle_buffer=8, device="cuda")
TINY = dict(width=1 / 8, batch_size=8, warmup=1, checkpoint_every=2, runtime=CUDA)


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_autocast_computes_in_bfloat16_on_cuda_only():
    enc = build_encoder("resnet18", 1 / 8).cuda()
    x = torch.randn(4, 1, 16, 16, 16, device="cuda")
    with autocast(torch.device("cuda"), True):
        assert enc(x).dtype == torch.bfloat16
    with autocast(torch.device("cuda"), False):
        assert enc(x).dtype == torch.float32
    with autocast(torch.device("cpu"), True):
        assert enc.cpu()(x.cpu()).dtype == torch.float32


def test_pretraining_on_cuda_resumes_with_the_same_losses(u_shards, tmp_path, killed_after):
    cfg = PretrainConfig(steps=6, **TINY)
    whole = pretrain(u_shards, tmp_path / "whole", cfg)
    assert whole["chance_loss"] - 1.0 < _losses(tmp_path / "whole")[0] < whole["chance_loss"] + 1.0
    with killed_after(lambda row: row["step"] == 5):
        pretrain(u_shards, tmp_path / "killed", cfg)
    assert pretrain(u_shards, tmp_path / "killed", cfg)["start_step"] == 4
    # Same batches and weights; cuDNN's bf16 kernels may sum in another order, hence the tolerance.
    assert _losses(tmp_path / "killed") == pytest.approx(_losses(tmp_path / "whole"), rel=2e-2)
    ck = load_checkpoint(tmp_path / "whole" / "last.pt")  # a GPU checkpoint loads on the CPU
    assert all(t.device.type == "cpu" for t in ck["model"].values())


def test_finetuning_on_cuda_and_evaluating_anywhere(labelled, tmp_path):
    s = finetune(labelled, tmp_path, FinetuneConfig(arch="vgg", epochs=3, width=1 / 16, batch_size=8,
                                                    runtime=dataclasses.replace(CUDA, shuffle_buffer=512)))
    assert s["metrics"]["acc"] >= 0.9 and s["metrics"]["auc"] >= 0.95
    on_gpu = evaluate(tmp_path / "best.pt", labelled, config=EvaluateConfig(runtime=RuntimeConfig(device="cuda")))
    on_cpu = evaluate(tmp_path / "best.pt", labelled, config=EvaluateConfig(runtime=RuntimeConfig(device="cpu")))
    assert on_gpu["acc"] == s["metrics"]["acc"] and on_cpu["acc"] >= 0.9


def _ddp_worker(rank, world, port, shards, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # NCCL refuses two ranks on one device, so the ranks talk over gloo; the CUDA code paths
    # (SyncBatchNorm's statistics gathering, DDP's gradient buckets on the GPU) are the same.
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    converted = []
    convert = torch.nn.SyncBatchNorm.convert_sync_batchnorm
    torch.nn.SyncBatchNorm.convert_sync_batchnorm = lambda *a: converted.append(1) or convert(*a)
    try:
        s = pretrain(shards, out, PretrainConfig(steps=3, **{**TINY, "runtime": dataclasses.replace(CUDA, workers=0)}))
        with open(out.parent / f"rank{rank}.json", "w") as f:
            json.dump({"world": s["world_size"], "final_loss": s["final_loss"], "syncbn": bool(converted)}, f)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_with_syncbatchnorm_on_cuda(u_shards, tmp_path, free_port):
    mp.spawn(_ddp_worker, args=(2, free_port, str(u_shards), tmp_path / "run"), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and all(r["syncbn"] for r in ranks)
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["step"] == 3 and all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())
    # SyncBatchNorm keeps plain BatchNorm's parameter names: the checkpoint fine-tunes like any other.
    assert not any("module." in k for k in ck["model"])
