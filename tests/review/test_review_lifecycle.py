"""The enforcement lifecycle in the registry: demolition verification, history, credit, no deletes, drawn cases."""

from __future__ import annotations

import csv
import sqlite3
from datetime import date

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from cases_util import STRUCTURES, candidates, cases_by_id, qgis_like_edit, run_night
from detector.clock import utc_now
from detector.geo.crs import area_m2, lonlat_of
from detector.review import gpkg, nightly
from detector.review import registry as reg
from detector.review.triggers import DELETE_REFUSED


def gdal_like_update(path, case_id, **fields):
    """One UPDATE of several columns, as GDAL's SetFeature does for a QGIS commit."""
    conn = sqlite3.connect(str(path), timeout=30)
    gpkg.register_gpkg_functions(conn)
    with conn:
        assignments = ", ".join(f'"{name}" = ?' for name in fields)
        conn.execute(
            f"UPDATE cases SET {assignments} WHERE case_id = ?", (*fields.values(), case_id)
        )
    conn.close()


def blank(value) -> bool:
    return value is None or value != value  # NULL read through pandas may be NaN


def history(path, case_id=None):
    conn = sqlite3.connect(str(path))
    conn.row_factory = sqlite3.Row
    rows = conn.execute(
        "SELECT * FROM case_history" + (" WHERE case_id = ?" if case_id else "") + " ORDER BY fid",
        (case_id,) if case_id else (),
    ).fetchall()
    conn.close()
    return [dict(r) for r in rows]


def test_demolition_verified_across_three_nights(scene):  # noqa: F811
    registry = scene[2].registry
    run_night(scene, ["A", "B", "C"], date(2024, 5, 1))
    a, b, c = "LG20240501-0001", "LG20240501-0002", "LG20240501-0003"
    gdal_like_update(registry, a, status="demolished", edited_by="chen")
    gdal_like_update(
        registry, b, status="demolition_ordered", demolition_due="2024-05-02", edited_by="chen"
    )
    gdal_like_update(registry, c, status="demolished", edited_by="chen")

    # night 2: A still there (alert), B seen on its due date (not yet late), C gone (verified, no alert)
    second = run_night(scene, ["A", "B"], date(2024, 5, 2))
    assert second.alert_ids == [a]
    cases = cases_by_id(registry)
    assert cases[a]["alert"] == "still standing although demolished (seen 2024-05-02)"
    assert cases[a]["status"] == "demolished"  # the run never writes the operators' status
    assert blank(cases[b]["alert"]) and blank(cases[c]["alert"])

    # night 3: A is gone now (alert cleared), B seen after its due date (alert)
    third = run_night(scene, ["B"], date(2024, 5, 3))
    assert third.alert_ids == [b]
    cases = cases_by_id(registry)
    assert blank(cases[a]["alert"])
    assert (
        cases[b]["alert"]
        == "still standing after the demolition due date 2024-05-02 (seen 2024-05-03)"
    )

    # the alerts are in the evidence chain: raised and cleared by the runs, with who and when
    alert_rows = [
        (r["case_id"], r["changed_by"], r["old_alert"] is None, r["new_alert"] is None)
        for r in history(registry)
        if r["change"] == "detector_alert"
    ]
    assert alert_rows == [
        (a, "buildwatch run-2024-05-02", True, False),
        (a, "buildwatch run-2024-05-03", False, True),
        (b, "buildwatch run-2024-05-03", True, False),
    ]
    # ...and in the report: listed under "needs attention", counted in the backlog
    text = third.report_html.read_text(encoding="utf-8")
    attention = text.split("<h2>Needs attention", 1)[1].split("<h2>", 1)[0]
    assert b in attention and "demolition due date 2024-05-02" in attention
    total = list(csv.DictReader(third.report_csv.open(encoding="utf-8-sig")))[-1]
    assert (total["alerts"], total["open_backlog"], total["oldest_open_days"]) == (
        "1",
        "1",
        "2",
    )  # B, open 2 days


