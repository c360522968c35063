"""bench/crop_ablation.py: the crop-source ablation's splits, crops, pairing and resumption."""
import csv
import itertools
import json

import numpy as np
import pytest

from bench.crop_ablation import ROWS, SOURCES, AblationConfig, _split_csvs, run  # the repository root is on pythonpath
from tcpc_data.store.volumes import open_store
from tcpc_train.input.loader import open_shards, raw_samples


def test_splits_are_whole_patients_in_order(tmp_path):
    table = tmp_path / "lesions.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "z", "y", "x", "label"])
        w.writerows([f"p{i}", 1, 2, 3, i % 2] for i in (3, 0, 1, 2, 0, 4))
    parts = _split_csvs(table, tmp_path, (2, 1))
    assert parts == {"train": ["p0", "p1"], "val": ["p2"], "test": ["p3", "p4"]}
    rows = {s: [r["case"] for r in csv.DictReader(open(tmp_path / f"lesions-{s}.csv"))] for s in parts}
    assert rows == {"train": ["p0", "p1", "p0"], "val": ["p2"], "test": ["p3", "p4"]}
    with pytest.raises(ValueError, match="at least one test patient"):
        _split_csvs(table, tmp_path, (3, 2))


@pytest.mark.slow
@pytest.mark.timeout(900)  # 3 minutes on the busy 2-core machine
def test_every_source_gets_the_same_budget_and_a_rerun_trains_nothing(tmp_path):
    cfg = AblationConfig(cases=6, shape=(32, 64, 64), lesions_per_case=3, split=(3, 1), n_segments=120, top_k=3,
                         targets_per_crop=2, width=0.0625, pretrain_steps=2, batch=4, pretrain_seeds=(0, 1),
                         seeds=(0, 1, 2), fractions=(0.5,), epochs=(1,), val_min=2, n_boot=50)
    lines = []
    res = run(tmp_path / "a", cfg, log=lines.append)
    train = ["phantom-000", "phantom-001", "phantom-002"]
    # every source: top_k crops per training case, nothing from a val or test patient
    assert set(res["shares"]) == set(SOURCES)
    for source, share in res["shares"].items():
        assert share["crops"] == 3 * 3 and sorted(share["per_case"]) == train and 0 <= share["share"] <= 1
        shards = open_shards(tmp_path / "a" / "shards" / source)
        metas = [json.loads(r["json"]) for r in itertools.chain.from_iterable(map(raw_samples, shards.urls))]
        assert len(metas) == 3 * 3 * 2 and {m["case"] for m in metas} == set(train)
    root = open_store(tmp_path / "a" / "stores" / "body.zarr", "r")
    for case in train:  # random-in-body centres lie in the body mask; the centre source is one box
        c = root[case]["candidates"][...]
        assert (root[case]["supervoxels"][...][tuple(c.T)] > 0).all()
        centre = open_store(tmp_path / "a" / "stores" / "centre.zarr", "r")[case]["candidates"][...]
        assert np.array_equal(centre, np.tile(np.array(cfg.shape) // 2, (3, 1)))
    # rows paired: per seed one label subset and validation subset for every row; seed i -> pretraining seed i mod 2
    cells = [json.loads(x) for x in (tmp_path / "a" / "cells.jsonl").read_text().splitlines()]
    assert [(c["seed"], c["row"]) for c in cells] == [(s, r) for s in cfg.seeds for r in ROWS]
    for seed in cfg.seeds:
        same = [c for c in cells if c["seed"] == seed]
        assert len({(c["n_train"], c["n_val"]) for c in same}) == 1
        assert {c["pretrain_seed"] for c in same if c["row"] != "scratch"} == {seed % 2}
        views = {json.loads((tmp_path / "a" / c["predictions"] / "val_keys.json").read_text()).__repr__()
                 for c in same}
        assert len(views) == 1
    table = (tmp_path / "a" / "results.md").read_text()
    assert all(f"| {label} |" in table for label in ROWS.values())
    assert (tmp_path / "a" / "crop-ablation.png").stat().st_size > 20_000
    assert sum("pretrained" in x for x in lines) == len(SOURCES) * 2
    losses = [json.loads(x) for x in (tmp_path / "a" / "pretrain.jsonl").read_text().splitlines()]
    assert [(x["source"], x["seed"]) for x in losses] == [(s, p) for s in SOURCES for p in (0, 1)]
    assert all(x["steps"] == 2 and np.isfinite(x["final_loss"]) for x in losses)
    again = []
    run(tmp_path / "a", cfg, log=again.append)
    assert not [x for x in again if "pretrained" in x or "test ACC" in x]  # everything found finished
