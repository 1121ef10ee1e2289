"""Case registry across nights: stable IDs, review fields and operator edits kept, rejects not reopened."""

from __future__ import annotations

import shutil
import sqlite3
import struct
import subprocess
import threading
import time
from datetime import date

import geopandas as gpd
import pytest
import shapely

from cases_util import STRUCTURES, candidates, case_id_of, cases_by_id, qgis_like_edit, run_night
from detector.errors import InputError
from detector.geo.crs import area_m2
from detector.review import gpkg, nightly
from detector.review import registry as reg

# --------------------------------------------------------------------------- GeoPackage encoding


def test_gpkg_blob_roundtrip_and_envelope():
    polygon = shapely.box(10, 20, 13, 27)
    blob = gpkg.encode_gpkg_geometry(polygon, 4547)
    assert blob[:2] == b"GP" and blob[3] == 0b11
    assert struct.unpack_from("<i4d", blob, 4) == (4547, 10.0, 13.0, 20.0, 27.0)
    assert gpkg.decode_gpkg_geometry(blob).equals(polygon)
    assert [gpkg._st_bound(i)(blob) for i in range(4)] == [10.0, 13.0, 20.0, 27.0]
    assert gpkg._st_is_empty(blob) == 0
    # big-endian header, no envelope (as other writers may produce): bounds come from the WKB
    wkb = shapely.to_wkb(polygon, byte_order=0)
    foreign = b"GP" + bytes([0, 0]) + struct.pack(">i", 4547) + wkb
    assert gpkg.decode_gpkg_geometry(foreign).equals(polygon)
    assert gpkg._st_bound(3)(foreign) == 27.0
    assert gpkg._st_is_empty(gpkg.encode_gpkg_geometry(shapely.Polygon(), 4547)) == 1


def test_case_id_format():
    assert reg.format_case_id("LG", date(2024, 5, 1), 3) == "LG20240501-0003"
    assert reg.format_case_id("", date(2024, 12, 31), 12) == "20241231-0012"


def test_area_in_geographic_crs_is_metres():
    from pyproj import CRS

    square = candidates(["A"], crs="EPSG:4326").geometry.iloc[0]
    assert area_m2(square, CRS.from_epsg(4326)) == pytest.approx(100.0, rel=2e-3)


def test_area_is_ground_metres_in_web_mercator_for_candidates_and_cases(scene):
    """A 100 m x 100 m square at 22.5°N in EPSG:3857 (whose unit there is 0.92 ground metres, so its
    planar area is 17 % too large) measures 10,000 m² as a candidate and as a case (one area rule)."""
    from pyproj import CRS, Geod, Transformer

    from detector.geo.crs import working_crs_wkt
    from detector.geo.grid import WorkingGrid
    from detector.night.georef import to_output

    baseline, current, config, _ = scene
    geod, to_merc = Geod(ellps="WGS84"), Transformer.from_crs(4326, 3857, always_xy=True)
    lon0, lat0 = 114.0, 22.5
    lon1 = geod.fwd(lon0, lat0, 90, 100.0)[0]  # 100 m east, 100 m north on the ellipsoid
    lat1 = geod.fwd(lon0, lat0, 0, 100.0)[1]
    (x0, x1), (y0, y1) = to_merc.transform([lon0, lon1], [lat0, lat1])
    square = shapely.box(x0, y0, x1, y1)  # the square expressed in EPSG:3857
    merc = CRS.from_epsg(3857)
    assert square.area > 1.15 * 10_000  # what a planar area in Web Mercator would say
    assert area_m2(square, merc) == pytest.approx(10_000, rel=0.005)

    # candidate path: the run measures in its working CRS (UTM here) and writes in the baseline's (3857)
    work = working_crs_wkt(merc.to_wkt(), square.bounds)
    grid = WorkingGrid(
        crs_wkt=work, output_crs_wkt=merc.to_wkt(), gsd=0.25, left=0.0, top=0.0, width=1, height=1
    )
    in_work = gpd.GeoSeries([square], crs=merc).to_crs(work).iloc[0]
    out_geoms, lon, lat, areas = to_output([in_work], grid)
    assert areas[0] == pytest.approx(10_000, rel=0.005)
    assert (lon[0], lat[0]) == pytest.approx(((lon0 + lon1) / 2, (lat0 + lat1) / 2), abs=1e-6)

    # case path: a registry in EPSG:3857 (the candidates' CRS on its first night)
    frame = gpd.GeoDataFrame(
        {
            "candidate_id": ["cand-M"],
            "class": ["new_building"],
            "confidence": [0.8],
            "area_m2": [round(float(areas[0]), 2)],
            "tile_id": ["r0_c0"],
            "model_name": ["test-model"],
            "run_id": ["x"],
            "status": ["new"],
            "tags": [""],
        },
        geometry=out_geoms,
        crs=merc,
    )
    reg.update_registry(
        frame,
        config,
        run_id="r",
        night=date(2024, 5, 1),
        baseline_path=baseline,
        current_path=current,
    )
    [case] = cases_by_id(config.registry).values()
    assert case["area_m2"] == pytest.approx(10_000, rel=0.005)
    # candidate and case agree to the working CRS's scale error (UTM 3° off its central meridian: +0.16 %;
    # a CRS is used as metres only within geo.crs.MAX_SCALE_ERROR)
    assert case["area_m2"] == pytest.approx(areas[0], rel=0.005)


