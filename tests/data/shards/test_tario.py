"""The fast tar and .npy readers agree with tarfile and np.load, and refuse damaged or pickled input."""
from __future__ import annotations

import hashlib
import io
import pickle
import re
import tarfile

import numpy as np
import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tcpc_data.shards import tario
from tcpc_data.shards.tario import encode_npy, read_npy, tar_members, tar_samples, write_tar


def _tarfile_members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_equal_tarfile_for_every_format(tmp_path, fmt):
    long_dir = "d" * 120  # beyond ustar's 100-character name: ustar prefix, GNU long name or PAX path
    names = ["a.cubes.npy", "a.json", f"{long_dir}/b.cls", "ü.json" if fmt != tarfile.USTAR_FORMAT else "c.json"]
    path = tmp_path / "x.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        adir = tarfile.TarInfo("adir")
        adir.type = tarfile.DIRTYPE  # not a file: skipped
        tar.addfile(adir)
        for i, name in enumerate(names):
            data = bytes(range(256)) * (i * 3 + 1) + b"x" * i  # sizes that are not multiples of 512
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5 if fmt == tarfile.PAX_FORMAT else 7
            tar.addfile(info, io.BytesIO(data))
    expected = _tarfile_members(path)
    assert len(expected) == 4
    assert list(tar_members(path)) == expected


@pytest.mark.parametrize("block", [512, 700, 1536, 5000])
@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_equal_tarfile_whatever_the_block_size(tmp_path, monkeypatch, fmt, block):
    """Members that straddle read blocks, or are larger than one, are read whole; headers the
    compiled scan leaves to Python (long names, PAX records, directories) come in their place."""
    monkeypatch.setattr(tario, "_BLOCK_READ", block)
    path = tmp_path / "b.tar"
    with tarfile.open(path, "w", format=fmt) as tar:
        for i in range(12):
            if i == 4:
                adir = tarfile.TarInfo("adir")
                adir.type = tarfile.DIRTYPE
                tar.addfile(adir)
            name = f"{'d' * 120}/k{i}.cls" if i in (5, 9) else f"k{i // 2}.{'npy' if i % 2 else 'json'}"
            data = bytes([i]) * (i * 301 + (3000 if i == 7 else 0))  # sizes around and above a block
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1.5 if fmt == tarfile.PAX_FORMAT else 7
            tar.addfile(info, io.BytesIO(data))
    expected = _tarfile_members(path)
    assert len(expected) == 12 and list(tar_members(path)) == expected


def test_samples_group_by_key_like_webdataset(tmp_path):
    path = tmp_path / "s.tar"
    with wds.TarWriter(str(path)) as tw:  # stock writer: PAX headers (float mtimes)
        for i in range(5):
            tw.write({"__key__": f"k{i}", "cubes.npy": encode_npy(np.full((2, 2), i, np.int16)),
                      "cls": str(i).encode()})
    ours = [(k, m) for k, m in tar_samples(path)]
    stock = [(s["__key__"], {e: v for e, v in s.items() if not e.startswith("__")})
             for s in wds.tarfile_to_samples()(iter([{"url": str(path)}]))]
    assert ours == stock and len(ours) == 5
    assert read_npy(ours[3][1]["cubes.npy"]).tolist() == [[3, 3], [3, 3]]


def test_write_tar_round_trip(tmp_path):
    samples = [(f"s{i}", {"json": b"{}", "path.npy": encode_npy(np.arange(i + 1))}) for i in range(3)]
    assert write_tar(tmp_path / "r.tar", samples) == 3
    assert list(tar_samples(tmp_path / "r.tar")) == samples
    # hashed while written: the same bytes and the file's own SHA-256, with or without the fsync
    sha = hashlib.sha256()
    assert write_tar(tmp_path / "h.tar", samples, durable=True, sha256=sha) == 3
    assert (tmp_path / "h.tar").read_bytes() == (tmp_path / "r.tar").read_bytes()
    assert sha.hexdigest() == hashlib.sha256((tmp_path / "r.tar").read_bytes()).hexdigest()


