"""Pretraining: every task runs, a killed run resumes with identical losses, DDP on CPU with gloo,
weights-only checkpoints, and clear errors for wrong shards or configs."""
from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from tcpc_train.loops.checkpoint import load_checkpoint, save_checkpoint
from tcpc_train.input.loader import ShardStream, open_shards
from tcpc_train.loops.pretraining import PretrainConfig, learning_rate, pretrain
from tcpc_train.loops.runtime import RuntimeConfig
from tcpc_train.input.synthetic import write_synthetic_paths

TINY = dict(width=1 / 16, batch_size=4, warmup=1, checkpoint_every=2,
            runtime=RuntimeConfig(workers=0, shuffle_buffer=8))


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task,kind", [("tcpc", "u"), ("cpc", "straight"), ("rubik", "block"), ("jigsaw", "block")])
def test_each_task_trains_and_writes_its_outputs(shard_root, tmp_path, task, kind):
    s = pretrain(shard_root / kind, tmp_path, PretrainConfig(task=task, steps=2, n_permutations=10, **TINY))
    assert s["steps"] == 2 and s["start_step"] == 0 and s["samples_per_s"] > 0
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and {"loss", "lr", "samples_per_s"} <= set(rows[0])
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows) and math.isfinite(s["final_loss"])
    for name in ("last.pt", "loss.png", "summary.json", "config.json"):
        assert (tmp_path / name).is_file()
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 2 and ck["config"]["task"] == task and len(ck["data_digest"]) == 64
    if task in ("tcpc", "cpc"):
        assert abs(rows[0]["loss"] - s["chance_loss"]) < 1.0  # untrained: near log(batch)


def test_killed_run_resumes_at_the_same_step_with_the_same_losses(u_shards, tmp_path, killed_after):
    """Killed with two loader processes and resumed with the loader in-process: the losses are the
    uninterrupted run's (the data order does not depend on the worker count)."""
    cfg = PretrainConfig(steps=6, **{**TINY, "runtime": RuntimeConfig(workers=2, shuffle_buffer=8)})
    pretrain(u_shards, tmp_path / "whole", cfg)
    with killed_after(lambda row: row["step"] == 5):  # killed after step 5; the last checkpoint is step 4
        pretrain(u_shards, tmp_path / "killed", cfg)
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["step"] == 4
    s = pretrain(u_shards, tmp_path / "killed", dataclasses.replace(cfg, runtime=TINY["runtime"]))
    assert s["start_step"] == 4
    assert _losses(tmp_path / "killed") == pytest.approx(_losses(tmp_path / "whole"), abs=1e-5)


def test_resume_refuses_a_different_config_or_data(u_shards, shard_root, tmp_path):
    pretrain(u_shards, tmp_path, PretrainConfig(steps=1, **TINY))
    ck = load_checkpoint(tmp_path / "last.pt")  # a run from before all_rank_negatives existed resumes
    del ck["config"]["all_rank_negatives"]
    save_checkpoint(tmp_path / "last.pt", ck)
    assert pretrain(u_shards, tmp_path, PretrainConfig(steps=2, **TINY))["start_step"] == 1
    with pytest.raises(ValueError, match="different config .*lr"):
        pretrain(u_shards, tmp_path, PretrainConfig(steps=3, **{**TINY, "lr": 0.5}))
    other = write_synthetic_paths(tmp_path / "other", 8, "u", seed=9)
    with pytest.raises(ValueError, match="other shards"):
        pretrain(other, tmp_path, PretrainConfig(steps=3, **TINY))


