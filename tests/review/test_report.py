"""Nightly report: per-community zero-increment table and a self-contained report.html."""

from __future__ import annotations

import base64
import re
from datetime import date

import cv2
import geopandas as gpd
import numpy as np
import shapely

from cases_util import qgis_like_edit, run_night
from detector.review.report import NO_COMMUNITY, community_table, write_report


def _cases(rows):
    return gpd.GeoDataFrame(
        rows,
        columns=["case_id", "status", "first_seen", "community", "unit"],
        geometry=[shapely.box(i, 0, i + 1, 1) for i in range(len(rows))],
        crs="EPSG:4547",
    )


def test_community_table_counts_and_ages():
    cases = _cases(
        [
            ("c1", "new", "2024-05-10", "Xinsheng", "team 1"),
            ("c2", "confirmed_illegal", "2024-05-01", "Xinsheng", "team 1"),
            (
                "c3",
                "false_positive",
                "2024-04-01",
                "Xinsheng",
                "team 1",
            ),  # closed: not in backlog or age
            ("c4", "referred", "2024-04-20", "Longdong", "team 2"),
            ("c5", "demolished", "2024-03-01", "Longdong", "team 2"),
            ("c6", "new", "2024-05-10", None, None),
        ]
    )
    table = {row.community: row for row in community_table(cases, date(2024, 5, 10))}
    figures = {
        name: (r.new_tonight, r.confirmed_illegal, r.open_backlog, r.oldest_open_days)
        for name, r in table.items()
    }
    assert figures == {
        "Xinsheng": (1, 1, 2, 9),
        "Longdong": (0, 0, 1, 20),
        NO_COMMUNITY: (1, 0, 1, 0),
        "all communities": (2, 1, 4, 20),
    }
    assert table["Longdong"].unit == "team 2"


