"""The task registry and the runtime pieces shared by pretraining, fine-tuning and evaluation."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import tcpc_data.shards.cubepaths as P
from tcpc_train.loops.pretraining import PretrainConfig, pretrain
from tcpc_train.loops.runtime import RuntimeConfig, config_changes, optimiser_steps
from tcpc_train.tasks.registry import TASKS, path_rank


def test_every_task_reads_a_registered_path_kind_of_a_rank_it_accepts():
    for task in TASKS.values():
        kind = P.PATHS[task.path_kind]
        for plane, opening in kind.variants:
            path = np.asarray(kind.fn(np.array([4, 4, 4]), plane, opening, kind.default_size))
            assert path_rank(path) in task.support_ranks, (task.name, plane, opening)


def test_path_rank_of_lines_planes_and_solids():
    assert path_rank(np.array([[0, 0, 0], [0, 0, 0]])) == 0
    assert path_rank(np.array([[0, 0, 0], [1, 1, 1], [3, 3, 3]])) == 1
    assert path_rank(np.array([[0, 0, 0], [1, 0, 0], [0, 0, 2]])) == 2
    assert path_rank(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])) == 3


def test_a_wrong_path_names_the_task_that_reads_it():
    with pytest.raises(ValueError, match=r"s1: task cpc needs 'straight' paths .*planar \(use --task tcpc\)"):
        TASKS["cpc"].check_path(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]]), "s1")


def test_adding_a_task_is_one_registry_entry(shard_root, tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "line", dataclasses.replace(TASKS["cpc"], name="line", label="a line task"))
    s = pretrain(shard_root / "straight", tmp_path, PretrainConfig(
        task="line", steps=1, width=1 / 16, batch_size=4, runtime=RuntimeConfig(workers=0)))
    assert s["task"] == "line" and np.isfinite(s["final_loss"]) and s["chance_loss"] == pytest.approx(np.log(4))


def test_config_changes_compares_nested_configs_field_by_field():
    old = dataclasses.asdict(PretrainConfig())
    new = dataclasses.asdict(PretrainConfig(steps=5, lr=0.5, runtime=RuntimeConfig(device="cpu", seed=3)))
    assert config_changes(old, new, {"steps", "runtime.device"}) == {"lr": (1e-3, 0.5), "runtime.seed": (0, 3)}


def test_optimiser_steps_stop_at_the_step_count_or_when_the_batches_run_out():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    batches = [{"x": torch.randn(4, 3), "key": ["k"] * 4} for _ in range(5)]

    def loss_of(batch):
        assert "key" not in batch
        return net(batch["x"]).pow(2).mean()

    cpu = torch.device("cpu")
    rows = list(optimiser_steps(loss_of, opt, iter(batches), cpu, lambda i: 0.1 * i, False, steps=3))
    assert [lr for _, lr, _, _ in rows] == [0.0, 0.1, 0.2] and all(n == 4 for *_, n in rows)
    assert len(list(optimiser_steps(loss_of, opt, iter(batches), cpu, lambda i: 0.0, False))) == 5
    assert list(optimiser_steps(loss_of, opt, iter(batches), cpu, lambda i: 0.0, False, steps=0)) == []
