"""TensorBoard event files of a run's log rows, written by ``torch.utils.tensorboard.SummaryWriter``.

Needs the ``tensorboard`` package (``pip install 'tcpc[tensorboard]'``): runs write event files only
when asked (``--tensorboard``), and asking without it is a one-line error before any work starts
(:func:`require_tensorboard`).

A file opens with a ``SessionLog.START`` at step 0 (the writer's ``purge_step=0``): a TensorBoard
that was already reading an earlier file of the same run then drops what it held from that step on
(its rule for restarted jobs), so a rewritten log (a resumed run) is never shown twice.
"""
from __future__ import annotations

import math
import weakref
from pathlib import Path
from typing import Iterable, Mapping

# Our files end in this suffix, so a rewrite removes only files tcpc wrote; TensorBoard reads any
# name containing "tfevents", in sorted order.
SUFFIX = ".tcpc"
_PREFIX = "events.out.tfevents."
# Row members that are coordinates of a row, not scalars to plot.
_NOT_SCALARS = frozenset({"step", "wall_time"})
_FLOAT32_MAX = 3.4028234663852886e38


class MissingTensorBoard(ImportError, ValueError):
    """The tensorboard package is not installed: an ImportError, and a ValueError so that the CLI
    reports it in one line like every other error a user can fix."""


def require_tensorboard() -> type:
    """torch's ``SummaryWriter``; :class:`MissingTensorBoard` when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MissingTensorBoard("TensorBoard event files need the tensorboard package: "
                                 "pip install 'tcpc[tensorboard]' (or leave out --tensorboard)") from None
    return SummaryWriter


def row_scalars(row: Mapping) -> dict[str, float]:
    """The numbers of a log row that a float32 holds (``step`` and ``wall_time`` aside), tag -> value."""
    return {k: float(v) for k, v in row.items() if k not in _NOT_SCALARS and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= _FLOAT32_MAX}


class ScalarEvents:
    """The event file of a run directory, mirroring its log rows (rank 0 writes it).

    Opening it empties the event files tcpc wrote there before and writes one
    new file holding ``rows`` (the rows a resumed run kept), so every step
    appears once; :meth:`write` appends a row and flushes it. Each row's scalars are
    logged at its ``step`` and ``wall_time`` (seconds since the epoch; the writer's
    clock where a row has none).
    """

    def __init__(self, directory: str | Path, rows: Iterable[Mapping] = ()):
        summary_writer = require_tensorboard()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob(f"{_PREFIX}*{SUFFIX}"):
            # Emptied, not removed: a TensorBoard reading the file moves on to the next one, while it
            # stops at a file that vanished. Files emptied by an earlier rewrite can go.
            if old.stat().st_size:
                old.write_bytes(b"")
            else:
                old.unlink()
        self.writer = summary_writer(str(directory), purge_step=0, filename_suffix=SUFFIX)
        weakref.finalize(self, self.writer.close)  # its file and writer thread go with the log
        for row in rows:
            self._add(row)
        self.writer.flush()

    def _add(self, row: Mapping) -> None:
        for tag, value in row_scalars(row).items():
            self.writer.add_scalar(tag, value, int(row["step"]), walltime=row.get("wall_time"))

    def write(self, row: Mapping) -> None:
        """Append a row with a ``step`` (its numeric members become scalars of that step)."""
        self._add(row)
        self.writer.flush()
