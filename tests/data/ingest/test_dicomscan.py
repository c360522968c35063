"""The DICOM tag scanner returns exactly what pydicom reads, or passes the file on (None).

Files are generated with pydicom: implicit or explicit VR (and big endian, which the scanner
must pass on, and JPEG 2000, whose header alone it reads), the wanted elements present or not
with plain or awkward raw values (odd lengths, padding, backslashes, non-ASCII bytes,
non-numbers, wrong VRs), private elements of random VRs, and sequences of defined or
undefined length with nested items.
"""
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
from hypothesis import event, given, reject, settings
from hypothesis import strategies as st
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.encaps import encapsulate
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (CTImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEG2000Lossless)

from tcpc_data.ingest import dicomscan
from tcpc_data.ingest.dicom import _dims, _rescale, _vectors, parse_file, series_volume
from tcpc_data.ingest.dicomscan import ScannedSlice, scan_header, scan_slice
from tcpc_data.ingest.discover import header_of

ROWS, COLS = 3, 4
# keyword -> (plain values, VR); the awkward values are drawn for every keyword alike
_PLAIN_DS = st.builds(lambda x, fmt, pad: (pad[0] + fmt.format(x) + pad[1]),
                      st.floats(-1e4, 1e4, allow_nan=False),
                      st.sampled_from(["{:.6g}", "{:.3f}", "{:.10g}", "{:e}", "{:+.2f}"]),
                      st.sampled_from([("", ""), (" ", ""), ("", " "), (" ", " ")]))


def _multi(n):
    return st.lists(_PLAIN_DS, min_size=n, max_size=n).map(lambda v: "\\".join(v).encode())


_PLAIN = {
    "ImageType": st.lists(st.sampled_from(["ORIGINAL", "PRIMARY", "AXIAL", "localizer", "LOCALIZER"]), min_size=1,
                          max_size=4).map(lambda v: "\\".join(v).encode()),
    "SOPClassUID": st.just(CTImageStorage.encode() + b"\0"),
    "Modality": st.sampled_from([b"CT", b"MR", b"CT ", b"SR", b" CT"]),
    "PatientID": st.text("abcXYZ019 -_.", max_size=12).map(str.encode),
    "GantryDetectorTilt": _PLAIN_DS.map(str.encode),
    "SeriesInstanceUID": st.sampled_from([b"1.2.3.4", b"1.2.3.44\0", b"1.2.840.99.7 ", b" 1.2.5"]),
    "SeriesNumber": st.sampled_from([b"1", b" 7", b"+3 ", b"007", b"  ", b""]),
    "ImagePositionPatient": _multi(3), "ImageOrientationPatient": _multi(6), "PixelSpacing": _multi(2),
    "SamplesPerPixel": st.just((1).to_bytes(2, "little")), "NumberOfFrames": st.sampled_from([b"1", b"0 ", b"2"]),
    "Rows": st.just(ROWS.to_bytes(2, "little")), "Columns": st.just(COLS.to_bytes(2, "little")),
    "BitsAllocated": st.sampled_from([16, 8]).map(lambda v: v.to_bytes(2, "little")),
    "BitsStored": st.sampled_from([16, 12]).map(lambda v: v.to_bytes(2, "little")),
    "PixelRepresentation": st.sampled_from([0, 1]).map(lambda v: v.to_bytes(2, "little")),
    "RescaleIntercept": _PLAIN_DS.map(str.encode), "RescaleSlope": _PLAIN_DS.map(str.encode),
}
_AWKWARD = st.one_of(
    st.binary(max_size=14),
    st.text(" \\\0.+-eE0123456789nafi_\t,", max_size=16).map(str.encode),
    st.sampled_from([b"nan", b"1e999", b"1_0", b"\xe9", b"1.5\\", b"\x1b$B", b"1\\2\\3\\4\\5\\6\\7", b"inf\\0\\0"]),
)
_EXTRA_VRS = ["OB", "UN", "LO", "DS", "US", "SS", "FD", "UT", "SH", "CS"]


def _raw(tag, vr, value: bytes, explicit: bool, little: bool = True):
    """An element written as given: any bytes, any length, any VR."""
    return RawDataElement(pydicom.tag.Tag(tag), vr if explicit else None, len(value), value, 0, not explicit, little)


