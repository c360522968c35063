"""The lung-nodule task through the tool's normal path, on the shared LIDC nodule VOIs.

ingest of an ``images/`` + ``masks/`` folder -> every LUNA16 centre inside its
nodule mask (also for VOIs stored with an axis reversed) -> labelled shards
per split from ``nodules.csv`` -> pretraining shards of the training VOIs ->
finetune -> evaluate, plus the one-line errors of bad tables.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import webdataset as wds
from click.testing import CliRunner

from cli import main
from tcpc_data.centres import read_centres
from tcpc_data.ingest.stage import IngestConfig, ingest
from tcpc_data.shards.labelled import LabelledConfig, write_labelled_shards, write_labelled_splits
from tcpc_data.store.volumes import list_cases, open_store
from tcpc_data.volume import world_to_voxel

NODULES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "labeled" / "lidc-nodules"
needs_data = pytest.mark.skipif(not (NODULES / "nodules.csv").is_file(),
                                reason=f"shared nodule VOIs not found at {NODULES}")
# The source pairs this VOI with a LUNA16 centre of another series of the same patient:
# the centre lies 25 mm above the VOI's last slice. Every other centre is inside its mask.
OFF_SOURCE = {"LIDC-IDRI-0332_R_1"}


def _rows() -> list[dict]:
    with open(NODULES / "nodules.csv", newline="") as f:
        return list(csv.DictReader(f))


def _flip(src: Path, dst: Path, axis: int) -> None:
    """Save ``src`` with NIfTI axis ``axis`` reversed and the same world geometry."""
    img = nib.load(str(src))
    data = np.flip(np.asarray(img.dataobj), axis=axis)
    affine = img.affine.copy()
    affine[:3, 3] += (data.shape[axis] - 1) * affine[:3, axis]
    affine[:3, axis] *= -1
    nib.save(nib.Nifti1Image(data, affine), str(dst))


def _voi_folder(root: Path, rows: list[dict], flips: dict[str, int] = {}) -> Path:
    """A copy of the nodule folder layout with ``rows`` (and flipped copies ``<name>_flipN``)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    out = []
    for r in rows:
        for sub in ("images", "masks"):
            shutil.copy(NODULES / sub / f"{r['name']}.nii.gz", root / sub)
        out.append(r)
        if r["name"] in flips:
            name = f"{r['name']}_flip{flips[r['name']]}"
            for sub in ("images", "masks"):
                _flip(NODULES / sub / f"{r['name']}.nii.gz", root / sub / f"{name}.nii.gz", flips[r["name"]])
            out.append({**r, "name": name})
    with open(root / "nodules.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(out)
    return root


def _centres_in_masks(store, csv_path) -> dict[str, bool]:
    """Case -> whether its row's world centre lands on a voxel of its stored nodule mask."""
    root = open_store(store, "r")
    out = {}
    for r in read_centres(csv_path):
        grp = root[r.key]
        mask = grp["mask"]
        try:
            v = world_to_voxel(r.zyx, dict(grp["image"].attrs), mask.shape, r.key)
        except ValueError:
            out[r.key] = False
            continue
        out[r.key] = bool(mask[tuple(v)] > 0)
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """20 seeded VOIs plus two copies with an axis reversed (NIfTI i = LPS x, and k = z), ingested."""
    rows = [r for r in _rows() if r["name"] not in OFF_SOURCE]
    rng = np.random.default_rng(0)
    picked = [rows[i] for i in sorted(rng.choice(len(rows), size=20, replace=False))]
    flips = {picked[0]["name"]: 0, picked[1]["name"]: 2}
    root = _voi_folder(tmp_path_factory.mktemp("voi"), picked, flips)
    store = root.parent / "v.zarr"
    rep = ingest(root, store, IngestConfig(clip=(-1000, 400), spacing_zyx=(1.0, 1.0, 1.0), fixed_window=True),
                 workers=1)
    assert rep.ok, rep.failures
    return root, store, picked, flips


@needs_data
def test_masks_become_mask_arrays_not_cases(sample):
    root, store, picked, flips = sample
    names = sorted([r["name"] for r in picked] + [f"{n}_flip{a}" for n, a in flips.items()])
    assert list_cases(store) == names  # 22 image cases, none from masks/
    root_grp = open_store(store, "r")
    for name in names:
        grp = root_grp[name]
        assert grp["mask"].shape == grp["image"].shape and grp["mask"].dtype == np.uint8
        assert grp["mask"].attrs["labels"] == [0, 1] and grp["mask"].attrs["source"].endswith(f"masks/{name}.nii.gz")
        # one HU scale for every VOI: the window, not each VOI's min/max, maps onto [-1, 1]
        assert grp["image"].attrs["intensity_range"] == [-1000, 400]
    with pytest.raises(ValueError, match="give clip"):
        IngestConfig(fixed_window=True)


@needs_data
def test_every_luna16_centre_lands_in_its_nodule_mask_also_when_flipped(sample):
    root, store, picked, flips = sample
    found = _centres_in_masks(store, root / "nodules.csv")
    assert len(found) == 22 and all(found.values()), [k for k, v in found.items() if not v]
    # the flipped copies really are stored reversed: their direction differs, their centres agree
    grp = open_store(store, "r")
    for name, axis in flips.items():
        d0 = np.asarray(grp[name]["image"].attrs["direction"])
        d1 = np.asarray(grp[f"{name}_flip{axis}"]["image"].attrs["direction"])
        assert not np.allclose(d0, d1) and np.allclose(np.abs(d0), np.abs(d1))


@needs_data
def test_labelled_splits_carry_labels_splits_and_padding(sample, tmp_path):
    root, store, picked, flips = sample
    res = write_labelled_splits(store, root / "nodules.csv", tmp_path / "lab",
                                LabelledConfig(crop_size=32, split_as="val=test"), workers=1)
    expected = {r["name"]: r for r in picked}
    expected.update({f"{n}_flip{a}": expected[n] for n, a in flips.items()})
    patients = {}
    for split, (rep, man) in res.items():
        assert rep.ok and split in ("train", "test")
        for s in wds.WebDataset([str(tmp_path / "lab" / split / e["name"]) for e in man["shards"]],
                                shardshuffle=False):
            meta = json.loads(s["json"])
            row = expected[meta["case"]]
            assert int(s["cls"]) == int(row["diagnosis"]) == meta["label"]
            assert meta["split"] == {"val": "test"}.get(row["split"], row["split"]) == split
            patients.setdefault(meta["patient"], set()).add(split)
            box, pad = np.array(meta["crop_box"]), np.array(meta["padding"])
            shape = open_store(store, "r")[meta["case"]]["image"].shape
            assert np.array_equal(pad[:, 0], np.maximum(-box[0], 0))
            assert np.array_equal(pad[:, 1], np.maximum(box[1] - shape, 0))
            vol = np.load(io.BytesIO(s["volume.npy"]), allow_pickle=False)
            inside = tuple(slice(a, 32 - b) for a, b in pad)
            padded = np.ones(vol.shape, bool)
            padded[inside] = False
            assert vol.shape == (32,) * 3 and np.all(vol[padded] == -1.0)  # padding holds the background
    assert all(len(v) == 1 for v in patients.values())  # no patient in two splits
    assert sum(len(v) for v in patients.values()) == len({r["patient_id"] for r in picked})


def test_bad_tables_name_the_row(tmp_path):
    from tcpc_data.centres import check_patient_splits

    bad = tmp_path / "bad.csv"
    bad.write_text("name,coordX,coordY,split\nA,1,2,train\n")
    with pytest.raises(ValueError, match=r"missing column.*coordX,coordY,coordZ.*label\|diagnosis"):
        read_centres(bad, need_label=True)
    bad.write_text("name,coordX,coordY,coordZ,diagnosis\nA,1,2,3,1\nB,1,x,3,0\n")
    with pytest.raises(ValueError, match="bad.csv line 3: coordX, coordY, coordZ must be numbers"):
        read_centres(bad)
    bad.write_text("name,patient_id,split,coordX,coordY,coordZ,diagnosis\nA,p1,train,1,2,3,1\nB,p1,val,1,2,3,0\n")
    with pytest.raises(ValueError, match="line 3: patient p1 is in split 'val' here but in 'train' at line 2"):
        check_patient_splits(read_centres(bad), "bad.csv")
    r = CliRunner().invoke(main, ["shards", str(tmp_path / "v.zarr"), "--labels", str(bad), "--out",
                                  str(tmp_path / "o"), "--no-progress"])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "line 3: patient p1 is in split 'val'" in r.output
    # LUNA16 layout: LPS x/y/z becomes world z/y/x; seriesuid names the case
    luna = tmp_path / "candidates.csv"
    luna.write_text("seriesuid,coordX,coordY,coordZ,class\n1.2.3.4.5,-10.5,20,-30,1\n")
    (r,) = read_centres(luna, need_label=True)
    assert (r.by, r.key, r.unit, r.zyx, r.label) == ("seriesuid", "1.2.3.4.5", "mm", (-30.0, 20.0, -10.5), 1)


@needs_data
def test_centre_outside_and_missing_image_fail_their_case_naming_the_row(sample, tmp_path):
    root, store, picked, _ = sample
    a, b = picked[0], picked[1]
    rows = tmp_path / "rows.csv"
    rows.write_text("name,coordX,coordY,coordZ,diagnosis\n"
                    f"{a['name']},{a['coordX']},{a['coordY']},{float(a['coordZ']) + 200},1\n"
                    f"{b['name']},{b['coordX']},{b['coordY']},{b['coordZ']},0\n"
                    "no-such-voi,0,0,0,1\n")
    rep, man = write_labelled_shards(store, rows, tmp_path / "o", LabelledConfig(crop_size=16), workers=1)
    errors = {f["case"]: f["error"] for f in rep.failures}
    assert rep.done == [b["name"]] and man["totals"]["samples"] == 1
    assert "rows.csv line 2: world point" in errors[a["name"]] and "outside the volume" in errors[a["name"]]
    assert "rows.csv line 4: 'no-such-voi' names no image" in errors["no-such-voi"]
    assert all("\n" not in e for e in errors.values())


def test_nnunet_layout_pairs_labels_with_images(tmp_path):
    """imagesTr/<case>_0000 + labelsTr/<case>: one case <case> with a mask; a lone label is a note."""
    for d in ("imagesTr", "labelsTr"):
        (tmp_path / "ds" / d).mkdir(parents=True)
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    hu = np.random.default_rng(0).integers(-1000, 400, size=(12, 10, 6)).astype(np.int16)
    lab = np.zeros(hu.shape, np.uint8)
    lab[3:6, 4:7, 2:4] = 2
    nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / "ds" / "imagesTr" / "lung_007_0000.nii.gz"))
    nib.save(nib.Nifti1Image(lab, affine), str(tmp_path / "ds" / "labelsTr" / "lung_007.nii.gz"))
    nib.save(nib.Nifti1Image(lab, affine), str(tmp_path / "ds" / "labelsTr" / "lung_999.nii.gz"))
    rep = ingest(tmp_path / "ds", tmp_path / "v.zarr", IngestConfig(spacing_zyx=(1.0, 0.5, 0.5)), workers=1)
    assert rep.ok and list_cases(tmp_path / "v.zarr") == ["lung_007"]
    assert any("1 label map(s) with no image" in n and "lung_999" in n for n in rep.notes)
    grp = open_store(tmp_path / "v.zarr", "r")["lung_007"]
    mask = grp["mask"][...]
    assert mask.shape == grp["image"].shape and set(np.unique(mask)) == {0, 2}  # nearest: no blended labels
    # the labelled voxels keep their world volume (2 x 0.8 x 0.8 mm voxels -> 1 x 0.5 x 0.5 mm ones)
    assert abs((mask > 0).sum() * 0.25 - (lab > 0).sum() * 1.28) < 0.35 * (lab > 0).sum() * 1.28
    # a mask on another grid fails its case with one line
    nib.save(nib.Nifti1Image(lab[:-1], affine), str(tmp_path / "ds" / "labelsTr" / "lung_007.nii.gz"))
    rep = ingest(tmp_path / "ds", tmp_path / "v.zarr", IngestConfig(), workers=1)
    assert [f["case"] for f in rep.failures] == ["lung_007"] and "is not the image's" in rep.failures[0]["error"]


