"""Self-supervised pretraining loop: TCPC, 3D CPC, Rubik's cube and 3D Jigsaw on streamed shards.

One loop for all tasks (nanoGPT style): the config is data saved in every
checkpoint, the learning rate is a pure function of the step, the data order
a pure function of (seed, step) (:mod:`tcpc_train.loader`), so a killed run
resumed from ``RUN/last.pt`` continues at the same step with the same batches.
Tasks and the path kinds their shards must hold:

- ``tcpc``: U paths (support set not on a line); ``cpc``: straight paths (3D
  CPC; the same code). Loss: InfoNCE (:mod:`tcpc_train.contrastive`).
- ``rubik``, ``jigsaw``: 2×2×2 blocks (:mod:`tcpc_train.proxy`).

Outputs in ``out``: ``config.json``, ``log.jsonl`` (step, loss, lr,
samples/s), ``last.pt``, ``loss.png``, ``summary.json``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from tcpc_train.checkpoint import load_checkpoint, save_checkpoint
from tcpc_train.loader import (ShardStream, augment_intensity, augment_path, decode_path_sample, first_sample,
                               make_loader, open_shards, sample_rng)
from tcpc_train.models import ARCHS, build_encoder
from tcpc_train.plots import plot_curves
from tcpc_train.proxy import BlockPuzzle, permutation_set, shuffle_block
from tcpc_train.runtime import StepLog, autocast, init_distributed, progress_bar, resolve_device
from tcpc_train.contrastive import ContrastivePredictiveCoding, chance_loss
from tcpc_train.weights import load_encoder_weights

TASKS = ("tcpc", "cpc", "rubik", "jigsaw")
# Config fields a resumed run may change: they alter neither the model nor the data order.
_RESUMABLE_CHANGES = {"steps", "device", "checkpoint_every"}


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Pretraining settings (saved with every checkpoint).

    task : tcpc | cpc | rubik | jigsaw
    arch, width : encoder (:func:`tcpc_train.models.build_encoder`)
    steps, batch_size : optimiser steps; samples per step and process
    lr, weight_decay, warmup : AdamW; linear warm-up steps, then cosine decay to lr/10
    temperature, own_negatives : InfoNCE (tcpc, cpc)
    n_permutations : permutation classes (rubik, jigsaw)
    augment : same random flips / 90° rotations for every cube of a sample
    cube_intensity : per-cube intensity augmentation strength (0: off)
    shuffle_buffer, workers, seed : loader (data order is a pure function of seed and step)
    device, amp : ``auto``/``cpu``/``cuda[:N]``; bfloat16 autocast on CUDA
    checkpoint_every : steps between checkpoints (and one at the end)
    init : encoder weights to start from (cascade: external → TCPC), or None
    """

    task: str = "tcpc"
    arch: str = "resnet18"
    width: float = 1.0
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    temperature: float = 0.1
    own_negatives: bool = False
    n_permutations: int = 100
    augment: bool = True
    shuffle_buffer: int = 256
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    checkpoint_every: int = 100
    init: str | None = None
    cube_intensity: float = field(default=0.1, metadata={
        "help": "Per-cube intensity augmentation v: each cube gets its own contrast factor in [1-v, 1+v], "
                "offset in [-v, v] and noise of sd up to v/5 ([-1, 1] intensity units); 0: none (the paper)."})

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        for name in ("steps", "batch_size", "checkpoint_every", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2 and self.task in ("tcpc", "cpc"):
            raise ValueError("InfoNCE needs in-batch negatives: batch_size must be >= 2")
        if not self.cube_intensity >= 0:
            raise ValueError(f"cube_intensity must be >= 0, got {self.cube_intensity}")
        if self.workers < 0 or self.warmup < 0 or not self.lr > 0 or not self.temperature > 0:
            raise ValueError("workers and warmup must be >= 0, lr and temperature > 0")


def learning_rate(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay from lr to lr/10 at ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, t))))


