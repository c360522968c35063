"""The trainer's commands end to end on synthetic shards, and one-line errors for user mistakes."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main

TINY = ["--width", "0.0625", "--workers", "0"]


def test_pretrain_finetune_evaluate_commands(u_shards, labelled, tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["pretrain", str(u_shards), "--task", "tcpc", "--steps", "2", "--batch-size", "4",
                          "--out", str(tmp_path / "pt"), *TINY])
    assert res.exit_code == 0, res.output
    assert "final loss" in res.output and (tmp_path / "pt" / "last.pt").is_file()
    res = r.invoke(main, ["finetune", str(labelled), "--init", str(tmp_path / "pt" / "last.pt"), "--epochs", "1",
                          "--label-fraction", "0.5", "--out", str(tmp_path / "ft"), *TINY])
    assert res.exit_code == 0, res.output
    assert "test AUC" in res.output and "0 missing" in res.output
    res = r.invoke(main, ["evaluate", str(tmp_path / "ft" / "best.pt"), str(labelled / "test"),
                          "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == 16


@pytest.mark.parametrize("args,message", [
    (["pretrain", "{tmp}/none", "--out", "{tmp}/o"], "error: shard directory"),
    (["pretrain", "{labelled}/train", "--out", "{tmp}/o", *TINY], "no 'cubes.npy' member"),
    (["finetune", "{labelled}", "--epochs", "1", "--out", "{tmp}/o"], "exactly one of --init CKPT or --scratch"),
    (["finetune", "{labelled}", "--scratch", "--label-fraction", "2", "--out", "{tmp}/o"], "label fraction"),
    (["finetune", "{labelled}", "--init", "{tmp}/none.pt", "--out", "{tmp}/o", *TINY], "does not exist"),
    (["evaluate", "{tmp}/none.pt", "{labelled}"], "does not exist"),
])
def test_user_errors_are_one_line(labelled, tmp_path, args, message):
    res = CliRunner().invoke(main, [a.format(tmp=tmp_path, labelled=labelled) for a in args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_a_damaged_shard_read_by_a_loader_worker_is_one_line_and_keeps_the_checkpoint(tmp_path):
    from tcpc_train.input.synthetic import write_synthetic_paths

    shards = write_synthetic_paths(tmp_path / "u", 16, "u", per_shard=4, seed=1)
    args = ["pretrain", str(shards), "--steps", "2", "--batch-size", "4", "--width", "0.0625",
            "--out", str(tmp_path / "run"), "--workers", "2"]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    tar = shards / "synthetic-000002.tar"
    tar.write_bytes(tar.read_bytes()[:5000])
    res = CliRunner().invoke(main, [*args[:2], "--steps", "8", *args[4:]])  # resumes, then meets the damage
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"error: {tar}: truncated tar (the member at byte 0 declares" in res.output
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_a_rerun_resumes_unless_fresh(labelled, tmp_path):
    args = ["finetune", str(labelled), "--scratch", "--arch", "vgg", "--epochs", "1", "--out", str(tmp_path / "ft"),
            *TINY]
    assert CliRunner().invoke(main, args).exit_code == 0
    res = CliRunner().invoke(main, [*args, "--lr", "0.01"])
    assert res.exit_code == 2 and "holds another run (lr: 0.001)" in res.output
    res = CliRunner().invoke(main, [*args, "--lr", "0.01", "--fresh"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["lr"] == 0.01
