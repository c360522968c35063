"""DICOM series reading and discovery on tiny synthetic series with a known HU field."""
import random
from pathlib import Path
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpc_data.ingest.dicom import read_series
from tcpc_data.ingest.discover import discover, series_files
from tcpc_data.ingest.resample import to_grid
from tcpc_data.volume import index_to_world

KW = {"max_voxels": 10 ** 7, "case": "case"}


def _world_xyz(vol, idx_zyx):
    return index_to_world(idx_zyx, vol.origin_zyx, vol.spacing_zyx, vol.direction)[..., ::-1]


def _all_indices(shape):
    return np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)


def test_slices_sorted_by_position_not_file_name_or_instance_number(tmp_path, dicom_factory):
    zs = [12.0, 0.0, 9.0, 3.0, 6.0]  # file k lies at zs[k]
    names = [f"{n}.dcm" for n in ("a", "e", "b", "d", "c")]
    paths = dicom_factory.write_series(tmp_path, dicom_factory.z_positions(zs), names=names, instance_numbers=[1, 2, 3, 4, 5])
    random.Random(0).shuffle(paths)
    vol = read_series(paths, **KW)
    assert vol.regular and vol.hu.shape == (5, 12, 10)
    assert vol.spacing_zyx == (3.0, 1.0, 2.0)
    assert vol.origin_zyx == (0.0, 20.0, -10.0)
    assert np.array_equal(vol.direction, np.eye(3))
    # rescale slope 2 / intercept -1024 applied: HU equal the field at every voxel's world position
    expected = dicom_factory.field_hu(_world_xyz(vol, _all_indices(vol.hu.shape)))
    np.testing.assert_array_equal(vol.hu, expected.astype(np.float32))


def test_descending_positions_and_oblique_normal_are_sorted_along_the_normal(tmp_path, dicom_factory):
    # rows along y, columns along x: normal = (0,1,0) x (1,0,0) = -z, so higher z comes first
    paths = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0, 2, 4, 6]), iop=(0, 1, 0, 1, 0, 0))
    vol = read_series(paths, **KW)
    assert vol.origin_zyx[0] == 6.0 and vol.spacing_zyx[0] == 2.0
    expected = dicom_factory.field_hu(_world_xyz(vol, _all_indices(vol.hu.shape)))
    np.testing.assert_allclose(vol.hu, expected, atol=1e-3)


def test_missing_slice_is_refused_with_the_gap_named(tmp_path, dicom_factory):
    paths = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0, 3, 6, 12, 15]))
    with pytest.raises(ValueError, match=r"case: missing slices: a gap of 6.00 mm between slice002.dcm and "
                                         r"slice003.dcm .* spacing is 3.00 mm \(about 1 slice"):
        read_series(paths, **KW)


def test_duplicate_position_is_refused(tmp_path, dicom_factory):
    paths = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0, 3, 3, 6]))
    with pytest.raises(ValueError, match="same position"):
        read_series(paths, **KW)


def test_uneven_gaps_are_resampled_onto_a_regular_grid_or_refused(tmp_path, dicom_factory):
    paths = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0, 2, 4, 7, 10, 13]))
    vol = read_series(paths, **KW)
    assert not vol.regular and vol.spacing_zyx[0] == 3.0
    assert any("uneven slice gaps 2.00-3.00 mm" in n for n in vol.notes)
    grid = to_grid(vol)
    assert grid.regular and grid.hu.shape == (5, 12, 10)  # 0, 3, ..., 12 mm
    expected = dicom_factory.field_hu(_world_xyz(grid, _all_indices(grid.hu.shape)))
    np.testing.assert_allclose(grid.hu, expected, atol=1e-3)  # linear field: interpolation is exact
    with pytest.raises(ValueError, match="irregular series refused: uneven slice gaps"):
        read_series(paths, irregular="refuse", **KW)


