"""Containment: what a header says never reads outside its folder, inflates past its size or invents
geometry; links the user placed are followed and link loops end."""
import os
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.data.dicom_factory import write_series, z_positions
from tcpc_data.ingest.dicom import read_series
from tcpc_data.ingest.readers import _inflate, read_metaimage, read_nifti, read_nrrd

KW = {"max_voxels": 10 ** 6, "case": "case"}
DIMS_XYZ = (6, 5, 4)
ARR = np.arange(np.prod(DIMS_XYZ), dtype=np.int16).reshape(DIMS_XYZ[::-1])


def _mhd(path, data_file, *, compressed=False):
    lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
             f"CompressedData = {compressed}", "ElementSpacing = 1 1 1",
             "DimSize = " + " ".join(map(str, DIMS_XYZ)), "ElementType = MET_SHORT",
             f"ElementDataFile = {data_file}"]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name", ["../secret.raw", "sub/../../secret.raw", "/etc/hostname"])
def test_metaimage_data_file_outside_the_header_folder_is_refused(tmp_path, name):
    (tmp_path / "secret.raw").write_bytes(ARR.tobytes())
    case = tmp_path / "archive"
    case.mkdir()
    _mhd(case / "c.mhd", name)
    with pytest.raises(ValueError, match=r"case: c.mhd names data file .* outside its folder"):
        read_metaimage(case / "c.mhd", **KW)


def test_a_data_file_the_user_linked_in_is_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "c.raw").write_bytes(ARR.tobytes())
    case = tmp_path / "archive"
    case.mkdir()
    os.symlink(elsewhere / "c.raw", case / "c.raw")
    _mhd(case / "c.mhd", "c.raw")
    np.testing.assert_array_equal(read_metaimage(case / "c.mhd", **KW).hu, ARR)


def test_compressed_data_expanding_past_the_declared_size_are_cut_off(tmp_path):
    bomb = zlib.compress(ARR.tobytes() + bytes(64 << 20), 9)  # 64 MiB of zeros behind the volume
    assert len(bomb) < 100_000
    assert len(_inflate(bomb, ARR.nbytes, "c.zraw", "case")) == ARR.nbytes
    (tmp_path / "c.zraw").write_bytes(bomb)
    _mhd(tmp_path / "c.mhd", "c.zraw", compressed=True)
    np.testing.assert_array_equal(read_metaimage(tmp_path / "c.mhd", **KW).hu, ARR)


def test_nrrd_detached_data_outside_the_header_folder_is_refused(tmp_path):
    (tmp_path / "secret.raw").write_bytes(ARR.tobytes())
    case = tmp_path / "archive"
    case.mkdir()
    header = ("NRRD0004\ntype: short\ndimension: 3\nsizes: 6 5 4\nspacings: 1 1 1\nencoding: raw\n"
              "endian: little\ndata file: ../secret.raw\n\n")
    (case / "c.nhdr").write_text(header)
    with pytest.raises(ValueError, match=r"c.nhdr names data file '../secret.raw' outside its folder"):
        read_nrrd(case / "c.nhdr", **KW)
    (case / "c.raw").write_bytes(ARR.tobytes())  # the same header pointing beside itself reads
    (case / "c.nhdr").write_text(header.replace("../secret.raw", "c.raw"))
    np.testing.assert_array_equal(read_nrrd(case / "c.nhdr", **KW).hu, ARR)


@pytest.mark.parametrize("zooms", [(0.0, 1.0, 1.0), (1.0, -2.0, 1.0)])
def test_nifti_without_sform_and_a_non_positive_voxel_size_is_refused(tmp_path, zooms):
    img = nib.Nifti1Image(ARR.T.copy(), None)
    img.header["pixdim"][1:4] = zooms  # set raw: set_zooms refuses these, files in the wild have them
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, tmp_path / "c.nii")
    with pytest.raises(ValueError, match=r"case: NIfTI .*c.nii declares voxel size .* no sform"):
        read_nifti(tmp_path / "c.nii", **KW)


def test_nifti_with_an_sform_keeps_its_own_voxel_size(tmp_path):
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    img = nib.Nifti1Image(ARR.T.copy(), affine)
    img.header["pixdim"][1:4] = 0  # ignored: the sform says 0.7 x 0.8 x 2.5 mm
    nib.save(img, tmp_path / "c.nii")
    assert read_nifti(tmp_path / "c.nii", **KW).spacing_zyx == (2.5, 0.8, 0.7)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("slope,intercept", [("0", "-1024"), ("nan", "0"), ("1", "inf")])
def test_dicom_rescale_that_leaves_hu_undefined_is_refused(tmp_path, slope, intercept):
    paths = write_series(tmp_path, z_positions([0, 1, 2]))
    ds = pydicom.dcmread(paths[1])
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(paths[1])
    with pytest.raises(ValueError, match=rf"case: {paths[1].name} has RescaleSlope .*HU are undefined"):
        read_series(paths, **KW)


def test_dicom_without_rescale_elements_reads_stored_values_as_hu(tmp_path):
    paths = write_series(tmp_path, z_positions([0, 1, 2]), slope=1.0, intercept=0.0)
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(p)
    vol = read_series(paths, **KW)
    assert vol.hu.shape == (3, 12, 10) and np.isfinite(vol.hu).all()


def test_a_folder_of_links_is_ingested_and_a_link_loop_ends(tmp_path):
    from tcpc_data.ingest.discover import discover
    from tcpc_data.phantom import write_nifti

    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("a", "b"):
        write_nifti(archive / f"{name}.nii.gz", ARR, (2.0, 1.0, 1.0))
    dataset = tmp_path / "dataset"
    (dataset / "more").mkdir(parents=True)
    os.symlink(archive / "a.nii.gz", dataset / "first.nii.gz")  # a file link
    os.symlink(archive, dataset / "more" / "all")                 # a folder link
    os.symlink(dataset, dataset / "more" / "loop")               # back to the top: must end
    found = discover(dataset)
    assert sorted(c.case for c in found.cases) == ["a", "b", "first"] and not found.failures
    assert all(c.source.startswith(str(dataset)) for c in found.cases)  # named by the user's links
