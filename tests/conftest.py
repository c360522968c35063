"""Shared fixtures: the team's real data in ../shared/data (skipped when absent) and phantoms."""
from __future__ import annotations

from pathlib import Path

import pytest

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