def test_alert_kept_when_tonights_mosaic_does_not_cover_the_case(scene):  # noqa: F811
    baseline, current, config, root = scene
    registry = config.registry
    run_night(scene, ["A"], date(2024, 5, 1))
    gdal_like_update(registry, "LG20240501-0001", status="demolished")
    run_night(scene, ["A"], date(2024, 5, 2))
    small = root / "elsewhere.tif"
    with rasterio.open(
        small,
        "w",
        driver="GTiff",
        width=10,
        height=10,
        count=3,
        dtype="uint8",
        crs="EPSG:4547",
        transform=from_origin(600_000, 2_600_000, 1, 1),
    ) as dst:
        dst.write(np.zeros((3, 10, 10), "uint8"))
    update = reg.update_registry(
        candidates([]),
        config,
        run_id="r3",
        night=date(2024, 5, 3),
        baseline_path=baseline,
        current_path=small,
    )
    assert update.alert_ids == ["LG20240501-0001"]  # not seen, but not looked at either
    update = reg.update_registry(
        candidates([]),
        config,
        run_id="r4",
        night=date(2024, 5, 4),
        baseline_path=baseline,
        current_path=current,
    )
    assert update.alert_ids == []  # covered and not seen: gone


def test_status_change_credits_whoever_made_it_and_history_is_append_only(scene):  # noqa: F811
    registry = scene[2].registry
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    a, b = "LG20240501-0001", "LG20240501-0002"
    gdal_like_update(registry, a, status="confirmed_illegal", edited_by="li")
    before = utc_now("milliseconds")
    gdal_like_update(
        registry,
        a,
        status="demolition_ordered",
        demolition_due="2024-06-01",
        edited_by="zhang",
        reviewer="li",
    )  # GDAL writes the whole row back: the old reviewer comes along
    cases = cases_by_id(registry)
    assert cases[a]["reviewer"] == "zhang"
    assert cases[a]["reviewed_at"] >= before and cases[a]["reviewed_at"].endswith("Z")
    assert blank(cases[a]["edited_by"])  # used once, then cleared

    # moving the outline of a case still 'new' credits nobody as reviewer (history says who moved it)
    moved = shapely.affinity.translate(shapely.box(*STRUCTURES["B"]), 1.0, 0.0)
    gdal_like_update(registry, b, geom=gpkg.encode_gpkg_geometry(moved, 4547), edited_by="wang")
    cases = cases_by_id(registry)
    assert blank(cases[b]["reviewer"]) and blank(cases[b]["reviewed_at"])
    rows = history(registry)
    assert [
        (r["case_id"], r["change"], r["changed_by"], r["old_status"], r["new_status"])
        for r in rows[2:]
    ] == [
        (a, "status", "li", "new", "confirmed_illegal"),
        (a, "status", "zhang", "confirmed_illegal", "demolition_ordered"),
        (b, "geometry", "wang", "new", "new"),
    ]
    assert [r["change"] for r in rows[:2]] == ["created", "created"]
    assert gpkg.decode_gpkg_geometry(rows[-1]["new_geom"]).equals(moved)
    assert gpkg.decode_gpkg_geometry(rows[-1]["old_geom"]).equals(shapely.box(*STRUCTURES["B"]))

    conn = sqlite3.connect(str(registry))
    for statement in ("UPDATE case_history SET changed_by = 'me'", "DELETE FROM case_history"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)
    conn.close()
    assert len(history(registry)) == len(rows)


def test_a_case_cannot_be_deleted(scene):  # noqa: F811
    registry = scene[2].registry
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    conn = sqlite3.connect(str(registry))
    gpkg.register_gpkg_functions(conn)
    with pytest.raises(sqlite3.DatabaseError) as info:
        with conn:
            conn.execute("DELETE FROM cases WHERE case_id = 'LG20240501-0001'")
    assert str(info.value) == DELETE_REFUSED
    conn.close()
    assert len(cases_by_id(registry)) == 2
    second = run_night(scene, ["A", "B"], date(2024, 5, 2))
    assert (second.opened, second.updated) == (0, 2)


