"""Fuzzing shard tars: mutated headers, sizes and data give samples or a one-line error naming the file.

Reading is bounded: a header that declares more bytes than the file holds is an
error before anything is allocated. The block reader with its compiled header
scan reads exactly what the header-by-header Python reader reads, and fails
with the same error, whatever the block size.
"""
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpc_data.shards import tario
from tcpc_data.shards.tario import encode_npy, tar_members, tar_samples, write_tar


@pytest.fixture(scope="module")
def shard_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("shard")
    samples = [(f"case_c{i:05d}_t00", {"cubes.npy": encode_npy(np.full((3, 4, 4, 4), i, np.float16)),
                                        "path.npy": encode_npy(np.arange(9, dtype=np.int16).reshape(3, 3)),
                                        "json": b'{"case": "case"}'}) for i in range(3)]
    write_tar(d / "s.tar", samples)
    return (d / "s.tar").read_bytes()


mutation = st.tuples(
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
    st.one_of(st.none(), st.floats(0, 1)),
    st.booleans(),  # aim the flips at the first header's size field
)


def _mutate(data: bytes, flips, cut, at_size) -> bytes:
    b = bytearray(data)
    for where, value in flips:
        b[124 + int(where * 12) if at_size else int(where * len(b))] = value
    return bytes(b[: int(cut * len(b))]) if cut is not None else bytes(b)


def _read_all(shard_bytes, m):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "shard-000000.tar"
        p.write_bytes(_mutate(shard_bytes, *m))
        try:
            return [(k, sorted(v)) for k, v in tar_samples(p)]
        except ValueError as exc:
            msg = str(exc)
            assert "\n" not in msg and p.name in msg, msg
            return None


@settings(max_examples=150, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=mutation)
def test_a_mutated_shard_reads_or_fails_in_one_line_naming_it(shard_bytes, m):
    _read_all(shard_bytes, m)


@pytest.mark.fuzz
@settings(max_examples=5000, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=mutation)
def test_fuzz_campaign_shards(shard_bytes, m):
    _read_all(shard_bytes, m)


def test_a_size_past_the_end_of_the_file_is_refused_before_reading(shard_bytes, tmp_path):
    b = bytearray(shard_bytes)
    b[124:136] = b"77777777777\0"  # 8 GiB declared in the first member's header
    b[148:156] = b"        "
    b[148:156] = f"{sum(b[:512]):06o}\0 ".encode()
    (tmp_path / "big.tar").write_bytes(bytes(b))
    with pytest.raises(ValueError, match=r"big.tar: .*declares \d+ bytes"):
        list(tar_samples(tmp_path / "big.tar"))


def _python_members(path: Path) -> list:
    """Every member as the header-by-header Python reader alone reads it."""
    out, pos, total = [], 0, path.stat().st_size
    with open(path, "rb") as f:
        while pos is not None:
            f.seek(pos)
            slow = tario._slow_member(f, pos, total, str(path))
            while True:
                try:
                    out.append(next(slow))
                except StopIteration as done:
                    pos = done.value
                    break
    return out


def _outcome(read, path):
    try:
        return read(path)
    except ValueError as exc:
        return str(exc)


@settings(max_examples=150, deadline=10_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=mutation, block=st.sampled_from([512, 1024, 1500, 4096, 1 << 20]))
def test_the_block_reader_reads_and_fails_as_the_python_reader(shard_bytes, m, block):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "shard-000000.tar"
        p.write_bytes(_mutate(shard_bytes, *m))
        reference = _outcome(_python_members, p)
        old, tario._BLOCK_READ = tario._BLOCK_READ, block
        try:
            assert _outcome(lambda q: list(tar_members(q)), p) == reference
        finally:
            tario._BLOCK_READ = old
