"""Fixtures of the review tests: the case registry's scene (tests/cases_util.py)."""

from __future__ import annotations

import pytest

from cases_util import STRUCTURES, write_scene
from detector.config import CasesConfig


@pytest.fixture
def scene(tmp_path):
    """Baseline without structures, current with all of them, and a config for a registry."""
    baseline = write_scene(tmp_path / "baseline.tif", [])
    current = write_scene(tmp_path / "current.tif", list(STRUCTURES))
    config = CasesConfig(registry=tmp_path / "registry" / "cases.gpkg", district_prefix="LG")
    return baseline, current, config, tmp_path