def test_operator_drawn_case_gets_an_id_and_is_matched_next_night(scene):  # noqa: F811
    registry = scene[2].registry
    run_night(scene, ["A"], date(2024, 5, 1))
    drawn = shapely.box(
        500_100.5, 2_500_150.5, 500_105.5, 2_500_159.5
    )  # C, drawn a little small by hand
    conn = sqlite3.connect(str(registry))
    gpkg.register_gpkg_functions(conn)
    with conn:
        conn.execute(
            "INSERT INTO cases (geom, case_id, status, origin, times_seen, geometry_edited, edited_by, note) "
            "VALUES (?, 'pending-1f2e', 'new', 'operator', 0, 1, 'zhao', 'missed by the detector')",
            (gpkg.encode_gpkg_geometry(drawn, 4547),),
        )
        with pytest.raises(sqlite3.DatabaseError, match="needs case_id"):
            conn.execute(
                "INSERT INTO cases (geom, times_seen) VALUES (?, 0)",
                (gpkg.encode_gpkg_geometry(drawn, 4547),),
            )
    conn.close()
    # the ID, first_seen and the date in it: the night the operator reviewed (the registry's latest),
    # not the machine's clock; M0001: the first case drawn against that night
    case_id = "LG20240501-M0001"
    case = cases_by_id(registry)[case_id]
    assert (case["origin"], case["status"], case["reviewer"], case["evidence"]) == (
        "operator",
        "new",
        "zhao",
        f"evidence/{case_id}.png",
    )
    assert case["first_seen"] == "2024-05-01" and case["class_edited"] == 0
    assert history(registry, case_id)[0]["changed_by"] == "zhao"

    second = run_night(scene, ["A", "C"], date(2024, 5, 2))
    assert (second.opened, second.updated, second.total) == (
        0,
        2,
        2,
    )  # C is the drawn case, not a new one
    assert second.opened_ids == [] and case_id in second.updated_ids
    case = cases_by_id(registry)[case_id]
    assert case["geometry"].equals(drawn)  # the operator's outline is kept
    assert case["class"] == "new_building"  # the class of the detection that matched it
    assert case["times_seen"] == 1 and case["area_m2"] == pytest.approx(45.0)
    assert (registry.parent / case["evidence"]).exists()


def test_edited_outline_updates_area_and_lonlat_even_when_not_seen(scene):  # noqa: F811
    from pyproj import CRS

    registry = scene[2].registry
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    bigger = shapely.box(500_020, 2_500_150, 500_034, 2_500_160)  # A, corrected to 14 m x 10 m
    qgis_like_edit(registry, "LG20240501-0001", geom=gpkg.encode_gpkg_geometry(bigger, 4547))
    run_night(scene, ["B"], date(2024, 5, 2))  # A not seen tonight
    case = cases_by_id(registry)["LG20240501-0001"]
    lon, lat = lonlat_of([bigger], CRS.from_epsg(4547))[0]
    assert (
        case["area_m2"]
        == pytest.approx(140.0)
        == pytest.approx(area_m2(bigger, CRS.from_epsg(4547)))
    )
    assert (case["lon"], case["lat"]) == (
        pytest.approx(lon, abs=1e-8),
        pytest.approx(lat, abs=1e-8),
    )


def test_a_registry_from_an_older_version_is_upgraded(scene):  # noqa: F811
    registry = scene[2].registry
    run_night(scene, ["A"], date(2024, 5, 1))
    conn = sqlite3.connect(str(registry))
    for name in [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='trigger' AND name LIKE 'buildwatch_%'"
        )
    ]:
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute("DROP TABLE case_history")
    conn.execute("DELETE FROM gpkg_contents WHERE table_name = 'case_history'")
    for column in ("alert", "demolition_due", "origin", "edited_by", "evidence_hash"):
        conn.execute(f"ALTER TABLE cases DROP COLUMN {column}")
    conn.commit()
    conn.close()
    run_night(scene, ["A", "B"], date(2024, 5, 2))
    case = cases_by_id(registry)["LG20240501-0001"]
    assert case["origin"] == "detector" and blank(case["alert"])
    gdal_like_update(registry, "LG20240501-0001", status="false_positive", edited_by="li")
    assert history(registry, "LG20240501-0001")[-1]["changed_by"] == "li"


