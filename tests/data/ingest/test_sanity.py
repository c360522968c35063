"""Data sanity at ingest: values and geometry tcpc cannot trust become one clear failure, never a guess."""
import nibabel as nib
import numpy as np

from tcpc_data.ingest.stage import IngestConfig, ingest
from tcpc_data.store.volumes import list_cases


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), path)


def test_constant_sheared_flat_and_4d_volumes_fail_with_the_reason_and_good_cases_survive(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    _nifti(src / "good.nii.gz", rng.integers(-1000, 1000, (6, 5, 4)).astype(np.int16))
    _nifti(src / "constant.nii.gz", np.full((6, 5, 4), 40, np.int16))
    sheared = np.diag([1.0, 1.0, 2.0, 1.0])
    sheared[0, 1] = 0.5  # the y axis leans into x: not a rotation of a grid
    _nifti(src / "sheared.nii.gz", rng.integers(-1000, 1000, (6, 5, 4)).astype(np.int16), sheared)
    _nifti(src / "flat.nii.gz", rng.integers(-1000, 1000, (6, 5)).astype(np.int16))
    _nifti(src / "series.nii.gz", rng.integers(-1000, 1000, (6, 5, 4, 3)).astype(np.int16))
    # with a window, a volume constant inside it is constant too
    _nifti(src / "bright.nii.gz", rng.integers(3100, 4000, (6, 5, 4)).astype(np.int16))
    report = ingest(src, tmp_path / "v.zarr", IngestConfig(clip=(-1024, 3071)), workers=1)
    errors = {f["case"]: f["error"] for f in report.failures}
    assert list_cases(tmp_path / "v.zarr") == ["good"] and report.done == ["good"]
    assert "the image is constant (40.0 HU)" in errors["constant"]
    assert "the image is constant (3071.0 HU) after windowing" in errors["bright"]
    assert "not orthonormal" in errors["sheared"]
    assert "expected a 3-D volume" in errors["flat"] and "expected a 3-D volume" in errors["series"]
    assert all("\n" not in e for e in errors.values())
