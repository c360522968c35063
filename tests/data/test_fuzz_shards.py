"""Fuzzing shard tars: mutated headers, sizes and data give samples or a one-line error naming the file.

Reading is bounded: a header that declares more bytes than the file holds is an
error before anything is allocated.
"""
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpc_data.shards.tario import encode_npy, tar_samples, write_tar


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


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=mutation)
def test_a_mutated_shard_reads_or_fails_in_one_line_naming_it(shard_bytes, m):
    _read_all(shard_bytes, m)


@pytest.mark.fuzz
@settings(max_examples=5000, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