# --------------------------------------------------------------------------- three nights


def test_three_nights_ids_stable_edits_kept_rejects_not_reopened(scene):
    baseline, current, config, root = scene
    registry = config.registry

    first = run_night(scene, ["A", "B", "C"], date(2024, 5, 1))
    assert (first.opened, first.updated, first.suppressed, first.total) == (3, 0, 0, 3)
    # reading order (north to south, then west to east): A, B, C share a row -> west to east
    assert first.opened_ids == ["LG20240501-0001", "LG20240501-0002", "LG20240501-0003"]
    ids = {name: case_id_of(registry, name) for name in "ABC"}
    assert ids == {"A": "LG20240501-0001", "B": "LG20240501-0002", "C": "LG20240501-0003"}

    # between nights, in QGIS: A rejected, B's outline moved 2 m east by an operator, C confirmed
    moved_b = shapely.affinity.translate(shapely.box(*STRUCTURES["B"]), 2.0, 0.0)
    srs_id = 4547
    qgis_like_edit(
        registry,
        ids["A"],
        status="false_positive",
        reviewer="li",
        reviewed_at="2024-05-01T09:00:00",
        note="shadow of a tree",
    )
    qgis_like_edit(
        registry, ids["B"], geom=gpkg.encode_gpkg_geometry(moved_b, srs_id), reviewer="wang"
    )
    qgis_like_edit(
        registry, ids["C"], status="confirmed_illegal", reviewer="wang", note="no permit"
    )

    second = run_night(scene, ["A", "B", "C", "D", "E"], date(2024, 5, 2), jitter_m=0.3)
    assert (second.opened, second.updated, second.suppressed, second.total) == (2, 2, 1, 5)
    assert second.suppressed_ids == [ids["A"]]
    assert sorted(second.opened_ids) == ["LG20240502-0001", "LG20240502-0002"]
    ids["D"], ids["E"] = case_id_of(registry, "D"), case_id_of(registry, "E")
    assert (ids["D"], ids["E"]) == ("LG20240502-0001", "LG20240502-0002")

    third = run_night(scene, ["A", "B", "D", "F"], date(2024, 5, 3))
    assert (third.opened, third.updated, third.suppressed, third.total) == (1, 2, 1, 6)
    ids["F"] = case_id_of(registry, "F")
    assert ids["F"] == "LG20240503-0001"

    cases = cases_by_id(registry)
    assert sorted(cases) == sorted(ids.values())  # exactly the expected cases, none deleted
    a, b, c = cases[ids["A"]], cases[ids["B"]], cases[ids["C"]]
    # review fields untouched by two runs (the typed time stored in the one UTC format)
    assert (a["status"], a["reviewer"], a["reviewed_at"], a["note"]) == (
        "false_positive",
        "li",
        "2024-05-01T09:00:00.000Z",
        "shadow of a tree",
    )
    assert (c["status"], c["reviewer"], c["note"]) == ("confirmed_illegal", "wang", "no permit")
    assert b["status"] == "new" and b["reviewer"] == "wang"
    # the operator's geometry is kept (exactly), flagged as edited; the run still tracks sightings
    assert b["geometry"].equals(moved_b)
    assert b["geometry_edited"] == 1
    assert b["times_seen"] == 3 and b["last_seen"] == "2024-05-03"
    # C not seen on night 3: kept, last seen night 2; its geometry followed the 0.3 m jitter of night 2
    assert (c["times_seen"], c["first_seen"], c["last_seen"]) == (2, "2024-05-01", "2024-05-02")
    assert c["geometry"].equals(
        shapely.affinity.translate(shapely.box(*STRUCTURES["C"]), 0.3, -0.3)
    )
    assert c["geometry_edited"] == 0
    assert c["area_m2"] == pytest.approx(60.0)
    assert [cases[ids[n]]["times_seen"] for n in "ADEF"] == [3, 2, 1, 1]

    # a rerun of night 3 changes nothing (idempotent), reports F as still tonight's one new case,
    # and leaves one registry_nights row per night
    rerun = run_night(scene, ["A", "B", "D", "F"], date(2024, 5, 3))
    assert (rerun.opened, rerun.total) == (1, 6) and rerun.opened_ids == [ids["F"]]
    with sqlite3.connect(registry) as conn:
        nights = [r[0] for r in conn.execute("SELECT night FROM registry_nights ORDER BY night")]
    assert nights == ["2024-05-01", "2024-05-02", "2024-05-03"]
    assert {k: v["times_seen"] for k, v in cases_by_id(registry).items()} == {
        k: v["times_seen"] for k, v in cases.items()
    }

    # evidence chips exist for every case; report of night 3 counts F as the only new case
    for case_id in ids.values():
        assert (registry.parent / "evidence" / f"{case_id}.png").exists()
    csv_text = (root / "out-2024-05-03" / "report.csv").read_text(encoding="utf-8-sig").splitlines()
    assert (
        csv_text[-1] == "2024-05-03,all communities,,1,1,5,2,0,0,0"
    )  # new 1, confirmed 1, open 5 (not A), oldest 2 days


