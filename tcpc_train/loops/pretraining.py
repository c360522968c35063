"""Self-supervised pretraining loop: TCPC, 3D CPC, Rubik's cube and 3D Jigsaw on streamed shards.

One loop for all tasks (nanoGPT style): the config is data saved in every
checkpoint, the learning rate is a pure function of the step, the data order
a pure function of (seed, step) (:mod:`tcpc_train.input.loader`), so a killed run
resumed from ``RUN/last.pt`` continues at the same step with the same batches.
The tasks (TCPC, 3D CPC, Rubik's cube, 3D Jigsaw) are entries of
:data:`tcpc_train.tasks.registry.TASKS`: the path kind each reads, its model and loss.
How the run executes (seed, loader, device, precision) is the config's
``runtime`` (:class:`tcpc_train.loops.runtime.RuntimeConfig`).

Outputs in ``out``: ``config.json``, ``log.jsonl`` (step, loss, lr,
samples/s, skipped samples) and the same rows as a TensorBoard event file,
``last.pt``, ``loss.png``, ``summary.json``, ``report.html``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from tcpc_train.loops.checkpoint import load_checkpoint, save_checkpoint
from tcpc_train.input.augment import augment_path_batch, sample_key
from tcpc_train.report.html import run_report
from tcpc_train.input.loader import ShardStream, decode_path_sample, first_sample, make_loader, open_shards
from tcpc_train.models.encoders import ARCHS, adopt_encoder, build_encoder
from tcpc_train.report.plots import plot_curves
from tcpc_train.report.tbevents import require_tensorboard
from tcpc_train.loops.runtime import (RuntimeConfig, StepLog, agree, barrier, claim_run, config_changes,
                                      init_distributed, loader_workers, optimiser_steps, progress_bar, resolve_device,
                                      skip_counts)
from tcpc_train.tasks.registry import TASKS, TaskName, path_cubes
from tcpc_train.models.weights import load_encoder_weights

# The type of the ``arch`` fields: the CLI offers exactly the built-in encoders.
Arch = Literal[ARCHS]
# Config fields a resumed run may change: they alter neither the model nor the data order (a run
# stopped by a bad sample skipped none, so it may go on skipping them; all_rank_negatives does
# nothing in one process, and runs from before it existed resume).
_RESUMABLE_CHANGES = {"steps", "runtime.device", "runtime.workers", "checkpoint_every", "runtime.skip_bad_samples",
                      "all_rank_negatives"}
_TASK_HELP = "Pretraining task (and the path kind its shards hold): " + ", ".join(
    f"{t.name} ({t.label}; {t.path_kind})" for t in TASKS.values()) + "."


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Pretraining settings (saved with every checkpoint and as ``config.json``)."""

    task: TaskName = field(default="tcpc", metadata={"help": _TASK_HELP})
    arch: Arch = field(default="resnet18", metadata={"help": "Encoder architecture."})
    width: float = field(default=1.0, metadata={"help": "Channel multiplier of the encoder (1/8 for a CPU)."})
    steps: int = field(default=1000, metadata={"help": "Optimiser steps in all."})
    batch_size: int = field(default=16, metadata={"help": "Samples per step and process."})
    lr: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (cosine decay to a tenth)."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    warmup: int = field(default=50, metadata={"help": "Steps of linear learning-rate warm-up."})
    temperature: float = field(default=0.1, metadata={"help": "InfoNCE temperature (tcpc, cpc)."})
    own_negatives: bool = field(default=False, metadata={
        "help": "Also contrast with the sample's own support cubes (tcpc, cpc)."})
    all_rank_negatives: bool = field(default=True, metadata={
        "help": "Under torchrun, contrast with the targets of every rank's batch, as one process on the "
                "concatenated batch would (tcpc, cpc); off: each rank's own batch only."})
    n_permutations: int = field(default=100, metadata={"help": "Permutation classes (rubik, jigsaw)."})
    augment: bool = field(default=True, metadata={
        "help": "The same random flips / 90-degree rotations for every cube of a sample."})
    checkpoint_every: int = field(default=100, metadata={"help": "Steps between checkpoints (and one at the end)."})
    init: str | None = field(default=None, metadata={
        "help": "Encoder weights to start from (cascade: external -> TCPC); none: random."})
    runtime: RuntimeConfig = field(default=RuntimeConfig(), metadata={"help": "How the run executes."})
    cube_intensity: float = field(default=0.1, metadata={
        "help": "Per-cube intensity augmentation v: each cube gets its own contrast factor in [1-v, 1+v], "
                "offset in [-v, v] and noise of sd up to v/5 ([-1, 1] intensity units); 0: none (the paper)."})

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < TASKS[self.task].min_batch_size:
            raise ValueError(f"task {self.task} contrasts in-batch negatives: batch_size must be >= "
                             f"{TASKS[self.task].min_batch_size}")
        if self.warmup < 0 or not self.lr > 0 or not self.temperature > 0:
            raise ValueError("warmup must be >= 0, lr and temperature > 0")
        if not self.cube_intensity >= 0:
            raise ValueError(f"cube_intensity must be >= 0, got {self.cube_intensity}")
        self.runtime.validate()


