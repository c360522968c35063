"""The experiment on a folder of nodule VOIs (images/*.nii.gz + nodules.csv): its two data hooks,
the split that keeps test patients out of selection and pretraining, and --external on such a folder."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_data.store.volumes import list_cases
from tcpc_train.apps.experiment import (ExperimentConfig, Selection, nodule_labelled, nodule_pretrain_shards,
                                        _split_table, run_experiment)
from tcpc_train.loops.finetuning import read_labels
from tcpc_train.input.loader import labelled_splits, open_shards, raw_samples

TINY = dict(width=0.0625, pretrain_steps=2, pretrain_batch=4, finetune_batch=4, targets_per_crop=1, device="cpu",
            n_boot=50, val_min=2, seeds=(0,), pretrain_seeds=(0,), nodule_selection_share=0.3)
# The source pairs this VOI with a centre 25 mm outside it (tests/data/test_nodules.py).
OFF_SOURCE = "LIDC-IDRI-0332_R_1"


def _copy(src: Path, dst: Path, rows: list[dict]) -> Path:
    """A folder of the nodule layout holding ``rows``' VOIs (images and masks) and their table."""
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True)
        for r in rows:
            shutil.copy(src / sub / f"{r['name']}.nii.gz", dst / sub)
    with open(dst / "nodules.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dst


@pytest.fixture(scope="module")
def folders(shared_data, tmp_path_factory):
    """8 VOIs (6 of 4 training patients, 2 of held-out patients) and an 'external' folder of 3 VOIs
    of other held-out patients; both classes in every split."""
    src = shared_data / "labeled" / "lidc-nodules"
    with open(src / "nodules.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["name"] != OFF_SOURCE]

    def first(split, diagnosis, n, avoid=()):
        return [r for r in rows if r["split"] == split and r["diagnosis"] == diagnosis
                and r["patient_id"] not in avoid][:n]
    train = first("train", "1", 3) + first("train", "0", 3)
    held = first("val", "1", 1) + first("val", "0", 1)
    other = first("val", "1", 2, {r["patient_id"] for r in held}) + first("val", "0", 1, {r["patient_id"] for r in held})
    root = tmp_path_factory.mktemp("nodules")
    return _copy(src, root / "data", train + held), _copy(src, root / "external", other)


def _patients(split_dir: Path) -> dict[str, str]:
    """Sample key -> patient of a labelled shard set."""
    return {s["__key__"]: json.loads(s["json"])["patient"]
            for url in open_shards(split_dir).urls for s in raw_samples(url)}


def _table(folder: Path) -> dict[str, dict]:
    with open(folder / "nodules.csv", newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_labelled_hook_keeps_the_held_out_patients_as_test_and_selects_on_training_patients(folders, tmp_path):
    data, _ = folders
    table = _table(data)
    cfg = ExperimentConfig(data=str(data), **TINY)
    lab = nodule_labelled(data, tmp_path / "labelled", cfg, tmp_path / "data" / "volumes.zarr", log=lambda s: None)
    splits = {s: _patients(lab / s) for s in ("train", "val", "test")}
    by_split = {s: set(p.values()) for s, p in splits.items()}
    source = {s: {r["patient_id"] for r in table.values() if r["split"] == s} for s in ("train", "val")}
    assert by_split["test"] == source["val"]  # the table's held-out patients, all of them, and only they
    assert by_split["val"] and by_split["val"] | by_split["train"] == source["train"]
    assert not by_split["val"] & by_split["train"]  # selection patients give no training labels
    assert sum(map(len, splits.values())) == len(table)  # every nodule, each in one split
    # labels are the table's diagnosis, crops the configured side
    for s in splits:
        for key, label in read_labels(labelled_splits(lab)[s]).items():
            assert label == int(table[key.rsplit("_l", 1)[0]]["diagnosis"])
        assert open_shards(lab / s).config["crop_size"] == cfg.nodule_crop


def test_pretraining_hook_cuts_only_training_vois(folders, tmp_path):
    data, _ = folders
    table = _table(data)
    cfg = ExperimentConfig(data=str(data), **TINY)
    store = tmp_path / "data" / "volumes.zarr"
    out = nodule_pretrain_shards(data, tmp_path / "u", "u", {}, cfg, store)
    man = json.loads((out / "manifest.json").read_text())
    train = sorted(n for n, r in table.items() if r["split"] == "train")
    assert sorted(man["cases"]) == train  # no held-out VOI, and every training VOI gave samples
    assert man["config"]["crop_size"] == 32 and man["config"]["cube_size"] == 8 and man["config"]["plane"] == "axial"
    # SLIC ran on the training VOIs alone: the held-out ones have an image and no candidates
    assert list_cases(store, require=("image", "candidates")) == train
    assert len(list_cases(store)) == len(table)


def test_external_nodule_folder_scores_every_cell_and_no_test_patient_is_selected_on(folders, tmp_path):
    data, external = folders
    cfg = ExperimentConfig(data=str(data), rows=("majority", "tcpc"), fractions=(1.0,), epochs=(1,), **TINY)
    out = tmp_path / "exp"
    res = run_experiment(cfg, out, Selection(external=str(external)), log=lambda s: None)
    lines = [json.loads(x) for x in (out / "external.jsonl").read_text().splitlines()]
    assert [(x["row"], x["fraction"], x["seed"]) for x in lines] == [("majority", 1.0, 0), ("tcpc", 1.0, 0)]
    for x in lines:
        assert x["n"] == 3 and all(0 <= x[m] <= 1 for m in ("acc", "balanced_acc", "auc"))
    ext = _patients(out / "external-eval" / "test")
    assert set(ext.values()) == {r["patient_id"] for r in _table(external).values()}  # all its rows are scored
    # checkpoint selection read only selection patients, never a test one
    test_patients = set(_patients(out / "labelled" / "test").values())
    val = _patients(out / "labelled" / "val")
    for c in res["cells"]:
        if c["row"] != "majority":
            keys = json.loads((out / c["predictions"] / "val_keys.json").read_text())
            assert keys and {val[k] for k in keys}.isdisjoint(test_patients)
    # TCPC pretrained on training patients only
    pre = json.loads((out / "shards" / "u" / "manifest.json").read_text())["cases"]
    assert pre and all(_table(data)[c]["split"] == "train" for c in pre)
    # a folder sharing a training patient is no external validation: one line naming it
    n_train = len({r["patient_id"] for r in _table(data).values() if r["split"] == "train"})
    with pytest.raises(ValueError, match=rf"{n_train} patient\(s\) of this external set are training or selection"):
        run_experiment(cfg, out, Selection(external=str(data)), log=lambda s: None)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["train", "val"]), st.integers(0, 1)),
                min_size=4, max_size=60), st.floats(0.05, 0.95), st.integers(0, 5))
