"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The team's real test data folder (../shared/data); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present (real-data tests run in CI)")
    return SHARED_DATA