def learning_rate(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay from lr to lr/10 at ``cfg.steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, t))))


class TaskSample:
    """Turns raw shard samples into the task's input (runs in loader workers).

    The loader calls :meth:`decode` per sample (decode, checks, the sample's
    random key) and :meth:`collate` per batch, which augments the whole batch
    in one pass (:func:`tcpc_train.input.augment.augment_path_batch`); calling the
    object prepares one sample alone, with the same result.
    """

    def __init__(self, cfg: PretrainConfig):
        self.cfg, self.task = cfg, TASKS[cfg.task]
        self._good_offsets: set[bytes] = set()  # paths (offsets from their first position) that passed the check

    def decode(self, raw: dict, epoch: int) -> dict:
        s = decode_path_sample(raw)
        path = s["path"]
        # A path's rank depends on its offsets alone, and a shard repeats a few shapes of path
        # (a U in a few orientations): each is checked once per loader process.
        offsets = (path - path[0]).tobytes()
        if offsets not in self._good_offsets:
            self.task.check_path(path, f"{raw.get('__url__', '?')}: sample {s['key']}")
            if len(self._good_offsets) > 4096:
                self._good_offsets.clear()
            self._good_offsets.add(offsets)
        s["random"] = sample_key(self.cfg.runtime.seed, epoch, s["key"])
        return s

    def collate(self, items: list[dict]) -> dict:
        keys = np.array([it["random"] for it in items], np.uint64)
        cubes, paths = augment_path_batch([it["cubes"] for it in items], np.stack([it["path"] for it in items]),
                                          keys, self.cfg.augment, self.cfg.cube_intensity)
        out = {"key": [it["key"] for it in items]}
        if self.task.prepare is path_cubes:  # the batch array itself; no per-sample call
            out["cubes"] = cubes
            return out
        views = list(cubes)
        rngs = [np.random.default_rng(int(k)) for k in keys]
        prepared = [self.task.prepare(v, p, r, self.cfg) for v, p, r in zip(views, paths, rngs)]
        for k in prepared[0]:  # the batch array itself where the task passed the cubes through
            out[k] = cubes if all(p[k] is v for p, v in zip(prepared, views)) else np.stack([p[k] for p in prepared])
        return out

    def __call__(self, raw: dict, epoch: int) -> dict:
        batch = self.collate([self.decode(raw, epoch)])
        return {k: v[0] for k, v in batch.items()}


