"""Fuzzing the readers: mutated headers and voxel data give a volume or a one-line error naming the case.

Each example flips bytes and/or truncates a small valid file of one format and
reads it with the size limit a user would set. Any exception other than the
readers' ValueError/FileNotFoundError, a multi-line message, or a read slower
than the deadline fails the test. ``-m fuzz`` runs a longer campaign.
"""
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.data.dicom_factory import write_series, z_positions
from tcpc_data.ingest.dicom import read_series
from tcpc_data.ingest.readers import read_metaimage, read_nifti, read_nrrd, read_numpy
from tcpc_data.volume import Volume

WHAT = "fuzzed-case"
KW = {"max_voxels": 1 << 16, "case": WHAT}
ARR = (np.arange(6 * 5 * 4, dtype=np.int16).reshape(4, 5, 6) * 7 - 200)


def _nifti(d: Path, gz: bool) -> list[Path]:
    p = d / ("c.nii.gz" if gz else "c.nii")
    nib.save(nib.Nifti1Image(ARR.T.copy(), np.diag([0.7, 0.8, 2.5, 1.0])), p)
    return [p]


def _mha(d: Path) -> list[Path]:
    p = d / "c.mha"
    head = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
            "ElementSpacing = 0.7 0.8 2.5\nDimSize = 6 5 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    p.write_bytes(head.encode() + ARR.astype("<i2").tobytes())
    return [p]


def _nrrd(d: Path) -> list[Path]:
    import nrrd
    p = d / "c.nrrd"
    nrrd.write(str(p), ARR, {"space": "left-posterior-superior",
                             "space directions": np.diag([2.5, 0.8, 0.7]).tolist(),
                             "space origin": [0.0, 0.0, 0.0]}, index_order="C")
    return [p]


def _npy(d: Path) -> list[Path]:
    p = d / "c.npy"
    np.save(p, ARR)
    return [p]


def _dicom(d: Path) -> list[Path]:
    return write_series(d, z_positions([0, 2, 4]), rows=5, cols=6)


FORMATS = {
    "nifti": (lambda d: _nifti(d, False), lambda ps: read_nifti(ps[0], **KW)),
    "nifti-gz": (lambda d: _nifti(d, True), lambda ps: read_nifti(ps[0], **KW)),
    "metaimage": (_mha, lambda ps: read_metaimage(ps[0], **KW)),
    "nrrd": (_nrrd, lambda ps: read_nrrd(ps[0], **KW)),
    "numpy": (_npy, lambda ps: read_numpy(ps[0], spacing_zyx=(2.5, 0.8, 0.7), **KW)),
    "dicom": (_dicom, lambda ps: read_series(ps, **KW)),
}


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    out = {}
    for name, (make, _) in FORMATS.items():
        d = tmp_path_factory.mktemp(name)
        paths = make(d)
        out[name] = [(p.name, p.read_bytes()) for p in paths]
    return out


mutation = st.tuples(
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
    st.one_of(st.none(), st.floats(0, 1)),  # truncate to this share of the file
    st.integers(0, 2),                      # which DICOM file (series of 3)
)


def _apply(data: bytes, flips, cut) -> bytes:
    b = bytearray(data)
    for where, value in flips:
        b[int(where * len(b))] = value
    return bytes(b[: int(cut * len(b))]) if cut is not None else bytes(b)


def _read_mutated(originals, fmt, m):
    flips, cut, which = m
    files = originals[fmt]
    which = which % len(files)
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, (name, data) in enumerate(files):
            p = Path(d) / name
            p.write_bytes(_apply(data, flips, cut) if i == which else data)
            paths.append(p)
        try:
            vol = FORMATS[fmt][1](paths)
        except (ValueError, FileNotFoundError) as exc:
            msg = str(exc)
            assert "\n" not in msg.strip(), msg
            assert WHAT in msg or any(p.name in msg for p in paths), msg
            return
        assert isinstance(vol, Volume) and vol.hu.ndim == 3 and vol.hu.size <= KW["max_voxels"]
        assert all(np.isfinite(vol.spacing_zyx)) and all(s > 0 for s in vol.spacing_zyx)


_FAST = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
_CAMPAIGN = settings(max_examples=2000, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("fmt", list(FORMATS))
@_FAST
@given(m=mutation)
def test_a_mutated_file_reads_or_fails_in_one_line(originals, fmt, m):
    _read_mutated(originals, fmt, m)


@pytest.mark.fuzz
@pytest.mark.parametrize("fmt", list(FORMATS))
@_CAMPAIGN
@given(m=mutation)
def test_fuzz_campaign(originals, fmt, m):
    _read_mutated(originals, fmt, m)
