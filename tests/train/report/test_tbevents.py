"""TensorBoard event files: bytes checked against tensorboard's own protobuf and record writer, files read
back with its EventAccumulator, and a resumed run showing every step once."""
import io
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_train.loops.runtime import StepLog
from tcpc_train.report.tbevents import SUFFIX, ScalarEvents, crc32c, event, record, row_scalars

tb = pytest.importorskip("tensorboard", reason="the tensorboard package (test extra) reads the event files back")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: E402
from tensorboard.summary.writer.record_writer import RecordWriter  # noqa: E402


def _scalars(directory, tag):
    acc = EventAccumulator(str(directory))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_crc32c_known_answer():
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    assert crc32c(b"") == 0


@settings(max_examples=50, deadline=None)
@given(step=st.integers(0, 2**62), wall=st.floats(0, 4e9),
       scalars=st.dictionaries(st.text(min_size=1, max_size=20), st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=4))
def test_event_bytes_are_tensorboards_protobuf(step, wall, scalars):
    ours = event(wall, step, scalars=scalars)
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()])
    theirs = event_pb2.Event(wall_time=wall, step=step, summary=summary)
    assert event_pb2.Event.FromString(ours) == theirs
    assert ours == theirs.SerializeToString()


def test_header_events_and_records_match_tensorboard():
    assert event(5.0, 0, file_version="brain.Event:2") == \
        event_pb2.Event(wall_time=5.0, file_version="brain.Event:2").SerializeToString()
    start = event_pb2.Event(wall_time=5.0, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
    assert event(5.0, 0, session_start=True) == start.SerializeToString()
    data = event(1.5, 7, scalars={"loss": 0.25})
    buf = io.BytesIO()
    RecordWriter(buf).write(data)
    assert record(data) == buf.getvalue()


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


def test_a_truncated_last_record_does_not_hide_the_rows_before_it(tmp_path):
    ev = ScalarEvents(tmp_path)
    for step in (1, 2):
        ev.write({"step": step, "loss": float(step)})
    data = ev.path.read_bytes()
    ev.path.write_bytes(data[:-7])  # a kill in the middle of the last record
    assert _scalars(tmp_path, "loss") == [(1, 1.0)]


def test_killed_and_resumed_pretraining_logs_each_step_once(u_shards, tmp_path, killed_after):
    from tcpc_train.loops.pretraining import PretrainConfig, pretrain
    from tcpc_train.loops.runtime import RuntimeConfig

    cfg = PretrainConfig(steps=5, width=1 / 16, batch_size=4, warmup=1, checkpoint_every=2,
                         runtime=RuntimeConfig(workers=0, shuffle_buffer=8))
    with killed_after(lambda row: row["step"] == 3):  # the last checkpoint is step 2
        pretrain(u_shards, tmp_path, cfg)
    assert _scalars(tmp_path, "loss")[-1][0] == 3
    pretrain(u_shards, tmp_path, cfg)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert _scalars(tmp_path, "loss") == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]
    assert _scalars(tmp_path, "lr") == [(r["step"], pytest.approx(r["lr"], rel=1e-6)) for r in rows]
    pretrain(u_shards, tmp_path / "quiet", cfg, tensorboard=False)
    assert not list((tmp_path / "quiet").glob("*tfevents*"))
