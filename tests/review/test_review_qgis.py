"""The review side in a real QGIS 3.22 (system python3-qgis): project, edits, labels, a copied folder."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from datetime import date
from pathlib import Path

import geopandas as gpd
import pytest
import shapely

from cases_util import STRUCTURES, SYSTEM_PYTHON, cases_by_id, run_night, system_qgis_available
from detector.clock import utc_now
from detector.geo.crs import area_m2, lonlat_of
from detector.review import registry as reg
from detector.styles import (
    TILE_FILL_ALPHA,
    TILE_LABEL,
    TILE_STATUS_STYLE,
    simple_layer_qml,
    write_default_styles,
)

DRIVER = Path(__file__).resolve().parents[1] / "qgis_review.py"

pytestmark = [
    pytest.mark.qgis,
    pytest.mark.slow,
    pytest.mark.skipif(
        not system_qgis_available(),
        reason="/usr/bin/python3 cannot import qgis (apt-get install python3-qgis qgis-providers; CI has it)",
    ),
]


def qgis(*steps) -> list[dict]:
    """Run steps of tests/qgis_review.py in one QGIS session; one result per step."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    proc = subprocess.run(
        [str(SYSTEM_PYTHON), str(DRIVER), json.dumps(list(steps), default=str)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(steps), (
        f"qgis_review.py (rc {proc.returncode}): {proc.stderr[-2000:]}"
    )
    return results


def history(path) -> list[tuple]:
    conn = sqlite3.connect(str(path))
    rows = conn.execute(
        "SELECT case_id, changed_by, change, old_status, new_status FROM case_history ORDER BY fid"
    )
    result = rows.fetchall()
    conn.close()
    return result


def tiles_gpkg(path: Path) -> Path:
    """A tiles layer as the nightly run writes it (two overlapping tiles over the scene), with its default style."""
    tiles = gpd.GeoDataFrame(
        {"tile_id": ["r0_c0", "r0_c1"], "status": ["done", "done"], "reason": ["", ""]},
        geometry=[
            shapely.box(500_000, 2_500_000, 500_120, 2_500_200),
            shapely.box(500_080, 2_500_000, 500_200, 2_500_200),
        ],
        crs="EPSG:4547",
    )
    tiles.to_file(path, layer="tiles", driver="GPKG")
    write_default_styles(
        path,
        {
            "tiles": (
                "buildwatch tiles",
                simple_layer_qml("status", TILE_STATUS_STYLE, TILE_LABEL, TILE_FILL_ALPHA),
            )
        },
    )
    return path


def test_qgis_edits_credit_history_added_case_refused_delete_and_recomputed_measures(scene):  # noqa: F811
    from pyproj import CRS

    registry = scene[2].registry
    run_night(scene, ["A", "B", "C"], date(2024, 5, 1))
    a, b, c = "LG20240501-0001", "LG20240501-0002", "LG20240501-0003"
    drawn = "POLYGON((500140 2500040,500150 2500040,500150 2500052,500140 2500052,500140 2500040))"  # F, 10 x 12 m
    before = utc_now("milliseconds")
    edit, delete = qgis(
        {
            "op": "edit",
            "registry": registry,
            "status": [[a, "confirmed_illegal"]],
            "move": [[b, 3.0, 0.0]],
            "add": [drawn],
        },
        {"op": "edit", "registry": registry, "delete": [c]},
    )
    assert edit["committed"], edit["errors"]
    user = edit["added_defaults"][0]["edited_by"]
    assert user  # the QGIS user (@user_full_name, else the account name)

    cases = cases_by_id(registry)
    # an operator-drawn case got a registry ID, origin and evidence path; QGIS computed its measures
    drawn_id = "LG20240501-M0001"  # against the night reviewed (the registry's latest)
    assert (cases[drawn_id]["origin"], cases[drawn_id]["status"], cases[drawn_id]["reviewer"]) == (
        "operator",
        "new",
        user,
    )
    assert cases[drawn_id]["area_m2"] == pytest.approx(120.0)
    # the status change credited whoever made it, at UTC time; moving B stamped no reviewer on a 'new' case
    assert (
        cases[a]["reviewer"] == user
        and cases[a]["reviewed_at"] >= before
        and cases[a]["reviewed_at"].endswith("Z")
    )
    assert cases[b]["reviewer"] is None or cases[b]["reviewer"] != cases[b]["reviewer"]
    # the moved outline's area / lon / lat follow it at once (QGIS default values), exactly as the run computes them
    moved = shapely.affinity.translate(shapely.box(*STRUCTURES["B"]), 3.0, 0.0)
    assert cases[b]["geometry"].equals(moved)
    lon, lat = lonlat_of([moved], CRS.from_epsg(4547))[0]
    assert (cases[b]["lon"], cases[b]["lat"]) == (
        pytest.approx(lon, abs=1e-8),
        pytest.approx(lat, abs=1e-8),
    )
    assert cases[b]["area_m2"] == pytest.approx(area_m2(moved, CRS.from_epsg(4547)))
    # the delete was refused, with the reason; C is still there
    assert not delete["committed"] and any("never deleted" in e for e in delete["errors"])
    assert c in cases and len(cases) == 4
    # the history written by the triggers during QGIS's commit
    assert sorted(history(registry)[3:], key=str) == sorted(
        [
            (b, user, "geometry", "new", "new"),
            (a, user, "status", "new", "confirmed_illegal"),
            (drawn_id, user, "created", None, "new"),
        ],
        key=str,
    )

    # next night: the drawn case is matched (not opened again), its outline kept
    second = run_night(scene, ["A", "B", "C", "F"], date(2024, 5, 2))
    assert (second.opened, second.updated, second.total) == (0, 4, 4)
    assert cases_by_id(registry)[drawn_id]["geometry"].equals(shapely.from_wkt(drawn))


def test_qgis_project_crs_wgs84_layer_labels_with_tiles_added_layer_kept_and_copied_folder(scene):  # noqa: F811
    baseline, current, config, root = scene
    registry = config.registry
    project = registry.with_suffix(".qgs")
    run_night(scene, ["A", "B", "C"], date(2024, 5, 1))
    wgs84 = root / "field.geojson"
    reg.read_cases_frame(registry).to_crs("EPSG:4326").to_file(wgs84, driver="GeoJSON")
    tiles = tiles_gpkg(root / "candidates.gpkg")

    (opened,) = qgis(
        {
            "op": "project",
            "path": project,
            "render": True,
            "add_layers": [[str(wgs84), "field export"], [f"{tiles}|layername=tiles", "tiles"]],
        }
    )
    assert opened["read"] and opened["crs"] == "EPSG:4547"
    # the WGS84 layer lands on the cases (within 1 mm), not at x=114, y=22
    assert opened["extents"]["field export"] == pytest.approx(opened["extents"]["cases"], abs=1e-3)
    assert opened["extents"]["cases"] == pytest.approx([500_020, 2_500_150, 500_106, 2_500_160])
    # every case keeps its label with the tiles layer loaded (tiles are no label obstacles)
    assert opened["labels"]["cases"] == 3
    assert [
        (name, valid, source)
        for name, valid, source, _ in opened["layers"]
        if name != "tiles" and name != "field export"
    ] == [
        ("baseline (baseline.tif)", True, "./imagery/baseline.tif"),
        ("cases", True, "./cases.gpkg|layername=cases"),
        ("current (current.tif)", True, "./imagery/current.tif"),
    ]

    # an operator adds a layer and saves; the next night keeps it and updates only its own layers
    (saved,) = qgis(
        {
            "op": "project",
            "path": project,
            "add_layers": [[str(wgs84), "field export"]],
            "save": True,
        }
    )
    assert saved["saved"]
    newer = root / "current-0502.tif"
    shutil.copy(current, newer)
    nightly_config = (baseline, newer, config, root)
    run_night(nightly_config, ["A", "B", "C", "D"], date(2024, 5, 2))
    (reopened,) = qgis({"op": "project", "path": project})
    names = sorted(name for name, valid, _, _ in reopened["layers"] if valid)
    assert names == [
        "baseline (baseline.tif)",
        "cases",
        "current (current-0502.tif)",
        "field export",
    ]
    assert reopened["crs"] == "EPSG:4547"

    # the cases folder copied to a laptop (mosaics and server paths gone) opens with its imagery
    laptop = root / "laptop" / "cases"
    shutil.copytree(registry.parent, laptop)
    os.remove(wgs84)
    os.rename(root / "current.tif", root / "current.gone")
    copied, evidence = qgis(
        {"op": "project", "path": laptop / "cases.qgs"},
        {"op": "evidence", "registry": laptop / "cases.gpkg"},
    )
    valid = {name: ok for name, ok, _, _ in copied["layers"]}
    assert valid == {
        "baseline (baseline.tif)": True,
        "cases": True,
        "current (current-0502.tif)": True,
        "field export": False,
    }
    # the GeoPackage added alone, without the project: the evidence widget finds every chip beside it
    assert (evidence["widget"], evidence["relative_storage"], evidence["root"]) == (
        "ExternalResource",
        2,
        str(laptop),
    )
    assert len(evidence["paths"]) == 4 and all(
        Path(p).is_file() for p in evidence["paths"].values()
    )


TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"  # the one format (review.triggers)


def ogr(registry, sql: str) -> subprocess.CompletedProcess:
    """Another tool: ``ogrinfo`` running SQL on the registry (GDAL's own SQLite connection)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    proc = subprocess.run(
        ["ogrinfo", "-q", str(registry), "-sql", sql],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_two_users_a_second_review_an_ogrinfo_edit_and_detector_history_apart(scene):  # noqa: F811
    import re

    registry = scene[2].registry
    run_night(scene, ["A", "B", "C"], date(2024, 5, 1))
    a, b, c = "LG20240501-0001", "LG20240501-0002", "LG20240501-0003"
    (first,) = qgis(
        {
            "op": "edit",
            "registry": registry,
            "status": [[a, "confirmed_illegal"]],
            "set": [[c, "note", "gate open on Tuesdays"]],
        }
    )
    assert first["committed"], first["errors"]
    cases = cases_by_id(registry)
    user, first_review = cases[a]["reviewer"], cases[a]["reviewed_at"]
    assert user and user != "Alice Wong" and not user.startswith("buildwatch")
    assert blank_text(cases[c]["edited_by"])  # a note-only edit leaves no stamp behind

    # a second operator's second review of A: credited to her, at the time of her review
    (second,) = qgis(
        {
            "op": "edit",
            "registry": registry,
            "user": "Alice Wong",
            "status": [[a, "demolition_ordered"]],
        }
    )
    assert second["committed"], second["errors"]
    cases = cases_by_id(registry)
    assert cases[a]["reviewer"] == "Alice Wong"
    assert cases[a]["reviewed_at"] > first_review  # not the first review's time kept

    # a status change from ogrinfo (no stamp): 'unknown', not the last QGIS user, not a run
    ogr(registry, f"UPDATE cases SET status = 'referred' WHERE case_id = '{c}'")
    cases = cases_by_id(registry)
    assert (cases[c]["status"], cases[c]["reviewer"]) == ("referred", "unknown")

    # the next night moves the detected outlines (0.3 m): the detector's rows stand apart
    run_night(scene, ["A", "B", "C"], date(2024, 5, 2), jitter_m=0.3)
    ogr(registry, f"UPDATE cases SET status = 'false_positive' WHERE case_id = '{b}'")
    cases = cases_by_id(registry)
    assert (cases[b]["reviewer"], cases[b]["status"]) == ("unknown", "false_positive")
    rows = history(registry)
    people = [row for row in rows if not row[2].startswith(("created", "detector_"))]
    assert people == [
        (a, user, "status", "new", "confirmed_illegal"),
        (a, "Alice Wong", "status", "confirmed_illegal", "demolition_ordered"),
        (c, "unknown", "status", "new", "referred"),
        (b, "unknown", "status", "new", "false_positive"),
    ]
    detector = [(row[0], row[1], row[2]) for row in rows if row[2].startswith("detector_")]
    assert detector == [
        (case_id, "buildwatch run-2024-05-02", "detector_geometry") for case_id in (a, b, c)
    ]
    # one timestamp format in both columns, whoever wrote it; GDAL reads them without a warning
    conn = sqlite3.connect(str(registry))
    stamps = [
        r[0] for r in conn.execute("SELECT reviewed_at FROM cases WHERE reviewed_at IS NOT NULL")
    ]
    stamps += [r[0] for r in conn.execute("SELECT changed_at FROM case_history")]
    conn.close()
    assert len(stamps) == 3 + 3 + 4 + 3 and all(re.fullmatch(TIMESTAMP, s) for s in stamps), stamps
    read = ogr(registry, "SELECT case_id, reviewed_at FROM cases")
    assert "Non-conformant" not in read.stderr + read.stdout


def blank_text(value) -> bool:
    return value is None or value != value or value == ""


def test_class_correction_survives_a_night_and_a_drawn_case_takes_the_detected_class(scene):  # noqa: F811
    import csv

    registry = scene[2].registry
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    a = "LG20240501-0001"
    drawn = (
        "POLYGON((500100 2500150,500106 2500150,500106 2500160,500100 2500160,500100 2500150))"  # C
    )
    form, edit = qgis(
        {"op": "form", "registry": registry},
        {
            "op": "edit",
            "registry": registry,
            "user": "Alice Wong",
            "set": [[a, "class", "construction_site"]],
            "add": [drawn],
        },
    )
    assert form["editable"] == ["class", "demolition_due", "note", "status"]
    assert edit["committed"], edit["errors"]
    manual = "LG20240501-M0001"  # the night reviewed, not the machine clock; first drawn that night
    cases = cases_by_id(registry)
    assert (cases[a]["class"], cases[a]["class_edited"]) == ("construction_site", 1)
    assert (cases[manual]["first_seen"], cases[manual]["origin"]) == ("2024-05-01", "operator")
    assert blank_text(cases[manual]["class"])
    # the field export names no chip before the night draws it
    from detector.review.exports import export_frame, select_cases

    def exported_evidence():
        frame = export_frame(select_cases(registry), registry, scene[3] / "field.csv")
        return dict(zip(frame["case_id"], frame["evidence"]))

    assert exported_evidence()[manual] == ""

    second = run_night(scene, ["A", "B", "C"], date(2024, 5, 2))
    assert exported_evidence()[manual] == f"registry/evidence/{manual}.png"
    cases = cases_by_id(registry)
    assert cases[a]["class"] == "construction_site"  # the operator's class survives the night
    assert second.class_changes == []
    assert cases[manual]["class"] == "new_building"  # from the detection that matched it
    assert (second.opened, second.opened_ids) == (0, [])
    assert sorted(second.updated_ids) == sorted([a, "LG20240501-0002", manual])
    total = list(csv.DictReader(second.report_csv.open(encoding="utf-8-sig")))[-1]
    assert total["new_tonight"] == "0"  # the drawn case is not tonight's new case
    assert [row[1:3] for row in history(registry) if row[0] == a][1:] == [("Alice Wong", "class")]
    assert [row[1:3] for row in history(registry) if row[0] == manual] == [
        ("Alice Wong", "created"),
        ("buildwatch run-2024-05-02", "detector_class"),
    ]
