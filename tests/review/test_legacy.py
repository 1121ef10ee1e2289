"""The historical backlog: ``buildwatch cases import`` of 20 legacy outlines, then nights on them."""

from __future__ import annotations

import csv
import sqlite3
from datetime import date

import geopandas as gpd
import pytest
import shapely

from cases_util import candidates, cases_by_id, qgis_like_edit, run_night
from detector.cli import main
from detector.review import nightly

# 20 legacy buildings, 8 m x 8 m, in four rows south of the planted structures; 12 west of x=500100
LEGACY = [
    shapely.box(x, y, x + 8, y + 8)
    for y in (2_500_005, 2_500_022, 2_500_039, 2_500_056)
    for x in (500_005, 500_043, 500_081, 500_119, 500_157)
]


def legacy_layer(path, geometries=LEGACY, crs="EPSG:4326"):
    """The survey of illegal buildings as another department keeps it: WGS84, its own IDs and notes."""
    frame = gpd.GeoDataFrame(
        {
            "bianhao": [f"WJ-{n:03d}" for n in range(1, len(geometries) + 1)],
            "beizhu": [f"survey 2023, building {n}" for n in range(1, len(geometries) + 1)],
        },
        geometry=list(geometries),
        crs="EPSG:4547",
    ).to_crs(crs)
    frame.to_file(path, driver="GPKG", layer="weijian")
    return path


def detections_of(indices, night_names=("A", "B")):
    """Tonight's candidates: the named structures and detections on some legacy buildings (0.3 m off)."""
    frame = candidates(list(night_names))
    extra = gpd.GeoDataFrame(
        {
            "candidate_id": [f"cand-L{i}" for i in indices],
            "class": ["new_building"] * len(indices),
            "confidence": [0.7] * len(indices),
        },
        geometry=[shapely.affinity.translate(LEGACY[i], 0.3, -0.3) for i in indices],
        crs="EPSG:4547",
    )
    import pandas as pd

    return gpd.GeoDataFrame(pd.concat([frame, extra], ignore_index=True), crs="EPSG:4547")


@pytest.fixture
def with_communities(scene):
    baseline, current, config, root = scene
    gpd.GeoDataFrame(
        {"name": ["Xinsheng", "Longdong"], "unit": ["team 1", "team 2"]},
        geometry=[
            shapely.box(500_000, 2_500_000, 500_100, 2_500_200),
            shapely.box(500_100, 2_500_000, 500_200, 2_500_200),
        ],
        crs="EPSG:4547",
    ).to_file(root / "communities.gpkg", driver="GPKG")
    config = config.model_copy(update={"boundaries": root / "communities.gpkg"})
    return baseline, current, config, root


def night(scene_, indices, day, names=("A", "B")):
    baseline, current, config, root = scene_
    return nightly.update_cases(
        detections_of(indices, names),
        config,
        run_id=f"run-{day}",
        night=day,
        baseline_path=baseline,
        current_path=current,
        out_dir=root / f"out-{day}",
    )


def report_rows(result) -> dict[str, dict]:
    return {r["community"]: r for r in csv.DictReader(result.report_csv.open(encoding="utf-8-sig"))}


