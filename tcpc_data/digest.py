"""Digests: stable content hashes of stage inputs and configs.

Every stage output records ``digest(inputs, config)``; a rerun compares digests
to decide whether to skip a case or redo it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tcpc_data.urls import open_binary


def _canonical(obj: Any) -> Any:
    """Turn configs, paths and numpy scalars into plain JSON-able values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _canonical(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def to_json(obj: Any) -> str:
    """Canonical JSON text (sorted keys, no whitespace) of a config or record."""
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"))


def digest(*parts: Any) -> str:
    """SHA-256 hex digest of the canonical JSON of ``parts``.

    Parameters
    ----------
    *parts
        Configs (frozen dataclasses), upstream digests (str), dicts, lists.
    """
    return hashlib.sha256(to_json(list(parts)).encode()).hexdigest()


def files_digest(paths: Iterable[str | Path], chunk_size: int = 1 << 20) -> str:
    """SHA-256 over the names (not directories) and bytes of ``paths`` in sorted order.

    Contents, not modification times, so a copied archive keeps its digest.
    """
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(chunk_size):
                h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 of one file's bytes (a local path or an fsspec URL): the integrity check of a shard."""
    h = hashlib.sha256()
    with open_binary(path) as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()