def test_report_html_is_self_contained_with_map_and_thumbnails(scene):  # noqa: F811
    baseline, current, config, root = scene
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    result = run_night(scene, ["A", "B", "D"], date(2024, 5, 2))
    text = result.report_html.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "file:" not in text
    sources = re.findall(r"src='([^']*)'", text)
    assert len(sources) == 2  # the map + one thumbnail (D is the only new case on night 2)
    assert all(s.startswith("data:image/jpeg;base64,") for s in sources)
    images = [
        cv2.imdecode(
            np.frombuffer(base64.b64decode(s.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR
        )
        for s in sources
    ]
    assert all(img is not None and img.size > 0 for img in images)
    assert images[1].shape == (278, 516, 3)  # evidence chip: header + two 256 px panels
    assert "LG20240502-0001" in text and "New tonight (1)" in text
    assert result.report_csv.read_text(encoding="utf-8-sig").splitlines() == [
        "night,community,unit,new_tonight,confirmed_illegal,open_backlog,oldest_open_days,alerts,"
        "legacy_backlog,legacy_cleared",
        "2024-05-02,(outside known communities),,1,0,3,1,0,0,0",
        "2024-05-02,all communities,,1,0,3,1,0,0,0",
    ]


def test_report_of_an_empty_night_says_zero_increment(scene):  # noqa: F811
    baseline, current, config, root = scene
    run_night(scene, ["A"], date(2024, 5, 1))
    html_path, csv_path = write_report(
        config.registry, root / "quiet", night=date(2024, 5, 3), current_path=current
    )
    assert "Zero increment" in html_path.read_text()
    assert (
        csv_path.read_text(encoding="utf-8-sig").splitlines()[-1]
        == "2024-05-03,all communities,,0,0,1,2,0,0,0"
    )


def _summary(text: str) -> dict[str, str]:
    block = text.split("<h2>Summary</h2>", 1)[1].split("</table>", 1)[0]
    return dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", block))


def test_summary_counts_add_up_after_a_rerun_and_permitted_is_not_suppressed(scene):  # noqa: F811

    baseline, current, config, root = scene
    run_night(scene, ["A", "B", "C"], date(2024, 5, 1))
    qgis_like_edit(config.registry, "LG20240501-0001", status="false_positive")
    qgis_like_edit(config.registry, "LG20240501-0002", status="permitted")
    for _ in range(2):  # the night, then a rerun of the same night
        result = run_night(scene, ["A", "B", "D", "E"], date(2024, 5, 2))
        summary = _summary(result.report_html.read_text(encoding="utf-8"))
        parts = [
            int(summary[k])
            for k in (
                "New cases tonight (first seen this night)",
                "Earlier cases seen again tonight",
                "Earlier cases not seen tonight",
            )
        ]
        assert parts == [2, 2, 1]  # D, E new; A, B seen again; C not seen
        assert sum(parts) == int(summary["Cases in registry (= the three above)"]) == 5
        assert summary["Sightings of false positives (suppressed)"] == "1"
        assert summary["Sightings of permitted structures"] == "1"


def test_report_has_a_legend_the_backlog_as_a_list_and_classes_in_captions(scene):  # noqa: F811

    from detector.review.qgis import STATUS_STYLE

    baseline, current, config, root = scene
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    qgis_like_edit(config.registry, "LG20240501-0001", status="confirmed_illegal")
    result = run_night(scene, ["A", "C"], date(2024, 5, 4))
    text = result.report_html.read_text(encoding="utf-8")
    legend = text.split("<ul class='legend'>", 1)[1].split("</ul>", 1)[0]
    items = re.findall(r"border-color:(#[0-9a-f]{6});[^']*'></span>([^<]*)</li>", legend)
    assert items[0] == ("#ff00ff", "ALERT: still standing after demolition (0)")
    assert items[1:] == [
        ("#{:02x}{:02x}{:02x}".format(*rgb), f"{label} ({n})")
        for (label, rgb), n in zip(STATUS_STYLE.values(), [2, 1, 0, 0, 0, 0, 0, 0])
    ]
    backlog = text.split("<h2>Open backlog (3, oldest first)</h2>", 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<b>([^<]+)</b>", backlog) == [
        "LG20240501-0001",
        "LG20240501-0002",
        "LG20240504-0001",
    ]
    assert re.findall(r"<td>(\d+|–)</td></tr>", backlog) == ["3", "3", "0"]
    attention = text.split("<h2>Needs attention (1)</h2>", 1)[1].split("</table>", 1)[0]
    assert "LG20240501-0002" in attention and "not seen tonight (last seen 2024-05-01)" in attention
    caption = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert caption == [
        "1. <b>LG20240504-0001</b> · new_building · – · 60 m² · conf 0.81 · "
        + caption[0].split(" · ")[-1]
    ]


def test_report_points_legend_once_per_case_attention_once_ready_to_verify_map_on_imagery(scene):  # noqa: F811
    from cases_util import candidates
    from detector.review import nightly

    baseline, current, config, root = scene
    run_night(scene, ["A", "B", "C", "D"], date(2024, 5, 1))
    a, b, c, d = (f"LG20240501-000{n}" for n in range(1, 5))
    qgis_like_edit(config.registry, a, status="demolished")
    qgis_like_edit(config.registry, b, status="demolished")
    qgis_like_edit(config.registry, c, status="confirmed_illegal")
    tonight = candidates(["A", "C", "D"])
    tonight.loc[0, "class"] = "construction_site"  # A: still standing, and its class changed
    result = nightly.update_cases(
        tonight,
        config,
        run_id="run-2",
        night=date(2024, 5, 2),
        baseline_path=baseline,
        current_path=current,
        out_dir=root / "out-2",
    )
    text = result.report_html.read_text(encoding="utf-8")

    # the legend counts each case once, under the colour it is drawn in: 1 alert + 3 statuses = 4
    legend = text.split("<ul class='legend'>", 1)[1].split("</ul>", 1)[0]
    counts = [int(n) for n in re.findall(r"\((\d+)\)</li>", legend)]
    assert (
        counts == [1, 1, 1, 0, 1, 0, 0, 0, 0] and sum(counts) == 4
    )  # alert, new, confirmed, demolished
    # A has two reasons and is listed once, with both
    attention = text.split("<h2>Needs attention (1)</h2>", 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<b>([^<]+)</b>", attention) == [a]
    assert (
        "still standing although demolished (seen 2024-05-02); "
        "detected class changed tonight: new_building -&gt; construction_site" in attention
    )
    # B: demolished, covered tonight and not seen: ready to verify
    ready = text.split("<h2>Ready to verify (1)</h2>", 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<b>([^<]+)</b>", ready) == [b]
    # the map stays on the imagery: no paper margin where the mosaic ends (A is 20 m from its edge)
    (uri,) = re.findall(r"alt='map of cases' src='data:image/jpeg;base64,([^']*)'", text)
    image = cv2.imdecode(np.frombuffer(base64.b64decode(uri), np.uint8), cv2.IMREAD_COLOR)
    paper = np.all(np.abs(image.astype(int) - 235) <= 6, axis=2).mean()
    assert paper < 0.005, paper


def test_evidence_title_is_fitted_not_cut():
    from detector.review.evidence import CHIP_PANEL_PX, GAP_PX, TITLE_SCALE, title_scale

    width = 2 * CHIP_PANEL_PX + GAP_PX - 12
    short = "LG20240501-0001  first seen 2024-05-01"
    assert title_scale(short, width) == TITLE_SCALE
    long = short + "  new storey, +3.1 m  redrawn 2024-05-02 (edited)"
    scale = title_scale(long, width)
    assert 0.3 < scale < TITLE_SCALE
    assert cv2.getTextSize(long, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= width
