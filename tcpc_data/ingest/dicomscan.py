"""A validating scanner for the common DICOM CT slice: the few elements the ingest needs, read
straight from a file's bytes, or None for anything it does not recognise (then pydicom reads it).

pydicom builds a dataset of every element and converts values through its own number
classes (DSfloat, IS, MultiValue), which costs more than decoding the slice's pixels. A
CT slice needs about twenty top-level elements. The scanner walks the elements once
with :mod:`struct`, skipping values (sequences too, including undefined lengths), and
keeps the ones in :data:`_WANTED`. It takes only the plain case:

- a ``DICM`` preamble and an explicit VR little-endian file meta group with a transfer
  syntax; an uncompressed little-endian dataset (implicit or explicit VR; the first
  element's encoding must agree with the transfer syntax, as pydicom checks); for
  discovery's header alone, a JPEG-family or RLE compressed one too;
- elements in strictly increasing tag order, every VR known, every length inside the
  file, no item tags at the top level, sequences that parse as items;
- values that decode to what pydicom gives without any of its leniencies: printable
  ASCII (a trailing NUL allowed), plain decimal numbers, the expected value
  multiplicity, the expected VR of an explicit element.

Anything else returns None and the caller parses the file with pydicom: a scanned value
is always the one pydicom reads (``tests/data/ingest/test_dicomscan.py`` compares them on
generated files). Errors are pydicom's too: a file the scanner passes on is parsed by
pydicom, which names what is wrong.
"""
from __future__ import annotations

import dataclasses
import re
import struct

import numpy as np

_HEAD = struct.Struct("<HH2sH")   # group, element, explicit VR, 16-bit length
_IMPLICIT = struct.Struct("<HHI")  # group, element, 32-bit length (also items and delimiters)
_U32 = struct.Struct("<I")
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_MAX_DEPTH = 16  # nested sequences deeper than this are pydicom's

# pydicom's explicit VRs (pydicom.valuerep.EXPLICIT_VR_LENGTH_16 / _32)
_SHORT_VRS = frozenset(v.encode() for v in ("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT",
                                             "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"))
_LONG_VRS = frozenset(v.encode() for v in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT",
                                            "UV"))
IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
# JPEG family (JPEG 2000 and JPEG-LS included) and RLE: datasets in explicit VR little endian
_JPEG_FAMILY, _RLE = "1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5"

# tag -> (keyword, VR): the elements discovery groups files by and the volume needs
_WANTED = {
    0x00080008: ("ImageType", b"CS"), 0x00080016: ("SOPClassUID", b"UI"), 0x00080060: ("Modality", b"CS"),
    0x00100020: ("PatientID", b"LO"), 0x00181120: ("GantryDetectorTilt", b"DS"),
    0x0020000E: ("SeriesInstanceUID", b"UI"), 0x00200011: ("SeriesNumber", b"IS"),
    0x00200032: ("ImagePositionPatient", b"DS"), 0x00200037: ("ImageOrientationPatient", b"DS"),
    0x00280002: ("SamplesPerPixel", b"US"), 0x00280008: ("NumberOfFrames", b"IS"), 0x00280010: ("Rows", b"US"),
    0x00280011: ("Columns", b"US"), 0x00280030: ("PixelSpacing", b"DS"), 0x00280100: ("BitsAllocated", b"US"),
    0x00280101: ("BitsStored", b"US"), 0x00280103: ("PixelRepresentation", b"US"),
    0x00281052: ("RescaleIntercept", b"DS"), 0x00281053: ("RescaleSlope", b"DS"),
}
LAST_HEADER_TAG = 0x00200011  # Series Number: the last tag discovery reads

_TEXT = re.compile(rb"[\x20-\x7e]*\x00?")  # printable ASCII, maybe a trailing NUL pad
_DECIMAL = re.compile(r" *[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)? *")
_INTEGER = re.compile(r" *[+-]?\d+ *")


class _Unrecognised(Exception):
    """Raised inside the scanner for anything it leaves to pydicom."""


