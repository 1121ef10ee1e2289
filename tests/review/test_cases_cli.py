"""`buildwatch cases list|show|export` on a registry made by two nights."""

from __future__ import annotations

import csv
import json
import re
from datetime import date

import pyogrio
import pytest

from cases_util import qgis_like_edit, run_night
from detector.cli import main


@pytest.fixture
def registry(scene):  # noqa: F811
    run_night(scene, ["A", "B", "C"], date(2024, 5, 1))
    qgis_like_edit(scene[2].registry, "LG20240501-0002", status="false_positive", note="car park")
    qgis_like_edit(scene[2].registry, "LG20240501-0001", note="新生社区 加建")
    run_night(scene, ["A", "D"], date(2024, 5, 2))
    return scene[2].registry


def test_list_filters_by_status(registry, capsys):
    assert main(["cases", "list", "--registry", str(registry)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["case_id", "status", "class"]
    assert [line.split()[0] for line in out[1:-1]] == [
        "LG20240501-0001",
        "LG20240501-0002",
        "LG20240501-0003",
        "LG20240502-0001",
    ]
    assert out[-1] == "4 case(s)"
    assert main(["cases", "list", "--registry", str(registry), "--status", "false_positive"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 case(s)"


def test_show_prints_fields_and_map_links(registry, capsys):
    assert main(["cases", "show", "--registry", str(registry), "LG20240501-0002"]) == 0
    lines = capsys.readouterr().out.splitlines()
    history = [line.split()[1:] for line in lines if line.startswith("history")]
    assert [h[1:] for h in history] == [
        ["buildwatch", "run-2024-05-01", "created", "new"],
        ["unknown", "status", "new", "->", "false_positive"],
    ]
    fields = dict(line.split(None, 1) for line in lines if len(line.split(None, 1)) == 2)
    assert fields["status"] == "false_positive" and fields["note"] == "car park"
    lat, lon = float(fields["lat"]), float(fields["lon"])
    assert fields["geo_uri"] == f"geo:{lat:.7f},{lon:.7f}"
    assert fields["osm_url"].startswith(
        f"https://www.openstreetmap.org/?mlat={lat:.7f}&mlon={lon:.7f}"
    )
    assert main(["cases", "show", "--registry", str(registry), "LG19990101-0001"]) == 2


@pytest.mark.parametrize("suffix", ["geojson", "csv", "kml"])
def test_export_formats_with_lonlat_and_links(registry, tmp_path, suffix):
    out = tmp_path / f"field.{suffix}"
    assert (
        main(["cases", "export", "--registry", str(registry), "--out", str(out), "--status", "new"])
        == 0
    )
    if suffix == "csv":
        raw = out.read_bytes()
        assert raw.startswith(
            b"\xef\xbb\xbf"
        )  # BOM: Excel in a Chinese locale reads UTF-8, not GBK
        rows = list(csv.DictReader(raw.decode("utf-8-sig").splitlines()))
        assert [r["case_id"] for r in rows] == [
            "LG20240501-0001",
            "LG20240501-0003",
            "LG20240502-0001",
        ]
        assert rows[0]["note"] == "新生社区 加建"
        assert all(r["geo_uri"] == f"geo:{float(r['lat']):.7f},{float(r['lon']):.7f}" for r in rows)
        assert all(r["wkt"].startswith("POLYGON ((114.") for r in rows)
        assert [r["area_m2"] for r in rows] == ["100", "60", "120"]  # not padded to 100.000000
        assert (
            rows[0]["evidence"] == "registry/evidence/LG20240501-0001.png"
        )  # relative to the export file
        assert (out.parent / rows[0]["evidence"]).exists()
    elif suffix == "geojson":
        features = json.loads(out.read_text())["features"]
        assert len(features) == 3
        lon, lat = features[0]["properties"]["lon"], features[0]["properties"]["lat"]
        ring = features[0]["geometry"]["coordinates"][0]
        assert min(p[0] for p in ring) < lon < max(p[0] for p in ring)
        assert min(p[1] for p in ring) < lat < max(p[1] for p in ring)
    else:
        frame = pyogrio.read_dataframe(out)
        assert sorted(frame["Name"]) == ["LG20240501-0001", "LG20240501-0003", "LG20240502-0001"]
        assert frame.crs.to_epsg() == 4326
        assert "<name>LG20240501-0001</name>" in out.read_text()


def test_kml_has_a_style_per_status_and_the_evidence_chip_inside(registry, tmp_path):
    import base64
    import re
    import xml.etree.ElementTree as ET

    import cv2
    import numpy as np

    from detector.review.qgis import STATUS_STYLE

    out = tmp_path / "field.kml"
    assert main(["cases", "export", "--registry", str(registry), "--out", str(out)]) == 0
    ns = {"k": "http://www.opengis.net/kml/2.2"}
    doc = ET.parse(out).getroot()
    styles = {
        s.get("id"): s.find("k:PolyStyle/k:color", ns).text
        for s in doc.iter("{http://www.opengis.net/kml/2.2}Style")
    }
    r, g, b = STATUS_STYLE["false_positive"][1]
    assert styles["status_false_positive"] == f"50{b:02x}{g:02x}{r:02x}"
    assert set(styles) == {f"status_{s}" for s in STATUS_STYLE} | {"status_alert"}
    marks = {
        p.find("k:name", ns).text: p for p in doc.iter("{http://www.opengis.net/kml/2.2}Placemark")
    }
    assert marks["LG20240501-0002"].find("k:styleUrl", ns).text == "#status_false_positive"
    assert marks["LG20240501-0001"].find("k:styleUrl", ns).text == "#status_new"
    description = marks["LG20240501-0001"].find("k:description", ns).text
    uri = re.search(r'src="data:image/jpeg;base64,([^"]+)"', description).group(1)
    chip = cv2.imdecode(np.frombuffer(base64.b64decode(uri), np.uint8), cv2.IMREAD_COLOR)
    assert chip.shape == (278, 516, 3)  # the before/after evidence chip itself
    assert "新生社区 加建" in description


def test_export_unknown_extension_and_missing_registry_exit_2(registry, tmp_path, capsys):
    assert (
        main(["cases", "export", "--registry", str(registry), "--out", str(tmp_path / "x.shp")])
        == 2
    )
    assert main(["cases", "list", "--registry", str(tmp_path / "none.gpkg")]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the format" in err and "case registry not found" in err


def test_kml_heading_and_a_drawn_cases_evidence_only_once_drawn(scene, tmp_path, capsys):  # noqa: F811
    import sqlite3

    import shapely

    from detector.review import gpkg

    registry = scene[2].registry
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    qgis_like_edit(registry, "LG20240501-0001", status="demolished")
    conn = sqlite3.connect(str(registry))
    gpkg.register_gpkg_functions(conn)
    with conn:  # an operator draws C in QGIS the morning after night 1
        conn.execute(
            "INSERT INTO cases (geom, case_id, edited_by) VALUES (?, 'pending-x', 'zhao')",
            (gpkg.encode_gpkg_geometry(shapely.box(500_100, 2_500_150, 500_106, 2_500_160), 4547),),
        )
    conn.close()
    out = tmp_path / "cases.csv"
    assert main(["cases", "export", "--registry", str(registry), "--out", str(out)]) == 0
    rows = {r["case_id"]: r for r in csv.DictReader(out.open(encoding="utf-8-sig"))}
    assert rows["LG20240501-M0001"]["evidence"] == ""  # no chip yet: no path to a missing file
    assert rows["LG20240501-0001"]["evidence"].endswith("evidence/LG20240501-0001.png")

    run_night(scene, ["A", "B", "C"], date(2024, 5, 2))  # draws the drawn case's chip
    assert main(["cases", "export", "--registry", str(registry), "--out", str(out)]) == 0
    rows = {r["case_id"]: r for r in csv.DictReader(out.open(encoding="utf-8-sig"))}
    chip = rows["LG20240501-M0001"]["evidence"]
    assert chip.endswith("LG20240501-M0001.png") and (out.parent / chip).is_file()

    kml = tmp_path / "cases.kml"
    assert main(["cases", "export", "--registry", str(registry), "--out", str(kml)]) == 0
    text = kml.read_text(encoding="utf-8")
    assert "<b></b>" not in text
    descriptions = re.findall(r"<description><!\[CDATA\[(.*?)\]\]></description>", text, re.S)
    assert [d.split("<br/>", 1)[0] for d in descriptions] == [
        "<b>LG20240501-0001</b> · Demolished (to verify)",
        "<b>LG20240501-0002</b> · New (not reviewed)",
        "<b>LG20240501-M0001</b> · New (not reviewed)",
    ]
    assert "still standing although demolished (seen 2024-05-02)" in descriptions[0]

    # its history: the operator's creation; the detector's class update counted, listed on request
    assert main(["cases", "show", "--registry", str(registry), "LG20240501-M0001"]) == 0
    history = [line.split()[2:4] for line in capsys_lines(capsys) if line.startswith("history")]
    assert history == [["zhao", "created"], ["detector", "update(s)"]]
    assert (
        main(["cases", "show", "--registry", str(registry), "LG20240501-M0001", "--all-history"])
        == 0
    )
    history = [line.split()[2:5] for line in capsys_lines(capsys) if line.startswith("history")]
    assert history == [
        ["zhao", "created", "new"],
        ["buildwatch", "run-2024-05-02", "detector_class"],
    ]


def capsys_lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()
