"""A real QGIS (system python3-qgis) loads the case registry and the project the run writes."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import date
from pathlib import Path

import pytest
import shapely

from detector import cases as reg

from test_cases import STRUCTURES, run_night, scene  # noqa: F401 - fixture reused (tests/ is on sys.path)

SYSTEM_PYTHON = Path("/usr/bin/python3")
CHECK_SCRIPT = Path(__file__).with_name("qgis_check.py")


def _system_qgis_available() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True, timeout=120,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    return probe.returncode == 0


pytestmark = [
    pytest.mark.qgis,
    pytest.mark.skipif(not _system_qgis_available(),
                       reason="/usr/bin/python3 cannot import qgis (apt-get install python3-qgis qgis-providers; CI has it)"),
]


def _qgis_check(registry, count, *args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    proc = subprocess.run(
        [str(SYSTEM_PYTHON), str(CHECK_SCRIPT), str(registry), "--crs", "EPSG:4547", "--count", str(count), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report from qgis_check.py (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(lines[-1])


@pytest.mark.slow
def test_qgis_loads_cases_with_default_style_form_and_project(scene):  # noqa: F811
    registry = scene[2].registry
    run_night(scene, ["A", "B", "C"], date(2024, 5, 1))
    # a reviewer edits in QGIS itself: A rejected, B's outline moved 1.5 m east
    report = _qgis_check(registry, 3, "--set-status", "LG20240501-0001", "false_positive",
                         "--move", "LG20240501-0002", "1.5", "0")
    assert report["problems"] == [], report
    moved_b = reg.read_cases_frame(registry).set_index("case_id").geometry["LG20240501-0002"]
    assert moved_b.equals(shapely.affinity.translate(shapely.box(*STRUCTURES["B"]), 1.5, 0))

    second = run_night(scene, ["A", "B", "D"], date(2024, 5, 2))
    assert (second.opened, second.updated, second.suppressed, second.total) == (1, 1, 1, 4)
    cases = reg.read_cases_frame(registry).set_index("case_id")
    assert cases.loc["LG20240501-0001", "status"] == "false_positive"
    assert cases.loc["LG20240501-0001", "reviewer"] == "qgis-check"
    assert cases.loc["LG20240501-0001", "reviewed_at"] >= "2020"  # the form's default: now() on every edit
    assert cases.geometry["LG20240501-0002"].equals(moved_b)  # QGIS-written geometry detected as an edit, kept
    assert cases.loc["LG20240501-0002", "geometry_edited"] == 1

    report = _qgis_check(registry, 4, "--project", str(registry.with_suffix(".qgs")))
    assert report["problems"] == [], report
    layer = report["layer"]
    assert (layer["crs"], layer["count"], layer["renderer"], layer["renderer_attr"]) == (
        "EPSG:4547", 4, "categorizedSymbol", "status")
    assert (layer["status_widget"], layer["evidence_widget"], layer["evidence_viewer"]) == ("ValueMap", "ExternalResource", 1)
    assert sorted(name for name, _, valid in report["project"]["layers"] if valid) == [
        "baseline (baseline.tif)", "cases", "current (current.tif)"]