@dataclasses.dataclass(frozen=True, eq=False)
class ScannedSlice:
    """What the ingest needs of one DICOM slice, as pydicom would read it.

    Attributes
    ----------
    header
        Discovery's grouping tags, as :func:`tcpc_data.ingest.discover.header_of` returns them.
    rows, columns, frames
        Rows, Columns (0 when absent) and NumberOfFrames (1 when absent, empty or 0).
    spacing, orientation, position
        PixelSpacing (2,), ImageOrientationPatient (6,), ImagePositionPatient (3,) as float64.
    slope, intercept
        RescaleSlope and RescaleIntercept (1 and 0 when absent or empty).
    gantry_tilt
        GantryDetectorTilt in degrees; None when absent or empty.
    samples, bits_allocated, bits_stored, pixel_representation
        SamplesPerPixel, BitsAllocated, BitsStored, PixelRepresentation (None when absent).
    transfer_syntax
        The file meta's TransferSyntaxUID (one of the uncompressed little-endian ones).
    pixels
        The PixelData value's bytes (a view into ``data``).
    data
        The file's bytes, for pydicom when a slice's pixels need its decoders or an error
        message quotes its values.
    """

    header: dict
    rows: int
    columns: int
    frames: int
    spacing: np.ndarray
    orientation: np.ndarray
    position: np.ndarray
    slope: float
    intercept: float
    gantry_tilt: float | None
    samples: int | None
    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int | None
    transfer_syntax: str
    pixels: memoryview
    data: bytes | memoryview


_PLACING = (0x00280030, 0x00200037, 0x00200032)  # PixelSpacing, ImageOrientationPatient, ImagePositionPatient


def scan_slice(data) -> ScannedSlice | None:
    """The elements the ingest needs from a whole file's bytes (any bytes-like object).

    None when the file is not the plain case (see the module docstring), or lacks its pixel
    data (or has an empty one, which pydicom reads as None) or a value that places the slice
    in space: pydicom must read it instead (and name what is missing).
    """
    try:
        found = _scan(data, stop_after=None)
        if found is None:
            return None
        ts, values, pixels = found
        header = _header(data, values)
        if header is None or pixels is None or pixels[1] == 0 or not all(t in values for t in _PLACING):
            return None
        return ScannedSlice(
            header=header, rows=_us(data, values, 0x00280010, 0), columns=_us(data, values, 0x00280011, 0),
            frames=_frames(data, values), spacing=_ds(data, values, 0x00280030, 2),
            orientation=_ds(data, values, 0x00200037, 6), position=_ds(data, values, 0x00200032, 3),
            slope=_ds_single(data, values, 0x00281053, 1.0), intercept=_ds_single(data, values, 0x00281052, 0.0),
            gantry_tilt=_ds_single(data, values, 0x00181120, None), samples=_us(data, values, 0x00280002, None),
            bits_allocated=_us(data, values, 0x00280100, None), bits_stored=_us(data, values, 0x00280101, None),
            pixel_representation=_us(data, values, 0x00280103, None), transfer_syntax=ts,
            pixels=memoryview(data)[pixels[0]:pixels[0] + pixels[1]], data=data)
    except _Unrecognised:
        return None


def scan_header(head: bytes) -> dict | None:
    """Discovery's grouping tags from the first bytes of a file (at least up to Series Number);
    None when they are not the plain case or lie beyond ``head``."""
    try:
        found = _scan(head, stop_after=LAST_HEADER_TAG)
        return None if found is None else _header(head, found[1])
    except _Unrecognised:
        return None