def _path_rank(path: np.ndarray) -> int:
    """1: a straight path; 2: a planar path such as a U; 3: a solid arrangement such as a block.

    The rank of the integer offsets from the first position, read exactly off
    their Gram matrix G (positive semi-definite): rank 3 iff det G > 0, rank
    >= 2 iff the sum of G's principal 2×2 minors is > 0. Python integers, no
    SVD: this runs for every sample in the loader.
    """
    d = path.astype(np.int64) - path[0]
    (a, b, c), (_, e, f), (_, _, i) = (d.T @ d).tolist()
    if a * (e * i - f * f) - b * (b * i - f * c) + c * (b * f - e * c):
        return 3
    if a * e - b * b + a * i - c * c + e * i - f * f:
        return 2
    return 1 if a + e + i else 0


class TaskSample:
    """Turns a raw shard sample into the task's input (runs in loader workers)."""

    def __init__(self, cfg: PretrainConfig):
        self.task, self.augment, self.seed, self.intensity = cfg.task, cfg.augment, cfg.seed, cfg.cube_intensity
        self.perms = permutation_set(cfg.n_permutations) if cfg.task in ("rubik", "jigsaw") else None

    def __call__(self, raw: dict, epoch: int) -> dict:
        s = decode_path_sample(raw)
        rng = sample_rng(self.seed, epoch, s["key"])
        cubes, path = augment_path(s["cubes"], s["path"], rng) if self.augment else (s["cubes"], s["path"])
        cubes = augment_intensity(cubes, rng, self.intensity)
        where = f"{raw.get('__url__', '?')}: sample {s['key']}"
        if self.perms is not None:
            try:
                shuffled, label, rot = shuffle_block(cubes, path, self.perms, self.task == "rubik", rng)
            except ValueError as exc:
                raise ValueError(f"{where}: task {self.task} needs 'block' shards: {exc}") from None
            return {"cubes": shuffled, "label": np.int64(label), "rot": rot}
        rank = _path_rank(s["path"])
        if self.task == "cpc" and rank > 1:
            raise ValueError(f"{where}: task cpc needs 'straight' paths, this path is not on a line")
        if self.task == "tcpc" and rank != 2:
            raise ValueError(f"{where}: task tcpc needs 'u' paths (support around the target in one plane), "
                             f"this path is {'straight (use --task cpc)' if rank < 2 else 'not planar'}")
        return {"cubes": cubes}


def build_task_model(cfg: PretrainConfig) -> torch.nn.Module:
    """The encoder inside the task's model (``.encoder``); the loss is the model's output."""
    encoder = build_encoder(cfg.arch, cfg.width)
    if cfg.task in ("tcpc", "cpc"):
        return ContrastivePredictiveCoding(encoder, cfg.temperature, cfg.own_negatives)
    return BlockPuzzle(encoder, cfg.n_permutations, rotate=cfg.task == "rubik")