def test_damaged_tars_are_clear_errors_and_the_file_is_kept(tmp_path):
    path = tmp_path / "d.tar"
    write_tar(path, [("s0", {"cubes.npy": encode_npy(np.zeros(2000, np.float32))})])
    whole = path.read_bytes()
    path.write_bytes(whole[:3000])
    with pytest.raises(ValueError, match="truncated tar"):
        list(tar_members(path))
    path.write_bytes(whole[:300])
    with pytest.raises(ValueError, match="truncated tar"):
        list(tar_members(path))
    path.write_bytes(whole[:10] + b"Z" + whole[11:])
    with pytest.raises(ValueError, match="checksum mismatch"):
        list(tar_members(path))
    path.write_bytes(b"plain text, not an archive" * 40)
    with pytest.raises(ValueError, match="not a tar file"):
        list(tar_members(path))
    assert path.read_bytes() == b"plain text, not an archive" * 40
    pax = tmp_path / "pax.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("p" * 120 + ".json")  # a long name: a PAX record "NNN path=..."
        tar.addfile(info, io.BytesIO(b""))
    whole = pax.read_bytes()
    digits = whole[512:].index(b" ")
    pax.write_bytes(whole[:512] + b"0" * digits + whole[512 + digits:])  # record length 0
    with pytest.raises(ValueError, match="corrupt PAX header"):
        list(tar_members(pax))
    dup = tmp_path / "dup.tar"
    with tarfile.open(dup, "w") as tar:
        for _ in range(2):
            tar.addfile(tarfile.TarInfo("k.json"), io.BytesIO(b""))
    with pytest.raises(ValueError, match="two 'json' members"):
        list(tar_samples(dup))


_dtypes = st.sampled_from([np.float16, np.float32, np.float64, np.int8, np.int16, np.int64, np.uint8,
                           np.bool_, np.complex64, np.dtype(">f4"), np.dtype(">i2")])


@settings(max_examples=80, deadline=None)
@given(arr=_dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, max_side=5))),
       fortran=st.booleans())
def test_read_npy_equals_np_load(arr, fortran):
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(arr) if fortran else arr, allow_pickle=False)
    data = buf.getvalue()
    ours, ref = read_npy(data), np.load(io.BytesIO(data), allow_pickle=False)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)


def test_read_npy_refuses_pickles_and_damage():
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        read_npy(obj.getvalue())
    with pytest.raises(ValueError, match="pickled"):
        read_npy(pickle.dumps(np.zeros(3)))
    with pytest.raises((ValueError, EOFError)):
        read_npy(encode_npy(np.zeros((4, 4)))[:-8])


def _set_checksum(header: bytearray, signed: bool = False) -> None:
    header[148:156] = b" " * 8
    total = sum((b - 256 if signed and b > 127 else b) for b in header)
    header[148:156] = b"%06o\0 " % (total & 0o777777)


def test_gnu_time_fields_and_signed_checksums(tmp_path):
    path = tmp_path / "g.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("ü.json")  # a name byte above 127: signed and unsigned sums differ
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    raw = bytearray(path.read_bytes())
    header = raw[:512]
    assert header[257:265] == b"ustar  \0"  # GNU magic
    header[345:357] = b"%011o\0" % 1234567  # a GNU atime where POSIX keeps the name prefix
    _set_checksum(header, signed=True)
    raw[:512] = header
    path.write_bytes(bytes(raw))
    assert list(tar_members(path)) == [("ü.json", b"abc")]


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=512, max_size=512) | st.sampled_from([b"\0" * 512, b"\xff" * 512, b"\x01" * 512]))
def test_header_byte_sum_equals_sum(header):
    from tcpc_data.shards.tario import _byte_sum
    assert _byte_sum(header) == sum(header)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(b"01234567 \0+_8x"), min_size=1, max_size=12).map(bytes))
def test_header_numbers_read_as_tar_defines_them(field):
    """The one-call parse of a number field agrees with its definition: the text up to the first NUL,
    stripped, in octal (empty: 0), else a one-line error naming the file."""
    from tcpc_data.shards.tario import _number
    text = field.split(b"\0", 1)[0].strip()
    try:
        want = int(text, 8) if text else 0
    except ValueError:
        with pytest.raises(ValueError, match=r"^x.tar: not a tar file \(bad size field"):
            _number(field, "size", "x.tar")
    else:
        assert _number(field, "size", "x.tar") == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(b"01234567 \0+_8x\x80"), min_size=1, max_size=12).map(bytes))
def test_the_compiled_scan_reads_numbers_as_python_or_leaves_them(field):
    """The compiled header pass reads a number field exactly as :func:`_number` does, or declines it
    (-1) and leaves its header to the Python reader."""
    from tcpc_data.shards.tario import _number
    from tcpc_data.shards.tarscan import _octal
    got = _octal(np.frombuffer(field, np.uint8), 0, len(field))
    plain = re.fullmatch(rb" *[0-7]+[ \0]*", field) is not None  # the form tar writers use
    assert (got >= 0) == plain
    if plain:
        assert got == _number(field, "size", "x.tar")