def test_candidates_in_another_crs_match_existing_cases(scene):
    registry = scene[2].registry
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    second = run_night(scene, ["A", "B"], date(2024, 5, 2), crs="EPSG:4326")
    assert (second.opened, second.updated, second.total) == (0, 2, 2)
    conn = reg.open_registry(registry)
    assert reg.registry_crs(conn).to_epsg() == 4547
    conn.close()


def test_same_structure_twice_in_one_night_is_one_case(scene):
    baseline, current, config, root = scene
    frame = candidates(["A", "A"])
    frame.loc[1, "geometry"] = shapely.affinity.translate(frame.geometry.iloc[1], 0.5, 0.0)
    result = reg.update_registry(
        frame,
        config,
        run_id="r",
        night=date(2024, 5, 1),
        baseline_path=baseline,
        current_path=current,
    )
    assert (result.opened, result.total) == (1, 1)
    assert cases_by_id(config.registry)["LG20240501-0001"]["max_confidence"] == pytest.approx(0.81)


def test_registry_update_only_writes_the_registry_and_nightly_writes_the_rest(scene):
    baseline, current, config, root = scene
    registry = config.registry
    result = reg.update_registry(
        candidates(["A", "B"]),
        config,
        run_id="r",
        night=date(2024, 5, 1),
        baseline_path=baseline,
        current_path=current,
    )
    assert (result.opened, result.total) == (2, 2)
    assert (
        sorted(p.name for p in registry.parent.iterdir() if not p.name.startswith("cases.gpkg"))
        == []
    )
    assert not (root / "out").exists()

    night2 = nightly.update_cases(
        candidates(["A", "B", "C"]),
        config,
        run_id="r2",
        night=date(2024, 5, 2),
        baseline_path=baseline,
        current_path=current,
        out_dir=root / "out",
    )
    assert isinstance(night2, reg.RegistryUpdate) and (
        night2.opened,
        night2.updated,
        night2.total,
    ) == (1, 2, 3)
    # the missing chips of night 1 are written too
    assert sorted(p.name for p in night2.evidence_paths) == [
        "LG20240501-0001.png",
        "LG20240501-0002.png",
        "LG20240502-0001.png",
    ]
    assert night2.project_path == registry.with_suffix(".qgs") and night2.project_path.exists()
    assert night2.report_html.exists() and night2.report_csv.exists()


