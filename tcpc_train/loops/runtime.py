"""Where and how a training loop runs: device, torchrun/DDP setup, mixed precision, logs and progress.

Shared by pretraining, fine-tuning and evaluation so their loops stay short:
:class:`RuntimeConfig` holds the settings of a run's execution (seed, loader,
device, precision) that all three take, once. Under
``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is
initialised here (NCCL on CUDA, gloo on CPU) unless the caller already did;
only rank 0 writes files and shows progress. The small control messages
between ranks (do all still have a batch, did all resume at the same step)
travel as CPU tensors: over the default group under gloo, over a gloo side
group under NCCL, so they never wait for the GPU's queue.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import json
import os
import time
from dataclasses import field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tcpc_data.outputs import claim_dir
from tcpc_train.report.tbevents import ScalarEvents


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How a training or evaluation run executes (saved inside its config and checkpoints).

    The data order is a pure function of ``seed``, ``shuffle_buffer`` and the number of
    ranks, never of ``workers`` or ``device`` (:mod:`tcpc_train.input.loader`): a resume may
    change both.
    """

    seed: int = field(default=0, metadata={"help": "Seed of initialisation, sample selection and data order."})
    workers: int | None = field(default=None, metadata={
        "help": "Loader processes (0: load in the training process); none: 0 on the CPU, up to 4 per GPU."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N."})
    amp: bool = field(default=True, metadata={"help": "bfloat16 autocast on CUDA GPUs that support it."})
    shuffle_buffer: int = field(default=256, metadata={"help": "Samples in the loader's shuffle buffer."})
    skip_bad_samples: bool = field(default=False, metadata={
        "help": "Drop samples that fail to decode or whose shapes differ from their batch's, counting them "
                "in the log, instead of stopping with an error."})

    def validate(self) -> None:
        """Raise ValueError naming the first field outside its range."""
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")


def claim_run(out, kind: str, inputs, config_key: str) -> None:
    """Claim run directory ``out`` (:func:`tcpc_data.outputs.claim_dir`) for a run of ``kind``
    ("pretrain-run", "finetune-run") reading ``inputs``; from before marks, a directory whose
    ``config.json`` has the field ``config_key`` and that holds a log or a checkpoint is one."""
    def legacy(_, names: list[str]) -> bool:
        if "config.json" not in names or not {"log.jsonl", "last.pt"} & set(names):
            return False
        try:
            return config_key in json.loads((Path(out) / "config.json").read_text())
        except (OSError, ValueError, TypeError):
            return False
    claim_dir(out, kind, inputs=inputs, legacy=legacy, what="run directory")


def loader_workers(workers: int | None, device: torch.device) -> int:
    """The loader processes to start: ``workers``, or when it is None, 0 on the CPU and on a
    GPU up to 4, leaving one of this rank's share of the cores to the training process.

    On the CPU the step takes hundreds of milliseconds and a batch ~1 ms to load, so loading
    between steps costs ~1 %, while loader processes take cores from torch's threads
    (``bench/train.py --only loop``: 0.99 of the in-memory rate in-process, 0.94-0.95 with
    two processes on two cores). A GPU step takes milliseconds: its loader must run beside it.
    """
    if workers is not None:
        return workers
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1))


def config_changes(old: dict, new: dict, allowed: set[str], prefix: str = "") -> dict[str, tuple]:
    """``{field: (old, new)}`` of the fields of two saved configs (``dataclasses.asdict``) that differ.

    Nested configs are compared field by field as ``outer.inner``; names in
    ``allowed`` (either form) may differ.
    """
    diff = {}
    for k, v in new.items():
        name = f"{prefix}{k}"
        if name in allowed:
            continue
        was = old.get(k) if isinstance(old, dict) else None
        if isinstance(v, dict):
            diff.update(config_changes(was if isinstance(was, dict) else {}, v, allowed, f"{name}."))
        elif was != v:
            diff[name] = (was, v)
    return diff


