"""A new DICOM case is read once per file: the same members, digest and volume as the
header-scan path that a stored case takes (series_files + files_digest + read_series)."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpc_data.ingest import ingest
from tcpc_data.digest import files_digest
from tcpc_data.ingest.dicom import read_series, series_volume
from tcpc_data.ingest.discover import series_files
from tcpc_data.ingest.onepass import read_series_once

KW = {"max_voxels": 10 ** 7, "case": "case"}
UID_A, UID_B = "1.2.840.99.1.11111111", "1.2.840.99.1.22222222"


def _assert_same_as_header_scans(folders, series):
    paths, datasets, files_hex = read_series_once(folders, series, case="case")
    expected = series_files(folders, series)
    assert [str(p) for p in paths] == expected
    assert files_hex == files_digest(expected)
    if len(expected) >= 2:
        once, scanned = series_volume(paths, datasets, **KW), read_series(expected, **KW)
        np.testing.assert_array_equal(once.hu, scanned.hu)
        assert once.spacing_zyx == scanned.spacing_zyx and once.origin_zyx == scanned.origin_zyx


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(9)), strangers=st.integers(0, 4), with_mr=st.booleans(),
       junk=st.sampled_from(["", "notes.xml", "broken", "LOCK"]))
def test_members_and_digest_equal_the_header_scan_path(tmp_path_factory, dicom_factory, order, strangers,
                                                       with_mr, junk):
    # one folder holding our series, maybe another CT series, an MR series and a non-DICOM
    # file, under names that interleave in any order
    folder = tmp_path_factory.mktemp("mixed")
    names = [f"f{i:02d}.dcm" for i in order]
    dicom_factory.write_series(folder, dicom_factory.z_positions([0, 3, 6, 9]), series_uid=UID_A, names=names[:4])
    if strangers:
        dicom_factory.write_series(folder, dicom_factory.z_positions(range(0, 3 * strangers, 3)), series_uid=UID_B,
                                   names=names[4:4 + strangers])
    if with_mr:
        dicom_factory.write_series(folder, dicom_factory.z_positions([0]), modality="MR", series_uid=UID_A,
                                   names=[f"mr{order[-1]}.dcm"])
    if junk:
        (folder / junk).write_bytes(b"<not DICOM/>" * 20)
    _assert_same_as_header_scans([str(folder)], UID_A)
    if strangers:
        _assert_same_as_header_scans([str(folder)], UID_B)


def test_a_series_over_two_folders_and_a_single_file_source(tmp_path, dicom_factory):
    a = dicom_factory.write_series(tmp_path / "a", dicom_factory.z_positions([0, 3]), series_uid=UID_A,
                                   names=["x1.dcm", "x3.dcm"])
    dicom_factory.write_series(tmp_path / "b", dicom_factory.z_positions([6, 9]), series_uid=UID_A,
                               names=["x0.dcm", "x2.dcm"])
    _assert_same_as_header_scans([str(tmp_path / "a"), str(tmp_path / "b")], UID_A)
    _assert_same_as_header_scans([str(a[0])], UID_A)


def test_a_damaged_member_fails_by_name_and_a_damaged_stranger_is_passed_over(tmp_path, dicom_factory):
    paths = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0, 3, 6]), series_uid=UID_A)
    (tmp_path / "zz.dcm").write_bytes(b"not a dicom file at all")  # discovery reports it on its own
    assert [p.name for p in read_series_once([str(tmp_path)], UID_A, case="case")[0]] == [p.name for p in paths]
    data = paths[1].read_bytes()
    # pydicom parses a cut file leniently: the cut member is still ours, and the volume names it
    for cut in (len(data) - 50, 700):  # inside the pixel data; inside the header, after the series' tags
        paths[1].write_bytes(data[:cut])
        with pytest.raises(ValueError, match=rf"^case: .*{paths[1].name}"):
            series_volume(*read_series_once([str(tmp_path)], UID_A, case="case")[:2], **KW)
    paths[1].write_bytes(data[132:])  # no preamble: discovery's forced header scan counts it, the parse refuses it
    assert str(paths[1]) in series_files([str(tmp_path)], UID_A)
    with pytest.raises(ValueError, match=rf"^case: cannot read DICOM file .*{paths[1].name}"):
        read_series_once([str(tmp_path)], UID_A, case="case")


def test_a_new_dicom_case_reruns_as_skipped_and_a_changed_slice_redoes_it(tmp_path, dicom_factory):
    # the one-pass digest (new case) must equal the stored-case digest that a rerun compares
    src = tmp_path / "src"
    paths = dicom_factory.write_series(src / "p1", dicom_factory.z_positions([0, 3, 6]), series_uid=UID_A)
    dicom_factory.write_series(src / "p1", dicom_factory.z_positions([0, 5]), series_uid=UID_B,
                               names=["o1.dcm", "o2.dcm"])
    store = tmp_path / "v.zarr"
    first = ingest(src, store, workers=1)
    assert first.ok and len(first.done) == 2
    again = ingest(src, store, workers=1)
    assert again.done == [] and sorted(again.skipped) == sorted(first.done)
    ds = Path(paths[2]).read_bytes()
    Path(paths[2]).write_bytes(ds[:-2] + bytes([ds[-2] ^ 1, ds[-1]]))  # one pixel changes
    third = ingest(src, store, workers=1)
    assert len(third.done) == 1 and len(third.skipped) == 1


def test_a_series_removed_after_discovery_fails_its_case_by_name(tmp_path, dicom_factory, monkeypatch):
    # the files vanish between discovery (on the client) and the read (on the worker): new and
    # stored cases alike fail with one line naming the series and the folder
    from tcpc_data.ingest import stage

    src, store = tmp_path / "src", tmp_path / "v.zarr"
    dicom_factory.write_series(src / "p1", dicom_factory.z_positions([0, 3, 6]), series_uid=UID_A)
    assert ingest(src, store, workers=1).ok  # stored, for the second run's header-scan path
    real = stage.discover

    def then_removed(*args, **kwargs):
        found = real(*args, **kwargs)
        for p in (src / "p1").iterdir():
            p.unlink()
        return found
    monkeypatch.setattr(stage, "discover", then_removed)
    for out in (tmp_path / "new.zarr", store):
        dicom_factory.write_series(src / "p1", dicom_factory.z_positions([0, 3, 6]), series_uid=UID_A)
        report = ingest(src, out, workers=1)
        assert [f["error"] for f in report.failures] == [
            f"ValueError: p1: no file of series {UID_A} is left in {src / 'p1'}"]


@pytest.mark.parametrize("block", [1, 1500, 10 ** 6])
def test_files_packed_into_blocks_keep_their_bytes(tmp_path, dicom_factory, monkeypatch, block):
    # blocks smaller than a file, holding a few files, or all of them; strangers' space is reused,
    # so a member read after one must keep its own bytes
    from tcpc_data.ingest import onepass

    monkeypatch.setattr(onepass, "_BLOCK", block)
    names = [f"f{i}.dcm" for i in range(8)]
    dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0, 3, 6, 9]), series_uid=UID_A,
                               names=names[0::2])
    dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0, 3, 6, 9]), series_uid=UID_B,
                               names=names[1::2])
    for uid in (UID_A, UID_B):
        paths, slices, _ = read_series_once([str(tmp_path)], uid, case="case")
        assert [bytes(s.data) for s in slices] == [p.read_bytes() for p in paths]
        _assert_same_as_header_scans([str(tmp_path)], uid)
