"""Tiny synthetic shard sets shared by the trainer tests (seeded, written once per session)."""
from __future__ import annotations

import pytest

from tcpc_train.synthetic import write_labelled_shards, write_path_shards


@pytest.fixture(scope="session")
def shard_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_path_shards(root / "u", 24, "u", cube=16, per_shard=4, seed=1)
    write_path_shards(root / "straight", 16, "straight", cube=16, per_shard=4, seed=2)
    write_path_shards(root / "block", 16, "block", cube=8, per_shard=4, seed=3)
    write_labelled_shards(root / "labelled", (32, 16, 16), size=12, per_shard=8, seed=4)
    return root


@pytest.fixture(scope="session")
def u_shards(shard_root):
    return shard_root / "u"


@pytest.fixture(scope="session")
def labelled(shard_root):
    return shard_root / "labelled"