@st.composite
def _item(draw, explicit: bool, depth: int):
    ds = Dataset()
    for k in range(draw(st.integers(0, 3))):
        tag = 0x00091010 + k
        ds[tag] = _raw(tag, "LO", draw(st.binary(max_size=9)), explicit)
    if depth < 2 and draw(st.booleans()):
        ds.add(_sequence(draw, 0x00091020, explicit, depth + 1))
    ds.is_undefined_length_sequence_item = draw(st.booleans())
    return ds


def _sequence(draw, tag, explicit: bool, depth: int):
    elem = pydicom.DataElement(tag, "SQ", Sequence(draw(st.lists(_item(explicit, depth), max_size=3))))
    elem.is_undefined_length = draw(st.booleans())
    return elem


@st.composite
def dicom_files(draw, plain: bool):
    """A DICOM file's bytes; ``plain``: only values and structures the scanner must take."""
    syntax = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]
                                  + ([] if plain else [ExplicitVRBigEndian, JPEG2000Lossless])))
    explicit, little = syntax != ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, "1.2.3.9"
    meta.TransferSyntaxUID = syntax
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = draw(st.sampled_from(["ISO_IR 100", "ISO_IR 192", "ISO_IR 6"]))
    # how many elements in a hundred are awkward: none in many files, so that many are scanned
    rate = 0 if plain else draw(st.sampled_from([0, 0, 3, 10, 30]))
    for keyword, plain_values in _PLAIN.items():
        tag = pydicom.datadict.tag_for_keyword(keyword)
        required = keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SOPClassUID")
        if not (required and plain) and draw(st.integers(0, 99)) < (rate or 10 * (not required)):
            continue  # optional elements may be missing, and in awkward files any element
        # pydicom's writer reads these two to settle ambiguous VRs: any two bytes, not any length
        awkward = st.binary(min_size=2, max_size=2) if keyword in ("PixelRepresentation", "BitsAllocated") else _AWKWARD
        value = draw(awkward if draw(st.integers(0, 99)) < rate else plain_values)
        vr = dictionary_VR(tag)
        if draw(st.integers(0, 299)) < rate:
            vr = draw(st.sampled_from(["UN", "LO", "OB"]))
        ds[tag] = _raw(tag, vr, value, explicit, little)
    if draw(st.booleans()):
        for k in range(draw(st.integers(0, 4))):  # private elements, any VR, odd lengths
            tag = 0x00190010 + 0x100 * k + k
            ds[tag] = _raw(tag, draw(st.sampled_from(_EXTRA_VRS)), draw(st.binary(max_size=11)), explicit, little)
        if draw(st.booleans()):
            ds.add(_sequence(draw, draw(st.sampled_from([0x00081140, 0x00091030])), explicit, 0))
    n_pixels = ROWS * COLS * 2 if not rate else draw(st.sampled_from([ROWS * COLS * 2, 7, 0, None]))
    if syntax == JPEG2000Lossless:  # compressed frames are encapsulated, in undefined length
        ds.PixelData = encapsulate([draw(st.binary(min_size=2, max_size=8))])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    elif n_pixels is not None:
        ds[0x7FE00010] = _raw(0x7FE00010, "OW", draw(st.binary(min_size=n_pixels, max_size=n_pixels)), explicit,
                                  little)
    if draw(st.booleans()):
        ds[0x7FE10010] = _raw(0x7FE10010, "OB", b"tail", explicit, little)  # an element after the pixels
    # written as read with this encoding: raw elements go out as they are, never converted
    ds.set_original_encoding(not explicit, little, convert_encodings(ds.SpecificCharacterSet))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the awkward values it writes
        try:
            ds.save_as(buf, enforce_file_format=True, little_endian=little, implicit_vr=not explicit)
        except (UnicodeError, TypeError):  # a draw pydicom itself cannot write (a decoded value that
            reject()                         # does not encode back): no file to compare
    return buf.getvalue()