def test_wrong_shards_for_the_task_fail_clearly(shard_root, tmp_path):
    with pytest.raises(ValueError, match="task tcpc needs 'u' paths"):
        pretrain(shard_root / "straight", tmp_path / "a", PretrainConfig(task="tcpc", steps=1, **TINY))
    with pytest.raises(ValueError, match="task tcpc needs 'u' paths .*not planar"):
        pretrain(shard_root / "block", tmp_path / "a", PretrainConfig(task="tcpc", steps=1, **TINY))
    with pytest.raises(ValueError, match="task cpc needs 'straight' paths"):
        pretrain(shard_root / "u", tmp_path / "b", PretrainConfig(task="cpc", steps=1, **TINY))
    with pytest.raises(ValueError, match=r"task rubik needs 'block' paths .*planar \(use --task tcpc\)"):
        pretrain(shard_root / "u", tmp_path / "c", PretrainConfig(task="rubik", steps=1, **TINY))
    with pytest.raises(ValueError, match="no 'cubes.npy' member"):
        pretrain(shard_root / "labelled" / "train", tmp_path / "d", PretrainConfig(steps=1, **TINY))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrain(tmp_path / "missing", tmp_path / "e", PretrainConfig(steps=1, **TINY))
    assert not (tmp_path / "a").exists()  # nothing written for a run that could not start


def test_bad_configs_are_refused(u_shards, tmp_path):
    for bad, match in [({"task": "simclr"}, "unknown task"), ({"arch": "vit"}, "unknown architecture"),
                       ({"batch_size": 1}, "in-batch negatives"), ({"steps": 0}, "steps must be"),
                       ({"runtime": RuntimeConfig(device="tpu")}, "unknown device")]:
        with pytest.raises(ValueError, match=match):
            pretrain(u_shards, tmp_path, PretrainConfig(**{**TINY, **bad}))


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    cfg = PretrainConfig(lr=1.0, warmup=10, steps=110)
    assert learning_rate(0, cfg) == pytest.approx(0.1) and learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(10, cfg) == pytest.approx(1.0) and learning_rate(110, cfg) == pytest.approx(0.1)


class NotAWeight:
    pass


def test_checkpoints_load_weights_only_and_refuse_pickled_objects(tmp_path):
    save_checkpoint(tmp_path / "ok.pt", {"model": {"w": torch.ones(2)}, "step": 3, "config": {"a": [1, "b"]}})
    assert load_checkpoint(tmp_path / "ok.pt")["step"] == 3
    torch.save({"model": {}, "evil": NotAWeight()}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="not a weights-only torch checkpoint"):
        load_checkpoint(tmp_path / "pickled.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a weights-only"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")


def _ddp_worker(rank, world, port, shards, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    seen = []  # (epoch, key) of every sample this rank's loader read (workers=0: in this process)
    read = ShardStream._epoch_samples

    def recording(self, epoch):
        for raw in read(self, epoch):
            seen.append((epoch, raw["__key__"]))
            yield raw
    ShardStream._epoch_samples = recording
    try:
        torch.set_num_threads(1)
        s = pretrain(shards, out, PretrainConfig(steps=3, **TINY))
        with open(out.parent / f"rank{rank}.json", "w") as f:
            json.dump({"world": s["world_size"], "final_loss": s["final_loss"],
                       "epoch0": [k for e, k in seen if e == 0]}, f)
        torch.distributed.barrier()  # neither rank tears gloo down while the other is still in a collective
    finally:
        ShardStream._epoch_samples = read
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_on_cpu_with_gloo(u_shards, tmp_path, free_port):
    mp.spawn(_ddp_worker, args=(2, free_port, str(u_shards), tmp_path / "run"), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2 and math.isfinite(r0["final_loss"])
    # Each rank's first epoch is its own half of the set: 3 steps x 4 samples = 12 = 24 / 2, all trained on.
    keys = [set(r["epoch0"]) for r in (r0, r1)]
    assert len(r0["epoch0"]) == len(r1["epoch0"]) == 12 and not keys[0] & keys[1]
    assert keys[0] | keys[1] == {f"synthetic{i:05d}_c0" for i in range(open_shards(u_shards).total)}
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # only rank 0 logs
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3
