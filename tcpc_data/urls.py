"""Paths and fsspec URLs: which are local, how to join them, how to open them.

Every output and input of the project (volume store, shard directory, CT
source) may be a local path, a ``file://`` URL or an fsspec URL
(``s3://bucket/x``, ``memory://x``). A local path and a ``file://`` URL are
written in place (atomic renames work there); anything else is *remote*.
It needs the standard library alone and imports fsspec only when a URL needs
it, so the trainer's tar reader can use it without the engine's stack.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

_FILE = "file://"


def is_remote(url: str | os.PathLike) -> bool:
    """True for an fsspec URL other than ``file://``."""
    text = str(url)
    return "://" in text and not text.startswith(_FILE)


def is_local(url: str | os.PathLike) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return not is_remote(url)


def local_path(url: str | os.PathLike) -> Path:
    """The filesystem path of a local path or ``file://`` URL (the caller checks :func:`is_local`)."""
    text = str(url)
    return Path(text[len(_FILE):] if text.startswith(_FILE) else text)


def join(root: str | os.PathLike, *names: str) -> str:
    """``root/name/...`` for a local path or a URL (always ``/``: fsspec's separator)."""
    return "/".join([str(root).rstrip("/"), *names])


def filesystem(url: str | os.PathLike) -> tuple[Any, str]:
    """(fsspec filesystem, path without protocol and trailing slash) of a path or URL."""
    import fsspec
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path.rstrip("/") or "/"


def open_binary(url: str | os.PathLike) -> IO[bytes]:
    """Open a file for reading bytes: a local one with a 1 MiB buffer, a URL through fsspec in
    4 MiB blocks (a remote read pays a round trip per block)."""
    if is_local(url):
        return open(local_path(url), "rb", buffering=1 << 20)
    fs, path = filesystem(url)  # fs.open: fsspec.open would hand block_size to s3fs's constructor
    return fs.open(path, "rb", block_size=1 << 22)
