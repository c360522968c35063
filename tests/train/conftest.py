"""Tiny synthetic shard sets shared by the trainer tests (seeded, written once per session)."""
from __future__ import annotations

import contextlib
import socket

import pytest
import torch

from tcpc_train.loops.runtime import StepLog
from tcpc_train.input.synthetic import write_synthetic_labelled, write_synthetic_paths
from tests.train import box_paths as _box_paths


@pytest.fixture(scope="session")
def shard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_synthetic_paths(root / "u", 24, "u", cube=16, per_shard=4, seed=1)
    write_synthetic_paths(root / "straight", 16, "straight", cube=16, per_shard=4, seed=2)
    write_synthetic_paths(root / "block", 16, "block", cube=8, per_shard=4, seed=3)
    write_synthetic_labelled(root / "labelled", (32, 16, 16), size=12, per_shard=8, seed=4)
    return root


@pytest.fixture(scope="session")
def box_paths():
    """Cubes cut along a path from a known volume, and that volume's 48 symmetries (``tests/train/box_paths.py``)."""
    return _box_paths


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


def _medicalnet_resnet18(width: int = 64, seg_classes: int = 2) -> dict:
    """The tensors of a MedicalNet ``resnet_18.pth`` (Tencent/MedicalNet ``models/resnet.py``, shortcut A),
    written out from that layout, not from tcpc's model: a DataParallel ``module.`` prefix, a 7^3
    stem, two BasicBlocks per stage without downsample weights, and the ``conv_seg`` head."""
    def bn(name, c):
        return {f"{name}.weight": torch.rand(c), f"{name}.bias": torch.rand(c), f"{name}.running_mean": torch.rand(c),
                f"{name}.running_var": torch.rand(c) + 0.5, f"{name}.num_batches_tracked": torch.tensor(7)}

    sd = {"conv1.weight": torch.randn(width, 1, 7, 7, 7), **bn("bn1", width)}
    cin = width
    for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width), start=1):
        for b in range(2):
            p = f"layer{i}.{b}"
            sd |= {f"{p}.conv1.weight": torch.randn(planes, cin if b == 0 else planes, 3, 3, 3), **bn(f"{p}.bn1", planes),
                   f"{p}.conv2.weight": torch.randn(planes, planes, 3, 3, 3), **bn(f"{p}.bn2", planes)}
        cin = planes
    sd |= {"conv_seg.0.weight": torch.randn(cin, 32, 2, 2, 2), "conv_seg.0.bias": torch.randn(32),
           **bn("conv_seg.1", 32), "conv_seg.3.weight": torch.randn(32, 32, 3, 3, 3), **bn("conv_seg.4", 32),
           "conv_seg.6.weight": torch.randn(seg_classes, 32, 1, 1, 1)}
    return {"state_dict": {f"module.{k}": v for k, v in sd.items()}}


@pytest.fixture
def medicalnet_state_dict():
    """``make(width=64)``: a MedicalNet resnet_18 checkpoint's dict (synthetic tensors, real names and shapes)."""
    return _medicalnet_resnet18
