"""Tiny synthetic shard sets shared by the trainer tests (seeded, written once per session)."""
from __future__ import annotations

import contextlib
import socket

import pytest

from tcpc_train.runtime import StepLog
from tcpc_train.synthetic import write_synthetic_labelled, write_synthetic_paths


@pytest.fixture(scope="session")
def shard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_synthetic_paths(root / "u", 24, "u", cube=16, per_shard=4, seed=1)
    write_synthetic_paths(root / "straight", 16, "straight", cube=16, per_shard=4, seed=2)
    write_synthetic_paths(root / "block", 16, "block", cube=8, per_shard=4, seed=3)
    write_synthetic_labelled(root / "labelled", (32, 16, 16), size=12, per_shard=8, seed=4)
    return root


@pytest.fixture(scope="session")
def u_shards(shard_root):
    return shard_root / "u"


@pytest.fixture(scope="session")
def labelled(shard_root):
    return shard_root / "labelled"


class _Killed(Exception):
    pass


@pytest.fixture
def killed_after(monkeypatch):
    """``with killed_after(stop): run(...)``: the run's log raises right after writing the first
    row for which ``stop(row)`` holds, as a kill would stop it there; the block expects that."""
    @contextlib.contextmanager
    def killed(stop):
        write = StepLog.write

        def dying_write(self, row):
            write(self, row)
            if stop(row):
                raise _Killed
        monkeypatch.setattr(StepLog, "write", dying_write)
        try:
            with pytest.raises(_Killed):
                yield
        finally:
            monkeypatch.setattr(StepLog, "write", write)
    return killed


@pytest.fixture
def free_port() -> int:
    """A free local TCP port for a process group's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
