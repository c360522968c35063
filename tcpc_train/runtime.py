"""Where and how a training loop runs: device, torchrun/DDP setup, mixed precision, logs and progress.

Shared by pretraining and fine-tuning so both loops stay short. Under
``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is
initialised here (NCCL on CUDA, gloo on CPU) unless the caller already did;
only rank 0 writes files and shows progress.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


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


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when ``enabled`` (no loss scaling needed); a no-op on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class StepLog:
    """Per-step JSON lines (rank 0 only). On resume, lines past the checkpoint's step are dropped."""

    def __init__(self, path: Path, active: bool, keep_until_step: int = 0):
        self.path, self.active = Path(path), active
        self.rows: list[dict] = []
        if active and self.path.exists():
            self.rows = [r for r in map(json.loads, self.path.read_text().splitlines())
                         if r.get("step", 0) <= keep_until_step]
        if active:
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict) -> None:
        if self.active:
            self.rows.append(row)
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def progress_bar(active: bool, description: str) -> Progress:
    """A rich progress bar (disabled when not ``active``: tests, other ranks)."""
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeRemainingColumn(), disable=not active)
