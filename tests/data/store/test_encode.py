"""The store's own shard encoder writes zarr's bytes exactly, for any shape, dtype and empty chunks."""
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tcpc_data.store import encode as shard_encode
from tcpc_data.store import volumes as store
from tcpc_data.store.encode import blosc_of, encode_shard

# Where the installed zarr writes other bytes than the encoder (zarr < 3.1 drops chunks of -0.0), the
# store writes through zarr and these comparisons do not apply.
zarrs_layout = pytest.mark.skipif(not shard_encode.same_as_zarr(),
                                  reason="this zarr writes other bytes than the encoder: the store writes through zarr")
_DTYPES = ("float32", "float16", "uint8", "uint16", "int32", "bool")


def _zarr_shard(data: np.ndarray, chunks, write_empty: bool):
    """(shard bytes or None, the array's sharding codec) of zarr's own write of ``data``."""
    written: dict = {}
    shards = tuple(-(-s // c) * c for s, c in zip(data.shape, chunks))
    arr = zarr.create_array(zarr.storage.MemoryStore(store_dict=written), shape=data.shape, dtype=data.dtype,
                            chunks=chunks, shards=shards,
                            compressors=store._COMPRESSORS, config={"write_empty_chunks": write_empty},
                            zarr_format=3)
    arr[...] = data
    buf = written.get("c/0/0/0")
    return (None if buf is None else buf.to_bytes()), arr.metadata.codecs[0]


@st.composite
def _volumes(draw):
    dtype = draw(st.sampled_from(_DTYPES))
    shape = draw(st.tuples(*[st.integers(1, 11)] * 3))
    chunks = draw(st.tuples(*[st.integers(1, 5)] * 3))
    # few distinct values, zeros and (for floats) -0.0 often: empty and almost-empty chunks
    values = st.sampled_from([0, 0, 0, 1, 7]) if dtype != "bool" else st.booleans()
    data = draw(hnp.arrays(dtype, shape, elements=values))
    if dtype.startswith("float") and draw(st.booleans()):
        data[tuple(draw(st.integers(0, s - 1)) for s in shape)] = -0.0
    return data, chunks


@zarrs_layout
@settings(max_examples=60, deadline=None)
@given(_volumes(), st.booleans(), st.sampled_from([1, 3]))
def test_encoded_shard_is_zarrs_byte_for_byte(volume, write_empty, threads):
    data, chunks = volume
    expected, codec = _zarr_shard(data, chunks, write_empty)
    old = shard_encode._THREADS
    shard_encode._THREADS = threads
    try:
        pieces = encode_shard(data, chunks, blosc_of(codec), write_empty)
        assert (None if pieces is None else b"".join(pieces)) == expected
    finally:
        shard_encode._THREADS = old


@zarrs_layout
def test_all_fill_value_writes_no_shard_like_zarr():
    data = np.zeros((5, 6, 7), "f4")
    expected, codec = _zarr_shard(data, (4, 4, 4), False)
    assert expected is None and encode_shard(data, (4, 4, 4), blosc_of(codec), False) is None
    assert b"".join(encode_shard(data, (4, 4, 4), blosc_of(codec), True)) == _zarr_shard(data, (4, 4, 4), True)[0]


def test_committed_volume_reads_back_identical_through_zarr(tmp_path):
    # a volume of several real 64^3 chunks and a partial edge, written by commit_arrays and read by
    # plain zarr (what every reader of an existing store does)
    rng = np.random.default_rng(3)
    data = (rng.integers(-1024, 3071, size=(70, 130, 65)) / 4095.0).astype("f4")
    data[:64, :64, :64] = 0  # one omitted chunk
    store.commit_arrays(tmp_path / "v.zarr", "c", {"image": data}, {"image": {"digest": "d"}})
    back = zarr.open_group(str(tmp_path / "v.zarr"), mode="r")["c/image"]
    np.testing.assert_array_equal(back[...], data)
    np.testing.assert_array_equal(back[60:70, 100:130, 1:65], data[60:70, 100:130, 1:65])


def test_other_codec_layouts_are_left_to_zarr():
    arr = zarr.create_array(zarr.storage.MemoryStore(), shape=(8, 8, 8), dtype="f4", chunks=(4, 4, 4),
                            shards=(8, 8, 8), compressors=zarr.codecs.ZstdCodec(), zarr_format=3)
    assert blosc_of(arr.metadata.codecs[0]) is None
    blosc = blosc_of(_zarr_shard(np.ones((2, 2, 2), "f4"), (2, 2, 2), True)[1])
    with pytest.raises(ValueError, match="3-D"):
        encode_shard(np.zeros((4, 4), "f4"), (4, 4), blosc, True)


def test_fsspec_store_gets_the_same_shard_as_a_local_one(tmp_path):
    import fsspec

    data = np.arange(70 * 9 * 66, dtype="f4").reshape(70, 9, 66) % 97
    store.commit_arrays(tmp_path / "v.zarr", "c", {"image": data}, {"image": {"digest": "d"}})
    url = f"memory://shard-{tmp_path.name}/v.zarr"
    store.commit_arrays(url, "c", {"image": data}, {"image": {"digest": "d"}})
    remote = fsspec.filesystem("memory").cat_file(f"/shard-{tmp_path.name}/v.zarr/c/image/c/0/0/0")
    assert remote == (tmp_path / "v.zarr" / "c" / "image" / "c" / "0" / "0" / "0").read_bytes()
    np.testing.assert_array_equal(store.open_store(url, "r")["c/image"][...], data)


@zarrs_layout
def test_a_chunk_of_negative_zeros_is_kept_like_zarr(tmp_path):
    # zarr compares a chunk with the fill value 0.0 bit for bit: -0.0 is data, not an empty chunk
    data = np.zeros((4, 4, 8), "f4")
    data[:, :, 4:] = -0.0
    expected, codec = _zarr_shard(data, (4, 4, 4), False)
    pieces = encode_shard(data, (4, 4, 4), blosc_of(codec), False)
    assert len(pieces) == 3 and b"".join(pieces) == expected  # one chunk, the index, its CRC
    arr = zarr.create_array(zarr.storage.LocalStore(tmp_path), shape=data.shape, dtype="f4", chunks=(4, 4, 4),
                            shards=(4, 4, 8), compressors=store._COMPRESSORS, zarr_format=3)
    (tmp_path / "c" / "0" / "0").mkdir(parents=True)
    (tmp_path / "c" / "0" / "0" / "0").write_bytes(expected)
    assert np.signbit(arr[...][:, :, 4:]).all() and not np.signbit(arr[...][:, :, :4]).any()


_FAULTS = """
import resource, sys, tempfile
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
from tcpc_data.store.volumes import commit_arrays
v = (np.random.default_rng(0).standard_normal((128, 256, 256)) * 0.1).astype(np.float16)
faults = []
with tempfile.TemporaryDirectory() as tmp:
    for i in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        commit_arrays(f"{tmp}/s{i}.zarr", "c", {"image": v}, {"image": {"digest": "x"}})
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults[2:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc settings are glibc's")
def test_store_writes_reuse_compression_buffers_without_page_faults():
    """Once warm, a process's 16 MiB store writes take few page faults: Blosc's freed output buffers
    are reused. With glibc's defaults every write maps each chunk's buffer afresh (4,300-6,000
    faults per write here); with the setting the first writes still fault while the compression
    threads' malloc arenas fill (up to ~3,000 on the second or third), later ones 5-130."""
    out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert int(out.stdout) < 1000


def test_morton_order_is_zarrs_compressed_order():
    # 2x2x2: axis 0 takes the lowest bit; an axis of one chunk has no bits, so (3, 1, 2) interleaves
    # the two bits of axis 0 with the one of axis 2
    assert shard_encode.morton_order((2, 2, 2)) == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0),
                                                     (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    assert shard_encode.morton_order((3, 1, 2)) == [(0, 0, 0), (1, 0, 0), (0, 0, 1), (1, 0, 1), (2, 0, 0),
                                                     (2, 0, 1)]


@zarrs_layout
def test_the_encoder_is_used_only_where_it_writes_the_installed_zarrs_bytes(monkeypatch):
    assert shard_encode.same_as_zarr()  # this zarr: the encoder's bytes are its own
    check = shard_encode.same_as_zarr.__wrapped__
    # a zarr that orders chunks otherwise (here: C order) is caught by the check
    monkeypatch.setattr(shard_encode, "morton_order", lambda grid: [tuple(c) for c in np.ndindex(*grid)])
    assert check() is False
    monkeypatch.undo()
    # a zarr whose API moved is caught too, as a False rather than an error
    monkeypatch.setattr(zarr, "create_array", lambda *a, **k: (_ for _ in ()).throw(TypeError("moved")))
    assert check() is False


def test_without_the_encoder_the_store_writes_the_same_bytes_through_zarr(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    data = rng.standard_normal((70, 20, 66)).astype("f4")
    data[:64, :, :64] = 0  # one omitted chunk
    store.commit_arrays(tmp_path / "fast.zarr", "c", {"image": data}, {"image": {"digest": "d"}})

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder ran although the check found zarr's bytes differ")
    monkeypatch.setattr(store, "same_as_zarr", lambda: False)
    monkeypatch.setattr(store, "encode_shard", refuse)
    store.commit_arrays(tmp_path / "zarr.zarr", "c", {"image": data}, {"image": {"digest": "d"}})
    for name in ("fast", "zarr"):
        np.testing.assert_array_equal(zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")["c/image"][...], data)
    shard = Path("c", "image", "c", "0", "0", "0")
    assert (tmp_path / "fast.zarr" / shard).read_bytes() == (tmp_path / "zarr.zarr" / shard).read_bytes()


_WITHOUT_INTERNALS = """
import builtins, sys
import numpy as np
real_import = builtins.__import__


def without_internals(name, globals=None, locals=None, fromlist=(), level=0):
    # a later zarr that moved or renamed everything under zarr.core, seen from tcpc's modules
    if (globals or {}).get("__name__", "").startswith("tcpc") and name.startswith("zarr.core"):
        raise ImportError(f"simulated: no {name} in this zarr")
    return real_import(name, globals, locals, fromlist, level)


builtins.__import__ = without_internals
from tcpc_data.store.encode import same_as_zarr
from tcpc_data.store.volumes import commit_arrays, open_store
data = np.arange(70 * 9 * 66, dtype="f4").reshape(70, 9, 66)
commit_arrays(sys.argv[1], "c", {"image": data}, {"image": {"digest": "d"}})
print(same_as_zarr(), bool((open_store(sys.argv[1], "r")["c/image"][...] == data).all()))
"""


@pytest.mark.parametrize("where", ["local", "memory"])
def test_the_engine_imports_and_writes_without_zarrs_internals(tmp_path, where):
    url = str(tmp_path / "v.zarr") if where == "local" else f"memory://internals-{tmp_path.name}/v.zarr"
    out = subprocess.run([sys.executable, "-c", _WITHOUT_INTERNALS, url], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.split() == [str(shard_encode.same_as_zarr()), "True"]