def test_legacy_import_never_new_backlog_per_community_one_demolished_and_verified(
    with_communities, capsys
):
    registry = with_communities[2].registry
    root = with_communities[3]
    run_night(with_communities, ["A", "B"], date(2024, 5, 1))
    layer = legacy_layer(root / "weijian.gpkg")
    args = ["cases", "import", str(layer), "--registry", str(registry)]
    assert main([*args, "--id-field", "bianhao", "--note-field", "beizhu"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == (
        f"20 legacy case(s) LG20240501-L0001 .. LG20240501-L0020 (first seen 2024-05-01) -> {registry}"
    )
    cases = cases_by_id(registry)
    legacy = {k: v for k, v in cases.items() if v["origin"] == "legacy"}
    assert sorted(legacy) == [f"LG20240501-L{n:04d}" for n in range(1, 21)]
    first = legacy["LG20240501-L0001"]
    assert (first["status"], first["source_id"], first["note"], first["times_seen"]) == (
        "confirmed_illegal",
        "WJ-001",
        "survey 2023, building 1",
        0,
    )
    # reprojected from WGS84 to the registry's CRS (within a millimetre), measured there
    assert first["geometry"].equals_exact(LEGACY[0], tolerance=1e-3)
    assert first["area_m2"] == pytest.approx(64.0, abs=0.01)
    # the history says who imported it (the OS user)
    conn = sqlite3.connect(str(registry))
    created = conn.execute(
        "SELECT changed_by, change FROM case_history WHERE case_id = 'LG20240501-L0001'"
    ).fetchall()
    conn.close()
    assert len(created) == 1 and created[0][1] == "created" and created[0][0] not in ("", "unknown")
    # imported twice: refused, nothing written
    assert main([*args, "--id-field", "bianhao"]) == 2
    assert "id WJ-001 (bianhao) is already case LG20240501-L0001" in capsys.readouterr().err
    assert len(cases_by_id(registry)) == 22

    # the field export carries where a case came from and its ID in the imported layer
    export = root / "field.csv"
    assert main(["cases", "export", "--registry", str(registry), "--out", str(export)]) == 0
    exported = {r["case_id"]: r for r in csv.DictReader(export.open(encoding="utf-8-sig"))}
    assert (exported["LG20240501-L0020"]["origin"], exported["LG20240501-L0020"]["source_id"]) == (
        "legacy",
        "WJ-020",
    )
    capsys.readouterr()

    # night 2: five legacy buildings detected (rebuilt roofs, a jittered outline): none is new
    second = night(with_communities, [0, 1, 5, 12, 19], date(2024, 5, 2))
    assert (second.opened, second.opened_ids) == (0, [])
    assert {f"LG20240501-L{n:04d}" for n in (1, 2, 6, 13, 20)} <= set(second.updated_ids)
    rows = report_rows(second)
    figures = {
        name: (r["new_tonight"], r["confirmed_illegal"], r["legacy_backlog"], r["legacy_cleared"])
        for name, r in rows.items()
    }
    assert figures == {
        "Xinsheng": ("0", "0", "12", "0"),
        "Longdong": ("0", "0", "8", "0"),
        "all communities": ("0", "0", "20", "0"),
    }
    cases = cases_by_id(registry)
    assert cases["LG20240501-L0001"]["geometry"].equals_exact(LEGACY[0], tolerance=1e-3)  # kept
    assert (cases["LG20240501-L0001"]["times_seen"], cases["LG20240501-L0001"]["class"]) == (
        1,
        "new_building",
    )
    html = second.report_html.read_text(encoding="utf-8")
    assert "New tonight (0)" in html and "Needs attention (0)" in html  # legacy unseen: no alarm

    # the team demolishes L0001 and reports L0002 demolished too; night 3 sees L0002 still standing
    qgis_like_edit(registry, "LG20240501-L0001", status="demolished", edited_by="zhang")
    qgis_like_edit(registry, "LG20240501-L0002", status="demolished", edited_by="zhang")
    third = night(with_communities, [1], date(2024, 5, 3))
    assert third.opened == 0 and third.alert_ids == ["LG20240501-L0002"]
    html = third.report_html.read_text(encoding="utf-8")
    ready = html.split("<h2>Ready to verify (1)</h2>", 1)[1].split("</table>", 1)[0]
    assert "LG20240501-L0001" in ready
    assert (
        "LG20240501-L0002"
        in html.split("<h2>Needs attention (1)</h2>", 1)[1].split("</table>", 1)[0]
    )

    # verified on the imagery: the backlog goes down by one, in its community
    qgis_like_edit(registry, "LG20240501-L0001", status="demolition_verified", edited_by="zhang")
    fourth = night(with_communities, [], date(2024, 5, 4))
    assert fourth.opened == 0
    rows = report_rows(fourth)
    assert (rows["Xinsheng"]["legacy_backlog"], rows["Xinsheng"]["legacy_cleared"]) == ("11", "1")
    assert (
        rows["all communities"]["legacy_backlog"],
        rows["all communities"]["legacy_cleared"],
    ) == (
        "19",
        "1",
    )
    assert rows["all communities"]["alerts"] == "0"  # L0002 covered and not seen on night 4
    html = fourth.report_html.read_text(encoding="utf-8")
    assert (
        "<tr><td>Legacy backlog: not cleared / cleared (imported, before the target)</td>"
        "<td>19 / 1</td></tr>" in html
    )


def _local_cs_layer(path):
    """Outlines in a site grid (LOCAL_CS, no datum): no ground metre can be derived from it."""
    from pyproj import CRS

    wkt = (
        'LOCAL_CS["site grid",LOCAL_DATUM["site",0],UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
    )
    gpd.GeoDataFrame(
        {"bianhao": ["WJ-001"]}, geometry=[shapely.box(0, 0, 10, 10)], crs=CRS.from_wkt(wkt)
    ).to_file(path, driver="GPKG", layer="weijian")
    return path


def _ids_layer(path, ids):
    """Two outlines whose IDs differ only in spaces (stored stripped: the same ID)."""
    frame = gpd.GeoDataFrame({"bianhao": ids}, geometry=list(LEGACY[: len(ids)]), crs="EPSG:4547")
    frame.to_file(path, driver="GPKG", layer="weijian")
    return path


def test_import_refuses_bad_outlines_in_one_line_before_writing(scene, tmp_path, capsys):
    registry = scene[2].registry
    run_night(scene, ["A"], date(2024, 5, 1))
    before = sqlite3.connect(str(registry)).execute("SELECT count(*) FROM case_history").fetchone()
    notes = tmp_path / "notes.txt"
    notes.write_text("building 1: north side of the road\n", encoding="utf-8")
    bowtie = shapely.Polygon(
        [(500_010, 2_500_010), (500_020, 2_500_020), (500_020, 2_500_010), (500_010, 2_500_020)]
    )
    cases = [
        (
            legacy_layer(tmp_path / "bad.gpkg", [LEGACY[0], bowtie, LEGACY[2]], crs="EPSG:4547"),
            [],
            "feature 2 (id WJ-002) is not a valid polygon (Self-intersection",
        ),
        (
            legacy_layer(tmp_path / "empty.gpkg", [LEGACY[0], shapely.Polygon()], crs="EPSG:4547"),
            [],
            "feature 2 (id WJ-002) has no geometry",
        ),
        (
            legacy_layer(tmp_path / "ok.gpkg", LEGACY[:2], crs="EPSG:4547"),
            ["--id-field", "code"],
            "no field 'code' (--id-field); its fields: bianhao, beizhu",
        ),
        (tmp_path / "missing.gpkg", [], "missing.gpkg: file not found"),
        (notes, [], "notes.txt: not a readable vector layer"),
        (_local_cs_layer(tmp_path / "site.gpkg"), [], "site.gpkg: legacy layer"),
        (
            _ids_layer(tmp_path / "spaces.gpkg", ["WJ-1", " WJ-1"]),
            [],
            "id WJ-1 (bianhao) is on several",
        ),
    ]
    for layer, options, message in cases:
        code = main(
            [
                "cases",
                "import",
                str(layer),
                "--registry",
                str(registry),
                *(options or ["--id-field", "bianhao"]),
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert len(cases_by_id(registry)) == 1
    after = sqlite3.connect(str(registry)).execute("SELECT count(*) FROM case_history").fetchone()
    assert after == before
    # no registry yet: one line saying how to make one
    code = main(
        ["cases", "import", str(tmp_path / "ok.gpkg"), "--registry", str(tmp_path / "none.gpkg")]
    )
    assert code == 2 and "case registry not found" in capsys.readouterr().err