def _cli(*args) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@needs_data
def test_end_to_end_cli_ingest_to_evaluate(tmp_path):
    """The documented commands on 8 VOIs (6 train, 2 held out): well under a minute."""
    rows = _rows()
    train = [r for r in rows if r["split"] == "train" and r["name"] not in OFF_SOURCE]
    val = [r for r in rows if r["split"] == "val"]
    pick = [r for r in train if r["diagnosis"] == "1"][:3] + [r for r in train if r["diagnosis"] == "0"][:3] \
        + [r for r in val if r["diagnosis"] == "1"][:1] + [r for r in val if r["diagnosis"] == "0"][:1]
    voi = _voi_folder(tmp_path / "voi", pick)
    store, csv_path = tmp_path / "v.zarr", voi / "nodules.csv"
    run = ("--workers", 1, "--no-progress")
    _cli("ingest", voi, "--out", store, "--spacing", 1, "--clip", "-1000,400", "--fixed-window", *run)
    _cli("supervoxels", store, "--n-segments", 16, "--sigma", 1, "--top-k", 4, "--crop-size", 32,
         "--body-threshold-hu", -1024, *run)  # a VOI lies inside the body: all of it is tissue
    out = _cli("shards", store, "--labels", csv_path, "--split-as", "val=test", "--crop-size", 32,
               "--out", tmp_path / "lab", *run)
    assert "lab/train: 6 samples" in out and "lab/test: 2 samples" in out
    out = _cli("shards", store, "--labels", csv_path, "--task", "pretrain", "--split", "train",
               "--crop-size", 32, "--cube-size", 8, "--plane", "axial", "--out", tmp_path / "pre", *run)
    man = json.loads((tmp_path / "pre" / "manifest.json").read_text())
    assert man["totals"]["cases"] == 6  # training VOIs only
    _cli("pretrain", tmp_path / "pre", "--steps", 2, "--batch-size", 4, "--width", 0.0625, "--workers", 0,
         "--device", "cpu", "--out", tmp_path / "run")
    _cli("finetune", tmp_path / "lab", "--init", tmp_path / "run" / "last.pt", "--epochs", 1, "--batch-size", 2,
         "--width", 0.0625, "--workers", 0, "--device", "cpu", "--out", tmp_path / "ft")
    out = _cli("evaluate", tmp_path / "ft" / "best.pt", tmp_path / "lab", "--device", "cpu",
               "--out", tmp_path / "ev")
    assert "(2 samples)" in out and json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == 2


