"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically, loaded without pickle.

A checkpoint is ``{"model", "optimizer", "step", "config", "data_digest",
"kind"}``: state dicts, the step reached, the run's config as a dict and the
digest of the data manifest it trained on. ``torch.load(..., weights_only=True)``
refuses anything else, so a checkpoint cannot carry code.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` to ``path`` via a temporary file and an atomic rename (a kill leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint or state dict with ``weights_only=True``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file is not a weights-only torch file (e.g. it holds pickled objects).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        raise ValueError(f"{path}: not a weights-only torch checkpoint ({type(exc).__name__}); tcpc loads "
                         "checkpoints without unpickling objects, so they must hold only tensors, numbers, "
                         "strings, lists and dicts") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict (checkpoint or state dict), got {type(obj).__name__}")
    return obj