def _scan(data: bytes, stop_after: int | None):
    """(transfer syntax, {tag: (start, length)} of the wanted elements, (start, length) of the pixel
    data or None); None or _Unrecognised when the file is not the plain case. With ``stop_after``,
    stops at the first element past that tag and refuses a buffer that ends before it."""
    end = len(data)
    if end < 132 or data[128:132] != b"DICM":
        return None
    pos, ts = 132, None
    while pos + 8 <= end:
        group, elem, vr, length = _HEAD.unpack_from(data, pos)
        if group != 0x0002:
            break
        pos, length = _value_at(data, pos, vr, length)
        if length == _UNDEFINED or pos + length > end:
            return None
        if elem == 0x0010:
            ts = _text(data, pos, length).rstrip("\0 ")
        pos += length
    explicit = {EXPLICIT_LE: True, IMPLICIT_LE: False}.get(ts)
    if explicit is None and stop_after is not None and ts is not None and (ts.startswith(_JPEG_FAMILY) or ts == _RLE):
        explicit = True  # headers only: compressed pixels, but the elements before them are plain
    if explicit is None or pos + 8 > end:
        return None
    first_vr = data[pos + 4:pos + 6]
    if explicit != (0x40 < first_vr[0] < 0x5B and 0x40 < first_vr[1] < 0x5B):
        return None  # pydicom would switch to the other encoding
    values, pixels, last = {}, None, -1
    while pos < end:
        if pos + 8 > end:
            return None
        if explicit:
            group, elem, vr, length = _HEAD.unpack_from(data, pos)
            tag = group << 16 | elem
            if stop_after is not None and tag > stop_after:
                break
            start, length = _value_at(data, pos, vr, length)
        else:
            group, elem, length = _IMPLICIT.unpack_from(data, pos)
            tag, start, vr = group << 16 | elem, pos + 8, None
            if stop_after is not None and tag > stop_after:
                break
        if tag <= last or group == 0xFFFE:
            return None
        last = tag
        if length == _UNDEFINED:
            if tag in _WANTED or tag == _PIXEL_DATA or (vr not in (b"SQ", b"UN") if explicit else _not_sq(tag)):
                return None  # encapsulated pixels, or an undefined length pydicom reads another way
            pos = _skip_sequence(data, start, end, explicit and vr == b"SQ", 1)
            continue
        pos = start + length
        if pos > end:
            return None
        wanted = _WANTED.get(tag)
        if wanted is not None:
            if explicit and vr != wanted[1]:
                return None
            values[tag] = (start, length)
        elif tag == _PIXEL_DATA:
            pixels = (start, length)
    else:
        if stop_after is not None:
            return None  # the buffer ends before the header does
    return ts, values, pixels


def _not_sq(tag: int) -> bool:
    """Whether an implicit VR element of undefined length is a public one that is not a sequence
    (pydicom reads it up to a delimiter instead of item by item)."""
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag) not in ("SQ", "UN")
    except KeyError:
        return False  # private or unknown: a sequence when its value starts with an item, as here


def _value_at(data: bytes, pos: int, vr: bytes, short_length: int) -> tuple[int, int]:
    """(value start, length) of the explicit VR element at ``pos``."""
    if vr in _SHORT_VRS:
        return pos + 8, short_length
    if vr in _LONG_VRS and pos + 12 <= len(data):
        return pos + 12, _U32.unpack_from(data, pos + 8)[0]
    raise _Unrecognised


def _skip_sequence(data: bytes, pos: int, end: int, explicit: bool, depth: int) -> int:
    """Position after the sequence of undefined length whose items start at ``pos``."""
    if depth > _MAX_DEPTH:
        raise _Unrecognised
    while pos + 8 <= end:
        group, elem, length = _IMPLICIT.unpack_from(data, pos)
        tag, pos = group << 16 | elem, pos + 8
        if tag == _SEQ_END and length == 0:
            return pos
        if tag != _ITEM:
            break
        if length != _UNDEFINED:
            pos += length
            continue
        pos = _skip_item(data, pos, end, explicit, depth)
    raise _Unrecognised


def _skip_item(data: bytes, pos: int, end: int, explicit: bool, depth: int) -> int:
    """Position after the item of undefined length whose elements start at ``pos``."""
    while pos + 8 <= end:
        group, elem, length = _IMPLICIT.unpack_from(data, pos)
        tag = group << 16 | elem
        if tag == _ITEM_END and length == 0:
            return pos + 8
        if group == 0xFFFE:
            break
        vr = None
        if explicit:
            vr, short_length = _HEAD.unpack_from(data, pos)[2:]
            pos, length = _value_at(data, pos, vr, short_length)
        else:
            pos += 8
        if length == _UNDEFINED:
            if vr not in (b"SQ", b"UN") if explicit else _not_sq(tag):
                break
            pos = _skip_sequence(data, pos, end, explicit and vr == b"SQ", depth + 1)
        elif pos + length > end:
            break
        else:
            pos += length
    raise _Unrecognised


