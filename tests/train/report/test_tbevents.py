"""TensorBoard event files (torch's SummaryWriter, the tensorboard extra): read back with tensorboard's
EventAccumulator, a resumed run showing every step once, none by default, and a one-line error when
asked for without the package."""
import json
import math
import sys

import pytest

from tcpc_train.loops.runtime import StepLog
from tcpc_train.report.tbevents import SUFFIX, MissingTensorBoard, require_tensorboard, row_scalars

tb = pytest.importorskip("tensorboard", reason="the tensorboard package (test extra) reads the event files back")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _scalars(directory, tag):
    acc = EventAccumulator(str(directory))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_row_scalars_keep_plottable_numbers_only():
    row = {"step": 3, "wall_time": 1e9, "loss": 0.5, "lr": 1e-3, "skipped": 0, "flag": True, "auc": None,
           "key": "x", "bad": math.nan, "huge": 1e300}
    assert row_scalars(row) == {"loss": 0.5, "lr": 1e-3, "skipped": 0.0}


def test_step_log_mirrors_its_rows_and_a_resume_shows_each_step_once(tmp_path):
    log = StepLog(tmp_path / "log.jsonl", True, tensorboard=True)
    for step in range(1, 6):
        log.write({"step": step, "loss": 1.0 / step, "lr": 0.1})
    log.write({"step": 5, "epoch": 1, "val_auc": 0.75})
    assert _scalars(tmp_path, "loss") == [(s, pytest.approx(1.0 / s)) for s in range(1, 6)]
    assert _scalars(tmp_path, "val_auc") == [(5, 0.75)]
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    watcher = EventAccumulator(str(tmp_path))  # a TensorBoard that keeps reading across the resume
    watcher.Reload()

    resumed = StepLog(tmp_path / "log.jsonl", True, keep_until_step=3, tensorboard=True)  # checkpoint at 3
    for step in range(4, 7):
        resumed.write({"step": step, "loss": 10.0 + step, "lr": 0.1})
    assert sorted(p.stat().st_size > 0 for p in tmp_path.glob(f"*tfevents*{SUFFIX}")) == [False, True]
    want = [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3)), (4, 14.0), (5, 15.0), (6, 16.0)]
    assert _scalars(tmp_path, "loss") == want
    assert "val_auc" not in EventAccumulator(str(tmp_path)).Reload().Tags()["scalars"]
    watcher.Reload()
    assert [(e.step, e.value) for e in watcher.Scalars("loss")] == want
    StepLog(tmp_path / "log.jsonl", True, keep_until_step=6, tensorboard=True)  # the emptied file goes
    assert sorted(p.stat().st_size > 0 for p in tmp_path.glob(f"*tfevents*{SUFFIX}")) == [False, True]
    assert _scalars(tmp_path, "loss") == want
    # the kept rows keep their wall times
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.wall_time for e in acc.Scalars("loss")[:3]] == pytest.approx([r["wall_time"] for r in rows[:3]])


def test_off_or_inactive_writes_no_event_file(tmp_path):
    StepLog(tmp_path / "a" / "log.jsonl", False, tensorboard=True).write({"step": 1, "loss": 1.0})
    (tmp_path / "b").mkdir()
    StepLog(tmp_path / "b" / "log.jsonl", True, tensorboard=False).write({"step": 1, "loss": 1.0})
    assert not list(tmp_path.rglob("*tfevents*"))


def test_killed_and_resumed_pretraining_logs_each_step_once(u_shards, tmp_path, killed_after):
    from tcpc_train.loops.pretraining import PretrainConfig, pretrain
    from tcpc_train.loops.runtime import RuntimeConfig

    cfg = PretrainConfig(steps=5, width=1 / 16, batch_size=4, warmup=1, checkpoint_every=2,
                         runtime=RuntimeConfig(workers=0, shuffle_buffer=8))
    with killed_after(lambda row: row["step"] == 3):  # the last checkpoint is step 2
        pretrain(u_shards, tmp_path, cfg, tensorboard=True)
    assert _scalars(tmp_path, "loss")[-1][0] == 3
    pretrain(u_shards, tmp_path, cfg, tensorboard=True)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert _scalars(tmp_path, "loss") == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]
    assert _scalars(tmp_path, "lr") == [(r["step"], pytest.approx(r["lr"], rel=1e-6)) for r in rows]
    pretrain(u_shards, tmp_path / "quiet", cfg)  # the default: log.jsonl only
    assert (tmp_path / "quiet" / "log.jsonl").exists() and not list((tmp_path / "quiet").glob("*tfevents*"))


def test_asking_for_event_files_without_tensorboard_is_one_line_and_writes_nothing(u_shards, tmp_path,
                                                                                   monkeypatch):
    from click.testing import CliRunner

    from cli import main

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(MissingTensorBoard, match="pip install 'tcpc\\[tensorboard\\]'"):
        require_tensorboard()
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["pretrain", str(u_shards), "--out", str(out), "--steps", "1", "--batch-size", "4",
                                  "--width", "0.0625", "--workers", "0", "--tensorboard"])
    assert r.exit_code == 2 and r.output.strip().splitlines() == [
        "error: TensorBoard event files need the tensorboard package: pip install 'tcpc[tensorboard]' "
        "(or leave out --tensorboard)"]
    assert not out.exists()
