"""End to end with the engine's own shard writers on real data (AdrenalMNIST3D): tcpc_data writes
pretraining and labelled shards, the trainer pretrains every task and fine-tunes from TCPC."""
from __future__ import annotations

import numpy as np
import pytest

from tcpc_data.shards.labelled import pretrain_config_for, write_npz_shards
from tcpc_train.loops.finetuning import FinetuneConfig, finetune
from tcpc_train.loops.pretraining import PretrainConfig, pretrain
from tcpc_train.loops.runtime import RuntimeConfig


@pytest.fixture(scope="module")
def adrenal_subset(shared_data, tmp_path_factory):
    z = np.load(shared_data / "labeled" / "adrenalmnist3d.npz")
    path = tmp_path_factory.mktemp("adrenal") / "subset.npz"
    n = {"train": 32, "val": 16, "test": 16}
    np.savez(path, **{f"{s}_{k}": z[f"{s}_{k}"][:n[s]] for s in n for k in ("images", "labels")})
    return path


@pytest.mark.parametrize("task,kind", [("tcpc", "u"), ("cpc", "straight"), ("rubik", "block")])
def test_pretrain_on_engine_shards(adrenal_subset, tmp_path, task, kind):
    cfg = pretrain_config_for(28, path=kind, targets_per_crop=1, shard_size=8)
    (_, manifest), = write_npz_shards(adrenal_subset, tmp_path / "shards", task="pretrain", config=cfg).values()
    assert manifest["totals"]["samples"] == 32
    s = pretrain(tmp_path / "shards", tmp_path / "run", PretrainConfig(
        task=task, steps=2, width=1 / 16, batch_size=4, runtime=RuntimeConfig(workers=0), n_permutations=10))
    assert s["steps"] == 2 and np.isfinite(s["final_loss"])


def test_finetune_from_tcpc_on_engine_shards(adrenal_subset, tmp_path):
    write_npz_shards(adrenal_subset, tmp_path / "pre", task="pretrain",
                     config=pretrain_config_for(28, targets_per_crop=1, shard_size=8))
    write_npz_shards(adrenal_subset, tmp_path / "lab", task="finetune")
    p = pretrain(tmp_path / "pre", tmp_path / "tcpc", PretrainConfig(steps=2, width=1 / 16, batch_size=4,
                                                                 runtime=RuntimeConfig(workers=0)))
    s = finetune(tmp_path / "lab", tmp_path / "ft", FinetuneConfig(
        epochs=1, width=1 / 16, batch_size=4, init=p["checkpoint"], label_fraction=0.5,
        runtime=RuntimeConfig(workers=0, shuffle_buffer=512)))
    assert s["n_train"] == 16 and s["init_report"]["missing"] == []
    assert s["metrics"]["n"] == 16 and s["metrics"]["auc"] is not None
