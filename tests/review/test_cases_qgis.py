"""A real QGIS (system python3-qgis) loads the case registry and the project the run writes."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import date
from pathlib import Path

import pytest
import shapely

from cases_util import STRUCTURES, SYSTEM_PYTHON, run_night, system_qgis_available
from detector.review import registry as reg

CHECK_SCRIPT = Path(__file__).resolve().parents[1] / "qgis_check.py"


pytestmark = [
    pytest.mark.qgis,
    pytest.mark.skipif(
        not system_qgis_available(),
        reason="/usr/bin/python3 cannot import qgis (apt-get install python3-qgis qgis-providers; CI has it)",
    ),
]


def _qgis_check(registry, count, *args) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    proc = subprocess.run(
        [
            str(SYSTEM_PYTHON),
            str(CHECK_SCRIPT),
            str(registry),
            "--crs",
            "EPSG:4547",
            "--count",
            str(count),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report from qgis_check.py (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(lines[-1])


@pytest.mark.slow
def test_qgis_loads_cases_with_default_style_form_and_project(scene):  # noqa: F811
    registry = scene[2].registry
    run_night(scene, ["A", "B", "C"], date(2024, 5, 1))
    # a reviewer edits in QGIS itself: A rejected, B's outline moved 1.5 m east
    report = _qgis_check(
        registry,
        3,
        "--set-status",
        "LG20240501-0001",
        "false_positive",
        "--move",
        "LG20240501-0002",
        "1.5",
        "0",
    )
    assert report["problems"] == [], report
    moved_b = reg.read_cases_frame(registry).set_index("case_id").geometry["LG20240501-0002"]
    assert moved_b.equals(shapely.affinity.translate(shapely.box(*STRUCTURES["B"]), 1.5, 0))

    second = run_night(scene, ["A", "B", "D"], date(2024, 5, 2))
    assert (second.opened, second.updated, second.suppressed, second.total) == (1, 1, 1, 4)
    cases = reg.read_cases_frame(registry).set_index("case_id")
    assert cases.loc["LG20240501-0001", "status"] == "false_positive"
    assert cases.loc["LG20240501-0001", "reviewer"] == "qgis-check"
    assert (
        cases.loc["LG20240501-0001", "reviewed_at"] >= "2020"
    )  # set by the registry on the status change
    assert cases.geometry["LG20240501-0002"].equals(
        moved_b
    )  # QGIS-written geometry detected as an edit, kept
    assert cases.loc["LG20240501-0002", "geometry_edited"] == 1

    report = _qgis_check(registry, 4, "--project", str(registry.with_suffix(".qgs")))
    assert report["problems"] == [], report
    layer = report["layer"]
    assert (layer["crs"], layer["count"], layer["renderer"]) == (
        "EPSG:4547",
        4,
        "categorizedSymbol",
    )
    assert layer["renderer_attr"].startswith('CASE WHEN "alert"') and layer[
        "renderer_attr"
    ].endswith('"status" END')
    assert (layer["status_widget"], layer["evidence_widget"], layer["evidence_viewer"]) == (
        "ValueMap",
        "ExternalResource",
        1,
    )
    assert sorted(name for name, _, valid in report["project"]["layers"] if valid) == [
        "baseline (baseline.tif)",
        "cases",
        "current (current.tif)",
    ]


@pytest.mark.slow
def test_qgis_applies_the_candidates_and_tiles_default_styles(tmp_path):
    """Dragging the nightly candidates.gpkg into QGIS shows classes and flagged tiles styled."""
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "night"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "detector",
            "run",
            "--baseline",
            str(root / "sample_tiles" / "baseline.tif"),
            "--current",
            str(root / "sample_tiles" / "current.tif"),
            "--out",
            str(out),
            "--no-progress",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-1500:]
    script = f"""
import json
from qgis.core import QgsApplication, QgsVectorLayer
app = QgsApplication([], False); app.initQgis()
report = {{}}
for name in ("candidates", "tiles"):
    layer = QgsVectorLayer(r"{out / "candidates.gpkg"}|layername=" + name, name, "ogr")
    r = layer.renderer()
    report[name] = [layer.isValid(), layer.featureCount(), r.type(), getattr(r, "classAttribute", lambda: "")(),
                    layer.crs().authid(), layer.labelsEnabled()]
    del layer
print(json.dumps(report))
app.exitQgis()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    res = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert lines, res.stderr[-2000:]
    report = json.loads(lines[-1])
    assert report["candidates"][0] and report["candidates"][1] > 0
    assert report["candidates"][2:6] == ["categorizedSymbol", "class", "EPSG:4547", True]
    assert report["tiles"][2:4] == ["categorizedSymbol", "status"]


@pytest.mark.slow
def test_qgis_opens_a_project_whose_mosaics_are_on_a_web_server(tmp_path):
    """Remote mosaics are layers by URL (/vsicurl/): QGIS reads them while the server answers."""
    import shutil

    from detector.cli import main
    from rangeserver import serve

    sample = Path(__file__).resolve().parents[2] / "sample_tiles"
    (tmp_path / "www").mkdir()
    for name in ("baseline.tif", "current.tif"):
        shutil.copy(sample / name, tmp_path / "www" / name)
    registry = tmp_path / "cases" / "cases.gpkg"
    with serve(tmp_path / "www") as (url, _):
        assert (
            main(
                [
                    "run",
                    "--baseline",
                    f"{url}/baseline.tif",
                    "--current",
                    f"{url}/current.tif",
                    "--out",
                    str(tmp_path / "out"),
                    "--cases",
                    str(registry),
                    "--no-progress",
                ]
            )
            == 0
        )
        report = _qgis_check(registry, 13, "--project", str(registry.with_suffix(".qgs")))
    assert report["problems"] == [], report
    assert report["project"]["layers"] == [
        ["baseline (baseline.tif)", 1, True],
        ["cases", 0, True],
        ["current (current.tif)", 1, True],
    ]  # both mosaics valid rasters
