"""The Table-1 experiment runner end to end on tiny synthetic sets (seconds)."""
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from tcpc_data.shards.labelled import pretrain_config_for
from tcpc_train.apps.experiment import (METHODS, ExperimentConfig, Selection, load_config, run_experiment, select,
                                        validation_size, validation_view)
from tcpc_train.loops.finetuning import read_labels
from tcpc_train.input.loader import labelled_splits
from tcpc_train.input.synthetic import write_synthetic_labelled

TINY = dict(width=0.0625, pretrain_steps=2, pretrain_batch=4, finetune_batch=4, targets_per_crop=1, device="cpu",
            n_boot=100, val_min=2, seeds=(0,), pretrain_seeds=(0,))


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


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory):
    """A labelled shard set to run on and an independent one (other seed) to validate externally."""
    root = tmp_path_factory.mktemp("sets")
    return (write_synthetic_labelled(root / "data", (16, 16, 8), size=12, per_shard=8, seed=4),
            write_synthetic_labelled(root / "external", (4, 4, 10), size=12, per_shard=8, seed=9))


@pytest.mark.slow  # ten cells and three pretrainings: about 12 s on 2 cores
def test_experiment_runs_every_row_with_intervals_then_skips_them(tmp_path, shard_sets):
    npz = _tiny_npz(tmp_path / "tiny.npz")
    cfg = ExperimentConfig(data=str(npz), rows=("majority", "scratch", "tcpc", "external", "cascade"),
                           fractions=(0.5, 1.0), epochs=(1, 1), external_init=str(shard_sets[0]),
                           external_epochs=1, **TINY)
    res = run_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    assert len(res["cells"]) == 10 and res["skipped"] == 0
    assert {c["n_train"] for c in res["cells"]} == {4, 8}  # stratified: half and all of 8 labels
    for c in res["cells"]:
        assert all(0 <= c[m] <= 1 for m in ("acc", "balanced_acc", "auc"))
        assert (tmp_path / "exp" / c["predictions"] / "predictions.npz").exists()
    majority = [c for c in res["cells"] if c["row"] == "majority"]
    assert all(c["balanced_acc"] == 0.5 and c["auc"] == 0.5 and c["checkpoint"] is None for c in majority)
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "| 50 % | TCPC | 1 |" in md and "| 100 % | train from scratch | 1 |" in md
    assert "Δ AUC vs TCPC (p)" in md and "[95 % CI]" in md and "ResNet-18 + 3D" not in md  # not the Adrenal set
    assert "External init is a stand-in" in md and "synthetic" not in md.split("stand-in")[0]
    # the cascade pretrains TCPC from the supervised stand-in
    cascade = json.loads((tmp_path / "exp" / "pretrain" / "cascade-p0" / "config.json").read_text())
    assert cascade["init"].endswith("external-p0/best.pt")
    assert (tmp_path / "exp" / "fig4_left.png").stat().st_size > 5000
    # a rerun finds every fine-tuned cell and every pretraining finished and recomputes nothing
    again = run_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    assert again["skipped"] == 8 + 3 and [c["acc"] for c in again["cells"]] == [c["acc"] for c in res["cells"]]


@pytest.mark.slow  # three pretrainings and three cells: about 10 s
def test_the_cube_size_overlap_grid_draws_fig4_right(tmp_path):
    npz = _tiny_npz(tmp_path / "tiny.npz")
    cfg = ExperimentConfig(data=str(npz), rows=("tcpc",), fractions=(1.0,), epochs=(1,), grid_cube_sizes=(8,),
                           grid_overlaps=(0.5, 0.75), grid_fraction=1.0, **TINY)
    res = run_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    grid = [json.loads(x) for x in (tmp_path / "exp" / "grid.jsonl").read_text().splitlines()]
    assert sorted((g["cube"], g["overlap"], g["seed"]) for g in grid) == [(8, 0.5, 0), (8, 0.75, 0)]
    stride2 = json.loads((tmp_path / "exp" / "shards" / "u-c8-o75" / "manifest.json").read_text())["config"]
    assert stride2["cube_size"] == 8 and stride2["overlap"] == 0.75
    assert res["plots"][-1].endswith("fig4_right.png") and (tmp_path / "exp" / "fig4_right.png").stat().st_size > 5000
    # the heat map's numbers with intervals; the TCPC row's geometry (overlap -0.25) is not on this
    # grid, so the first geometry is the reference of the paired tests
    table = (tmp_path / "exp" / "grid.md").read_text()
    assert "paired test against cube 8, overlap 0.5." in table
    rows = {r.split(" | ")[1]: r for r in table.splitlines() if r.startswith("| 100 % |")}
    assert set(rows) == {"cube 8, overlap 0.5", "cube 8, overlap 0.75"}
    acc = next(g["acc"] for g in grid if g["overlap"] == 0.75)
    assert f"| {acc:.3f} [" in rows["cube 8, overlap 0.75"] and rows["cube 8, overlap 0.5"].endswith("| — | — |")


