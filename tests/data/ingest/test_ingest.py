"""The ingest stage end to end on seeded phantoms: round trip, rerun, bad input, parallelism, kill -9, CLI."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli import main
from tcpc_data.ingest import IngestConfig, ingest
from tcpc_data.ingest.normalise import to_hu
from tcpc_data.phantom import make_phantom, write_archive, write_nifti
from tcpc_data.store.volumes import commit_arrays, list_cases, open_store

ROOT = Path(__file__).resolve().parents[3]
SMALL = {"shape": (16, 40, 40), "n_lesions": 1}


def _phantom_hu(i, seed=0, **kw):
    return make_phantom(seed=seed * 100_003 + i, **{**SMALL, **kw}).hu


def _stored(store, case):
    arr = open_store(store, "r")[case]["image"]
    return arr[...], dict(arr.attrs)


def _assert_stores_equal(a, b):
    assert list_cases(a) == list_cases(b)
    for case in list_cases(a):
        va, aa = _stored(a, case)
        vb, ab = _stored(b, case)
        np.testing.assert_array_equal(va, vb)
        assert aa == ab


@pytest.fixture
def archive(tmp_path):
    write_archive(tmp_path / "archive", n_cases=3, **SMALL)
    return tmp_path / "archive"


def test_phantom_archive_ingests_back_to_exactly_its_arrays(archive, tmp_path):
    store = tmp_path / "v.zarr"
    report = ingest(archive, store, workers=1)
    assert report.ok and report.done == ["phantom-000", "phantom-001", "phantom-002"]
    assert any("lesions.csv" in n for n in report.notes)  # the label table is not an image
    for i, case in enumerate(report.done):
        values, attrs = _stored(store, case)
        hu = _phantom_hu(i)
        assert values.dtype == np.float16 and values.shape == hu.shape  # float16 by default
        assert values.min() == -1.0 and values.max() == 1.0
        np.testing.assert_array_equal(np.round(to_hu(values, attrs["intensity_range"])), hu)
        assert attrs["intensity_range"] == [hu.min(), hu.max()] and attrs["clip"] is None
        assert attrs["spacing_zyx"] == [2.5, 1.4, 1.4] == attrs["source_spacing_zyx"]
        assert attrs["origin_zyx"] == [0.0, 0.0, 0.0]
        assert attrs["direction"] == [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]]
        assert attrs["config"] == {"clip": None, "spacing_zyx": None, "npy_spacing_zyx": None,
                                   "dtype": "float16", "irregular": "resample", "max_voxels": 1 << 30,
                                   "fixed_window": False}
        assert len(attrs["digest"]) == 64 and list(attrs)[-1] == "digest"
        group = dict(open_store(store, "r")[case].attrs)
        assert group.pop("ome")["version"] == "0.5"  # OME-Zarr metadata: tests/data/store/test_ngff.py
        assert group == {"source": str(archive / f"{case}.nii.gz"), "format": "nifti"}


def test_rerun_skips_matching_cases_and_redoes_changed_ones(archive, tmp_path):
    store = tmp_path / "v.zarr"
    ingest(archive, store, workers=1)
    again = ingest(archive, store, workers=1)
    assert again.done == [] and len(again.skipped) == 3
    assert "0 done, 3 skipped (digest matched), 0 failed" in again.summary()
    write_nifti(archive / "phantom-001.nii.gz", _phantom_hu(1, seed=7), (2.5, 1.4, 1.4))
    changed = ingest(archive, store, workers=1)
    assert changed.done == ["phantom-001"] and changed.skipped == ["phantom-000", "phantom-002"]
    values, attrs = _stored(store, "phantom-001")
    np.testing.assert_array_equal(np.round(to_hu(values, attrs["intensity_range"])), _phantom_hu(1, seed=7))
    windowed = ingest(archive, store, IngestConfig(clip=(-1024, 3071)), workers=1)
    assert len(windowed.done) == 3
    assert _stored(store, "phantom-000")[1]["clip"] == [-1024.0, 3071.0]
    # the size guard does not shape the output: changing it redoes nothing
    assert len(ingest(archive, store, IngestConfig(clip=(-1024, 3071), max_voxels=10 ** 8),
                      workers=1).skipped) == 3


def test_bad_inputs_become_failure_lines_and_good_cases_survive(tmp_path, dicom_factory):
    src = tmp_path / "src"
    src.mkdir()
    write_nifti(src / "good.nii.gz", _phantom_hu(0), (2.5, 1.4, 1.4))
    (src / "truncated.nii.gz").write_bytes((src / "good.nii.gz").read_bytes()[:3000])
    nan = np.zeros((4, 5, 6), np.float32)
    nan[1, 2, 3] = np.nan
    np.save(src / "nan.npy", nan)
    inf = np.zeros((4, 5, 6))
    inf[0, 0, 0] = np.inf
    np.save(src / "inf.npy", inf)
    np.save(src / "huge.npy", np.zeros((40, 40, 40), np.int16))  # over the size guard below
    (src / "empty").mkdir()
    dicom_factory.write_series(src / "oneslice", dicom_factory.z_positions([0]))
    dicom_factory.write_series(src / "mixed", dicom_factory.z_positions([0, 3, 6]), series_uid="1.2.3.4.111", names=["a0", "a1", "a2"])
    dicom_factory.write_series(src / "mixed", dicom_factory.z_positions([0, 2]), series_uid="1.2.3.4.222", names=["b0", "b1"])
    dicom_factory.write_series(src / "gap", dicom_factory.z_positions([0, 3, 9, 12]))
    (src / "corrupt.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    failures = tmp_path / "v.zarr.failures.jsonl"
    failures.write_text(json.dumps({"case": "old", "source": "x", "error": "stale report of an earlier run"}) + "\n")
    cfg = IngestConfig(npy_spacing_zyx=(1, 1, 1), max_voxels=30_000)
    report = ingest(src, tmp_path / "v.zarr", cfg, workers=1, failures_path=failures)
    assert report.done == ["good", "mixed_1234111", "mixed_1234222"]
    errors = {f["case"]: f["error"] for f in report.failures}
    assert sorted(errors) == ["corrupt_dcm", "empty", "gap", "huge", "inf", "nan", "oneslice", "truncated"]
    assert "truncated: cannot read the voxels of NIfTI" in errors["truncated"]
    assert "nan: 1 voxels are NaN or infinite (first at z, y, x = (1, 2, 3))" in errors["nan"]
    assert "NaN or infinite" in errors["inf"]
    assert "64,000 voxels, over the limit of 30,000" in errors["huge"]
    assert "empty folder" in errors["empty"]
    assert "a volume needs at least 2" in errors["oneslice"]
    assert "missing slices" in errors["gap"]
    assert "unreadable DICOM file" in errors["corrupt_dcm"]
    lines = [json.loads(line) for line in failures.read_text().splitlines()]
    assert sorted(r["case"] for r in lines) == sorted(errors)
    assert all({"case", "source", "error"} <= set(r) for r in lines)
    assert list_cases(tmp_path / "v.zarr") == ["good", "mixed_1234111", "mixed_1234222"]
    values, attrs = _stored(tmp_path / "v.zarr", "good")
    np.testing.assert_array_equal(np.round(to_hu(values, attrs["intensity_range"])), _phantom_hu(0))
    assert dict(open_store(tmp_path / "v.zarr", "r")["mixed_1234222"].attrs)["series_uid"] == "1.2.3.4.222"


def test_numpy_metaimage_spacing_and_float32(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    hu = _phantom_hu(0, shape=(16, 40, 40))
    np.save(src / "arr.npy", hu)
    (src / "vol.raw").write_bytes(hu.tobytes())
    (src / "vol.mhd").write_text("NDims = 3\nDimSize = 40 40 16\nElementSpacing = 1.4 1.4 2.5\n"
                                 "ElementType = MET_SHORT\nElementDataFile = vol.raw\n")
    cfg = IngestConfig(npy_spacing_zyx=(2.5, 1.4, 1.4), spacing_zyx=(5.0, 2.8, 2.8), dtype="float32")
    report = ingest(src, tmp_path / "v.zarr", cfg, workers=1)
    assert report.done == ["arr", "vol"] and not any("vol.raw" in n for n in report.notes)
    for case in report.done:
        values, attrs = _stored(tmp_path / "v.zarr", case)
        assert values.dtype == np.float32 and values.shape == (8, 20, 20)
        assert attrs["spacing_zyx"] == [5.0, 2.8, 2.8] and attrs["source_spacing_zyx"] == [2.5, 1.4, 1.4]
        # doubling the spacing puts every new voxel on an old one: values are the old ones, and
        # float32 keeps every integer HU
        np.testing.assert_array_equal(np.round(to_hu(values, attrs["intensity_range"])), hu[::2, ::2, ::2])


@settings(max_examples=60, deadline=None)
@given(lo=st.integers(-3024, 0), width=st.integers(1, 40_000), seed=st.integers(0, 2**31 - 1))
def test_float16_storage_stays_within_its_stated_hu_bound(lo, width, seed):
    # the default store: normalise in float32, store float16; to_hu must come back within
    # hu_rounding of the HU (plus the float32 normalisation's rounding), for any window
    from tcpc_data.ingest.normalise import hu_rounding, normalise

    hu = np.random.default_rng(seed).integers(lo, lo + width, size=(4, 8, 8), endpoint=True).astype(np.float32)
    hu.flat[:2] = lo, lo + width  # both ends of the window
    values, rng = normalise(hu)
    back = to_hu(values.astype(np.float16), rng)
    bound = hu_rounding(rng, np.float16)
    assert np.abs(back - hu).max() <= bound + 2e-6 * width
    if width < 4096:  # integer HU round back exactly under a 4096-HU window
        np.testing.assert_array_equal(np.round(back), hu)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=300),
       big=st.booleans())
def test_the_stores_float16_cast_is_numpys_bit_for_bit(values, big):
    """as_stored's compiled float32 -> float16 rounding gives NumPy's bits for every float32
    (ties to even, subnormals, overflow to infinity) on both the serial and the parallel path."""
    from tcpc_data.ingest.normalise import as_stored

    v = np.array(values, np.float32)
    if big:  # past the size where the parallel kernel takes over
        v = np.resize(v, (1 << 20) + 7)
    with np.errstate(over="ignore"):
        want = v.astype(np.float16)
    got = as_stored(v.reshape(1, 1, -1), np.float16)
    assert got.dtype == np.float16 and got.shape == (1, 1, v.size)
    np.testing.assert_array_equal(got.reshape(-1).view(np.uint16), want.view(np.uint16))


@settings(max_examples=40, deadline=None)
@given(lo=st.integers(-3024, 0), width=st.integers(1, 40_000), seed=st.integers(0, 2**31 - 1),
       shape=st.sampled_from([(2, 3, 5), (5, 256, 1024)]))
def test_normalising_into_float16_rounds_as_the_two_step_cast(lo, width, seed, shape):
    """normalise with a float16 ``out`` gives the bits of normalising to float32 and then casting,
    on the serial and the parallel kernel, and the same intensity range."""
    from tcpc_data.ingest.normalise import as_stored, normalise

    hu = np.random.default_rng(seed).uniform(lo, lo + width, size=shape).astype(np.float32)
    values, rng = normalise(hu)
    half, rng16 = normalise(hu, out=np.empty(shape, np.float16))
    assert rng16 == rng and half.dtype == np.float16
    np.testing.assert_array_equal(half.view(np.uint16), as_stored(values, np.float16).view(np.uint16))
    with pytest.raises(ValueError, match="float32 or float16"):
        normalise(hu, out=np.empty(shape, np.float64))


def test_the_stores_float16_cast_sweeps_the_float32_bit_patterns():
    """Every 4099th float32 bit pattern (a million, all exponents and low bits): NumPy's float16
    bits for finite values and infinities, a NaN for a NaN; float32 storage keeps the array."""
    from tcpc_data.ingest.normalise import as_stored

    f = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32)
    got = as_stored(f.reshape(1, 1, -1), np.float16).reshape(-1)
    with np.errstate(over="ignore", invalid="ignore"):
        want = f.astype(np.float16)
    nan = np.isnan(f)
    np.testing.assert_array_equal(got[~nan].view(np.uint16), want[~nan].view(np.uint16))
    assert np.isnan(got[nan]).all() and nan.any()
    assert as_stored(f, np.float32) is f


def test_two_dask_workers_and_a_running_scheduler_equal_one_in_process_run(archive, tmp_path):
    from distributed import LocalCluster

    one = ingest(archive, tmp_path / "one.zarr", workers=1)
    two = ingest(archive, tmp_path / "two.zarr", workers=2)
    assert one.done == two.done and len(two.done) == 3
    _assert_stores_equal(tmp_path / "one.zarr", tmp_path / "two.zarr")
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        remote = ingest(archive, tmp_path / "sched.zarr", scheduler=cluster.scheduler_address)
    assert remote.done == one.done
    _assert_stores_equal(tmp_path / "one.zarr", tmp_path / "sched.zarr")


def test_workers_racing_to_create_a_new_store_all_land(tmp_path):
    # a threaded dask worker (or two processes) may create the store root at the same moment
    from concurrent.futures import ThreadPoolExecutor

    for i in range(40):
        url = tmp_path / f"v{i}.zarr"
        with ThreadPoolExecutor(4) as ex:
            list(ex.map(lambda c: commit_arrays(url, c, {"image": np.zeros((2, 2, 2), np.float32)},
                                                {"image": {"digest": "d"}}), ["a", "b", "c", "d"]))
        assert list_cases(url) == ["a", "b", "c", "d"]


def test_memory_urls_for_source_and_store(tmp_path):
    fs = fsspec.filesystem("memory")
    write_nifti(tmp_path / "m.nii.gz", _phantom_hu(0), (2.5, 1.4, 1.4))
    fs.put_file(str(tmp_path / "m.nii.gz"), "/tcpc-test-src/m.nii.gz")
    try:
        report = ingest("memory://tcpc-test-src", "memory://tcpc-test-store", workers=1)
        assert report.ok and report.done == ["m"]
        values, attrs = _stored("memory://tcpc-test-store", "m")
        assert attrs["source"] == "memory:///tcpc-test-src/m.nii.gz"
        np.testing.assert_array_equal(np.round(to_hu(values, attrs["intensity_range"])), _phantom_hu(0))
        assert ingest("memory://tcpc-test-src", "memory://tcpc-test-store", workers=1).skipped == ["m"]
    finally:
        fs.rm("/tcpc-test-src", recursive=True)
        fs.rm("/tcpc-test-store", recursive=True)


def _cli(*args):
    return [sys.executable, "-c", "from cli import main; main()", *map(str, args)]


def test_kill_minus_nine_mid_way_then_rerun_equals_a_clean_run(tmp_path):
    src = tmp_path / "archive"
    write_archive(src, n_cases=12, shape=(32, 64, 64), n_lesions=2)
    store = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_cli("ingest", src, "--out", store, "--workers", "1", "--no-progress"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if store.is_dir() and len([p for p in store.iterdir() if p.is_dir()]) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # whatever is visible is complete: every case folder holds a finished image
    visible = sorted(p.name for p in store.iterdir() if p.is_dir())
    assert 3 <= len(visible) < 12 and list_cases(store) == visible
    rerun = ingest(src, store, workers=1)
    assert rerun.ok and rerun.skipped == visible and len(rerun.done) == 12 - len(visible)
    ingest(src, tmp_path / "clean.zarr", workers=1)
    _assert_stores_equal(store, tmp_path / "clean.zarr")


def test_cli_reports_failures_in_one_line_each_and_exits_1(archive, tmp_path):
    (archive / "broken.nii").write_bytes(b"garbage" * 50)
    store = tmp_path / "v.zarr"
    res = CliRunner().invoke(main, ["ingest", str(archive), "--out", str(store), "--workers", "1",
                                    "--no-progress", "--clip", "-1024,3071", "--spacing", "2.5,1.4,1.4"])
    assert res.exit_code == 1
    assert "failed broken: ValueError: broken: cannot read NIfTI" in res.output
    assert "ingest: 3 done, 0 skipped (digest matched), 1 failed" in res.output
    assert "Traceback" not in res.output
    assert json.loads((tmp_path / "v.zarr.failures.jsonl").read_text())["case"] == "broken"
    (archive / "broken.nii").unlink()
    res = CliRunner().invoke(main, ["ingest", str(archive), "--out", str(store), "--workers", "1",
                                    "--no-progress", "--clip", "-1024,3071", "--spacing", "2.5,1.4,1.4"])
    assert res.exit_code == 0 and "0 done, 3 skipped" in res.output
    assert not (tmp_path / "v.zarr.failures.jsonl").exists()  # the stale report is gone


@pytest.mark.parametrize("args,message", [
    (["--clip", "100,-100"], "clip must be two finite HU values lo < hi"),
    (["--spacing", "0"], "spacing must be one or three positive numbers"),
    (["--workers", "0"], "workers must be >= 1"),
    (["--clip", "1,2,3"], "--clip takes 2 numbers"),
])
def test_cli_refuses_bad_options_without_traceback(archive, tmp_path, args, message):
    res = CliRunner().invoke(main, ["ingest", str(archive), "--out", str(tmp_path / "v.zarr"), *args])
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "v.zarr").exists()


def test_cli_missing_source_is_a_one_line_error(tmp_path):
    res = CliRunner().invoke(main, ["ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "v.zarr")])
    assert res.exit_code == 2 and f"error: source {tmp_path / 'nope'} does not exist" in res.output


def test_a_single_file_source_matches_nibabel(tmp_path):
    hu = _phantom_hu(2)
    write_nifti(tmp_path / "p.nii.gz", hu, (2.0, 1.0, 0.5))
    ingest(tmp_path / "p.nii.gz", tmp_path / "v.zarr", workers=1)
    values, attrs = _stored(tmp_path / "v.zarr", "p")
    data = np.asarray(nib.load(tmp_path / "p.nii.gz").dataobj)
    np.testing.assert_array_equal(np.round(to_hu(values, attrs["intensity_range"])), data.transpose(2, 1, 0))
    assert attrs["spacing_zyx"] == [2.0, 1.0, 0.5]


def test_staging_left_by_killed_runs_is_swept_and_live_staging_kept(archive, tmp_path):
    import hashlib
    import socket
    import subprocess

    store = tmp_path / "v.zarr"
    staging = tmp_path / ".v.zarr.staging"
    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
    ended = subprocess.Popen(["true"])
    ended.wait()
    dead_pid = ended.pid  # a pid whose process has ended and was reaped
    old = staging / f"c0-{'a' * 32}"  # a name from before host and pid: swept by age
    live = staging / f"c1-h{host}p{os.getpid()}-{'b' * 32}"  # a writer still running, recent
    dead = staging / f"c2-h{host}p{dead_pid}-{'c' * 32}"  # a writer that ended: swept at once
    other_host = staging / f"c3-h{'0' * 8}p{dead_pid}-{'d' * 32}"  # another host's writer, recent: kept
    foreign = staging / "notes"  # not a name tcpc gives: never touched, however old
    for d in (old, live, dead, other_host, foreign):
        (d / "image").mkdir(parents=True)
        (d / "image" / "c").write_bytes(b"x" * 1000)
    hour_ago = time.time() - 7200
    for d in (old, foreign):
        for p in (d / "image" / "c", d / "image", d):
            os.utime(p, (hour_ago, hour_ago))
    report = ingest(archive, store, workers=1)
    assert report.ok
    assert not old.exists() and not dead.exists()
    assert live.exists() and other_host.exists() and (foreign / "image" / "c").exists()
    assert any("removed 2 staging folder(s)" in n for n in report.notes)


def test_small_and_large_volumes_normalise_to_the_same_bits():
    # volumes under _PARALLEL_VOXELS run the same kernel without Numba's threads
    from tcpc_data.ingest import normalise as norm

    hu = np.random.default_rng(3).normal(0, 700, size=(9, 31, 17)).astype(np.float32)
    lo, hi = float(hu.min()), float(hu.max())
    serial, parallel = np.empty_like(hu), np.empty_like(hu)
    norm._normalise_kernel_serial(hu, lo, 2.0 / (hi - lo), serial)
    norm._normalise_kernel(hu, lo, 2.0 / (hi - lo), parallel)
    assert serial.tobytes() == parallel.tobytes() and serial.min() == -1.0 and serial.max() == 1.0
    np.testing.assert_array_equal(norm.normalise(hu)[0], serial)
    in_place = hu.copy()  # each voxel is read before it is written: in place gives the same bits
    values, (lo2, hi2) = norm.normalise(in_place, out=in_place)
    assert values is in_place and (lo2, hi2) == (lo, hi) and values.tobytes() == serial.tobytes()
    with pytest.raises(ValueError, match="C-contiguous float32"):
        norm.normalise(hu, out=np.empty(hu.shape, np.float64))
