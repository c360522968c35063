"""Ingest on the real CT in ../shared/data: LIDC values at the nodules, gantry tilt, JPEG 2000, NIfTI.

Each store is built once per module (the two LIDC series are 512^2 x ~135 slices).
The DICOM truth is read here independently with pydicom: HU = stored * slope + intercept.
"""
import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from tcpc_data.ingest import IngestConfig, ingest
from tcpc_data.ingest.normalise import hu_rounding, to_hu
from tcpc_data.store.volumes import open_store
from tcpc_data.volume import world_to_index

CLIP = (-1024.0, 3071.0)


def _dicom_stack(folder: Path):
    """(HU (Z, Y, X) sorted by z ascending, IPP (Z, 3) x/y/z, PixelSpacing) — a plain axial reader."""
    files = [pydicom.dcmread(p) for p in sorted(folder.rglob("*")) if p.suffix == ".dcm"]
    files.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in files])
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in files])
    return hu.astype(np.float64), ipp, [float(v) for v in files[0].PixelSpacing]


@pytest.fixture(scope="module")
def lidc_truth(lidc_dir):
    return {case: _dicom_stack(lidc_dir / case) for case in ("LIDC-IDRI-0001", "LIDC-IDRI-0003")}


@pytest.fixture(scope="module")
def nodules(lidc_dir):
    with open(lidc_dir / "nodules.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def native_store(shared_data, tmp_path_factory):
    store = tmp_path_factory.mktemp("real") / "volumes.zarr"
    report = ingest([shared_data / "ct" / "lidc", shared_data / "ct" / "robustness"], store,
                    IngestConfig(clip=CLIP), workers=1)
    assert report.ok, report.failures
    return store, report


@pytest.fixture(scope="module")
def iso_store(lidc_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("real-iso") / "volumes.zarr"
    report = ingest(lidc_dir, store, IngestConfig(clip=CLIP, spacing_zyx=(1.0, 1.0, 1.0)), workers=1)
    assert report.ok and report.done == ["LIDC-IDRI-0001", "LIDC-IDRI-0003"]
    return store


def _image(store, case):
    arr = open_store(store, "r")[case]["image"]
    return arr, dict(arr.attrs)


def test_all_real_cases_ingest_with_their_ids(native_store):
    _, report = native_store
    assert report.done == ["LIDC-IDRI-0001", "LIDC-IDRI-0003", "body-jpeg2000-dicom", "ge-head-gantry-tilt",
                           "torso-3mm"]


@pytest.mark.parametrize("case", ["LIDC-IDRI-0001", "LIDC-IDRI-0003"])
def test_lidc_shape_spacing_and_hu_range_match_the_dicom(native_store, lidc_truth, case):
    hu, ipp, pixel = lidc_truth[case]
    arr, attrs = _image(native_store[0], case)
    assert arr.shape == hu.shape
    assert attrs["spacing_zyx"] == pytest.approx([2.5, *pixel])
    assert attrs["origin_zyx"] == pytest.approx(ipp[0][::-1].tolist())
    assert attrs["intensity_range"] == [max(hu.min(), CLIP[0]), min(hu.max(), CLIP[1])]
    group = dict(open_store(native_store[0], "r")[case].attrs)
    assert group["patient_id"] == case and group["modality"] == "CT" and group["format"] == "dicom"
    # the whole volume maps back to the windowed DICOM HU (float32 rounding only)
    np.testing.assert_allclose(to_hu(arr[...], attrs["intensity_range"]), np.clip(hu, *CLIP),
                               atol=2e-3 + hu_rounding(attrs["intensity_range"], arr.dtype))


def test_lidc_nodules_map_back_to_the_dicom_hu(native_store, lidc_truth, nodules):
    for nod in nodules:
        hu, ipp, _ = lidc_truth[nod["patient_id"]]
        arr, attrs = _image(native_store[0], nod["patient_id"])
        # nodules.csv's z in mm lands on its slice_index through origin_zyx and spacing_zyx (both are
        # averages over the readers' contours, which agree to within a slice: 0003's first is 0.6 apart)
        k = (float(nod["z_position_mm"]) - attrs["origin_zyx"][0]) / attrs["spacing_zyx"][0]
        assert k == pytest.approx(float(nod["slice_index"]), abs=1.0)
        z, y, x = round(float(nod["slice_index"])), round(float(nod["row"])), round(float(nod["col"]))
        stored = to_hu(arr[z, y, x], attrs["intensity_range"])
        tol = 2e-3 + hu_rounding(attrs["intensity_range"], arr.dtype)
        assert stored == pytest.approx(np.clip(hu[z, y, x], *CLIP), abs=tol)
        assert -1000 < stored < 500  # inside the body, not padding


def test_lidc_nodules_after_resampling_to_1mm(iso_store, lidc_truth, nodules):
    for nod in nodules:
        hu, ipp, pixel = lidc_truth[nod["patient_id"]]
        arr, attrs = _image(iso_store, nod["patient_id"])
        assert attrs["spacing_zyx"] == [1.0, 1.0, 1.0]
        assert attrs["source_spacing_zyx"] == pytest.approx([2.5, *pixel])
        native_origin = ipp[0][::-1]
        world = np.array([float(nod["z_position_mm"]), ipp[0][1] + float(nod["row"]) * pixel[0],
                          ipp[0][0] + float(nod["col"]) * pixel[1]])
        q = np.round(world_to_index(world, attrs["origin_zyx"], attrs["spacing_zyx"], attrs["direction"]))
        stored = to_hu(arr[tuple(int(v) for v in q)], attrs["intensity_range"])
        # truth: trilinear interpolation of the windowed DICOM at that voxel's world position, computed
        # here with scipy; the two implementations differ only by float32 rounding (< 0.01 HU)
        w = np.asarray(attrs["origin_zyx"]) + q * attrs["spacing_zyx"]
        native_idx = (w - native_origin) / np.array([2.5, *pixel])
        truth = ndimage.map_coordinates(np.clip(hu, *CLIP), native_idx[:, None], order=1)[0]
        tol = 0.05 + hu_rounding(attrs["intensity_range"], arr.dtype)
        assert stored == pytest.approx(truth, abs=tol)
        # and it lies between the HU of the native voxels around it
        lo_idx, hi_idx = np.floor(native_idx).astype(int), np.ceil(native_idx).astype(int)
        cell = np.clip(hu, *CLIP)[lo_idx[0]:hi_idx[0] + 1, lo_idx[1]:hi_idx[1] + 1, lo_idx[2]:hi_idx[2] + 1]
        assert cell.min() - tol <= stored <= cell.max() + tol


def test_jpeg2000_series_decodes_to_the_dicom_hu(native_store, shared_data):
    hu, ipp, pixel = _dicom_stack_any(shared_data / "ct" / "robustness" / "body-jpeg2000-dicom")
    arr, attrs = _image(native_store[0], "body-jpeg2000-dicom")
    assert arr.shape == (20, 512, 512) and attrs["spacing_zyx"] == pytest.approx([2.0, *pixel])
    assert attrs["origin_zyx"][0] == pytest.approx(ipp[:, 2].min())
    np.testing.assert_allclose(to_hu(arr[...], attrs["intensity_range"]), np.clip(hu, *CLIP),
                               atol=2e-3 + hu_rounding(attrs["intensity_range"], arr.dtype))


def _dicom_stack_any(folder: Path):
    files = sorted(p for p in folder.iterdir() if p.is_file())
    dss = sorted((pydicom.dcmread(p) for p in files), key=lambda ds: float(ds.ImagePositionPatient[2]))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in dss])
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in dss])
    return hu, ipp, [float(v) for v in dss[0].PixelSpacing]


