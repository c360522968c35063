"""DICOM-SEG objects built by highdicom from a synthetic series become the mask of its case."""
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpc_data.ingest import IngestConfig, ingest
from tcpc_data.ingest.discover import discover
from tcpc_data.store.volumes import open_store
from tcpc_data.volume import index_to_world

hd = pytest.importorskip("highdicom", reason="highdicom is not installed: pip install '.[seg]'")

ROWS, COLS = 24, 20
ZS = np.arange(6) * 2.5 - 31.5  # slice positions, mm


def _series(folder, dicom_factory, zs=ZS, **kw):
    """A CT series with the study attributes a SEG's source images need; returns its datasets."""
    paths = dicom_factory.write_series(folder, dicom_factory.z_positions(zs), rows=ROWS, cols=COLS,
                                       pixel=(1.0, 2.0), **kw)
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    out = []
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame
        ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "Phantom^One", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "A1", "S1"
        ds.ReferringPhysicianName, ds.SeriesNumber, ds.SliceThickness = "", 1, 2.5
        ds.save_as(p, enforce_file_format=True)
        out.append(ds)
    return out


def _segment(number: int, label: str):
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label,
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
        segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)


def _write_seg(path, sources, pixels, n_segments):
    """A BINARY SEG of ``sources``; ``pixels`` (slices, rows, cols) holds segment numbers, or
    (slices, rows, cols, segments) one binary plane per segment."""
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(i + 1, f"lesion {i + 1}") for i in range(n_segments)],
        series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="tcpc tests", manufacturer_model_name="synthetic", software_versions="1",
        device_serial_number="1")
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)


def _label_map():
    """Two segments on slices 1-3 (the SEG stores only those frames)."""
    lab = np.zeros((len(ZS), ROWS, COLS), np.uint8)
    lab[1:4, 5:11, 3:8] = 1
    lab[2:4, 14:20, 10:16] = 2
    return lab


def test_seg_becomes_the_mask_of_the_series_it_references(tmp_path, dicom_factory):
    sources = _series(tmp_path / "src" / "pat", dicom_factory)
    _series(tmp_path / "src" / "other", dicom_factory, patient_id="P2")
    lab = _label_map()
    _write_seg(tmp_path / "src" / "segs" / "seg.dcm", sources, lab, 2)

    found = discover(tmp_path / "src")
    cases = {c.case: c for c in found.cases}
    assert sorted(cases) == ["other", "pat"]  # the SEG is no case of its own
    assert cases["pat"].mask.endswith("seg.dcm") and cases["other"].mask is None

    store = tmp_path / "v.zarr"
    assert ingest(tmp_path / "src", store, workers=1).done == ["other", "pat"]
    group = open_store(store, "r")["pat"]
    np.testing.assert_array_equal(group["mask"][...], lab)
    assert group["mask"].attrs["labels"] == [0, 1, 2]
    assert "mask" not in open_store(store, "r")["other"]
    assert group["labels"].attrs["ome"]["labels"] == ["mask"]  # and an OME-Zarr label image


def test_seg_mask_is_resampled_like_the_image(tmp_path, dicom_factory):
    """At 1.25 x 2 x 2 mm, each segment keeps its world extent (nearest neighbour, no blending)."""
    sources = _series(tmp_path / "src" / "ct", dicom_factory)
    lab = _label_map()
    _write_seg(tmp_path / "src" / "seg" / "seg.dcm", sources, lab, 2)
    store = tmp_path / "v.zarr"
    assert ingest(tmp_path / "src", store, IngestConfig(spacing_zyx=(1.25, 2.0, 2.0)), workers=1).ok
    (case,) = open_store(store, "r").group_keys()
    image, mask = open_store(store, "r")[case]["image"], open_store(store, "r")[case]["mask"]
    assert mask.shape == image.shape == (11, 12, 20)
    assert set(np.unique(mask[...]).tolist()) == {0, 1, 2}
    a = image.attrs
    for segment in (1, 2):
        src_world = index_to_world(np.argwhere(lab == segment), [ZS[0], 20.0, -10.0], [2.5, 1.0, 2.0], np.eye(3))
        got_world = index_to_world(np.argwhere(mask[...] == segment), a["origin_zyx"], a["spacing_zyx"],
                                   a["direction"])
        np.testing.assert_allclose(got_world.mean(0), src_world.mean(0), atol=1.3)
        assert got_world.min(0)[0] >= src_world.min(0)[0] - 1.25 and got_world.max(0)[0] <= src_world.max(0)[0] + 1.25


