"""Shared fixtures: the team's real data in ../shared/data (skipped when absent), seeded phantom
stores, synthetic DICOM series and hand-made shard manifests.

The helpers live in ``tests/data/phantom_stores.py`` and ``tests/data/dicom_factory.py``; tests reach
them through these fixtures, never by editing ``sys.path``.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tcpc_data.shards.manifest import new_manifest, write_manifest
from tests.data import dicom_factory as _dicom_factory
from tests.data import phantom_stores as _phantom_stores

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of ../shared/data; tests that need real CT skip when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (a clone outside the team has no ../shared)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lidc_dir(shared_data) -> Path:
    return shared_data / "ct" / "lidc"


@pytest.fixture(scope="session")
def phantom_store():
    """``phantom_store(url, n_cases=2, shape=(32, 64, 64), border_candidate=True) -> {case: Phantom}``:
    writes seeded phantom cases (image, supervoxels, candidates) into a volume store."""
    return _phantom_stores.phantom_store


@pytest.fixture(scope="session")
def dicom_factory() -> ModuleType:
    """Synthetic DICOM CT series of known geometry and HU: ``write_series``, ``z_positions``, ``field_hu``."""
    return _dicom_factory


@pytest.fixture(scope="session")
def shard_manifest():
    """``shard_manifest(dir, [(name, samples), ...], kind="pretrain") -> path``: a valid manifest
    listing those shards (the files themselves are not written), as the engine would write it."""
    def write(out_dir, shards, kind: str = "pretrain") -> Path:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        entries = [{"name": name, "samples": n} for name, n in shards]
        return write_manifest(out_dir, new_manifest(
            kind=kind, name="x", stage="test", config={}, digest="0" * 64, shard_size=max([1] + [n for _, n in shards]),
            members={}, shards=entries, cases={"c": sum(n for _, n in shards)}, case_digests={"c": "0"}))
    return write


@pytest.fixture(scope="session")
def read_png():
    """``read_png(path) -> (H, W, 3) uint8``: the RGB pixels of a PNG, to assert what a figure shows."""
    def read(path):
        import matplotlib.image as mpimg
        img = mpimg.imread(path)  # float RGBA in [0, 1]
        return (img[..., :3] * 255).round().astype(np.uint8)
    return read