@pytest.mark.slow
@needs_data
def test_all_790_centres_land_in_their_masks(tmp_path):
    store = tmp_path / "v.zarr"
    rep = ingest(NODULES, store, IngestConfig(), workers=None)
    assert rep.ok and len(list_cases(store)) == 790
    found = _centres_in_masks(store, NODULES / "nodules.csv")
    assert {k for k, v in found.items() if not v} == OFF_SOURCE


def test_luna16_annotations_match_cases_by_series_uid(tmp_path):
    """annotations.csv rows find a UID-named file's case (LUNA16's <seriesuid>.mhd) and a DICOM case
    by its series_uid attribute, and become supervoxel candidates at the right voxels."""
    from tcpc_data.supervoxels.candidates import read_candidates_csv
    from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels
    from tcpc_data.volume import index_to_world

    src = tmp_path / "src"
    src.mkdir()
    affine = np.diag([-0.9, -0.9, 2.0, 1.0])  # RAS with L->R and P->A reversed: LPS-ordered voxels
    hu = np.random.default_rng(1).integers(-1000, 400, size=(24, 20, 10)).astype(np.int16)
    for name in ("1.2.840.99.1", "ct-a"):
        nib.save(nib.Nifti1Image(hu, affine), str(src / f"{name}.nii.gz"))
    store = tmp_path / "v.zarr"
    assert ingest(src, store, IngestConfig(), workers=1).ok
    open_store(store, "a")["ct-a"].attrs["series_uid"] = "1.2.840.99.2"  # as ingest records for DICOM
    attrs = dict(open_store(store, "r")["ct-a"]["image"].attrs)
    want = {"1_2_840_99_1": [4, 5, 6], "ct-a": [7, 8, 9]}
    lines = ["seriesuid,coordX,coordY,coordZ,diameter_mm"]
    for uid, case in (("1.2.840.99.1", "1_2_840_99_1"), ("1.2.840.99.2", "ct-a")):
        z, y, x = index_to_world(want[case], attrs["origin_zyx"], attrs["spacing_zyx"], attrs["direction"])
        lines.append(f"{uid},{x},{y},{z},5.0")
    ann = tmp_path / "annotations.csv"
    ann.write_text("\n".join(lines) + "\n")
    assert sorted(read_candidates_csv(ann, store)) == ["1_2_840_99_1", "ct-a"]
    rep = supervoxels(store, SupervoxelConfig(n_segments=20, sigma=1.0, top_k=2, crop_size=8),
                      candidates_csv=ann, workers=1)
    assert rep.ok
    for case, voxel in want.items():
        assert open_store(store, "r")[case]["candidates"][...].tolist() == [voxel]
