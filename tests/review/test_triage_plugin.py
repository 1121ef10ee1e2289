"""The QGIS triage plugin: its zip (``buildwatch qgis-plugin``), the project's map themes, and the
plugin driven by keys in a real QGIS 3.22 (system python3-qgis, offscreen; tests/qgis_triage.py)."""

from __future__ import annotations

import ast
import json
import os
import pwd
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from datetime import date
from pathlib import Path

import geopandas as gpd
import pytest
import shapely

from cases_util import STRUCTURES, SYSTEM_PYTHON, qgis_like_edit, run_night, system_qgis_available
from detector import __version__
from detector.cli import main
from detector.config import CasesConfig
from detector.review.project import HEIGHT_STYLE, THEMES
from detector.review.triage_plugin import PLUGIN_DIR, PLUGIN_NAME, write_plugin_zip

DRIVER = Path(__file__).resolve().parents[1] / "qgis_triage.py"
needs_qgis = pytest.mark.skipif(
    not system_qgis_available(),
    reason="/usr/bin/python3 cannot import qgis (apt-get install python3-qgis qgis-providers; CI has it)",
)


# --------------------------------------------------------------------------- the zip


def test_qgis_plugin_command_writes_an_installable_zip(tmp_path):
    out = tmp_path / "dist" / "triage.zip"
    assert main(["qgis-plugin", "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert names == [
            f"{PLUGIN_NAME}/{n}"
            for n in ("metadata.txt", "__init__.py", "plugin.py", "dock.py", "queue.py")
        ]
        # exactly the files kept in the package (nothing stale, nothing left out)
        assert sorted(n.split("/")[1] for n in names) == sorted(
            p.name for p in PLUGIN_DIR.iterdir() if p.is_file()
        )
        metadata = dict(
            line.split("=", 1)
            for line in archive.read(f"{PLUGIN_NAME}/metadata.txt").decode().splitlines()
            if "=" in line
        )
        sources = {n: archive.read(n).decode() for n in names if n.endswith(".py")}
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email"):
        assert metadata.get(key), key
    assert metadata["qgisMinimumVersion"] == "3.22"
    assert metadata["version"] == __version__
    assert "def classFactory(iface)" in sources[f"{PLUGIN_NAME}/__init__.py"]
    # QGIS, PyQt and the standard library only: no buildwatch, torch, numpy, ...
    imported = set()
    for text in sources.values():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert "qgis" in imported and imported <= {"qgis"} | set(sys.stdlib_module_names), imported
    # the same source gives the same bytes
    again = write_plugin_zip(tmp_path / "again.zip")
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda t: t / "plugin.txt", "give --out a file name ending in .zip"),
        (lambda t: t, "is a folder; give --out the zip's file name"),
        (lambda t: (t / "file").write_text("x") and t / "file" / "p.zip", "is a file"),
    ],
)
def test_qgis_plugin_bad_out_is_one_line_exit_2_and_writes_nothing(
    tmp_path, capsys, make, expected
):
    work = tmp_path / "w"
    work.mkdir()
    out = make(work)
    before = sorted(p.name for p in work.rglob("*"))
    assert main(["qgis-plugin", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in work.rglob("*")) == before


# --------------------------------------------------------------------------- the project's themes


def _presets(qgs: Path) -> dict:
    root = ET.parse(qgs).getroot()
    return {
        p.get("name"): [(e.get("id"), e.get("style")) for e in p.findall("layer")]
        for p in root.iter("visibility-preset")
    }


def _layer_ids(qgs: Path) -> dict:
    root = ET.parse(qgs).getroot()
    result = {}
    for layer in root.iter("maplayer"):
        for option in layer.iter("Option"):
            if option.get("name") == "buildwatch_role":
                result[option.get("value")] = layer.findtext("id")
    return result


def test_cases_project_carries_the_map_themes_and_keeps_operator_additions(scene):
    result = run_night(scene, ["A", "B"], date(2024, 5, 1))
    qgs = result.project_path
    ids = _layer_ids(qgs)
    assert _presets(qgs) == {
        "baseline": [(ids["cases"], "default"), (ids["baseline"], None)],
        "tonight": [(ids["cases"], "default"), (ids["current"], None)],
        "height": [(ids["cases"], HEIGHT_STYLE), (ids["current"], None)],
    }
    assert set(THEMES) == {"baseline", "tonight", "height"}
    root = ET.parse(qgs).getroot()
    styles = [s.get("name") for s in root.iter("map-layer-style")]
    assert styles == ["default", HEIGHT_STYLE]
    height = next(s for s in root.iter("map-layer-style") if s.get("name") == HEIGHT_STYLE)
    # the height style keeps the form's defaults: an edit while it shows still stamps the editor
    assert any(
        d.get("field") == "edited_by" and "@user_account_name" in d.get("expression")
        for d in height.iter("default")
    )
    assert "height_gain_m" in height.find("qgis/renderer-v2").get("attr")

    # an operator adds a layer to the baseline theme, a theme of their own, and a named style
    tree = ET.parse(qgs)
    presets = tree.getroot().find("visibility-presets")
    baseline = next(p for p in presets if p.get("name") == "baseline")
    ET.SubElement(baseline, "layer", {"id": "roads_1", "visible": "1"})
    ET.SubElement(
        ET.SubElement(presets, "visibility-preset", {"name": "roads"}),
        "layer",
        {"id": "roads_1", "visible": "1"},
    )
    manager = next(tree.getroot().iter("map-layer-style-manager"))
    ET.SubElement(manager, "map-layer-style", {"name": "mine"})
    tree.write(qgs)
    result = run_night(scene, ["A", "B", "C"], date(2024, 5, 2))
    presets = _presets(qgs)
    assert presets["baseline"] == [
        (ids["cases"], "default"),
        (ids["baseline"], None),
        ("roads_1", None),
    ]
    assert presets["roads"] == [("roads_1", None)]
    assert presets["tonight"] == [(ids["cases"], "default"), (ids["current"], None)]
    assert "mine" in [s.get("name") for s in ET.parse(qgs).getroot().iter("map-layer-style")]


# --------------------------------------------------------------------------- the plugin in QGIS

# two communities split at x = 500 075 (tests/cases_util.STRUCTURES: A B D west, C E F east)
WEST = ("West", "team 1", (500_000, 2_500_000, 500_075, 2_500_200))
EAST = ("East", "team 2", (500_075, 2_500_000, 500_200, 2_500_200))


@pytest.fixture
def triage_night(scene, tmp_path):
    """Night 1: A B C; an operator confirms A. Night 2: A..F: D E F new tonight, B C still new."""
    boundaries = tmp_path / "communities.geojson"
    gpd.GeoDataFrame(
        {"name": [WEST[0], EAST[0]], "unit": [WEST[1], EAST[1]]},
        geometry=[shapely.box(*WEST[2]), shapely.box(*EAST[2])],
        crs="EPSG:4547",
    ).to_file(boundaries, driver="GeoJSON")
    baseline, current, config, root = scene
    config = CasesConfig(registry=config.registry, district_prefix="LG", boundaries=boundaries)
    scene = (baseline, current, config, root)
    run_night(scene, ["A", "B", "C"], date(2024, 5, 1))
    qgis_like_edit(config.registry, "LG20240501-0001", status="confirmed_illegal", edited_by="wang")
    result = run_night(scene, ["A", "B", "C", "D", "E", "F"], date(2024, 5, 2))
    plugin_dir = tmp_path / "plugins"
    with zipfile.ZipFile(write_plugin_zip(tmp_path / "triage.zip")) as archive:
        archive.extractall(plugin_dir)  # what QGIS's "Install from ZIP" does
    return result.project_path, config.registry, plugin_dir


def drive(project: Path, plugin_dir: Path, steps: list[dict]) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    plan = {"project": str(project), "plugin_dir": str(plugin_dir), "steps": steps}
    proc = subprocess.run(
        [str(SYSTEM_PYTHON), str(DRIVER), json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(steps) and proc.returncode == 0, (  # rc 0: unloaded cleanly
        f"qgis_triage.py (rc {proc.returncode}): {proc.stderr[-3000:]}"
    )
    return results


def qgis_user() -> str:
    """What the cases layer's edited_by default gives for this account (@user_full_name, else the login)."""
    entry = pwd.getpwuid(os.getuid())
    full = entry.pw_gecos.split(",")[0]
    return full or entry.pw_name


def rows(registry: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(str(registry))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.qgis
@pytest.mark.slow
@needs_qgis
def test_triage_dock_queue_keys_edit_buffer_history_and_themes(triage_night):
    project, registry, plugin_dir = triage_night
    boundaries = project.parent.parent / "communities.geojson"
    history_before = rows(registry, "SELECT count(*) FROM case_history")[0][0]
    b, c = "LG20240501-0002", "LG20240501-0003"
    d, e, f = "LG20240502-0001", "LG20240502-0002", "LG20240502-0003"
    assert rows(registry, "SELECT case_id FROM cases WHERE status = 'new' ORDER BY case_id") == [
        (x,) for x in sorted([b, c, d, e, f])
    ]
    loaded, tonight, key1, key_b, key_b2, key_h, key_n, key_p, key_p2, key_0, closed, opened = (
        drive(
            project,
            plugin_dir,
            [
                {"state": True},
                {"filter": {"tonight": True}},
                {"note": "no permit on file", "key": "1"},
                {"key": "B", "add_layer": [str(boundaries), "communities"]},
                {"key": "B"},
                {"key": "H"},
                {"key": "N"},
                {"key": "P"},
                {"key": "P"},
                {"key": "0"},
                {"toggle": True},
                {"toggle": True},
            ],
        )
    )
    # it loads over cases.qgs: the three themes, the status keys from the form's drop-down
    assert loaded["read"] and loaded["qgis"].startswith("3.")
    # found, read and started by QGIS's plugin loader (qgis.utils), as after "Install from ZIP"
    assert loaded["plugin"] == {
        "available": True,
        "metadata": {"name": "buildwatch triage", "qgisMinimumVersion": "3.22"},
        "started": True,
    }
    assert loaded["themes"] == ["baseline", "height", "tonight"]
    assert loaded["keys"] == {
        "0": "new",
        "1": "confirmed_illegal",
        "2": "demolition_ordered",
        "3": "demolished",
        "4": "demolition_verified",
        "5": "permitted",
        "6": "false_positive",
        "7": "referred",
    }
    assert loaded["message"] == ""
    # the queue: new cases, by community (East before West), oldest first; A (confirmed) is not in it
    assert loaded["queue"] == [c, e, f, b, d]
    assert (loaded["current"], loaded["progress"]) == (c, "0 of 5 reviewed")
    # zoomed to it (25 m around it), outlined
    left, bottom, right, top = STRUCTURES["C"]
    assert loaded["highlight"] == pytest.approx([left, bottom, right, top])
    x0, y0, x1, y1 = loaded["extent"]
    assert x0 <= left - 25 and y0 <= bottom - 25 and x1 >= right + 25 and y1 >= top + 25
    assert x1 - x0 < 120 and y1 - y0 < 120  # the case, not the whole 200 m scene
    # tonight's new cases only, in the same order
    assert tonight["queue"] == [e, f, d]
    assert (tonight["current"], tonight["progress"]) == (e, "0 of 3 reviewed")
    # key 1: E confirmed with its note in one commit (the edit buffer closed again), on to F
    assert key1["progress"] == "1 of 3 reviewed" and key1["current"] == f
    assert key1["message"] == "" and key1["editable"] is False
    assert (tonight["commits"], key1["commits"]) == (0, 1)  # one commit of the edit buffer
    user = qgis_user()
    history = rows(
        registry,
        "SELECT case_id, changed_by, change, old_status, new_status FROM case_history "
        f"WHERE fid > {history_before} AND old_status IS NOT new_status ORDER BY fid",
    )
    assert history[0] == (e, user, "status", "new", "confirmed_illegal")
    # B flips to the baseline mosaic and back; H shows tonight's with the cases' height style
    # (a layer the operator added stays on: the keys switch only the layers the themes name)
    assert key_b["canvas_layers"] == ["baseline (baseline.tif)", "cases", "communities"]
    assert key_b2["canvas_layers"] == ["cases", "communities", "current (current.tif)"]
    assert key_b["cases_style"] == "default" and key_h["cases_style"] == HEIGHT_STYLE
    assert key_h["canvas_layers"] == ["cases", "communities", "current (current.tif)"]
    # N / P move without changing anything
    assert (key_n["current"], key_p["current"], key_p2["current"]) == (d, f, e)
    assert key_p2["progress"] == "1 of 3 reviewed"
    # 0 sets E back to new: signed and logged like any status change, and no longer counted
    assert key_0["current"] == e and key_0["progress"] == "0 of 3 reviewed"
    assert (key_p2["commits"], key_0["commits"]) == (1, 2)  # moving and themes commit nothing
    assert history == [
        (e, user, "status", "new", "confirmed_illegal"),
        (e, user, "status", "confirmed_illegal", "new"),
    ]
    # the toolbar button closes the dock (its outline leaves the map) and opens it again
    assert (closed["dock_visible"], closed["highlight"]) == (False, None)
    assert opened["dock_visible"] and opened["highlight"] == pytest.approx(list(STRUCTURES["E"]))
    assert opened["queue"] == tonight["queue"] and opened["current"] == e  # filters kept, rebuilt
    # the note went with the first commit and stays; the credit is the last status change's
    assert rows(registry, f"SELECT status, note, reviewer FROM cases WHERE case_id = '{e}'") == [
        ("new", "no permit on file", user)
    ]


@pytest.mark.qgis
@pytest.mark.slow
@needs_qgis
def test_triage_credits_the_layers_own_editor_default_and_refuses_over_unsaved_edits(
    triage_night,
):
    project, registry, plugin_dir = triage_night
    c, e = "LG20240501-0003", "LG20240502-0002"
    busy, credited, typed, noted, unsigned, closed = drive(
        project,
        plugin_dir,
        [
            {"edit_buffer": True, "key": "6"},
            {"rollback": True, "editor_default": "'inspector-7'", "key": "6"},
            {"type_note": "B1 N0 zh"},
            {"enter_note": "seen from the road"},
            {"editor_default": ""},
            {"clear": True, "key": "N"},
        ],
    )
    # another edit in progress: nothing is committed with it, the dock says why
    assert busy["current"] == c and "unsaved edits" in busy["message"]
    assert busy["progress"] == "0 of 5 reviewed" and busy["commits"] == 0
    # the dock writes what the layer's own edited_by default gives: no second rule
    assert credited["message"] == ""
    assert (credited["current"], credited["progress"]) == (e, "1 of 5 reviewed")
    assert rows(registry, f"SELECT status, reviewer FROM cases WHERE case_id = '{c}'") == [
        ("false_positive", "inspector-7")
    ]
    # one status change, by the second press (the refused one wrote nothing)
    assert rows(
        registry,
        f"SELECT changed_by, change, old_status, new_status FROM case_history WHERE case_id = '{c}' "
        "AND new_status = 'false_positive' ORDER BY fid",
    ) == [("inspector-7", "status", "new", "false_positive")]
    # nothing of the rolled-back draft reached the registry
    assert rows(registry, "SELECT count(*) FROM cases WHERE note = 'draft'") == [(0,)]
    # Enter in the note field: the note alone, one more commit, the status and the queue stay
    assert (noted["current"], noted["progress"], noted["commits"]) == (e, "1 of 5 reviewed", 2)
    assert rows(registry, f"SELECT status, note FROM cases WHERE case_id = '{e}'") == [
        ("new", "seen from the road")
    ]
    # in the note field the keys type: no status, no theme, no move
    assert (typed["note"], typed["current"], typed["commits"]) == ("B1 N0 zh", e, 1)
    assert typed["canvas_layers"] == credited["canvas_layers"]
    # a cases layer without buildwatch's editor stamp: the dock says so at once
    assert "no edited_by default" in unsigned["message"]
    # the project closed: no layer, no queue, the dock says what to open; keys do nothing
    assert (closed["queue"], closed["current"], closed["highlight"]) == ([], None, None)
    assert "open the cases.qgs" in closed["message"]


def test_a_project_written_before_the_themes_gets_them_on_the_next_night(scene):
    qgs = run_night(scene, ["A", "B"], date(2024, 5, 1)).project_path
    tree = ET.parse(qgs)
    root = tree.getroot()
    root.remove(root.find("visibility-presets"))
    for layer in root.iter("maplayer"):
        for manager in layer.findall("map-layer-style-manager"):
            layer.remove(manager)
        for option in layer.iter("Option"):
            if option.get("name") == "buildwatch_style":
                option.set("value", "an older release")
    tree.write(qgs)
    run_night(scene, ["A", "B"], date(2024, 5, 2))
    ids = _layer_ids(qgs)
    assert _presets(qgs)["height"] == [(ids["cases"], HEIGHT_STYLE), (ids["current"], None)]
    assert [s.get("name") for s in ET.parse(qgs).getroot().iter("map-layer-style")] == [
        "default",
        HEIGHT_STYLE,
    ]