def train_steps(net: torch.nn.Module, opt: torch.optim.Optimizer, batches: Iterator[dict], cfg: PretrainConfig,
                device: torch.device, start: int = 0) -> Iterator[tuple[int, float, float, float]]:
    """Optimiser steps ``start`` .. ``cfg.steps`` on loader batches; yields (step done, loss, lr, seconds).

    The next batch is taken from the loader and copied to the device right
    after a step's kernels are queued and before ``loss.item()`` waits for
    them, so on a GPU the loader's hand-over and the copy overlap the compute
    instead of leaving the GPU idle between steps.
    """
    def fetch() -> dict:
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items() if k != "key"}
        batch["cubes"] = batch["cubes"].float()
        return batch

    if start >= cfg.steps:
        return
    batch = fetch()
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        lr = learning_rate(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast(device, cfg.amp):
            loss = net(batch["cubes"]) if cfg.task in ("tcpc", "cpc") else \
                net(batch["cubes"], batch["label"], batch["rot"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step + 1 < cfg.steps:
            batch = fetch()
        yield step + 1, loss.item(), lr, time.perf_counter() - t0


def _check_resume(ck: dict, cfg: PretrainConfig, data_digest: str, path: Path) -> None:
    old = ck.get("config", {})
    diff = sorted(k for k, v in dataclasses.asdict(cfg).items()
                  if k not in _RESUMABLE_CHANGES and old.get(k) != v)
    if diff:
        was = ", ".join(f"{k}: {old.get(k)!r}" for k in diff)
        raise ValueError(f"{path} was trained with a different config ({was});"
                         " resume with the same settings or choose a new output directory")
    if ck.get("data_digest") != data_digest:
        raise ValueError(f"{path} was trained on other shards (manifest digest differs); "
                         "choose a new output directory")


def pretrain(shards: str | Path, out: str | Path, config: PretrainConfig = PretrainConfig(),
             resume: bool = True, progress: bool = False) -> dict:
    """Pretrain an encoder on a shard directory; resumes from ``out/last.pt`` when it is there.

    Parameters
    ----------
    shards : path
        Directory with ``manifest.json`` and pretraining tars.
    out : path
        Run directory (created).
    config : PretrainConfig
    resume : bool
        Continue from ``out/last.pt`` (same config and data) instead of starting over.
    progress : bool
        Show a progress bar (rank 0).

    Returns
    -------
    dict summary: task, steps, start_step, final_loss (mean of the last 10
    steps), chance_loss (InfoNCE tasks), samples_per_s and step_time_s
    (medians), checkpoint, log, world_size, init_report.
    """
    config.validate()
    data = open_shards(shards)
    sample_fn = TaskSample(config)
    sample_fn(first_sample(data), 0)  # wrong layout or path kind: a clear error before workers start
    out = Path(out)
    device = resolve_device(config.device)
    rank, world = init_distributed(device)
    main_rank = rank == 0
    torch.manual_seed(config.seed)
    model = build_task_model(config)
    init_report = load_encoder_weights(model.encoder, config.init, {"arch": config.arch, "width": config.width}) \
        if config.init else None
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    ckpt_path = out / "last.pt"
    start = 0
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, map_location=device)
        _check_resume(ck, config, data.digest, ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start = int(ck["step"])
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    log = StepLog(out / "log.jsonl", main_rank, keep_until_step=start)
    if world > 1 and device.type == "cuda":  # few samples per GPU: batch statistics over all ranks
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = DistributedDataParallel(model) if world > 1 else model

    def state(step: int) -> dict:
        return {"kind": "pretrain", "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "config": dataclasses.asdict(config), "data_digest": data.digest}

    stream = ShardStream(data, sample_fn, config.batch_size, seed=config.seed,
                         shuffle_buffer=config.shuffle_buffer, start_batch=start)
    batches = iter(make_loader(stream, config.workers, pin_memory=device.type == "cuda"))
    net.train()
    times, losses = [], []
    with progress_bar(progress and main_rank, f"pretrain {config.task}") as bar:
        task = bar.add_task("", total=config.steps, completed=start, status="")
        for step, value, lr, dt in train_steps(net, opt, batches, config, device, start):
            times.append(dt)
            losses.append(value)
            log.write({"step": step, "loss": value, "lr": lr,
                       "samples_per_s": config.batch_size * world / dt, "time_s": dt})
            bar.update(task, advance=1, status=f"loss {value:.4f}")
            if main_rank and (step % config.checkpoint_every == 0 or step == config.steps):
                save_checkpoint(ckpt_path, state(step))
    steady = times[1:] or times
    summary = {"task": config.task, "arch": config.arch, "steps": config.steps, "start_step": start,
               "final_loss": float(np.mean([r["loss"] for r in log.rows[-10:]])) if log.rows else
               (float(np.mean(losses[-10:])) if losses else None),
               "chance_loss": chance_loss(config.batch_size) if config.task in ("tcpc", "cpc") else None,
               "samples_per_s": config.batch_size * world / statistics.median(steady) if steady else None,
               "step_time_s": statistics.median(steady) if steady else None,
               "checkpoint": str(ckpt_path), "log": str(out / "log.jsonl"), "world_size": world,
               "init_report": init_report}
    if main_rank:
        plot_curves(log.rows, out / "loss.png", ("loss",), f"{config.task} pretraining")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