def test_gantry_tilt_series_is_resampled_in_its_tilted_frame(native_store, shared_data):
    folder = shared_data / "ct" / "robustness" / "ge-head-gantry-tilt"
    dss = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    u, v = iop[:3], iop[3:]
    n = np.cross(u, v)
    dss.sort(key=lambda ds: np.dot([float(x) for x in ds.ImagePositionPatient], n))
    arr, attrs = _image(native_store[0], "ge-head-gantry-tilt")
    group = dict(open_store(native_store[0], "r")["ge-head-gantry-tilt"].attrs)
    assert any("gantry tilt" in s and "18.5 deg" in s for s in group["notes"])
    assert any("uneven slice gaps" in s for s in group["notes"])
    assert group["notes"][-1] == "resampled onto a regular grid of 4.002 x 0.488 x 0.488 mm (z, y, x)"
    d = np.asarray(attrs["direction"])
    np.testing.assert_allclose(d, [n[::-1], v[::-1], u[::-1]], atol=1e-9)  # image axes: normal, column, row
    sz, sy, sx = attrs["spacing_zyx"]
    assert sz == pytest.approx(4.002, abs=1e-3) and (sy, sx) == pytest.approx((0.4882812, 0.4882812))
    values = to_hu(arr[...], attrs["intensity_range"])
    # the first 14 slices are 4.002 mm apart, so output planes 0..13 pass through them; check
    # planes 0, 6, 13 against bilinear interpolation of the original slice at the same world points
    for k in (0, 6, 13):
        ds = dss[k]
        p = np.array([float(x) for x in ds.ImagePositionPatient])
        src = np.clip(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept), *CLIP)
        jj, ii = np.mgrid[0:arr.shape[1]:7, 0:arr.shape[2]:7]
        idx = np.stack([np.full(jj.shape, k), jj, ii], axis=-1).astype(float)
        world_zyx = np.asarray(attrs["origin_zyx"]) + (idx * attrs["spacing_zyx"]) @ d
        rel = world_zyx[..., ::-1] - p
        assert np.abs(rel @ n).max() < 0.01  # the output plane is the slice plane
        r, c = rel @ v / sy, rel @ u / sx
        inside = (r >= 0) & (r <= src.shape[0] - 1) & (c >= 0) & (c <= src.shape[1] - 1)
        assert inside.mean() > 0.6
        truth = ndimage.map_coordinates(src, [r[inside], c[inside]], order=1)
        np.testing.assert_allclose(values[k][jj[inside], ii[inside]], truth,
                                   atol=0.05 + hu_rounding(attrs["intensity_range"], arr.dtype))


def test_nifti_torso_keeps_its_voxels_and_affine(native_store, shared_data):
    img = nib.load(shared_data / "ct" / "robustness" / "torso-3mm.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float64).transpose(2, 1, 0)
    arr, attrs = _image(native_store[0], "torso-3mm")
    assert arr.shape == (112, 101, 122) and attrs["spacing_zyx"] == [3.0, 3.0, 3.0]
    np.testing.assert_allclose(to_hu(arr[...], attrs["intensity_range"]), np.clip(data, *CLIP),
                               atol=2e-3 + hu_rounding(attrs["intensity_range"], arr.dtype))
    ras_origin = img.affine[:3, 3]
    assert attrs["origin_zyx"] == pytest.approx([ras_origin[2], -ras_origin[1], -ras_origin[0]], abs=1e-4)


def test_rerun_on_real_data_skips_everything(native_store, shared_data):
    store, _ = native_store
    again = ingest([shared_data / "ct" / "lidc", shared_data / "ct" / "robustness"], store,
                   IngestConfig(clip=CLIP), workers=1)
    assert again.done == [] and len(again.skipped) == 5