def test_split_table_moves_whole_training_patients_to_selection(tmp_path_factory, nodules, share, seed):
    """Any table: val becomes test untouched, a seeded share of train patients becomes val, by patient."""
    split_of = {}
    rows = []
    for i, (p, split, label) in enumerate(nodules):
        split = split_of.setdefault(p, split)  # a patient keeps one split
        rows.append({"name": f"n{i}", "patient_id": f"p{p}", "split": split, "diagnosis": label,
                     "coordX": 0, "coordY": 0, "coordZ": 0})
    src = tmp_path_factory.mktemp("t") / "nodules.csv"
    _copy_table(src, rows)
    cfg = ExperimentConfig(data="x", nodule_selection_share=share, nodule_split_seed=seed)
    train = {r["patient_id"] for r in rows if r["split"] == "train"}
    held = {r["patient_id"] for r in rows if r["split"] == "val"}
    if not train or not held:
        with pytest.raises(ValueError, match="must name train and val"):
            _split_table(src, src.parent / "out.csv", cfg, external=False)
        return
    if len(train) < 2:
        with pytest.raises(ValueError, match="1 training patient"):
            _split_table(src, src.parent / "out.csv", cfg, external=False)
        return
    got = _split_table(src, src.parent / "out.csv", cfg, external=False)
    assert set(got["test"]) == held
    assert set(got["val"]) | set(got.get("train", ())) == train and not set(got["val"]) & set(got.get("train", ()))
    assert len(got["val"]) == min(len(train) - 1, max(1, round(share * len(train))))
    assert got == _split_table(src, src.parent / "again.csv", cfg, external=False)  # seeded
    with open(src.parent / "out.csv", newline="") as f:
        out = list(csv.DictReader(f))
    assert [r["name"] for r in out] == [r["name"] for r in rows]  # every row kept, in order
    assert _split_table(src, src.parent / "ext.csv", cfg, external=True) == {"test": sorted(train | held)}


def _copy_table(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_a_nodule_folder_trains_the_external_stand_in(folders, tmp_path):
    """external_init may be a nodule folder (the Adrenal configs' stand-in): trained on its training
    patients, its checkpoint selected on its selection patients, then fine-tuned on the data."""
    from tcpc_train.input.synthetic import write_synthetic_labelled

    data, _ = folders
    shards = write_synthetic_labelled(tmp_path / "set", (8, 4, 4), size=12, per_shard=8, seed=4)
    cfg = ExperimentConfig(data=str(shards), rows=("external",), fractions=(1.0,), epochs=(1,),
                           external_init=str(data), external_epochs=1, **TINY)
    res = run_experiment(cfg, tmp_path / "exp", log=lambda s: None)
    stand_in = json.loads((tmp_path / "exp" / "pretrain" / "external-p0" / "summary.json").read_text())
    held = {r["patient_id"] for r in _table(data).values() if r["split"] == "val"}
    assert stand_in["n_train"] == len(read_labels(labelled_splits(tmp_path / "exp" / "external-data")["train"]))
    assert set(_patients(tmp_path / "exp" / "external-data" / "test").values()) == held
    assert res["cells"][0]["checkpoint"] and 0 <= res["cells"][0]["auc"] <= 1