def test_gantry_tilt_is_resampled_onto_the_slice_plane_grid(tmp_path, dicom_factory):
    t = np.radians(20.0)
    iop = (1, 0, 0, 0, np.cos(t), -np.sin(t))
    paths = dicom_factory.write_series(tmp_path, dicom_factory.z_positions(np.arange(6) * 4.0), iop=iop, slope=0.1, intercept=0.0)
    vol = read_series(paths, **KW)
    assert not vol.regular and any("gantry tilt" in n and "20.0 deg" in n for n in vol.notes)
    grid = to_grid(vol)
    # normal (0, sin t, cos t): slices 4 cos t apart; the in-plane shear widens the y extent
    assert grid.spacing_zyx == pytest.approx((4 * np.cos(t), 1.0, 2.0))
    assert grid.hu.shape[0] == 6 and grid.hu.shape[1] > 12
    np.testing.assert_allclose(np.asarray(grid.direction)[0], [np.cos(t), np.sin(t), 0.0], atol=1e-12)
    expected = dicom_factory.field_hu(_world_xyz(grid, _all_indices(grid.hu.shape)))
    inside = grid.hu != grid.hu.min()
    assert inside.mean() > 0.5
    # HU stored in steps of 0.1 (slope): that rounding is the only error
    np.testing.assert_allclose(grid.hu[inside], expected[inside], atol=0.051)
    with pytest.raises(ValueError, match="irregular series refused: gantry tilt"):
        read_series(paths, irregular="refuse", **KW)


def test_one_slice_series_is_refused(tmp_path, dicom_factory):
    paths = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0]))
    with pytest.raises(ValueError, match="1 slice.*at least 2"):
        read_series(paths, **KW)


def test_inconsistent_pixel_sizes_are_refused(tmp_path, dicom_factory):
    a = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0, 3]), series_uid="1.2.3.4", names=["a0.dcm", "a1.dcm"])
    b = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([6, 9]), series_uid="1.2.3.4", pixel=(0.5, 0.5),
                     names=["b0.dcm", "b1.dcm"])
    with pytest.raises(ValueError, match="inconsistent pixel sizes: b0.dcm"):
        read_series(a + b, **KW)


def test_truncated_pixel_data_names_the_file(tmp_path, dicom_factory):
    paths = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0, 3, 6]))
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:-50])
    with pytest.raises(ValueError, match="case: .*slice001.dcm"):
        read_series(paths, **KW)


@pytest.mark.parametrize("syntax,signed,bits", [("explicit", 1, 16), ("explicit", 0, 16), ("implicit", 1, 16),
                                                ("explicit", 1, 12), ("explicit", 0, 12), ("implicit", 1, 1),
                                                ("explicit", 0, 15)])
def test_native_pixels_equal_pydicoms_decoding(tmp_path, dicom_factory, syntax, signed, bits):
    # 16-bit uncompressed little-endian slices are taken straight from their bytes, scanned or
    # parsed; with fewer bits stored the unused high bits (random here) are cleared or
    # sign-filled as pydicom's handlers do
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian

    from tcpc_data.ingest.dicom import _native_pixels, _scanned_pixels
    from tcpc_data.ingest.dicomscan import scan_slice

    (path,) = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0]))
    ds = pydicom.dcmread(path)
    raw = np.random.default_rng(bits).integers(0, 1 << 16, size=(ds.Rows, ds.Columns)).astype(np.uint16)
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = signed, bits, bits - 1
    ds.PixelData = raw.tobytes()
    if syntax == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=syntax == "implicit", little_endian=True)
    ds = pydicom.dcmread(path)
    shape = (ds.Rows, ds.Columns)
    for fast in (_native_pixels(ds, shape), _scanned_pixels(scan_slice(path.read_bytes()), shape)):
        assert fast.dtype == ds.pixel_array.dtype
        np.testing.assert_array_equal(fast, ds.pixel_array)
    if bits == 16:
        np.testing.assert_array_equal(fast, raw.view(np.int16 if signed else np.uint16))


def test_size_guard_checks_headers_before_decoding(tmp_path, dicom_factory):
    paths = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0, 3, 6]))
    with pytest.raises(ValueError, match="360 voxels, over the limit of 100"):
        read_series(paths, max_voxels=100, case="case")


