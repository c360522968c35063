"""The trainer's commands end to end (synthetic shards) and fine-tuning on real AdrenalMNIST3D."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import webdataset as wds
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


def _npz_split_to_shards(images, labels, out, name):
    out.mkdir(parents=True)
    with wds.TarWriter(str(out / f"{name}-000000.tar")) as tw:
        for i, (img, y) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            np.save(buf, (img.astype(np.float32) / 127.5 - 1).astype(np.float16))
            tw.write({"__key__": f"{name}{i:05d}", "volume.npy": buf.getvalue(), "cls": str(int(y[0])).encode(),
                      "json": json.dumps({"case": f"{name}{i:05d}"}).encode()})
    (out / "manifest.json").write_text(json.dumps({"format_version": 1, "config": {}, "total": len(images),
                                                   "shards": [{"name": f"{name}-000000.tar",
                                                               "samples": len(images)}]}))


def test_finetune_on_real_adrenalmnist3d(shared_data, tmp_path):
    """A slice of the real MedMNIST set (28^3 masks, binary): the whole path runs and scores sanely."""
    z = np.load(shared_data / "labeled" / "adrenalmnist3d.npz")
    for split, n in (("train", 96), ("val", 48), ("test", 96)):
        _npz_split_to_shards(z[f"{split}_images"][:n], z[f"{split}_labels"][:n], tmp_path / "adrenal" / split, split)
    res = CliRunner().invoke(main, ["finetune", str(tmp_path / "adrenal"), "--scratch", "--arch", "vgg",
                                    "--epochs", "2", "--out", str(tmp_path / "ft"), *TINY])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert m["n"] == 96 and 0 <= m["acc"] <= 1 and m["auc"] is not None
    assert sum(map(sum, m["confusion"])) == 96
