"""Real CT end to end: LIDC-IDRI-0001 ingested, a nodule from nodules.csv cut into labelled and U-path shards."""
import csv

import numpy as np
import pytest

from tcpc_data.tools.overview import inspect_path
from tcpc_data.shards.labelled import LabelledConfig, write_labelled_shards
from tcpc_data.shards.tario import tar_samples
from tcpc_data.shards.pretrain import ShardConfig, write_shards
from tcpc_data.store.volumes import commit_arrays


@pytest.fixture(scope="module")
def lidc_store(lidc_dir, tmp_path_factory):
    from tcpc_data.ingest.stage import IngestConfig, ingest
    url = tmp_path_factory.mktemp("lidc") / "v.zarr"
    rep = ingest([lidc_dir / "LIDC-IDRI-0001"], url, IngestConfig(clip=(-1024, 3071)), workers=1)
    assert rep.ok, rep.failures
    with open(lidc_dir / "nodules.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["patient_id"] == "LIDC-IDRI-0001")
    centre = (round(float(row["slice_index"])), round(float(row["row"])), round(float(row["col"])))
    return url, centre, float(row["malignancy_median"])


def test_lidc_nodule_crops_and_u_paths(lidc_store, tmp_path):
    url, centre, malignancy = lidc_store
    labels = tmp_path / "labels.csv"
    labels.write_text(f"case,z,y,x,label\nLIDC-IDRI-0001,{centre[0]},{centre[1]},{centre[2]},{int(malignancy > 3)}\n")
    rep, man = write_labelled_shards(url, labels, tmp_path / "lab", LabelledConfig(crop_size=64), workers=1)
    assert rep.ok and man["totals"]["samples"] == 1
    (key, members), = tar_samples(tmp_path / "lab" / man["shards"][0]["name"])
    vol = np.load(__import__("io").BytesIO(members["volume.npy"]), allow_pickle=False).astype(np.float32)
    assert members["cls"] == b"1"  # median malignancy 5: malignant
    # the nodule (soft tissue, about -0.5) sits at the crop centre in lung (about -0.9)
    assert vol[30:34, 30:34, 30:34].mean() > -0.6 and np.percentile(vol, 25) < -0.8

    commit_arrays(url, "LIDC-IDRI-0001", {"candidates": np.array([centre], np.int32)},
                  {"candidates": {"crop_size": 64, "source": "csv", "digest": "nodule"}})
    rep, man = write_shards(url, tmp_path / "pre", ShardConfig(targets_per_crop=2), workers=1)
    assert rep.ok and man["totals"]["samples"] == 2
    text = inspect_path(tmp_path / "pre", png=tmp_path / "path.png")
    assert "LIDC-IDRI-0001_c00000_t00" in text
    text = inspect_path(url / "LIDC-IDRI-0001", png=tmp_path / "case.png")
    assert "image: (133, 512, 512) float16" in text and f"0: {centre}" in text
    assert (tmp_path / "case.png").stat().st_size > 10_000