def test_review_statuses_are_defined_once():
    from detector.cli.cases_cmd import list_cases
    from detector.review import qgis, vocab
    from training import reviews

    assert set(qgis.STATUS_STYLE) == set(vocab.REVIEW_STATUSES)
    status_option = next(p for p in list_cases.params if p.name == "status")
    assert tuple(status_option.type.choices) == vocab.REVIEW_STATUSES
    assert set(reviews.POSITIVE_STATUSES + reviews.NEGATIVE_STATUSES) < set(vocab.REVIEW_STATUSES)
    assert qgis.cases_field_names() == ["fid", *[name for name, _ in vocab.CASE_COLUMNS]]


# --------------------------------------------------------------------------- concurrency


def test_reviewer_writing_during_a_run_loses_nothing(scene):
    baseline, current, config, root = scene
    config = config.model_copy(update={"evidence": False, "report": False})
    registry = config.registry
    # 40 small structures on a grid, opened on night 1
    grid = [
        shapely.box(500_005 + 4 * i, 2_500_005 + 4 * j, 500_007 + 4 * i, 2_500_007 + 4 * j)
        for i in range(8)
        for j in range(5)
    ]

    def frame_of(geoms):
        return gpd.GeoDataFrame(
            {
                "candidate_id": [f"g{i}" for i in range(len(geoms))],
                "class": "new_building",
                "confidence": 0.7,
                "tags": "",
            },
            geometry=geoms,
            crs="EPSG:4547",
        )

    reg.update_registry(
        frame_of(grid),
        config,
        run_id="n1",
        night=date(2024, 5, 1),
        baseline_path=baseline,
        current_path=current,
    )
    case_ids = sorted(cases_by_id(registry))
    assert len(case_ids) == 40

    errors: list[BaseException] = []
    written: list[str] = []
    write_times: list[float] = []  # when each write *started*
    first_written = threading.Event()

    def reviewer():
        try:
            for case_id in case_ids:
                write_times.append(time.monotonic())
                qgis_like_edit(registry, case_id, note=f"checked {case_id}", reviewer="zhao")
                written.append(case_id)
                first_written.set()
                time.sleep(0.002)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            first_written.set()

    thread = threading.Thread(target=reviewer)
    more = grid + [shapely.affinity.translate(g, 100, 100) for g in grid]  # 40 seen again + 40 new
    thread.start()
    first_written.wait(timeout=30)  # the reviewer is mid-way through its edits when the run starts
    run_started = time.monotonic()
    result = reg.update_registry(
        frame_of(more),
        config,
        run_id="n2",
        night=date(2024, 5, 2),
        baseline_path=baseline,
        current_path=current,
    )
    run_finished = time.monotonic()
    thread.join(timeout=60)
    assert not errors and len(written) == 40
    assert any(run_started < t < run_finished for t in write_times), (
        "the reviewer and the run did not overlap"
    )
    assert (result.opened, result.updated, result.total) == (40, 40, 80)
    cases = cases_by_id(registry)
    assert all(
        cases[c]["note"] == f"checked {c}" and cases[c]["reviewer"] == "zhao" for c in case_ids
    )
    assert all(cases[c]["times_seen"] == 2 for c in case_ids)
    conn = sqlite3.connect(str(registry))
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT COUNT(*) FROM rtree_cases_geom").fetchone()[0] == 80
    conn.close()


