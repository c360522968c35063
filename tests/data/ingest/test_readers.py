"""Volume-file readers: NIfTI, MetaImage, NRRD, NumPy — values, axes and LPS geometry."""
import zlib

import nibabel as nib
import nrrd
import numpy as np
import pytest

from tcpc_data.phantom import make_phantom, write_nifti
from tcpc_data.ingest.readers import read_metaimage, read_nifti, read_nrrd, read_numpy

KW = {"max_voxels": 10 ** 7, "case": "case"}


@pytest.fixture(scope="module")
def hu():
    return make_phantom(shape=(16, 20, 24), seed=1, n_lesions=1).hu  # (Z, Y, X) int16


def test_nifti_axes_become_zyx_without_flipping(tmp_path, hu):
    write_nifti(tmp_path / "p.nii.gz", hu, (2.5, 1.5, 1.25))
    vol = read_nifti(tmp_path / "p.nii.gz", **KW)
    np.testing.assert_array_equal(vol.hu, hu.astype(np.float32))
    assert vol.spacing_zyx == (2.5, 1.5, 1.25) and vol.origin_zyx == (0.0, 0.0, 0.0)
    # RAS identity affine = LPS axes y and x pointing the other way
    np.testing.assert_array_equal(vol.direction, np.diag([1.0, -1.0, -1.0]))


def test_nifti_origin_and_scaling(tmp_path, hu):
    affine = np.diag([1.25, 1.5, 2.5, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    img = nib.Nifti1Image(hu.transpose(2, 1, 0), affine)
    img.header.set_slope_inter(0.5, -10.0)
    nib.save(img, tmp_path / "s.nii")
    vol = read_nifti(tmp_path / "s.nii", **KW)
    np.testing.assert_allclose(vol.hu, hu * 0.5 - 10.0)
    assert vol.origin_zyx == (30.0, 20.0, -10.0)  # RAS (10, -20, 30) -> LPS (-10, 20, 30), z/y/x


def test_nifti_rejects_4d_and_garbage(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), tmp_path / "t.nii")
    with pytest.raises(ValueError, match="expected a 3-D volume"):
        read_nifti(tmp_path / "t.nii", **KW)
    (tmp_path / "g.nii").write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match="cannot read NIfTI"):
        read_nifti(tmp_path / "g.nii", **KW)


def _write_mhd(path, arr, *, spacing=(0.7, 0.8, 2.5), offset=(-100.0, -50.0, -300.0), compressed=False,
               local=False, tm="1 0 0 0 1 0 0 0 1", etype="MET_SHORT"):
    payload = arr.tobytes()
    if compressed:
        payload = zlib.compress(payload)
    lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
             f"CompressedData = {compressed}", f"TransformMatrix = {tm}",
             f"Offset = {' '.join(map(str, offset))}", f"ElementSpacing = {' '.join(map(str, spacing))}",
             f"DimSize = {arr.shape[2]} {arr.shape[1]} {arr.shape[0]}", f"ElementType = {etype}"]
    if local:
        path.write_bytes(("\n".join(lines + ["ElementDataFile = LOCAL"]) + "\n").encode() + payload)
    else:
        raw = path.with_suffix(".zraw" if compressed else ".raw")
        raw.write_bytes(payload)
        path.write_text("\n".join(lines + [f"ElementDataFile = {raw.name}"]) + "\n")


@pytest.mark.parametrize("compressed,local", [(False, False), (True, False), (False, True)])
def test_metaimage_luna16_layout(tmp_path, hu, compressed, local):
    path = tmp_path / ("c.mha" if local else "c.mhd")
    _write_mhd(path, hu, compressed=compressed, local=local)
    vol = read_metaimage(path, **KW)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.spacing_zyx == (2.5, 0.8, 0.7) and vol.origin_zyx == (-300.0, -50.0, -100.0)
    np.testing.assert_array_equal(vol.direction, np.eye(3))


def test_metaimage_direction_rows_are_file_axes(tmp_path, hu):
    _write_mhd(tmp_path / "r.mhd", hu, tm="0 1 0 -1 0 0 0 0 1")  # x axis -> +y world, y axis -> -x world
    vol = read_metaimage(tmp_path / "r.mhd", **KW)
    np.testing.assert_array_equal(vol.direction, [[1, 0, 0], [0, 0, -1], [0, 1, 0]])


def test_metaimage_truncated_or_missing_data_is_refused(tmp_path, hu):
    _write_mhd(tmp_path / "t.mhd", hu)
    raw = tmp_path / "t.raw"
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"case: MetaImage data of .*t.mhd are truncated: expected 15360 bytes"):
        read_metaimage(tmp_path / "t.mhd", **KW)
    raw.unlink()
    with pytest.raises(FileNotFoundError, match="t.raw"):
        read_metaimage(tmp_path / "t.mhd", **KW)
    _write_mhd(tmp_path / "u.mhd", hu, etype="MET_STRING")
    with pytest.raises(ValueError, match="unsupported ElementType"):
        read_metaimage(tmp_path / "u.mhd", **KW)


def test_nrrd_ras_space_is_converted_to_lps(tmp_path, hu):
    header = {"space": "right-anterior-superior",
              "space directions": np.diag([0.7, 0.8, 2.5]), "space origin": np.array([5.0, 6.0, 7.0])}
    nrrd.write(str(tmp_path / "v.nrrd"), hu, header, index_order="C")
    vol = read_nrrd(tmp_path / "v.nrrd", **KW)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.spacing_zyx == pytest.approx((2.5, 0.8, 0.7))
    assert vol.origin_zyx == (7.0, -6.0, -5.0)
    np.testing.assert_array_equal(vol.direction, np.diag([1.0, -1.0, -1.0]))


def test_numpy_needs_a_spacing_and_a_3d_real_array(tmp_path, hu):
    np.save(tmp_path / "a.npy", hu)
    vol = read_numpy(tmp_path / "a.npy", spacing_zyx=(1, 2, 3), **KW)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.spacing_zyx == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="without a voxel spacing"):
        read_numpy(tmp_path / "a.npy", spacing_zyx=None, **KW)
    np.savez(tmp_path / "b.npz", image=hu, labels=np.arange(3))
    np.testing.assert_array_equal(read_numpy(tmp_path / "b.npz", spacing_zyx=(1, 1, 1), **KW).hu, hu)
    np.savez(tmp_path / "c.npz", a=hu, b=hu)
    with pytest.raises(ValueError, match="name the volume 'image'"):
        read_numpy(tmp_path / "c.npz", spacing_zyx=(1, 1, 1), **KW)
    np.save(tmp_path / "d.npy", hu[0])
    with pytest.raises(ValueError, match=r"shape \(20, 24\); expected \(Z, Y, X\)"):
        read_numpy(tmp_path / "d.npy", spacing_zyx=(1, 1, 1), **KW)
    with pytest.raises(ValueError, match="over the limit"):
        read_numpy(tmp_path / "a.npy", spacing_zyx=(1, 1, 1), max_voxels=100, case="case")