def build_task_model(cfg: PretrainConfig, encoder: torch.nn.Module | None = None) -> torch.nn.Module:
    """The encoder (``encoder``, else ``cfg.arch``/``cfg.width`` built) inside the task's model
    (``.encoder``); the loss is the model's output."""
    return TASKS[cfg.task].model(encoder if encoder is not None else build_encoder(cfg.arch, cfg.width), cfg)


def encoder_name(encoder: torch.nn.Module | None) -> str | None:
    """How a checkpoint names a user's encoder (its class, module-qualified); None for the built-in ones."""
    return None if encoder is None else f"{type(encoder).__module__}.{type(encoder).__qualname__}"


def train_steps(net: torch.nn.Module, opt: torch.optim.Optimizer, batches: Iterator[dict], cfg: PretrainConfig,
                device: torch.device, start: int = 0) -> Iterator[tuple[int, float, float, float]]:
    """Optimiser steps ``start`` .. ``cfg.steps`` on loader batches; yields (step done, loss, lr, seconds).

    The batches are prefetched as in :func:`tcpc_train.loops.runtime.optimiser_steps`;
    the model takes the task's batch members (:attr:`tcpc_train.tasks.registry.Task.inputs`).
    """
    inputs = TASKS[cfg.task].inputs

    def loss_of(batch: dict) -> torch.Tensor:
        return net(*(batch[k].float() if k == "cubes" else batch[k] for k in inputs))  # cubes travel as float16

    steps = optimiser_steps(loss_of, opt, batches, device, lambda i: learning_rate(start + i, cfg),
                            cfg.runtime.amp, max(0, cfg.steps - start))
    for i, (value, lr, dt, _) in enumerate(steps):
        yield start + i + 1, value, lr, dt


def _check_resume(ck: dict, cfg: PretrainConfig, data_digest: str, path: Path, encoder: str | None) -> None:
    if ck.get("encoder") != encoder:
        raise ValueError(f"{path} was trained with the encoder {ck.get('encoder') or cfg.arch!r}, not "
                         f"{encoder or cfg.arch!r}; resume with the same encoder or choose a new output directory")
    diff = config_changes(ck.get("config", {}), dataclasses.asdict(cfg), _RESUMABLE_CHANGES)
    if diff:
        was = ", ".join(f"{k}: {old!r}" for k, (old, _) in sorted(diff.items()))
        raise ValueError(f"{path} was trained with a different config ({was});"
                         " resume with the same settings or choose a new output directory")
    if ck.get("data_digest") != data_digest:
        raise ValueError(f"{path} was trained on other shards (manifest digest differs); "
                         "choose a new output directory")