def _text(data: bytes, start: int, length: int) -> str:
    raw = data[start:start + length]
    if not _TEXT.fullmatch(raw):
        raise _Unrecognised
    return str(raw, "ascii")


def _items(data: bytes, values: dict, tag: int) -> list[str] | None:
    """The backslash-separated values of a string element as pydicom splits them (trailing spaces and
    NULs of the whole value removed); None when absent; [] when empty."""
    where = values.get(tag)
    if where is None:
        return None
    if where[1] == 0:
        return []
    return _text(data, *where).rstrip(" \0").split("\\")


def _single_text(data: bytes, values: dict, tag: int) -> str:
    """A UI, CS or LO value as discovery's ``str(ds.get(keyword, "") or "")``."""
    items = _items(data, values, tag)
    if not items:
        return ""
    if len(items) > 1:
        raise _Unrecognised  # a multi-valued string pydicom prints as a list
    # trailing spaces and NULs are gone (_items); pydicom's UID class strips leading spaces too
    return items[0].strip() if _WANTED[tag][1] == b"UI" else items[0]


def _header(data: bytes, values: dict) -> dict | None:
    """:func:`tcpc_data.ingest.discover.header_of` of the scanned values."""
    uid, modality, sop = (_single_text(data, values, t) for t in (0x0020000E, 0x00080060, 0x00080016))
    if not (uid or modality or sop):
        return None
    number = _items(data, values, 0x00200011)
    if number is None:
        series_number = ""
    elif number == []:
        series_number = "None"  # pydicom's empty IS is None, which discovery prints
    elif len(number) > 1 or not (number[0].strip() == "" or _INTEGER.fullmatch(number[0])):
        raise _Unrecognised
    else:
        series_number = number[0].strip()
    image_type = _items(data, values, 0x00080008) or []
    if len(image_type) == 1:
        image_type = list(image_type[0])  # one value: pydicom gives a str, whose characters discovery lists
    return {"SeriesInstanceUID": uid, "SeriesNumber": series_number, "Modality": modality, "SOPClassUID": sop,
            "ImageType": [t.upper() for t in image_type], "PatientID": _single_text(data, values, 0x00100020)}


def _us(data: bytes, values: dict, tag: int, default):
    where = values.get(tag)
    if where is None:
        return default
    if where[1] != 2:
        raise _Unrecognised  # empty or multi-valued
    return data[where[0]] | data[where[0] + 1] << 8


def _frames(data: bytes, values: dict) -> int:
    """NumberOfFrames as ``int(ds.get("NumberOfFrames", 1) or 1)``."""
    items = _items(data, values, 0x00280008)
    if not items or (len(items) == 1 and items[0].strip() == ""):
        return 1
    if len(items) > 1 or not _INTEGER.fullmatch(items[0]):
        raise _Unrecognised
    return int(items[0]) or 1


def _decimals(data: bytes, values: dict, tag: int) -> list[str] | None:
    """A DS value's numbers as pydicom splits them; None when absent, [] when empty."""
    where = values.get(tag)
    if where is None:
        return None
    text = _text(data, *where).strip().rstrip(" \0")
    return [] if text == "" else text.split("\\")


def _ds(data: bytes, values: dict, tag: int, n: int) -> np.ndarray | None:
    items = _decimals(data, values, tag)
    if items is None:
        return None
    if len(items) != n or not all(_DECIMAL.fullmatch(v) for v in items):
        raise _Unrecognised  # pydicom's reader raises the message for these
    vals = np.array([float(v) for v in items], dtype=np.float64)
    if not np.all(np.isfinite(vals)):
        raise _Unrecognised
    return vals


def _ds_single(data: bytes, values: dict, tag: int, default):
    items = _decimals(data, values, tag)
    if not items or (len(items) == 1 and items[0].strip() == ""):
        return default
    if len(items) != 1 or not _DECIMAL.fullmatch(items[0]):
        raise _Unrecognised
    return float(items[0])