def test_rows_fractions_seeds_run_exactly_those_cells_and_external_scores_each(tmp_path, shard_sets):
    data, external = shard_sets
    config = tmp_path / "c.toml"
    config.write_text(f'data = "{data}"\nrows = ["majority", "scratch"]\nfractions = [0.25, 1.0]\n'
                      'epochs = [1, 1]\nseeds = [0, 1, 2]\npretrain_seeds = [0]\nwidth = 0.0625\n'
                      'finetune_batch = 4\nval_min = 4\nn_boot = 50\ndevice = "cpu"\n')
    r = CliRunner().invoke(main, ["experiment", str(config), "--out", str(tmp_path / "exp"), "--no-progress",
                                  "--rows", "majority,scratch", "--fractions", "1", "--seeds", "0,2",
                                  "--external", str(external)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "exp" / "cells").iterdir()) == \
        ["majority-f1-s0", "majority-f1-s2", "scratch-f1-s0", "scratch-f1-s2"]
    lines = [json.loads(x) for x in (tmp_path / "exp" / "external.jsonl").read_text().splitlines()]
    assert sorted((x["row"], x["fraction"], x["seed"]) for x in lines) == \
        [("majority", 1.0, 0), ("majority", 1.0, 2), ("scratch", 1.0, 0), ("scratch", 1.0, 2)]
    for x in lines:
        assert {"row", "fraction", "seed", "acc", "balanced_acc", "auc"} <= set(x) and x["n"] == 10
    assert all(x["balanced_acc"] == 0.5 for x in lines if x["row"] == "majority")
    r = CliRunner().invoke(main, ["experiment", str(config), "--out", str(tmp_path / "exp"), "--no-progress",
                                  "--seeds", "7"])
    assert r.exit_code == 2 and "--seeds [7] not in the config's seeds [0, 1, 2]" in r.output


def test_selection_keeps_each_seeds_pretraining_partner():
    cfg = ExperimentConfig(data="x.npz", seeds=(0, 1, 2, 3, 4), pretrain_seeds=(10, 11, 12),
                           fractions=(0.01, 0.1, 1.0), epochs=(9, 5, 2))
    cut = select(cfg, Selection(rows=("tcpc",), fractions=(0.1,), seeds=(3, 4)))
    assert cut.rows == ("tcpc",) and cut.fractions == (0.1,) and cut.epochs == (5,)
    assert cut.seeds == (3, 4) and cut.pretrain_seeds == (10, 11)  # paired as in the full protocol
    assert select(cfg, Selection()) == dataclasses.replace(cfg, pretrain_seeds=(10, 11, 12, 10, 11))


def test_validation_subset_scales_with_the_label_budget_and_never_touches_test(tmp_path, shard_sets):
    data = shard_sets[0]
    assert [validation_size(n, 100, 1.0, 20) for n in (1, 20, 50, 500)] == [20, 20, 50, 100]
    assert validation_size(10, 100, 2.5, 5) == 25
    cfg = ExperimentConfig(data=str(data), val_per_label=1.0, val_min=6)
    splits = labelled_splits(data)
    val, test = read_labels(splits["val"]), read_labels(splits["test"])
    view, keys = validation_view(data, tmp_path, n_train=4, seed=3, config=cfg)
    assert len(keys) == 6 and set(keys) <= set(val) and not set(keys) & set(test)
    assert {val[k] for k in keys} == {0, 1}  # stratified
    vsplits = labelled_splits(view)
    assert sorted(read_labels(vsplits["val"])) == keys
    assert vsplits["train"].digest == splits["train"].digest and vsplits["test"].digest == splits["test"].digest
    bigger = validation_view(data, tmp_path, n_train=10, seed=3, config=cfg)[1]
    assert len(bigger) == 10 and set(keys) <= set(bigger)  # the same seed grows the same subset
    assert validation_view(data, tmp_path, n_train=40, seed=3, config=cfg) == (data, sorted(val))
    # a fine-tuned cell selects on exactly that subset
    res = run_experiment(dataclasses.replace(cfg, rows=("scratch",), fractions=(0.25,), epochs=(1,), seeds=(3,),
                                             width=0.0625, finetune_batch=4, n_boot=20, device="cpu"),
                         tmp_path / "exp", log=lambda s: None)
    summary = json.loads((tmp_path / "exp" / "cells" / "scratch-f0.25-s3" / "summary.json").read_text())
    assert res["cells"][0]["n_train"] == 4 and summary["val"][0]["n"] == res["cells"][0]["n_val"] == 6