def _pydicom_view(data: bytes):
    """What the ingest reads of a file through pydicom (the values a ScannedSlice holds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = parse_file(data, Path("x.dcm"), "case")
        tilt = ds.get("GantryDetectorTilt")
        return {"header": header_of(ds), "dims": _dims(ds), "vectors": _vectors(ds, Path("x.dcm"), "case"),
                "rescale": _rescale(ds, Path("x.dcm"), "case"), "tilt": None if tilt in (None, "") else float(tilt),
                "bits": (ds.get("SamplesPerPixel"), ds.get("BitsAllocated"), ds.get("BitsStored"),
                         ds.get("PixelRepresentation")),
                "syntax": ds.file_meta.TransferSyntaxUID, "pixels": ds.PixelData}


def _scanned_view(x: ScannedSlice):
    return {"header": x.header, "dims": _dims(x), "vectors": _vectors(x, Path("x.dcm"), "case"),
            "rescale": (x.slope, x.intercept), "tilt": x.gantry_tilt,
            "bits": (x.samples, x.bits_allocated, x.bits_stored, x.pixel_representation),
            "syntax": x.transfer_syntax, "pixels": bytes(x.pixels)}


def _assert_same(scanned: dict, read: dict):
    for key, value in read.items():
        if key == "vectors":
            for a, b in zip(scanned[key], value):
                assert a.dtype == b.dtype and a.tolist() == b.tolist()
        else:
            assert scanned[key] == value, key


@settings(max_examples=300, deadline=None)
@given(data=dicom_files(plain=False), cut=st.floats(0.2, 1.0))
def test_every_scanned_value_is_pydicoms(data, cut):
    scanned = scan_slice(data)
    event(f"scanned: {scanned is not None}")
    if b"1.2.840.10008.1.2.4.90" in data[:300]:
        assert scanned is None  # compressed pixels: pydicom's decoders
    if scanned is not None:
        _assert_same(_scanned_view(scanned), _pydicom_view(data))
    for head in (data, data[:int(cut * len(data))]):  # the same grouping tags from the first bytes alone
        header = scan_header(head)
        event(f"header scanned ({'whole' if head is data else 'cut'}): {header is not None}")
        if header is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert header == header_of(pydicom.dcmread(io.BytesIO(data)))


@settings(max_examples=100, deadline=None)
@given(data=dicom_files(plain=True))
def test_plain_files_are_scanned(data):
    scanned = scan_slice(data)
    assert scanned is not None
    _assert_same(_scanned_view(scanned), _pydicom_view(data))
    assert scan_header(data) == scanned.header


def test_the_wanted_elements_have_their_dictionary_vrs():
    # implicit VR files carry no VR: the scanner reads them as pydicom's dictionary says
    for tag, (keyword, vr) in dicomscan._WANTED.items():
        assert pydicom.datadict.keyword_for_tag(tag) == keyword and dictionary_VR(tag) == vr.decode()


def test_structures_it_does_not_recognise_are_passed_on(tmp_path, dicom_factory):
    path, = dicom_factory.write_series(tmp_path, dicom_factory.z_positions([0]))
    data = path.read_bytes()
    assert scan_slice(data) is not None
    rows = data.index(b"\x28\x00\x10\x00US")  # the Rows element, 10 bytes
    assert scan_slice(data + data[rows:rows + 10]) is None  # a tag out of order (pydicom keeps the last)
    assert scan_slice(data[:-1]) is None  # pixel data cut short
    assert scan_slice(data[132:]) is None  # no preamble: pydicom reads it with force
    assert scan_slice(data[:rows] + b"\x28\x00\x10\x00UN\0\0\x02\0\0\0" + data[rows + 10:]) is None  # Rows as UN


_FAULTS = {"frames": ("NumberOfFrames", 2), "rows": ("Rows", 13), "spacing": ("PixelSpacing", [1.0005, 2.0]),
           "spacing within tolerance": ("PixelSpacing", [1.00005, 2.0]),
           "orientation": ("ImageOrientationPatient", [1, 0, 0, 0, 1, 0.001]),
           "orientation within tolerance": ("ImageOrientationPatient", [1, 0, 0, 0, 1, 0.00005])}


def _first_refusal(paths):
    """The slice-by-slice reference: the first (slice, check) a series' slices fail, in file order."""
    dss = [pydicom.dcmread(p) for p in paths]
    rows, cols = dss[0].Rows, dss[0].Columns
    pixel, iop = np.array(dss[0].PixelSpacing, float), np.array(dss[0].ImageOrientationPatient, float)
    for p, ds in zip(paths, dss):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            return f"{p.name} is a multi-frame image"
        if (ds.Rows, ds.Columns) != (rows, cols):
            return f"inconsistent slice size: {p.name}"
        if not np.allclose(np.array(ds.PixelSpacing, float), pixel, rtol=1e-4, atol=1e-5):
            return f"inconsistent pixel sizes: {p.name}"
        if not np.allclose(np.array(ds.ImageOrientationPatient, float), iop, atol=1e-4):
            return f"inconsistent slice orientation: {p.name}"
    return None


