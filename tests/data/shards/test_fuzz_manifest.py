"""Fuzzing manifests: a mutated ``manifest.json`` gives a checked manifest or a one-line error naming it.

Mutations act on the bytes (flips, truncation) and on the JSON (a value anywhere
replaced by another of any type, a key or item deleted, pathological numbers
and nesting); both :func:`tcpc_data.shards.manifest.read_manifest` and the
loader's :func:`tcpc_train.input.loader.open_shards` are read.
"""
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpc_data.shards.manifest import check_manifest, read_manifest
from tcpc_train.input.loader import open_shards
from tcpc_train.input.synthetic import write_synthetic_paths


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = write_synthetic_paths(tmp_path_factory.mktemp("set") / "u", 6, "u", cube=8, per_shard=2, seed=0)
    return d, (d / "manifest.json").read_bytes()


def _paths(obj, at=()):
    """Every place in a JSON value, as the keys/indices leading to it."""
    yield at
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, at + (k,))


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 10), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", ".", "..", "a/b", "x\x00y", "manifest.json", "tcpc-shards", "synthetic-000000.tar",
                     "pretrain", "finetune", "é" * 300]),
    st.text(max_size=20))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                       max_leaves=8)
# Texts json.loads struggles with: more digits than int() converts, nesting deeper than the recursion limit.
_pathological = st.sampled_from(["9" * 5000, "[" * 100_000 + "]" * 100_000, "1e999999", "-0", "NaN"])


@st.composite
def json_mutation(draw, valid: bytes) -> bytes:
    obj = json.loads(valid)
    for _ in range(draw(st.integers(1, 3))):
        places = [p for p in _paths(obj) if p]
        at = draw(st.sampled_from(places))
        parent = obj
        for k in at[:-1]:
            parent = parent[k]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[at[-1]]
        else:
            parent[at[-1]] = draw(_values)
    text = json.dumps(obj)
    if draw(st.integers(0, 9)) == 0:  # a raw value json.dumps would never write, in place of the digest
        text = text.replace(json.dumps(obj.get("digest")), draw(_pathological), 1) if "digest" in obj else text
    return text.encode()


@st.composite
def byte_mutation(draw, valid: bytes) -> bytes:
    b = bytearray(valid)
    for _ in range(draw(st.integers(0, 6))):
        b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        b = b[:draw(st.integers(0, len(b)))]
    return bytes(b)


def _check(shard_dir, text: bytes) -> None:
    d, _ = shard_dir
    (d / "manifest.json").write_bytes(text)
    try:
        manifest = read_manifest(d)
    except ValueError as exc:
        msg = str(exc)
        assert "\n" not in msg and str(d / "manifest.json") in msg, msg
        return
    assert check_manifest(manifest, "re-check") is manifest
    try:
        data = open_shards(d)
    except (ValueError, FileNotFoundError) as exc:  # FileNotFoundError: a listed shard is not there
        msg = str(exc)
        assert "\n" not in msg and str(d / "manifest.json") in msg, msg
        return
    assert data.total == sum(data.counts) > 0 and all(math.isfinite(c) for c in data.counts)


def _mutations(valid: bytes):
    return st.one_of(byte_mutation(valid), json_mutation(valid))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_manifest_reads_or_fails_in_one_line_naming_it(shard_dir, data):
    _check(shard_dir, data.draw(_mutations(shard_dir[1])))


@pytest.mark.fuzz
@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_campaign_mutated_manifests(shard_dir, data):
    _check(shard_dir, data.draw(_mutations(shard_dir[1])))


@pytest.mark.parametrize("text", ["9" * 5000, "[" * 100_000 + "]" * 100_000])
def test_json_that_python_cannot_parse_is_a_one_line_error(shard_dir, text):
    _check(shard_dir, text.encode())
