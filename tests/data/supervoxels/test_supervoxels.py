"""Supervoxels stage: body mask, table, candidates, CSV centres, store contract, resume, CLI, bad input."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_data.supervoxels.bodymask import body_mask
from tcpc_data.supervoxels.candidates import TABLE_COLUMNS, csv_centres, score_table, supervoxel_table, top_candidates
from tcpc_data.phantom import PADDING_HU, make_phantom
from tcpc_data.store.volumes import commit_arrays, open_store
from tcpc_data.supervoxels.stage import SupervoxelConfig, supervoxels

LO, HI = -1024.0, 3071.0
CFG = SupervoxelConfig(n_segments=250, sigma=2.0, top_k=6, crop_size=24)


def _add_case(url, case, ph, **attr_overrides):
    hu = np.clip(ph.hu, LO, HI).astype(np.float32)
    img = ((hu - LO) / (HI - LO) * 2 - 1).astype(np.float32)
    attrs = {"spacing_zyx": list(ph.spacing_zyx), "origin_zyx": [-100.0, 10.0, 20.0],
             "intensity_range": [LO, HI], "clip": [LO, HI], "digest": f"img-{case}"}
    attrs.update(attr_overrides)
    attrs = {k: v for k, v in attrs.items() if v is not None}
    commit_arrays(url, case, {"image": img}, {"image": attrs})


@pytest.fixture(scope="module")
def phantoms():
    return [make_phantom((32, 72, 72), seed=s, n_lesions=1, classes=(1,)) for s in (11, 12)]


@pytest.fixture()
def store(tmp_path, phantoms):
    url = tmp_path / "volumes.zarr"
    for i, ph in enumerate(phantoms):
        _add_case(url, f"p{i}", ph)
    return url


def test_body_mask_excludes_padding_and_air_and_fills_lungs():
    ph = make_phantom((24, 64, 64), seed=0)
    m = body_mask(ph.hu, ph.spacing_zyx)
    assert not m[ph.hu == PADDING_HU].any()
    assert not m[:, 0, 32].any() and not m[:, 32, 1].any()  # air / padding at the edges
    assert m[:, 32, 32].all()  # body centre
    lung = (ph.hu < -600) & (ph.hu > -1500)
    centre_lung = lung[:, 20:44, 20:44]
    assert m[:, 20:44, 20:44][centre_lung].mean() > 0.95  # lungs inside the body
    with pytest.raises(ValueError, match="Hounsfield"):
        body_mask(np.full((4, 8, 8), -2000.0), (1, 1, 1))


def test_table_known_answer_and_score_prefers_a_lesion_in_lung():
    shape = (24, 48, 48)
    labels = np.ones(shape, np.int32)  # lung
    hu = np.full(shape, -850.0, np.float32)
    zz, yy, xx = np.indices(shape)
    ball = (zz - 12) ** 2 + (yy - 16) ** 2 + (xx - 20) ** 2 <= 16  # 8 mm nodule in the lung
    labels[ball], hu[ball] = 2, 40.0
    labels[:, 36:40, :], hu[:, 36:40, :] = 3, 30.0  # pleura/chest wall between lung and muscle
    labels[:, 40:, :], hu[:, 40:, :] = 4, 40.0  # muscle
    table = supervoxel_table(labels, hu)
    assert table.shape == (4, len(TABLE_COLUMNS))
    row = dict(zip(TABLE_COLUMNS, table[1]))
    assert row["label"] == 2 and row["voxels"] == ball.sum() and row["mean"] == pytest.approx(40.0)
    assert (row["cz"], row["cy"], row["cx"]) == pytest.approx((12, 16, 20))
    assert [row[k] for k in ("z0", "y0", "x0", "z1", "y1", "x1")] == [8, 12, 16, 17, 21, 25]
    scored, centres = score_table(table, labels, hu, (1.0, 1.0, 1.0))
    s = scored[:, TABLE_COLUMNS.index("score")]
    assert s[1] == s.max() and s[1] > 0.5 and s[2] < 0.5 * s[1]  # the wall is no blob
    assert np.abs(centres[1] - (12, 16, 20)).max() <= 2  # the blob's centre


def test_nms_keeps_best_first_and_spreads_crops():
    cents = np.array([[10, 10, 10], [11, 12, 10], [40, 40, 40], [10, 30, 10]], float)
    c, s = top_candidates(cents, np.array([0.9, 0.8, 0.5, 0.7]), k=3, crop_size=16, shape=(64, 64, 64))
    assert c.tolist() == [[10, 10, 10], [10, 30, 10], [40, 40, 40]] and s.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert c.dtype == np.int32 and s.dtype == np.float32


def test_stage_writes_the_contract_and_finds_the_lesion(store, phantoms):
    rep = supervoxels(store, CFG, workers=1)
    assert rep.ok and rep.done == ["p0", "p1"]
    root = open_store(store, "r")
    for i, ph in enumerate(phantoms):
        g = root[f"p{i}"]
        sv = g["supervoxels"][...]
        assert sv.dtype == np.int32 and sv.shape == ph.hu.shape
        assert np.all(sv[ph.hu == PADDING_HU] == 0) and sv[ph.lesions[0].centre_zyx] > 0
        table = g["supervoxel_table"]
        assert table.dtype == np.float32 and table.attrs["columns"] == list(TABLE_COLUMNS)
        assert table.shape[0] == len(np.unique(sv)) - 1
        cands, scores = g["candidates"][...], g["candidate_scores"][...]
        assert cands.dtype == np.int32 and cands.shape[1] == 3 and 0 < len(cands) <= CFG.top_k
        assert np.all(np.diff(scores) <= 0)
        assert g["candidates"].attrs["crop_size"] == 24 and g["candidates"].attrs["source"] == "slic"
        assert g["supervoxels"].attrs["config"]["n_segments"] == 250
        # the lesion centre lies inside one of the top crops
        d = np.abs(cands - np.array(ph.lesions[0].centre_zyx)).max(axis=1)
        assert d.min() <= CFG.crop_size // 2, (cands, ph.lesions)


def test_rerun_skips_and_a_new_config_redoes(store):
    supervoxels(store, CFG, workers=1)
    again = supervoxels(store, CFG, workers=1)
    assert again.skipped == ["p0", "p1"] and not again.done
    redo = supervoxels(store, SupervoxelConfig(n_segments=200, sigma=2.0, top_k=4, crop_size=24),
                       cases=["p1"], workers=1)
    assert redo.done == ["p1"]
    assert open_store(store, "r")["p1/candidates"].shape[0] <= 4


def test_candidates_from_csv_in_voxels_and_mm(store, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("case,z,y,x\np0,5,30,31\np0,20,40,41\n")
    rep = supervoxels(store, CFG, candidates_csv=csv, workers=1)
    root = open_store(store, "r")
    assert rep.ok and root["p0/candidates"][...].tolist() == [[5, 30, 31], [20, 40, 41]]
    assert root["p0/candidates"].attrs["source"] == "csv" and root["p1/candidates"].shape == (0, 3)
    sp = root["p0/image"].attrs["spacing_zyx"]
    org = root["p0/image"].attrs["origin_zyx"]
    mm = tmp_path / "mm.csv"
    mm.write_text("case,z_mm,y_mm,x_mm\n" + f"p0,{org[0] + 7 * sp[0]},{org[1] + 8 * sp[1]},{org[2] + 9 * sp[2]}\n")
    supervoxels(store, CFG, candidates_csv=mm, workers=1, cases=["p0"])
    assert open_store(store, "r")["p0/candidates"][...].tolist() == [[7, 8, 9]]


def test_bad_csv_raises_before_touching_the_store(store, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("case,a,b\np0,1,2\n")
    with pytest.raises(ValueError, match="case,z,y,x"):
        supervoxels(store, CFG, candidates_csv=bad, workers=1)
    nonnum = tmp_path / "nonnum.csv"
    nonnum.write_text("case,z,y,x\np0,1,two,3\n")
    with pytest.raises(ValueError, match="line 2"):
        supervoxels(store, CFG, candidates_csv=nonnum, workers=1)
    with pytest.raises(FileNotFoundError):
        supervoxels(store, CFG, candidates_csv=tmp_path / "missing.csv", workers=1)
    assert "supervoxels" not in open_store(store, "r")["p0"]


def test_one_bad_case_is_reported_and_the_others_finish(store, tmp_path, phantoms):
    _add_case(store, "broken", phantoms[0], intensity_range=None)
    outside = tmp_path / "out.csv"
    outside.write_text("case,z,y,x\np0,500,1,1\np1,3,30,30\n")
    rep = supervoxels(store, CFG, candidates_csv=outside, workers=1, failures_path=tmp_path / "f.jsonl")
    assert rep.done == ["p1"] and sorted(f["case"] for f in rep.failures) == ["broken", "p0"]
    errors = {json.loads(line)["case"]: json.loads(line)["error"]
              for line in (tmp_path / "f.jsonl").read_text().splitlines()}
    assert "intensity_range" in errors["broken"] and "case p0" in errors["p0"] and "outside" in errors["p0"]
    assert "supervoxels" not in open_store(store, "r")["p0"]


def test_a_volume_without_body_fails_naming_the_case(tmp_path):
    url = tmp_path / "v.zarr"
    img = np.full((8, 32, 32), -1.0, np.float32)  # all at the bottom of the window: air
    commit_arrays(url, "empty", {"image": img}, {"image": {"spacing_zyx": [1, 1, 1],
                                                           "intensity_range": [LO, HI], "digest": "e"}})
    rep = supervoxels(url, CFG, workers=1)
    assert not rep.ok and "case empty" in rep.failures[0]["error"] and "HU" in rep.failures[0]["error"]


def test_bad_config_and_unknown_case_raise(store):
    with pytest.raises(ValueError, match="compactness"):
        supervoxels(store, SupervoxelConfig(compactness=0), workers=1)
    with pytest.raises(ValueError, match="nope"):
        supervoxels(store, CFG, cases=["nope"], workers=1)


def test_cli_runs_the_stage_and_reports_errors_in_one_line(store):
    from cli import main

    r = CliRunner().invoke(main, ["supervoxels", str(store), "--n-segments", "250", "--sigma", "2",
                                  "--top-k", "5", "--crop-size", "24", "--workers", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "2 done" in r.output
    assert open_store(store, "r")["p0/candidates"].shape[0] <= 5
    r = CliRunner().invoke(main, ["supervoxels", str(store), "--compactness", "-1"])
    assert r.exit_code == 2 and "compactness" in r.output and "Traceback" not in r.output


def test_cli_exits_1_and_writes_the_failures_report_when_a_case_fails(store, phantoms):
    from cli import main

    _add_case(store, "broken", phantoms[0], spacing_zyx=[1.0, -1.0, 1.0])
    r = CliRunner().invoke(main, ["supervoxels", str(store), "--n-segments", "250", "--sigma", "2",
                                  "--workers", "1", "--no-progress"])
    assert r.exit_code == 1 and "failed broken" in r.output and "spacing_zyx" in r.output
    assert "2 done" in r.output
    report = store.parent / "volumes.zarr.supervoxels-failures.jsonl"
    assert json.loads(report.read_text().splitlines()[0])["case"] == "broken"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(0, 63), st.integers(0, 63), st.floats(0, 1)),
                min_size=1, max_size=40),
       st.integers(1, 10), st.integers(2, 40))
def test_nms_properties(points, k, crop):
    cents = np.array([p[:3] for p in points], float)
    scores = np.array([p[3] for p in points])
    c, s = top_candidates(cents, scores, k=k, crop_size=crop, shape=(64, 64, 64))
    assert len(c) <= k and np.all(np.diff(s) <= 0) and s[0] == np.float32(scores.max())
    for i in range(len(c)):  # no kept centre inside a better one's central half
        for j in range(i):
            assert np.abs(c[i].astype(int) - c[j]).max() >= crop / 2


@settings(max_examples=40, deadline=None)
@given(st.tuples(st.integers(0, 19), st.integers(0, 29), st.integers(0, 39)),
       st.tuples(*[st.floats(0.3, 5.0)] * 3), st.tuples(*[st.floats(-500, 500)] * 3))
def test_csv_world_mm_round_trip_to_voxels(vox, spacing, origin):
    mm = np.array(origin) + np.array(vox) * np.array(spacing)
    got = csv_centres([("mm", tuple(mm))], case="c", shape=(20, 30, 40), spacing_zyx=spacing,
                      origin_zyx=origin, direction=np.eye(3))
    assert got.tolist() == [list(vox)]


def test_body_mask_and_hu_equal_their_numpy_formulas():
    # the Numba kernels replace np.repeat upsampling and a numpy affine: same results
    from scipy import ndimage as ndi

    from tcpc_data.supervoxels.bodymask import PADDING_BELOW_HU
    from tcpc_data.supervoxels.stage import image_hu

    ph = make_phantom((16, 61, 67), seed=4)  # odd sizes: the subsampled grid does not tile them
    sp = (2.5, 0.7, 0.7)  # 1.5 mm grid: every 2nd voxel in-plane
    got = body_mask(ph.hu, sp)
    small = ph.hu[:, ::2, ::2] > -500.0
    for z in range(small.shape[0]):
        small[z] = ndi.binary_fill_holes(small[z])
    r = 3.0 / 1.4
    yy, xx = np.ogrid[-2:3, -2:3]
    small = ndi.binary_opening(small, structure=((yy / r) ** 2 + (xx / r) ** 2 <= 1.0)[None])
    comp, n = ndi.label(small)
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    small = comp == np.argmax(sizes)
    want = np.repeat(np.repeat(small, 2, axis=1), 2, axis=2)[:, :61, :67] & (ph.hu > PADDING_BELOW_HU)
    assert got.dtype == bool and np.array_equal(got, want)

    img = np.random.default_rng(0).uniform(-1, 1, (5, 6, 7)).astype(np.float32)
    hu = image_hu(img, {"intensity_range": [LO, HI]}, "c")
    assert hu.dtype == np.float32 and np.allclose(hu, LO + (img + 1) * (HI - LO) / 2, rtol=0, atol=2e-3)
    with pytest.raises(ValueError, match="case c: image attr intensity_range"):
        image_hu(img, {"intensity_range": [1, 1]}, "c")