def test_discovery_splits_series_skips_non_images_and_reports_bad_files(tmp_path, dicom_factory):
    src = tmp_path / "archive"
    dicom_factory.write_series(src / "patient1", dicom_factory.z_positions([0, 3, 6]), series_uid="1.2.840.99.1.11111111",
                 names=["s1a.dcm", "s1b.dcm", "s1c.dcm"])
    dicom_factory.write_series(src / "patient1", dicom_factory.z_positions([0, 5]), series_uid="1.2.840.99.1.22222222",
                 names=["s2a.dcm", "s2b.dcm"])
    dicom_factory.write_series(src / "patient2" / "1.2.3.4.5.6", dicom_factory.z_positions([0, 3]), patient_id="P2")
    dicom_factory.write_series(src / "patient2" / "mr", dicom_factory.z_positions([0, 3]), modality="MR")
    dicom_factory.write_series(src / "patient2" / "seg", dicom_factory.z_positions([0]), modality="SEG",
                 sop_class="1.2.840.10008.5.1.4.1.1.66.4")
    (src / "patient2" / "notes.xml").write_text("<a/>")
    (src / "patient3").mkdir()
    (src / "patient2" / "broken.dcm").write_bytes(b"not a dicom file at all")
    found = discover(src)
    cases = {c.case: c for c in found.cases}
    assert sorted(cases) == ["patient1_11111111", "patient1_22222222", "patient2"]
    one = cases["patient1_11111111"]
    assert one.format == "dicom" and one.files == (str(src / "patient1"),)  # folders, never file lists
    assert [Path(f).name for f in series_files(one.files, one.series)] == ["s1a.dcm", "s1b.dcm", "s1c.dcm"]
    assert dict(cases["patient2"].info)["patient_id"] == "P2"
    assert {f["case"] for f in found.failures} == {"patient3", "patient2_broken_dcm"}
    assert any("empty folder" in f["error"] for f in found.failures)
    notes = " | ".join(found.notes)
    assert "modality MR is not CT" in notes and "1 DICOM-SEG object(s) that reference no series" in notes
    assert "ignored 1 file(s)" in notes and "notes.xml" in notes


def _big_archive(src, dicom_factory):
    """Over two scan chunks of files: two CT series, an MR series, a broken file and an XML note."""
    dicom_factory.write_series(src / "a", dicom_factory.z_positions(range(0, 120, 3)), series_uid="1.2.840.99.1.11111111")
    dicom_factory.write_series(src / "b", dicom_factory.z_positions(range(0, 90, 3)), series_uid="1.2.840.99.1.22222222")
    dicom_factory.write_series(src / "mr", dicom_factory.z_positions([0, 3, 6]), modality="MR")
    (src / "b" / "broken.dcm").write_bytes(b"not a dicom file at all")
    (src / "b" / "notes.xml").write_text("<a/>")


def _as_tuple(found):
    return found.cases, found.failures, found.notes


def test_parallel_discovery_equals_serial_and_reports_progress(tmp_path, dicom_factory):
    from tcpc_data.runner import progress_display

    src = tmp_path / "archive"
    _big_archive(src, dicom_factory)
    serial = discover(src, workers=1)
    assert [c.case for c in serial.cases] == ["a", "b"]
    assert len(series_files(serial.cases[0].files, serial.cases[0].series)) == 40
    assert [f["case"] for f in serial.failures] == ["b_broken_dcm"]
    display = progress_display()
    with display:
        parallel = discover(src, workers=2, progress=display)
    assert _as_tuple(parallel) == _as_tuple(serial)
    (line,) = display.tasks
    assert line.description == "discover archive" and line.completed == line.total == 75
    with pytest.raises(ValueError, match="workers must be >= 1"):
        discover(src, workers=0)


def test_remote_discovery_reads_headers_in_threads(tmp_path, dicom_factory):
    import fsspec

    src = tmp_path / "archive"
    _big_archive(src, dicom_factory)
    mem = fsspec.filesystem("memory")
    for f in sorted(src.rglob("*")):
        if f.is_file():
            mem.pipe(f"/tcpc-discover/{f.relative_to(src).as_posix()}", f.read_bytes())
    try:
        one, many = discover("memory://tcpc-discover", workers=1), discover("memory://tcpc-discover", workers=4)
        assert _as_tuple(one) == _as_tuple(many)
        assert [c.case for c in many.cases] == ["a", "b"] and many.cases[0].files[0].startswith("memory://")
    finally:
        mem.rm("/tcpc-discover", recursive=True)


def test_discovery_rejects_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover([tmp_path / "nope"])


names = st.lists(st.text(alphabet="ab.-_ /1é", min_size=1, max_size=6).filter(lambda s: s.strip("/ ")),
                 min_size=1, max_size=6)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stems=names)
def test_case_ids_are_sanitised_unique_and_stable(tmp_path, stems):
    src = tmp_path / f"src{abs(hash(tuple(stems)))}"
    for stem in stems:  # '_' first: no hidden files, and names like '_é' with nothing usable
        path = src / ("/".join("_" + part for part in stem.split("/") if part.strip()) + ".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            np.save(path, np.zeros((2, 2, 2), np.int16))
    first = [c.case for c in discover(src).cases]
    assert len(first) == len(set(first)) >= 1
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", c) for c in first)
    assert [c.case for c in discover(src).cases] == first
