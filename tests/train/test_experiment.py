"""The Table-1 experiment runner end to end on a tiny synthetic MedMNIST-layout set."""
import dataclasses
import json

import numpy as np
import pytest

from tcpc_train.apps.experiment import ExperimentConfig, load_config, run_experiment


def _tiny_npz(path, n=(8, 4, 4), side=28, seed=0):
    """Two classes: a bright sphere of radius 4 (class 0) or 8 (class 1) in uint8 volumes."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:side, :side, :side] - side / 2
    r = np.sqrt(zz ** 2 + yy ** 2 + xx ** 2)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = np.arange(count) % 2
        imgs = np.stack([np.where(r < (4 if c == 0 else 8), 200, 20) + rng.integers(0, 30, r.shape)
                         for c in labels]).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = imgs, labels[:, None]
    np.savez(path, **arrays)
    return path


def test_experiment_runs_every_cell_then_skips_them(tmp_path):
    npz = _tiny_npz(tmp_path / "tiny.npz")
    cfg = ExperimentConfig(npz=str(npz), methods=("scratch", "tcpc"), fractions=(0.5, 1.0), seeds=(0,),
                           epochs=(1, 1), width=0.0625, pretrain_steps=2, pretrain_batch=4,
                           finetune_batch=4, targets_per_crop=1, device="cpu")
    res = run_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    assert len(res["cells"]) == 4 and res["skipped"] == 0
    assert {c["n_train"] for c in res["cells"]} == {4, 8}  # stratified: half and all of 8 labels
    assert all(0 <= c["acc"] <= 1 and 0 <= c["auc"] <= 1 for c in res["cells"])
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "| TCPC |" in md and "| train from scratch |" in md and "ResNet-18 + 3D" in md
    assert (tmp_path / "exp" / "auc_vs_fraction.png").stat().st_size > 5000
    # a rerun finds every cell and the pretraining finished and recomputes nothing
    again = run_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    assert again["skipped"] == 5 and again["cells"] == res["cells"]
    # a changed fine-tuning setting reruns the cells afresh (not resuming the old checkpoints)
    longer = dataclasses.replace(cfg, epochs=(2, 1))
    third = run_experiment(longer, tmp_path / "exp", log=lambda s: None)
    assert third["skipped"] == 1 + 2  # the pretraining and the two cells at fraction 1.0
    assert json.loads((tmp_path / "exp" / "cells" / "tcpc-f0.5-s0" / "config.json").read_text())["epochs"] == 2


def test_load_config_resolves_npz_and_rejects_bad_settings(tmp_path):
    npz = _tiny_npz(tmp_path / "tiny.npz")
    good = tmp_path / "good.toml"
    good.write_text('npz = "tiny.npz"\nfractions = [0.1, 1.0]\nepochs = [5, 1]\n')
    cfg = load_config(good)
    assert cfg.npz == str(npz.resolve()) and cfg.fractions == (0.1, 1.0)
    bad = tmp_path / "bad.toml"
    for text, message in [('npz = "tiny.npz"\nepoch = 3\n', "unknown settings \\['epoch'\\]"),
                          ('npz = "tiny.npz"\nfractions = [0.1, 1.0]\n', "one epoch count per label fraction"),
                          ('npz = [\n', "not valid TOML")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_config(bad)
    bad.write_text('npz = "missing.npz"\n')
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_config(bad)


def test_a_run_stopped_early_keeps_its_table_so_far(tmp_path, monkeypatch):
    import tcpc_train.apps.experiment as experiment_mod

    npz = _tiny_npz(tmp_path / "tiny.npz")
    cfg = ExperimentConfig(npz=str(npz), methods=("scratch",), fractions=(0.5, 1.0), seeds=(0, 1),
                           epochs=(1, 1), width=0.0625, pretrain_steps=2, pretrain_batch=4,
                           finetune_batch=4, targets_per_crop=1, device="cpu")
    finetune, calls = experiment_mod.finetune, []

    def dies_on_the_third(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the device time ran out
        calls.append(1)
        return finetune(*args, **kwargs)
    monkeypatch.setattr(experiment_mod, "finetune", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    rows = [json.loads(x) for x in (tmp_path / "exp" / "cells.jsonl").read_text().splitlines()]
    assert [(r["fraction"], r["seed"]) for r in rows] == [(0.5, 0), (1.0, 0)]
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "Partial: 2 of 4 cells" in md and "| train from scratch |" in md
    monkeypatch.setattr(experiment_mod, "finetune", finetune)
    done = run_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    assert done["skipped"] == 2 and len(done["cells"]) == 4
    assert "Partial" not in (tmp_path / "exp" / "results.md").read_text()
