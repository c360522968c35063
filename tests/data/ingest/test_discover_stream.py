"""Discovery streams: workers read the files, the client keeps per-folder and per-case records only,
and the result does not depend on how folders are batched or in which order batches finish."""
import contextlib
import tracemalloc

import numpy as np

from tcpc_data.ingest import discover as discover_module
from tcpc_data.ingest.discover import discover, series_files
from tcpc_data.phantom import write_nifti


def _archive(src, dicom_factory, files_per_series: int):
    for name in ("p1", "p2"):
        dicom_factory.write_series(src / name, dicom_factory.z_positions(range(0, 3 * files_per_series, 3)))


def _client_peak(src) -> int:
    """Peak bytes this process allocates while discovering ``src`` with two worker processes."""
    tracemalloc.start()
    try:
        found = discover(src, workers=2)
        return tracemalloc.get_traced_memory()[1], found
    finally:
        tracemalloc.stop()


def test_client_memory_does_not_grow_with_the_files_of_a_case(tmp_path, dicom_factory):
    _archive(tmp_path / "few", dicom_factory, 5)
    _archive(tmp_path / "many", dicom_factory, 300)
    discover(tmp_path / "few", workers=2)  # imports and first-use caches, outside the measure
    few, found_few = _client_peak(tmp_path / "few")
    many, found_many = _client_peak(tmp_path / "many")
    assert [c.case for c in found_many.cases] == [c.case for c in found_few.cases] == ["p1", "p2"]
    assert len(series_files(found_many.cases[0].files, found_many.cases[0].series)) == 300
    # 590 more files: a per-file list in the client costs ~700 bytes a file (400 KiB here)
    assert many - few < 32 << 10, f"client peak grew by {(many - few) >> 10} KiB for 590 more files"


def _mixed_archive(src, dicom_factory):
    """Series spread over folders, two series in one folder, volumes with masks, notes and failures."""
    uid = "1.2.840.99.1.12345678"
    dicom_factory.write_series(src / "p1" / "a", dicom_factory.z_positions([0, 3, 6]), series_uid=uid,
                               names=["s0.dcm", "s1.dcm", "s2.dcm"])
    dicom_factory.write_series(src / "p1" / "b", dicom_factory.z_positions([9, 12]), series_uid=uid,
                               names=["s3.dcm", "s4.dcm"])
    dicom_factory.write_series(src / "p2", dicom_factory.z_positions([0, 3]), series_uid="1.2.840.99.1.1")
    dicom_factory.write_series(src / "p2", dicom_factory.z_positions([0, 5]), series_uid="1.2.840.99.1.2",
                               names=["t0.dcm", "t1.dcm"])
    dicom_factory.write_series(src / "p3" / "mr", dicom_factory.z_positions([0, 3]), modality="MR")
    (src / "p3" / "notes.xml").write_text("<a/>")
    (src / "p3" / "broken.dcm").write_bytes(b"not a dicom file at all")
    (src / "empty" / "deeper").mkdir(parents=True)
    vol = np.arange(64, dtype=np.int16).reshape(4, 4, 4)
    for folder in ("imagesTr", "labelsTr"):
        (src / "nn" / folder).mkdir(parents=True)
    for name in ("x", "y"):
        write_nifti(src / "nn" / "imagesTr" / f"{name}_0000.nii.gz", vol, (1.0,) * 3)
    write_nifti(src / "nn" / "labelsTr" / "x.nii.gz", (vol > 30).astype(np.uint8), (1.0,) * 3)
    write_nifti(src / "nn" / "labelsTr" / "lonely.nii.gz", (vol > 30).astype(np.uint8), (1.0,) * 3)


def test_result_is_the_same_whatever_the_batching_and_completion_order(tmp_path, dicom_factory, monkeypatch):
    src = tmp_path / "archive"
    _mixed_archive(src, dicom_factory)
    reference = discover(src, workers=1)
    cases = {c.case: c for c in reference.cases}
    assert sorted(cases) == ["p1", "p2_28409911", "p2_28409912", "x", "y"]  # UID tails tell p2's apart
    assert cases["p1"].source == str(src / "p1")
    assert cases["p1"].files == (str(src / "p1" / "a"), str(src / "p1" / "b"))
    assert len(series_files(cases["p1"].files, cases["p1"].series)) == 5
    assert cases["x"].mask == str(src / "nn" / "labelsTr" / "x.nii.gz") and cases["y"].mask is None
    assert [f["case"] for f in reference.failures] == ["empty", "empty_deeper", "p3_broken_dcm"]
    notes = " | ".join(reference.notes)
    assert "1 label map(s) with no image" in notes and "lonely.nii.gz" in notes and "notes.xml" in notes
    assert "modality MR is not CT" in notes

    @contextlib.contextmanager
    def reversed_pool(fs, workers, scheduler):
        # every folder its own batch, and the batches finish last first
        yield lambda tasks: reversed([discover_module._scan_folders(*t) for t in list(tasks)])

    monkeypatch.setattr(discover_module, "_BATCH_FILES", 1)
    monkeypatch.setattr(discover_module, "_scan_pool", reversed_pool)
    scrambled = discover(src, workers=2)
    assert (scrambled.cases, scrambled.failures, scrambled.notes) == \
           (reference.cases, reference.failures, reference.notes)


def test_remote_dicom_case_is_listed_and_copied_on_the_worker(tmp_path, dicom_factory):
    # a DICOM case names its folders; the worker lists them (two series share one folder)
    # and copies the folders' files before it reads the series: same store values as a local run
    import fsspec

    from tcpc_data.ingest.stage import ingest
    from tcpc_data.store.volumes import open_store

    src = tmp_path / "archive"
    dicom_factory.write_series(src / "p", dicom_factory.z_positions([0, 3, 6]), series_uid="1.2.840.99.1.1")
    dicom_factory.write_series(src / "p", dicom_factory.z_positions([0, 5]), series_uid="1.2.840.99.1.2",
                               names=["t0.dcm", "t1.dcm"])
    (src / "p" / "notes.xml").write_text("<a/>")
    mem = fsspec.filesystem("memory")
    for f in sorted(src.rglob("*")):
        if f.is_file():
            mem.pipe(f"/tcpc-remote-dicom/{f.relative_to(src).as_posix()}", f.read_bytes())
    try:
        local = ingest(src, tmp_path / "local.zarr", workers=1)
        remote = ingest("memory://tcpc-remote-dicom", tmp_path / "remote.zarr", workers=1)
    finally:
        mem.rm("/tcpc-remote-dicom", recursive=True)
    assert local.done == remote.done == ["p_28409911", "p_28409912"] and remote.ok
    a, b = open_store(tmp_path / "local.zarr", "r"), open_store(tmp_path / "remote.zarr", "r")
    for case in local.done:
        assert a[case]["image"].shape == ((3 if case.endswith("1") else 2), 12, 10)
        np.testing.assert_array_equal(a[case]["image"][...], b[case]["image"][...])
        assert a[case]["image"].attrs["digest"] == b[case]["image"].attrs["digest"]