def test_evidence_redrawn_after_an_outline_edit_when_seen_again(scene):  # noqa: F811
    import cv2

    registry = scene[2].registry
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    chip = registry.parent / "evidence" / "LG20240501-0001.png"
    first = cv2.imread(str(chip))
    run_night(scene, ["A", "B"], date(2024, 5, 2))
    assert np.array_equal(cv2.imread(str(chip)), first)  # nothing changed: not redrawn
    bigger = shapely.box(500_018, 2_500_148, 500_034, 2_500_162)
    qgis_like_edit(registry, "LG20240501-0001", geom=gpkg.encode_gpkg_geometry(bigger, 4547))
    third = run_night(scene, ["A", "B"], date(2024, 5, 3))
    assert [p.name for p in third.evidence_paths] == ["LG20240501-0001.png"]
    redrawn = cv2.imread(str(chip))
    assert redrawn.shape == first.shape and not np.array_equal(redrawn, first)
    assert cases_by_id(registry)["LG20240501-0001"]["evidence_hash"].startswith(
        reg.geometry_hash(bigger)[:12]
    )


def test_a_second_review_gets_its_own_time_whatever_form_the_first_was_stored_in(scene):  # noqa: F811
    """An older registry holds ``…00Z``; GDAL writes it back as ``…00.000Z`` with a second status
    change: the same instant, so the second review's own time is stamped, not the first kept."""
    from detector.review.triggers import ensure_schema, trigger_sql

    registry = scene[2].registry
    run_night(scene, ["A"], date(2024, 5, 1))
    a = "LG20240501-0001"
    conn = sqlite3.connect(str(registry))
    gpkg.register_gpkg_functions(conn)
    with conn:  # as an older buildwatch stored it (its triggers stamped seconds)
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'buildwatch_%'"
        ).fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute(
            "UPDATE cases SET status = 'confirmed_illegal', reviewer = 'li', "
            "reviewed_at = '2024-05-01T09:00:00Z' WHERE case_id = ?",
            (a,),
        )
        conn.execute(
            "INSERT INTO case_history (case_id, changed_at, changed_by, change, old_status, new_status) "
            "VALUES (?, '2024-05-01T09:00:00Z', 'li', 'status', 'new', 'confirmed_illegal')",
            (a,),
        )
        for statement in trigger_sql("LG"):
            conn.execute(statement)
    conn.close()
    before = utc_now("milliseconds")
    gdal_like_update(
        registry,
        a,
        status="demolition_ordered",
        reviewer="li",
        reviewed_at="2024-05-01T09:00:00.000Z",
        edited_by="zhang",
    )
    case = cases_by_id(registry)[a]
    assert case["reviewer"] == "zhang" and case["reviewed_at"] >= before
    # the next night rewrites what is left in the older form, history included, in the one format
    conn = sqlite3.connect(str(registry))
    gpkg.register_gpkg_functions(conn)
    with conn:
        ensure_schema(conn, "LG")
    stamps = [r[0] for r in conn.execute("SELECT changed_at FROM case_history")]
    conn.close()
    assert "2024-05-01T09:00:00.000Z" in stamps
    assert all(len(s) == 24 and s.endswith("Z") and s[19] == "." for s in stamps)


def test_a_class_corrected_with_another_tool_is_the_operators_and_logged_as_unknown(scene):  # noqa: F811
    registry = scene[2].registry
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    a = "LG20240501-0001"
    gdal_like_update(registry, a, **{"class": "shed"})  # no stamp: ogrinfo, a script
    case = cases_by_id(registry)[a]
    assert (case["class"], case["class_edited"], case["reviewer"]) == ("shed", 1, None)
    assert [(r["changed_by"], r["change"]) for r in history(registry, a)][1:] == [
        ("unknown", "class")
    ]
    second = run_night(scene, ["A", "B"], date(2024, 5, 2))
    assert cases_by_id(registry)[a]["class"] == "shed" and second.class_changes == []
    # B's class is still the detector's: a changed detection changes it, logged as the detector's
    frame = candidates(["A", "B"])
    frame.loc[1, "class"] = "construction_site"
    third = nightly.update_cases(
        frame,
        scene[2],
        run_id="run-3",
        night=date(2024, 5, 3),
        baseline_path=scene[0],
        current_path=scene[1],
        out_dir=scene[3] / "out-3",
    )
    b = "LG20240501-0002"
    assert third.class_changes == [(b, "new_building", "construction_site")]
    assert [(r["changed_by"], r["change"]) for r in history(registry, b)][-1] == (
        "buildwatch run-3",
        "detector_class",
    )
    assert cases_by_id(registry)[b]["class_edited"] == 0