def test_load_config_resolves_paths_and_rejects_bad_settings(tmp_path):
    npz = _tiny_npz(tmp_path / "tiny.npz")
    good = tmp_path / "good.toml"
    good.write_text('data = "tiny.npz"\nfractions = [0.1, 1.0]\nepochs = [5, 1]\nexternal_init = "tiny.npz"\n'
                    'rows = ["tcpc", "cascade"]\n')
    cfg = load_config(good)
    assert cfg.data == cfg.external_init == str(npz.resolve()) and cfg.fractions == (0.1, 1.0)
    bad = tmp_path / "bad.toml"
    for text, message in [('data = "tiny.npz"\nepoch = 3\n', "unknown settings \\['epoch'\\]"),
                          ('data = "tiny.npz"\nfractions = [0.1, 1.0]\n', "one epoch count per label fraction"),
                          ('data = "tiny.npz"\nrows = ["external"]\n', "need external_init"),
                          ('data = "tiny.npz"\ngrid_cube_sizes = [8]\ngrid_overlaps = [0.5]\ngrid_fraction = 0.5\n',
                           "grid_fraction 0.5 must be one of fractions"),
                          ('data = [\n', "not valid TOML")]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_config(bad)
    bad.write_text('data = "missing.npz"\n')
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_config(bad)


def test_a_nodule_folder_with_a_bad_table_or_no_images_fails_with_one_line(tmp_path):
    folder = tmp_path / "nodules"
    (folder / "images").mkdir(parents=True)
    (folder / "nodules.csv").write_text("name,patient_id\nA,p1\n")
    cfg = ExperimentConfig(data=str(folder), rows=("scratch",), **{**TINY, "seeds": (0,)})
    with pytest.raises(ValueError, match=r"missing column\(s\).*coordX,coordY,coordZ"):
        run_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    (folder / "nodules.csv").write_text("name,patient_id,split,diagnosis,coordX,coordY,coordZ\n"
                                        "A,p1,train,1,0,0,0\nB,p2,train,0,0,0,0\n")
    with pytest.raises(ValueError, match="split column must name train and val"):  # no held-out patients
        run_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    (folder / "nodules.csv").write_text("name,patient_id,split,diagnosis,coordX,coordY,coordZ\n"
                                        "A,p1,train,1,0,0,0\nB,p2,train,0,0,0,0\nC,p3,val,0,0,0,0\n")
    with pytest.raises(ValueError, match=r"no VOI ingested from images/ \(1 failed; .*holds no files\)$"):
        run_experiment(cfg, tmp_path / "exp", log=lambda s: None)


def test_a_run_stopped_early_keeps_its_table_so_far(tmp_path, monkeypatch):
    import tcpc_train.apps.experiment as experiment_mod

    npz = _tiny_npz(tmp_path / "tiny.npz")
    cfg = ExperimentConfig(data=str(npz), rows=("scratch",), fractions=(0.5, 1.0), epochs=(1, 1),
                           **{**TINY, "seeds": (0, 1)})
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


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[3] / "experiments").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads_with_the_protocol(path):
    if not (Path(__file__).parents[4] / "shared" / "data" / "labeled").is_dir():
        pytest.skip("../shared/data is absent (a fresh clone outside the team)")
    cfg = load_config(path)
    if "quick" not in path.name:  # the full protocol: paired seeds, every row, 1/10/100 %
        assert len(cfg.seeds) >= 5 and len(cfg.pretrain_seeds) >= 3 and cfg.fractions == (0.01, 0.1, 1.0)
        assert set(cfg.rows) == {"majority", "scratch", "cpc", "rubik", "jigsaw", "tcpc", "external", "cascade"}
        assert cfg.val_per_label > 0 and cfg.val_min >= 20  # selection sized to the label budget
        if cfg.grid_cube_sizes:
            assert -0.25 in cfg.grid_overlaps and 0.5 in cfg.grid_overlaps  # default gap and the paper's
    if cfg.data.endswith(".npz"):  # every pretraining geometry fits the images before hours of work
        with np.load(cfg.data, allow_pickle=False) as z:
            side = z["train_images"].shape[-1]
        kinds = {METHODS[r][1] for r in cfg.rows if METHODS[r]}
        for kind in kinds:
            pretrain_config_for(side, path=kind).validate()
        for cube, overlap in itertools.product(cfg.grid_cube_sizes, cfg.grid_overlaps):
            pretrain_config_for(side, path="u", cube_size=cube, overlap=overlap).validate()