# --------------------------------------------------------------------------- boundaries, validity, errors


def test_boundaries_in_another_crs_give_community_and_unit(scene):
    baseline, current, config, root = scene
    west = shapely.box(500_000, 2_500_000, 500_050, 2_500_200)
    east = shapely.box(500_050, 2_500_000, 500_200, 2_500_200)
    boundaries = gpd.GeoDataFrame(
        {"name": ["Xinsheng", "Longdong"], "unit": ["team 1", "team 2"]},
        geometry=[west, east],
        crs="EPSG:4547",
    ).to_crs("EPSG:4326")
    boundaries.to_file(root / "communities.geojson", driver="GeoJSON")
    config = config.model_copy(update={"boundaries": root / "communities.geojson"})
    nightly.update_cases(
        candidates(["A", "B", "D", "E"]),
        config,
        run_id="r",
        night=date(2024, 5, 1),
        baseline_path=baseline,
        current_path=current,
        out_dir=root / "out",
    )
    located = {
        row["case_id"]: (row["community"], row["unit"])
        for row in cases_by_id(config.registry).values()
    }
    by_name = {name: located[case_id_of(config.registry, name)] for name in "ABDE"}
    assert by_name == {
        "A": ("Xinsheng", "team 1"),
        "B": ("Longdong", "team 2"),
        "D": ("Xinsheng", "team 1"),
        "E": ("Longdong", "team 2"),
    }
    raw = (root / "out" / "report.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM: Excel in a Chinese locale reads UTF-8, not GBK
    rows = raw.decode("utf-8-sig").splitlines()
    assert rows[1:] == [
        "2024-05-01,Longdong,team 2,2,0,2,0,0,0,0",
        "2024-05-01,Xinsheng,team 1,2,0,2,0,0,0,0",
        '2024-05-01,all communities,"team 1, team 2",4,0,4,0,0,0,0',
    ]

    bad = config.model_copy(update={"boundary_name_field": "shequ"})
    with pytest.raises(InputError, match="no field 'shequ'"):
        reg.update_registry(
            candidates(["A"]),
            bad,
            run_id="r",
            night=date(2024, 5, 2),
            baseline_path=baseline,
            current_path=current,
        )


def test_bad_inputs_are_one_line_input_errors(scene, tmp_path):
    baseline, current, config, root = scene
    no_crs = candidates(["A"]).set_crs(None, allow_override=True)
    with pytest.raises(InputError, match="no CRS"):
        reg.update_registry(
            no_crs,
            config,
            run_id="r",
            night=date(2024, 5, 1),
            baseline_path=baseline,
            current_path=current,
        )
    not_gpkg = tmp_path / "notes.gpkg"
    not_gpkg.write_text("hello")
    with pytest.raises(InputError, match="not a GeoPackage"):
        reg.update_registry(
            candidates(["A"]),
            config.model_copy(update={"registry": not_gpkg}),
            run_id="r",
            night=date(2024, 5, 1),
            baseline_path=baseline,
            current_path=current,
        )
    with pytest.raises(InputError, match="missing column"):
        reg.update_registry(
            candidates(["A"]).drop(columns="confidence"),
            config,
            run_id="r",
            night=date(2024, 5, 1),
            baseline_path=baseline,
            current_path=current,
        )


@pytest.mark.skipif(
    shutil.which("ogrinfo") is None,
    reason="ogrinfo not installed (apt-get install gdal-bin; CI has it)",
)
def test_ogrinfo_opens_registry_without_warnings(scene):
    registry = scene[2].registry
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    qgis_like_edit(registry, "LG20240501-0001", status="false_positive")
    run_night(scene, ["A", "B", "C"], date(2024, 5, 2))
    proc = subprocess.run(
        ["ogrinfo", "-al", "-so", str(registry)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "" and "Warning" not in proc.stdout
    assert "Feature Count: 3" in proc.stdout and 'EPSG",4547' in proc.stdout
    conn = sqlite3.connect(str(registry))
    assert conn.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 10200
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