def resolve_device(name: str) -> torch.device:
    """``auto`` -> this process's CUDA device if there is one, else CPU; otherwise ``name`` checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available here")
    return dev


def init_distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group under torchrun when nobody has yet."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@functools.lru_cache(maxsize=None)
def _gloo_side_group(default_group) -> object:
    return dist.new_group(backend="gloo")


def _control_group():
    """The group for CPU tensors: the default one under gloo, a gloo side group (made once, by
    every rank at the same point) under NCCL."""
    return None if dist.get_backend() == "gloo" else _gloo_side_group(dist.group.WORLD)


def lockstep(batches: Iterator[dict]) -> Iterator[dict]:
    """The batches while every rank still has one.

    A finite pass (a fine-tuning epoch) gives the ranks' loaders slightly
    different numbers of batches (per-worker partial batches are dropped);
    under DDP a rank that stopped early would leave the others waiting in the
    gradient all-reduce for ever. One tiny all-reduce per batch (minimum of
    "I have one") ends the pass on every rank at the first rank's end. One
    process: the batches unchanged.
    """
    if world_size() == 1:
        yield from batches
        return
    group = _control_group()
    for batch in itertools.chain(batches, [None]):
        have = torch.tensor([batch is not None], dtype=torch.int32)
        dist.all_reduce(have, op=dist.ReduceOp.MIN, group=group)
        if not have.item():
            return
        yield batch


def agree(value: int, what: str) -> int:
    """``value`` when every rank holds the same, else ValueError listing each rank's (one process: ``value``).

    E.g. the step each rank resumed at: ranks that read different ``last.pt``
    files (a run directory not shared between hosts) would train different
    models under one DDP.
    """
    world = world_size()
    if world == 1:
        return value
    values = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(values, torch.tensor([value], dtype=torch.int64), group=_control_group())
    seen = [int(v) for v in values]
    if len(set(seen)) > 1:
        raise ValueError(f"the ranks disagree on {what}: " + ", ".join(f"rank {r}: {v}" for r, v in enumerate(seen))
                         + "; every rank must see the same run directory (a shared file system)")
    return value


def average_over_ranks(*tensors: torch.Tensor) -> None:
    """Replace each tensor, in place, by its mean over the ranks (no-op in one process)."""
    if world_size() > 1:
        for t in tensors:
            dist.all_reduce(t)
            t /= world_size()


def share_json(obj):
    """Rank 0's ``obj`` (JSON-able) on every rank, sent as UTF-8 bytes (no pickle); one process: ``obj``."""
    if world_size() == 1:
        return obj
    group = _control_group()
    data = json.dumps(obj).encode() if dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(size, 0, group=group)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(buf, 0, group=group)
    return json.loads(buf.numpy().tobytes().decode())


def barrier() -> None:
    """Wait for every rank (no-op in one process): e.g. while rank 0 validates and writes checkpoints."""
    if world_size() > 1:
        dist.barrier(group=_control_group())


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when ``enabled`` (no loss scaling needed); a no-op on CPU and on
    GPUs without bfloat16 (they train in float32 rather than risk float16 overflow without a scaler)."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def optimiser_steps(loss_of: Callable[[dict], torch.Tensor], opt: torch.optim.Optimizer, batches: Iterator[dict],
                    device: torch.device, lr_at: Callable[[int], float], amp: bool,
                    steps: int | None = None) -> Iterator[tuple[float, float, float, int]]:
    """Optimiser steps on loader batches until ``steps`` are done or the batches run out.

    Yields (loss, lr, seconds, samples) per step; ``lr_at(i)`` is the learning
    rate of the i-th step of this call and ``loss_of(batch)`` the loss of a
    batch already on ``device`` (its members that are not tensors, ``key`` and
    ``skipped``, dropped: :func:`skip_counts` collects the latter). The next batch is
    taken from the loader and copied to the device right after a step's kernels
    are queued and before ``loss.item()`` waits for them, so on a GPU the
    loader's hand-over and the copy overlap the compute instead of leaving the
    GPU idle between steps.
    """
    def fetch() -> dict | None:
        if steps is not None and done >= steps:
            return None
        raw = next(batches, None)
        if raw is None:
            return None
        return {k: v.to(device, non_blocking=True) for k, v in raw.items() if isinstance(v, torch.Tensor)}

    done = 0
    batch = fetch()
    while batch is not None:
        t0 = time.perf_counter()
        lr = lr_at(done)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast(device, amp):
            loss = loss_of(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        n = len(next(iter(batch.values())))
        batch = fetch()
        yield loss.item(), lr, time.perf_counter() - t0, n


def skip_counts(batches: Iterator[dict]) -> tuple[Iterator[dict], Callable[[], int]]:
    """Split the ``skipped`` counts off loader batches (:class:`tcpc_train.input.loader.ShardStream`).

    Returns the batches and ``next_count()``: the count of the oldest batch
    whose count has not been taken yet. The step loop prefetches a batch
    ahead, so a queue, not a running total, keeps each count with its step.
    """
    counts: collections.deque[int] = collections.deque()

    def tap() -> Iterator[dict]:
        for batch in batches:
            counts.append(int(batch.get("skipped", 0)))
            yield batch

    return tap(), counts.popleft


class StepLog:
    """Per-step JSON lines (rank 0 only), and with ``tensorboard`` the same rows as a TensorBoard
    event file beside them (:class:`tcpc_train.report.tbevents.ScalarEvents`). On resume, lines past the
    checkpoint's step are dropped, and so is a last line a kill cut short; the event file is
    rewritten from the rows kept. Each row gets its ``wall_time`` (seconds since the epoch)."""

    def __init__(self, path: Path, active: bool, keep_until_step: int = 0, tensorboard: bool = False):
        self.path, self.active = Path(path), active
        self.rows: list[dict] = []
        self.events: ScalarEvents | None = None
        if active and self.path.exists():
            self.rows = [r for r in map(_row, self.path.read_text().splitlines())
                         if r is not None and r.get("step", 0) <= keep_until_step]
        if active:
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
            if tensorboard:
                self.events = ScalarEvents(self.path.parent, self.rows)

    def write(self, row: dict) -> None:
        if self.active:
            row = {**row, "wall_time": round(time.time(), 3)}
            self.rows.append(row)
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.events is not None:
                self.events.write(row)


def _row(line: str) -> dict | None:
    """A log line's row; None for a line cut short by a kill."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


def progress_bar(active: bool, description: str) -> Progress:
    """A rich progress bar (disabled when not ``active``: tests, other ranks)."""
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(), disable=not active)