def _outcome(paths, slices):
    try:
        v = series_volume(paths, slices, max_voxels=10 ** 6, case="case")
    except ValueError as exc:
        return str(exc)
    return v.hu.tobytes(), v.spacing_zyx, v.origin_zyx, v.direction.tolist(), v.notes


@settings(max_examples=25, deadline=None)
@given(order=st.permutations(range(5)), implicit=st.booleans(),
       faults=st.lists(st.tuples(st.integers(0, 4), st.sampled_from(sorted(_FAULTS))), max_size=3))
def test_a_series_of_scanned_slices_equals_pydicoms_and_the_first_bad_slice_is_named(
        tmp_path_factory, dicom_factory, order, implicit, faults):
    folder = tmp_path_factory.mktemp("series")
    paths = dicom_factory.write_series(folder, dicom_factory.z_positions([0, 3, 6, 9, 12]))
    for k, fault in faults:
        ds = pydicom.dcmread(paths[k])
        keyword, value = _FAULTS[fault]
        setattr(ds, keyword, value)
        ds.save_as(paths[k])
    if implicit:
        for p in paths:
            ds = pydicom.dcmread(p)
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(p, implicit_vr=True, little_endian=True)
    paths = [paths[i] for i in order]
    datas = [p.read_bytes() for p in paths]
    assert all(scan_slice(d) is not None for d in datas)
    scanned = _outcome(paths, [scan_slice(d) for d in datas])
    assert scanned == _outcome(paths, [parse_file(d, p, "case") for d, p in zip(datas, paths)])
    refusal = _first_refusal(paths)
    if refusal is None:
        assert not isinstance(scanned, str), scanned
    else:
        assert isinstance(scanned, str) and scanned.startswith(f"case: {refusal}")


def test_real_series_are_scanned_as_pydicom_reads_them(shared_data):
    # every LIDC and gantry-tilt slice is the plain case; the JPEG 2000 series' pixels are left to pydicom
    files = [p for d in ("ct/lidc", "ct/robustness/ge-head-gantry-tilt", "ct/robustness/body-jpeg2000-dicom")
             for p in sorted((shared_data / d).rglob("*")) if p.is_file() and p.suffix != ".xml"
             and not p.name.startswith(("LICENSE", "ATTRIBUTION", "nodules"))]
    scanned = 0
    for p in files:
        data = p.read_bytes()
        x = scan_slice(data)
        if "jpeg2000" in str(p):  # the header is scanned, the slice is pydicom's (compressed pixels)
            assert x is None and scan_header(data[:4096]) == header_of(parse_file(data, p, "case"))
            continue
        assert x is not None, p
        _assert_same(_scanned_view(x), _pydicom_view(data))
        assert scan_header(data[:4096]) == x.header
        scanned += 1
    assert scanned == 133 + 140 + 28


def _store_contents(store):
    import zarr

    group = zarr.open_group(str(store), mode="r")
    return {case: (dict(group[case].attrs), dict(group[case]["image"].attrs), group[case]["image"][...].tobytes())
            for case in sorted(group.group_keys())}


def test_real_stores_are_byte_identical_with_the_scanner_or_pydicom_alone(shared_data, tmp_path, monkeypatch):
    # the awkward series (gantry tilt and uneven gaps, JPEG 2000) and a LIDC series, ingested with
    # the scanner and again with every file read by pydicom: same digests, attributes, notes, voxels
    from tcpc_data.ingest import IngestConfig, ingest
    from tcpc_data.ingest import dicom, onepass

    src = tmp_path / "src"
    src.mkdir()
    (src / "robustness").symlink_to(shared_data / "ct" / "robustness")
    (src / "LIDC-IDRI-0001").symlink_to(shared_data / "ct" / "lidc" / "LIDC-IDRI-0001")
    config = IngestConfig(clip=(-1024, 3071))
    scanned = ingest(src, tmp_path / "scanned.zarr", config, workers=1)
    for module in (dicom, onepass):
        monkeypatch.setattr(module, "scan_slice", lambda data: None)
    monkeypatch.setattr(dicomscan, "scan_header", lambda head: None)
    read = ingest(src, tmp_path / "pydicom.zarr", config, workers=1)
    assert scanned.ok and read.ok and len(scanned.done) == 4
    assert scanned.notes == read.notes
    assert _store_contents(tmp_path / "scanned.zarr") == _store_contents(tmp_path / "pydicom.zarr")