def test_seg_on_a_series_stored_in_reverse_order_lands_on_the_same_voxels(tmp_path, dicom_factory):
    """Slices written top-down with reversed instance numbers: the stored image is sorted by position,
    and the SEG's frames follow it through their positions, not their order."""
    sources = _series(tmp_path / "src" / "ct", dicom_factory, zs=ZS[::-1])
    lab = _label_map()  # in file (descending z) order
    _write_seg(tmp_path / "src" / "seg" / "seg.dcm", sources, lab, 2)
    store = tmp_path / "v.zarr"
    assert ingest(tmp_path / "src", store, workers=1).ok
    (case,) = open_store(store, "r").group_keys()
    group = open_store(store, "r")[case]
    a = group["image"].attrs
    world_z = index_to_world(np.stack([np.arange(len(ZS)), np.zeros(len(ZS)), np.zeros(len(ZS))], 1),
                             a["origin_zyx"], a["spacing_zyx"], a["direction"])[:, 0]
    file_slice = [int(np.flatnonzero(np.isclose(ZS[::-1], z))[0]) for z in world_z]
    assert file_slice != list(range(len(ZS)))  # the stored order is not the file order
    np.testing.assert_array_equal(group["mask"][...], lab[file_slice])


def test_overlapping_segments_fail_the_case_in_one_line(tmp_path, dicom_factory):
    sources = _series(tmp_path / "src" / "pat", dicom_factory)
    planes = np.zeros((len(ZS), ROWS, COLS, 2), np.uint8)
    planes[2, 5:10, 5:10, 0] = 1
    planes[2, 8:12, 8:12, 1] = 1
    _write_seg(tmp_path / "src" / "segs" / "seg.dcm", sources, planes, 2)
    report = ingest(tmp_path / "src", tmp_path / "v.zarr", workers=1)
    assert report.done == [] and [f["case"] for f in report.failures] == ["pat"]
    error = report.failures[0]["error"]
    assert "pat mask " in error
    assert "cannot read the DICOM-SEG: Cannot combine segments because segments overlap" in error
    assert "\n" not in error


def test_a_seg_of_a_series_not_given_is_a_note(tmp_path, dicom_factory):
    sources = _series(tmp_path / "elsewhere", dicom_factory)
    _write_seg(tmp_path / "src" / "seg" / "seg.dcm", sources, _label_map(), 2)
    _series(tmp_path / "src" / "ct", dicom_factory)
    found = discover(tmp_path / "src")
    assert [c.mask for c in found.cases] == [None]
    assert any("ignored 1 DICOM-SEG object(s) that reference no series among the sources (seg/seg.dcm)" in n
               for n in found.notes)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_seg_on_any_index_order_maps_back_onto_the_image_grid(data):
    """Property: the same voxels described with permuted, flipped and cropped SEG axes (its affine
    built from the image's world geometry) land exactly on the image's labels; uncovered voxels are 0."""
    from tcpc_data.ingest.dicomseg import _on_grid
    from tcpc_data.volume import Volume

    shape = tuple(data.draw(st.lists(st.integers(2, 6), min_size=3, max_size=3)))
    labels = np.random.default_rng(data.draw(st.integers(0, 2**16))).integers(0, 4, shape).astype(np.uint8)
    direction = np.eye(3)[data.draw(st.permutations([0, 1, 2]))] * np.array(
        data.draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3)))[:, None]
    spacing = np.array(data.draw(st.lists(st.sampled_from([0.5, 0.7, 1.0, 2.5]), min_size=3, max_size=3)))
    origin = np.array(data.draw(st.lists(st.floats(-200, 200), min_size=3, max_size=3)))
    volume = Volume(np.zeros(shape, np.float32), tuple(spacing), tuple(origin), direction)

    perm = data.draw(st.permutations([0, 1, 2]))  # SEG axis n is image axis perm[n]
    flips = data.draw(st.lists(st.booleans(), min_size=3, max_size=3))
    lo = data.draw(st.integers(0, shape[perm[0]] - 1))  # the SEG keeps SEG slices lo.. only
    seg = np.transpose(labels, perm)
    seg = seg[tuple(slice(None, None, -1) if f else slice(None) for f in flips)][lo:]

    def image_index(seg_index):
        i = np.asarray(seg_index, np.float64) + [lo, 0, 0]
        q = np.empty(3)
        for n in range(3):
            q[perm[n]] = shape[perm[n]] - 1 - i[n] if flips[n] else i[n]
        return q

    def world_xyz(seg_index):
        return index_to_world(image_index(seg_index), origin, spacing, direction)[::-1]

    affine = np.eye(4)
    affine[:3, 3] = world_xyz([0, 0, 0])
    for n in range(3):
        affine[:3, n] = world_xyz(np.eye(3)[n]) - affine[:3, 3]
    expected = np.zeros_like(labels)
    for idx in np.ndindex(seg.shape):
        expected[tuple(int(round(v)) for v in image_index(idx))] = seg[idx]
    np.testing.assert_array_equal(_on_grid(seg, affine, volume), expected)
    assert np.count_nonzero(expected) <= np.count_nonzero(labels)
