"""Screenshots of the review side for docs/review.md, generated (never hand-made).

Builds a synthetic three-night case registry (two communities; an operator confirms one case,
rejects one, marks one demolished that is still standing the next night, orders another down
with a due date that passes, and draws a structure the detector missed), then renders with the
system QGIS (``/usr/bin/python3`` with python3-qgis, headless):

* ``docs/img/review-qgis.png``: the project ``cases.qgs`` as QGIS draws it (imagery, cases styled
  by status, the demolition alert, labels) with its legend, through a QGIS print layout;
* ``docs/img/review-report.png``: the top of the night's ``report.html`` (QtWebKit).

Usage::

    python scripts/review_screenshots.py [--work /tmp/buildwatch-review-demo] [--out docs/img]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
from datetime import date
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.transform import from_origin

from detector.config import CasesConfig
from detector.review import gpkg, nightly

ROOT = Path(__file__).resolve().parents[1]

ORIGIN_X, ORIGIN_Y, GSD, SIZE = 500_000.0, 2_500_200.0, 0.25, 800
STRUCTURES = {  # (left, bottom, right, top) in EPSG:4547
    "A": (500_020, 2_500_150, 500_030, 2_500_160),
    "B": (500_060, 2_500_151, 500_068, 2_500_159),
    "C": (500_100, 2_500_150, 500_106, 2_500_160),
    "D": (500_020, 2_500_080, 500_032, 2_500_090),
    "E": (500_080, 2_500_080, 500_090, 2_500_090),
    "F": (500_140, 2_500_040, 500_150, 2_500_050),
    "G": (500_150, 2_500_120, 500_162, 2_500_134),
    "H": (500_040, 2_500_030, 500_052, 2_500_040),
}
ROOF = {
    "A": (200, 90, 60),
    "B": (70, 120, 200),
    "C": (225, 225, 230),
    "D": (200, 90, 60),
    "E": (70, 120, 200),
    "F": (225, 225, 230),
    "G": (180, 80, 60),
    "H": (90, 140, 210),
}


def write_scene(path: Path, names: list[str], seed: int) -> Path:
    """An RGB GeoTIFF: textured ground, a road, roofs of the named structures."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((3, SIZE, SIZE), dtype=np.uint8)
    coarse = rng.normal(
        0, 10, (SIZE // 16, SIZE // 16)
    )  # smooth texture (compresses well in a PNG)
    base = 105 + np.kron(coarse, np.ones((16, 16)))
    for band, tint in enumerate((0, 8, -12)):
        pixels[band] = np.clip(base + tint, 0, 255)
    pixels[:, 440:470, :] = 150  # a road
    for name in names:
        left, bottom, right, top = STRUCTURES[name]
        r0, r1 = int((ORIGIN_Y - top) / GSD), int((ORIGIN_Y - bottom) / GSD)
        c0, c1 = int((left - ORIGIN_X) / GSD), int((right - ORIGIN_X) / GSD)
        for band in range(3):
            pixels[band, r0:r1, c0:c1] = ROOF[name][band]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=SIZE,
        height=SIZE,
        count=3,
        dtype="uint8",
        crs="EPSG:4547",
        transform=from_origin(ORIGIN_X, ORIGIN_Y, GSD, GSD),
    ) as dst:
        dst.write(pixels)
    return path


def candidates(names: list[str]) -> gpd.GeoDataFrame:
    classes = {
        "C": "temporary_structure",
        "F": "temporary_structure",
        "E": "extension",
        "H": "construction_site",
    }
    return gpd.GeoDataFrame(
        {
            "candidate_id": [f"cand-{n}" for n in names],
            "class": [classes.get(n, "new_building") for n in names],
            "confidence": [0.7 + 0.03 * i for i in range(len(names))],
            "tags": [""] * len(names),
            "model_name": ["demo"] * len(names),
        },
        geometry=[shapely.box(*STRUCTURES[n]) for n in names],
        crs="EPSG:4547",
    )


def edit(registry: Path, case_id: str, **fields) -> None:
    """An operator's edit as QGIS commits it (one UPDATE, signed with edited_by)."""
    conn = sqlite3.connect(str(registry))
    gpkg.register_gpkg_functions(conn)
    with conn:
        names = ", ".join(f'"{k}" = ?' for k in fields)
        conn.execute(f"UPDATE cases SET {names} WHERE case_id = ?", (*fields.values(), case_id))
    conn.close()


