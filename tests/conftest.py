"""Shared pytest fixtures.

The tests are in folders that mirror the packages: ``geo/``, ``flight/``, ``night/``,
``review/``, ``run/``, ``cli/``, ``synth/``, ``training/``, ``docs/``; what tests the project as
a whole (the import layers, the runtime's imports, the run config) is here at the top. Helpers
shared across folders are plain modules here, on the path through ``pythonpath`` in
``pyproject.toml``: ``pipeline_util`` (contract models, the exact oracle, test rasters),
``cases_util`` (the case registry's scene), ``height_util`` (the DSM fusion scene),
``rangeserver`` (a loopback server with byte ranges); ``qgis_check.py`` and ``qgis_review.py``
are run by the system QGIS's Python.
"""

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


@pytest.fixture
def pair(tmp_path):
    """A tiny no-change run: (baseline, current, contract model) -- 600 px at 0.1 m, EPSG:4547."""
    from pipeline_util import PAIR_TRANSFORM, make_contract_model, textured_image, write_geotiff

    rgb = textured_image(600, 600)
    b = write_geotiff(tmp_path / "b.tif", rgb, "EPSG:4547", PAIR_TRANSFORM)
    c = write_geotiff(tmp_path / "c.tif", rgb, "EPSG:4547", PAIR_TRANSFORM)
    m = make_contract_model(tmp_path / "m.onnx")
    return b, c, m


@pytest.fixture
def oracle(monkeypatch):
    """Runs use tests/pipeline_util.py's exact oracle detector instead of ONNX Runtime."""
    import detector.night.detect
    from pipeline_util import OracleDetector

    monkeypatch.setattr(detector.night.detect, "OnnxDetector", OracleDetector)