def pretrain(shards: str | Path, out: str | Path, config: PretrainConfig = PretrainConfig(),
             resume: bool = True, progress: bool = False, tensorboard: bool = False,
             encoder: torch.nn.Module | None = None) -> dict:
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
    tensorboard : bool
        Also write the log rows as a TensorBoard event file in ``out`` (rank 0); needs the
        tensorboard package (checked before any work starts).
    encoder : nn.Module, optional
        Your own encoder (e.g. a MONAI ResNet with ``feed_forward=False``)
        instead of ``config.arch``/``config.width``: any module mapping (N, 1,
        c, c, c) cubes to features (N, F) or feature maps (N, F, ...)
        (:func:`tcpc_train.models.encoders.adopt_encoder`). It is trained in place;
        checkpoints hold its state dict under ``encoder.`` and its class name,
        and a resume needs the same class again.

    Returns
    -------
    dict summary: task, steps, start_step, final_loss (mean of the last 10
    steps), chance_loss (tasks with a closed form: InfoNCE, over the negatives
    of every rank with ``all_rank_negatives``), samples_per_s and step_time_s
    (medians), checkpoint, log, world_size, init_report, encoder (None: built-in).
    """
    config.validate()
    if tensorboard:
        require_tensorboard()
    data = open_shards(shards)
    sample_fn = TaskSample(config)
    try:  # wrong layout or path kind: a clear error before workers start
        sample_fn(first_sample(data), 0)
    except ValueError:
        if not config.runtime.skip_bad_samples:  # else the loader counts it, or names it if none is usable
            raise
    if encoder is not None:
        adopt_encoder(encoder, decode_path_sample(first_sample(data))["cubes"].shape[1:])
    claim_run(out, "pretrain-run", (shards, config.init), "task")  # the data checked first: no folder for a typo
    out = Path(out)
    device = resolve_device(config.runtime.device)
    rank, world = init_distributed(device)
    main_rank = rank == 0
    torch.manual_seed(config.runtime.seed)
    model = build_task_model(config, encoder)
    expect = {"arch": config.arch, "width": config.width} if encoder is None else None
    init_report = load_encoder_weights(model.encoder, config.init, expect) if config.init else None
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    ckpt_path = out / "last.pt"
    start = 0
    if resume and ckpt_path.exists():
        ck = load_checkpoint(ckpt_path, map_location=device)
        _check_resume(ck, config, data.digest, ckpt_path, encoder_name(encoder))
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start = int(ck["step"])
    start = agree(start, "the step to resume from")
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    log = StepLog(out / "log.jsonl", main_rank, keep_until_step=start, tensorboard=tensorboard)
    if world > 1 and device.type == "cuda":  # few samples per GPU: batch statistics over all ranks
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net = DistributedDataParallel(model) if world > 1 else model

    def state(step: int) -> dict:
        return {"kind": "pretrain", "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "config": dataclasses.asdict(config), "data_digest": data.digest, "encoder": encoder_name(encoder)}

    rt = config.runtime
    stream = ShardStream(data, sample_fn, config.batch_size, seed=rt.seed, shuffle_buffer=rt.shuffle_buffer,
                         start_batch=start, skip_bad=rt.skip_bad_samples)
    loader = make_loader(stream, loader_workers(rt.workers, device), pin_memory=device.type == "cuda")
    batches, skipped_in = skip_counts(iter(loader))
    net.train()
    times, losses = [], []
    with progress_bar(progress and main_rank, f"pretrain {config.task}") as bar:
        task = bar.add_task("", total=config.steps, completed=start, status="")
        for step, value, lr, dt in train_steps(net, opt, batches, config, device, start):
            times.append(dt)
            losses.append(value)
            log.write({"step": step, "loss": value, "lr": lr,
                       "samples_per_s": config.batch_size * world / dt, "time_s": dt, "skipped": skipped_in()})
            bar.update(task, advance=1, status=f"loss {value:.4f}")
            if main_rank and (step % config.checkpoint_every == 0 or step == config.steps):
                save_checkpoint(ckpt_path, state(step))
    steady = times[1:] or times
    chance = TASKS[config.task].chance
    summary = {"task": config.task, "arch": config.arch, "steps": config.steps, "start_step": start,
               "final_loss": float(np.mean([r["loss"] for r in log.rows[-10:]])) if log.rows else
               (float(np.mean(losses[-10:])) if losses else None),
               "chance_loss": None if chance is None else
               chance(config.batch_size * (world if config.all_rank_negatives else 1)),
               "samples_per_s": config.batch_size * world / statistics.median(steady) if steady else None,
               "step_time_s": statistics.median(steady) if steady else None,
               "checkpoint": str(ckpt_path), "log": str(out / "log.jsonl"), "world_size": world,
               "init_report": init_report, "encoder": encoder_name(encoder),
               "skipped_samples": sum(r.get("skipped", 0) for r in log.rows)}
    if main_rank:
        plot_curves(log.rows, out / "loss.png", ("loss",), f"{config.task} pretraining")
        run_report(out / "report.html", f"{config.task} pretraining", config=dataclasses.asdict(config),
                   rows=log.rows, summary=summary, lead=str(out))
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    barrier()  # returned on any rank, the run's files are written (a next call may resume from them)
    return summary