def build(work: Path) -> tuple[Path, Path]:
    work.mkdir(parents=True, exist_ok=True)
    baseline = write_scene(work / "baseline.tif", [], 1)
    boundaries = gpd.GeoDataFrame(
        {"name": ["Xinsheng", "Longdong"], "unit": ["team 1", "team 2"]},
        geometry=[
            shapely.box(500_000, 2_500_000, 500_075, 2_500_200),
            shapely.box(500_075, 2_500_000, 500_200, 2_500_200),
        ],
        crs="EPSG:4547",
    )
    boundaries.to_file(work / "communities.geojson", driver="GeoJSON")
    config = CasesConfig(
        registry=work / "cases" / "cases.gpkg",
        district_prefix="LG",
        boundaries=work / "communities.geojson",
    )
    nights = [
        (date(2024, 5, 1), ["A", "B", "C", "H"]),
        (date(2024, 5, 2), ["A", "B", "C", "D", "E", "H"]),
        (date(2024, 5, 3), ["A", "B", "D", "E", "F", "H"]),
    ]
    result = None
    for index, (night, names) in enumerate(nights):
        current = write_scene(
            work / f"current-{night}.tif", names + (["G"] if index == 2 else []), 10 + index
        )
        result = nightly.update_cases(
            candidates(names),
            config,
            run_id=f"run-{night}",
            night=night,
            baseline_path=baseline,
            current_path=current,
            out_dir=work / f"out-{night}",
        )
        if index == 0:
            edit(config.registry, "LG20240501-0001", status="demolished", edited_by="chen")
            edit(
                config.registry,
                "LG20240501-0002",
                status="demolition_ordered",
                demolition_due="2024-05-02",
                edited_by="chen",
            )
            edit(
                config.registry,
                "LG20240501-0003",
                status="confirmed_illegal",
                edited_by="wang",
                note="无许可证",
            )
        if index == 1:
            edit(
                config.registry,
                "LG20240502-0002",
                status="false_positive",
                edited_by="li",
                note="shadow",
            )
            conn = sqlite3.connect(str(config.registry))
            gpkg.register_gpkg_functions(conn)
            with conn:  # a structure the detector missed, drawn by an operator
                conn.execute(
                    "INSERT INTO cases (geom, case_id, status, origin, times_seen, geometry_edited, edited_by) "
                    "VALUES (?, 'pending-demo', 'new', 'operator', 0, 1, 'zhao')",
                    (gpkg.encode_gpkg_geometry(shapely.box(*STRUCTURES["G"]), 4547),),
                )
            conn.close()
    return config.registry.with_suffix(".qgs"), result.report_html


QGIS_SCRIPT = r"""
import json, sys
from qgis.core import (QgsApplication, QgsProject, QgsPrintLayout, QgsLayoutItemMap, QgsLayoutItemLegend,
                       QgsLayoutPoint, QgsLayoutSize, QgsUnitTypes, QgsLayoutExporter, QgsRectangle)
from qgis.PyQt.QtCore import QUrl, QSize, QEventLoop, QTimer
from qgis.PyQt.QtGui import QImage, QPainter
args = json.loads(sys.argv[1])
app = QgsApplication([], True); app.initQgis()
project = QgsProject.instance(); project.read(args["project"])
layout = QgsPrintLayout(project); layout.initializeDefaults()
page = layout.pageCollection().page(0); page.setPageSize(QgsLayoutSize(282, 158, QgsUnitTypes.LayoutMillimeters))
item = QgsLayoutItemMap(layout); layout.addLayoutItem(item)
item.attemptMove(QgsLayoutPoint(2, 2, QgsUnitTypes.LayoutMillimeters))
item.attemptResize(QgsLayoutSize(176, 176, QgsUnitTypes.LayoutMillimeters))
item.setExtent(QgsRectangle(499995, 2500020, 500180, 2500180))
legend = QgsLayoutItemLegend(layout); legend.setTitle("cases.qgs"); legend.setLinkedMap(item)
layout.addLayoutItem(legend); legend.attemptMove(QgsLayoutPoint(180, 2, QgsUnitTypes.LayoutMillimeters))
legend.setAutoUpdateModel(False)
tree = legend.model().rootGroup()
for node in list(tree.findLayers()):
    if node.name() != "cases":
        tree.removeChildNode(node)
exporter = QgsLayoutExporter(layout)
settings = QgsLayoutExporter.ImageExportSettings(); settings.dpi = 90
print("qgis", exporter.exportToImage(args["qgis_png"], settings))
from qgis.PyQt.QtWebKitWidgets import QWebPage
page = QWebPage(); loop = QEventLoop(); page.mainFrame().loadFinished.connect(loop.quit)
page.mainFrame().load(QUrl.fromLocalFile(args["report"])); QTimer.singleShot(30000, loop.quit); loop.exec_()
page.setViewportSize(QSize(1000, 800)); size = page.mainFrame().contentsSize()
height = min(size.height(), args["report_height"])
page.setViewportSize(QSize(1000, height))
image = QImage(QSize(1000, height), QImage.Format_ARGB32); image.fill(0xffffffff)
painter = QPainter(image); page.mainFrame().render(painter); painter.end()
print("report", image.save(args["report_png"]))
project.clear(); app.exitQgis()
"""


def render(project: Path, report: Path, out: Path, report_height: int = 1450) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    args = {
        "project": str(project),
        "report": str(report),
        "qgis_png": str(out / "review-qgis.png"),
        "report_png": str(out / "review-report.png"),
        "report_height": report_height,
    }
    proc = subprocess.run(
        ["/usr/bin/python3", "-c", QGIS_SCRIPT, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0 or "qgis True" not in proc.stdout or "report True" not in proc.stdout:
        raise SystemExit(f"rendering failed:\n{proc.stdout}\n{proc.stderr[-2000:]}")
    print(f"wrote {out / 'review-qgis.png'} and {out / 'review-report.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/buildwatch-review-demo"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    if args.work.exists():
        import shutil

        shutil.rmtree(args.work)
    project, report = build(args.work)
    render(project, report, args.out)


if __name__ == "__main__":
    main()
