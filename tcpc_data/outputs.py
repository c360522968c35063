"""Which outputs a command may write: only folders tcpc made, never inside its own inputs.

Every command that writes a folder (a volume store, a shard set, a run, an
experiment...) first *claims* it with :func:`claim_dir`:

- an output that is or lies inside one of the command's inputs is refused:
  writing there could replace the data being read;
- a folder that does not exist, or is empty, is created and marked as tcpc's
  (a marker file, :data:`MARKER`, naming its kind; a volume store carries the
  mark as the ``tcpc`` attribute of its root group instead, because zarr
  warns about files it does not know);
- a marked folder of the same kind is tcpc's: the command writes, replaces
  and deletes inside it, by the names it uses itself;
- a folder made before outputs carried a mark is adopted when its own files
  prove what it is (the kind's ``legacy`` test: a shard set's manifest, a
  run's config and log...), and marked then;
- anything else (a non-empty folder of the user's, a folder of another
  kind, a file) is refused in one line naming the path, before any work.

A file a command replaces (a failures report) is replaced only when its
content is what tcpc writes there (:func:`check_replaceable`).

The module needs the standard library alone; fsspec is imported for URLs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from tcpc_data.urls import filesystem, is_local, local_path

MARKER = ".tcpc-output.json"
MARKER_VERSION = 1
STORE_ATTR = "tcpc"  # the volume store's mark: an attribute of its root group
KINDS = ("volume-store", "shard-set", "shard-splits", "preprocess", "pretrain-run", "finetune-run", "evaluation",
         "experiment", "demo", "realct")


class OutputError(ValueError):
    """An output a command refuses to write into; the message names the path and what to do."""


def _where(url) -> tuple[str, bool]:
    """(a comparable absolute form of ``url``, whether it is local)."""
    if is_local(url):
        return str(local_path(url).expanduser().resolve()), True
    fs, path = filesystem(url)
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return f"{proto}://{path.rstrip('/')}", False


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def check_apart(out, inputs: Iterable, what: str = "output") -> None:
    """Refuse an output that is or lies inside one of ``inputs``.

    An input inside the output is allowed: a command replaces and deletes only the
    names it writes itself, and a folder of the user's that holds inputs is refused
    anyway, being non-empty and unmarked.

    Parameters
    ----------
    out
        The output path or URL.
    inputs
        Paths or URLs the command reads (None entries are skipped).
    what
        How the message names the output ("volume store", "run directory").

    Raises
    ------
    OutputError
        Naming both paths.
    """
    o, _ = _where(out)
    for src in inputs:
        if src is None:
            continue
        s, _ = _where(src)
        if _inside(o, s):
            raise OutputError(f"{what} {out} lies inside the input {src}: writing there could replace what is read; "
                              "choose an --out outside the inputs")


def read_mark(url) -> dict | None:
    """The marker of folder ``url`` (``{"kind", "version"}``), or None when it has none or is not a folder."""
    try:
        if is_local(url):
            p = local_path(url) / MARKER
            if not p.is_file():
                return None
            text = p.read_text()
        else:
            fs, path = filesystem(url)
            text = fs.cat_file(f"{path}/{MARKER}").decode()
        mark = json.loads(text)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return mark if isinstance(mark, dict) and isinstance(mark.get("kind"), str) else None


def _write_mark(url, kind: str) -> None:
    data = json.dumps({"kind": kind, "version": MARKER_VERSION, "written_by": "tcpc"}) + "\n"
    if is_local(url):
        (local_path(url) / MARKER).write_text(data)
    else:
        fs, path = filesystem(url)
        fs.pipe_file(f"{path}/{MARKER}", data.encode())


def folder_entries(url) -> list[str] | None:
    """Names directly in folder ``url``; None when it does not exist. A file raises OutputError."""
    if is_local(url):
        p = local_path(url)
        if not p.exists() and not p.is_symlink():
            return None
        if not p.is_dir():
            raise OutputError(f"output {url} is a file, not a folder: choose another --out")
        return sorted(os.listdir(p))
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return None
    if not fs.isdir(path):
        raise OutputError(f"output {url} is a file, not a folder: choose another --out")
    return sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(path, detail=False))


def read_zarr_attrs(url) -> dict | None:
    """The attributes of the Zarr v3 group at ``url`` (read from its ``zarr.json``, without zarr), or
    None when there is no group there."""
    try:
        if is_local(url):
            p = local_path(url) / "zarr.json"
            if not p.is_file() or p.stat().st_size > 64 << 20:
                return None
            raw = p.read_bytes()
        else:
            fs, path = filesystem(url)
            raw = fs.cat_file(f"{path}/zarr.json")
        meta = json.loads(raw)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes", {})
    return attrs if isinstance(attrs, dict) else None


def _mkdir(url) -> None:
    if is_local(url):
        local_path(url).mkdir(parents=True, exist_ok=True)
    else:
        fs, path = filesystem(url)
        fs.makedirs(path, exist_ok=True)


def claim_dir(out, kind: str, *, inputs: Iterable = (), also: tuple[str, ...] = (),
              legacy: Callable[[str, list[str]], bool] | None = None, what: str | None = None) -> str:
    """Make ``out`` a folder of ``kind`` that the calling command may write into, or refuse it.

    Parameters
    ----------
    out
        Output folder: a path or an fsspec URL.
    kind
        One of :data:`KINDS`.
    inputs
        What the command reads: the output may not be or lie inside one.
    also
        Other kinds whose folders this command may also write into (an
        evaluation into a fine-tuning run's folder).
    legacy
        ``legacy(out, names)``: whether an unmarked, non-empty folder with the
        entries ``names`` is one tcpc wrote before outputs were marked; it is
        then marked and accepted.
    what
        How messages name the output (default: the kind).

    Returns
    -------
    str
        ``out`` as given.

    Raises
    ------
    OutputError
        One line naming the folder and why it is refused; nothing is written then.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    what = what or kind.replace("-", " ")
    check_apart(out, inputs, what)
    names = folder_entries(out)
    if names is None or not names:
        _mkdir(out)
        _write_mark(out, kind)
        return out
    mark = read_mark(out)
    if mark is not None:
        if mark["kind"] == kind or mark["kind"] in also:
            return out
        raise OutputError(f"{out} is a tcpc {mark['kind'].replace('-', ' ')}, not {_a(what)}: choose another --out")
    if legacy is not None and legacy(str(out), names):
        _write_mark(out, kind)
        return out
    raise OutputError(f"{out} is a folder tcpc did not write ({len(names)} entries, e.g. {names[0]!r}); "
                      f"tcpc writes {_a(what)} only into a new or empty folder, or one it made: choose another --out")


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def has_files(*names: str) -> Callable[[str, list[str]], bool]:
    """A ``legacy`` test: the folder holds all of ``names``."""
    return lambda out, entries: all(n in entries for n in names)


def is_failures_file(text: str) -> bool:
    """Whether ``text`` is a failures report as tcpc writes it: JSON lines of ``case`` and ``error``."""
    try:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return False
    return all(isinstance(r, dict) and "case" in r and "error" in r for r in rows)


def check_replaceable(path, is_ours: Callable[[str], bool] = is_failures_file, what: str = "failures report",
                      inputs: Iterable = ()) -> None:
    """Refuse to replace or delete file ``path`` unless it is absent or ``is_ours(its text)``.

    Raises
    ------
    OutputError
        When ``path`` is a folder, an input, or a file whose content tcpc did not write.
    """
    check_apart(path, inputs, what)
    if not is_local(path):
        fs, p = filesystem(path)
        if not fs.exists(p):
            return
        if fs.isdir(p):
            raise OutputError(f"{what} {path} is a folder: choose another path")
        raw = fs.cat_file(p)
    else:
        p = local_path(path)
        if not p.exists() and not p.is_symlink():
            return
        if p.is_symlink() or not p.is_file():
            raise OutputError(f"{what} {path} is not a plain file: choose another path")
        if p.stat().st_size > 256 << 20:
            raise OutputError(f"{what} {path} is a large file tcpc did not write: choose another path")
        raw = p.read_bytes()
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = None
    if text is None or not is_ours(text):
        raise OutputError(f"{path} exists and is not a {what} tcpc wrote: move it or choose another path "
                          "(nothing was changed)")


def remove_if_ours(path, is_ours: Callable[[str], bool] = is_failures_file, what: str = "failures report") -> None:
    """Delete file ``path`` when it is one tcpc wrote (:func:`check_replaceable`); absent is fine."""
    check_replaceable(path, is_ours, what)
    if is_local(path):
        Path(local_path(path)).unlink(missing_ok=True)
    else:
        fs, p = filesystem(path)
        if fs.exists(p):
            fs.rm_file(p)
