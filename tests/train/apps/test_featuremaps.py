"""Feature-map rendering (the paper's Fig. 3) and the nodule coordinates of the real-CT run."""
import numpy as np
import pytest
import torch

from tcpc_data.store.volumes import commit_arrays
from tcpc_train.apps.featuremaps import deep_features, render_feature_maps, select_channels
from tcpc_train.models.encoders import build_encoder
from tcpc_train.apps.realct import figure_nodule, nodule_voxels


def test_deep_features_are_upsampled_to_the_crop():
    torch.manual_seed(0)
    enc = build_encoder("resnet18", 0.0625)
    crop = np.random.default_rng(0).uniform(-1, 1, (32, 32, 32)).astype(np.float32)
    feats = deep_features(enc, crop)
    assert feats.shape == (enc.out_dim, 32, 32, 32) and np.isfinite(feats).all()
    # the same crop gives the same maps (eval mode: no batch statistics)
    assert np.array_equal(feats, deep_features(enc, crop))


def test_render_feature_maps_writes_one_row_per_encoder(tmp_path):
    torch.manual_seed(0)
    encs = {"a": build_encoder("resnet18", 0.0625), "b": build_encoder("resnet18", 0.0625)}
    png = render_feature_maps(encs, np.zeros((16, 16, 16), np.float32), tmp_path / "f.png", n_channels=2)
    import matplotlib.pyplot as plt
    h, w = plt.imread(png).shape[:2]
    assert h > 300 and w > h  # 2 rows of 4 panels


def test_channels_are_chosen_over_the_whole_crop_not_at_its_centre():
    feats = np.zeros((4, 9, 9, 9), np.float32)
    feats[0, 4, 4, 4] = 5.0  # strongest at the centre, flat elsewhere: little variance
    feats[1] = np.linspace(-1, 1, 9)[None, None, :]  # varies across the whole crop
    feats[2, :3] = 1.0  # lights up a corner slab
    assert select_channels(feats, 2).tolist() == [1, 2]
    assert select_channels(feats, 2, [3, 0]).tolist() == [3, 0]
    with pytest.raises(ValueError, match="channel indices"):
        select_channels(feats, 2, [4])
    with pytest.raises(ValueError, match="variance"):
        select_channels(feats, 2, "centre")


def test_figure_nodule_is_named_or_the_largest():
    nodules = {"A": [(np.zeros(3), {"diameter_mm": "5"}), (np.zeros(3), {"diameter_mm": "12"})],
               "B": [(np.zeros(3), {"diameter_mm": "9"})]}
    assert figure_nodule(nodules) == ("A", 1)
    assert figure_nodule(nodules, "B:0") == ("B", 0)
    with pytest.raises(ValueError, match="names no nodule; known: A:0, A:1, B:0"):
        figure_nodule(nodules, "B:1")


def test_nodule_voxels_map_pixel_and_mm_through_the_stored_geometry(tmp_path):
    store = tmp_path / "v.zarr"
    # a store resampled to 1 mm from 2.5 x 0.7 x 0.7 mm; origin (z, y, x) in mm
    attrs = {"spacing_zyx": [1.0, 1.0, 1.0], "source_spacing_zyx": [2.5, 0.7, 0.7],
             "origin_zyx": [-300.0, -180.0, -170.0], "direction": np.eye(3).tolist(), "digest": "d"}
    commit_arrays(store, "LIDC-IDRI-0001", {"image": np.zeros((8, 8, 8), np.float32)}, {"image": attrs})
    csv = tmp_path / "nodules.csv"
    csv.write_text("patient_id,row,col,z_position_mm,diameter_mm\n"
                   "LIDC-IDRI-0001,100,200,-250.0,20\nLIDC-IDRI-9999,1,1,0,5\n")
    got = nodule_voxels(store, csv)
    assert list(got) == ["LIDC-IDRI-0001"]  # cases not in the store are left out
    idx, row = got["LIDC-IDRI-0001"][0]
    # z: (-250 + 300) / 1 = 50; y: 100 px * 0.7 mm = 70; x: 200 * 0.7 = 140
    assert idx.tolist() == [50, 70, 140] and row["diameter_mm"] == "20"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # minutes of SLIC on two 1 mm series: past the suite's 300 s default
def test_realct_on_lidc_draws_the_figure_for_the_largest_nodule(lidc_dir, tmp_path):
    """The whole real-CT run, shortened (minutes: two LIDC series at 1 mm through SLIC)."""
    import dataclasses
    import json

    from tcpc_train.apps.realct import RealCTConfig, run_realct

    cfg = dataclasses.replace(RealCTConfig(), pretrain_steps=2, finetune_epochs=1, top_k=8)
    res = run_realct([lidc_dir], lidc_dir / "nodules.csv", tmp_path, cfg, log=lambda s: None)
    assert res["nodule"]["case"] == "LIDC-IDRI-0001"  # its 33 mm nodule is the largest
    # the figure's nodule is left out of fine-tuning: 4 of the 5 nodules give crops
    assert res["labelled"]["nodule_crops"] == 4 * cfg.per_nodule and res["labelled"]["candidate_crops"] > 0
    assert res["nodule"]["in_finetuning"] is False
    assert (tmp_path / "featuremaps.png").stat().st_size > 50_000
    assert json.loads((tmp_path / "results.json").read_text())["labelled"]["note"].startswith("train = val = test")
