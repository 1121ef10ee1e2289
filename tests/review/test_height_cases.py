"""Height change on the review side: cases carry the candidates' heights; form, report, CLI and evidence show them.

The run-level test uses the fusion scene of tests/height_util.py (difference oracle in place of
the network, exact DSM truth): A gains 6 m from the ground (a new building, seen in the image),
B is an image change with no height change, C is a house that gained a 3 m storey invisible in
the image (an extension found from height alone).
"""

from __future__ import annotations

import sqlite3
from datetime import date

import cv2
import geopandas as gpd
import numpy as np
import pytest

from cases_util import candidates, cases_by_id, run_night
from detector.cli import main
from detector.config import RunConfig
from detector.review import registry as reg
from detector.review.evidence import CHIP_PANEL_PX, GAP_PX, HEADER_PX, height_colours
from detector.review.qgis import cases_layer_qml
from detector.review.vocab import HEIGHT_COLUMNS, height_phrase
from detector.run import run_pipeline
from height_util import fusion_scene
from pipeline_util import make_contract_model

HEIGHT_CASE_COLUMNS = (*HEIGHT_COLUMNS, "height_change")


def test_height_phrase():
    assert height_phrase(None) == "" and height_phrase(float("nan"), 6.0) == ""
    assert height_phrase(3.1, 6.0, 9.1, "extension") == "new storey, +3.1 m"
    assert height_phrase(6.2, 6.0, 12.2, "extension") == "2 new storeys, +6.2 m"
    assert height_phrase(6.0, 0.1, 6.1, "new_building") == "new building, +6.0 m"
    assert height_phrase(3.0, 1.5, 4.5, "new_building") == "new building, +3.0 m (4.5 m high)"
    assert height_phrase(2.6, None, None, "temporary_structure") == "new structure, +2.6 m"
    assert height_phrase(0.2, 6.0, 6.2) == "no height change (+0.2 m)"
    assert height_phrase(-3.0, 6.0, 3.0) == "lower by 3.0 m"


@pytest.fixture
def height_night(tmp_path, oracle):  # noqa: F811
    """One night of the fusion scene with DSMs and a case registry: (summary, candidates, cases by id)."""
    base, cur, bd, cd, _ = fusion_scene(tmp_path)
    model = make_contract_model(tmp_path / "m.onnx", channels=6, imgsz=256, gsd=0.25, overlap=64)
    cfg = RunConfig(
        baseline=base,
        current=cur,
        out=tmp_path / "out",
        model=model,
        workers=1,
        progress=False,
        baseline_dsm=bd,
        current_dsm=cd,
        cases={"registry": tmp_path / "reg" / "cases.gpkg", "district_prefix": "LG"},
    )
    summary = run_pipeline(cfg)
    cands = gpd.read_file(summary.candidates_path, layer="candidates")
    return summary, cands, cases_by_id(tmp_path / "reg" / "cases.gpkg")


def _by_x(cands):
    """A, C, B: the candidates in x order (A at x 25 m, C at 37.5 m, B at 74.5 m)."""
    order = np.argsort(cands.geometry.centroid.x.to_numpy())
    return [cands.iloc[i] for i in order]


def test_cases_carry_the_candidates_heights(height_night):
    summary, cands, cases = height_night
    assert len(cases) == len(cands) == 3
    by_candidate = {row["candidate_id"]: row for row in cases.values()}
    for _, cand in cands.iterrows():
        case = by_candidate[cand["candidate_id"]]
        for name in HEIGHT_COLUMNS:  # exactly the candidate's values
            assert case[name] == cand[name], (name, case[name], cand[name])
        assert case["height_change"] == height_phrase(
            cand["height_gain_m"],
            cand["baseline_height_m"],
            cand["current_height_m"],
            cand["class"],
        )
    a, c, b = (by_candidate[cand["candidate_id"]] for cand in _by_x(cands))
    assert c["class"] == "extension" and c["height_gain_m"] == pytest.approx(3.0, abs=0.15)
    assert c["height_change"] == f"new storey, +{c['height_gain_m']:.1f} m"
    assert a["height_gain_m"] == pytest.approx(6.0, abs=0.15)
    assert a["height_change"] == f"new building, +{a['height_gain_m']:.1f} m"
    assert b["height_change"].startswith("no height change")


def test_evidence_chip_has_a_height_panel(height_night):
    summary, cands, cases = height_night
    registry = summary.cases.registry
    a, c, b = (
        next(r for r in cases.values() if r["candidate_id"] == cand["candidate_id"])
        for cand in _by_x(cands)
    )
    left = 2 * (CHIP_PANEL_PX + GAP_PX)
    for case, gain in ((c, c["height_gain_m"]), (a, a["height_gain_m"]), (b, 0.0)):
        chip = cv2.imread(str(registry.parent / case["evidence"]))
        assert chip.shape == (HEADER_PX + CHIP_PANEL_PX, 3 * CHIP_PANEL_PX + 2 * GAP_PX, 3)
        panel = chip[HEADER_PX:, left:].astype(int)
        # the chip is centred on the case: its centre shows the gain in the panel's colours
        centre = panel[
            CHIP_PANEL_PX // 2 - 4 : CHIP_PANEL_PX // 2 + 4,
            CHIP_PANEL_PX // 2 - 4 : CHIP_PANEL_PX // 2 + 4,
        ]
        expected = height_colours(np.array([[gain]], np.float32), np.array([[True]]))[0, 0].astype(
            int
        )
        assert np.abs(np.median(centre.reshape(-1, 3), axis=0) - expected).max() <= 8, (
            case["case_id"],
            expected,
        )
    # C: a +3 m storey is half-saturated red (blue = green = 128 +- 6 for 3.0 +- 0.15 m); its ground is white
    chip = cv2.imread(str(registry.parent / c["evidence"]))[HEADER_PX:, left:].astype(int)
    centre = np.median(chip[124:132, 124:132].reshape(-1, 3), axis=0)
    assert centre[2] == 255 and abs(centre[0] - 128) <= 7 and abs(centre[1] - 128) <= 7
    assert (chip[30:40, 5:15] >= 240).all()  # ground next to the house: no height change (white)
    assert "new storey" in summary.cases.report_html.read_text(encoding="utf-8")


def test_report_form_and_cli_show_the_height(height_night, capsys):
    summary, cands, cases = height_night
    registry = summary.cases.registry
    c = next(r for r in cases.values() if r["class"] == "extension")
    text = summary.cases.report_html.read_text(encoding="utf-8")
    assert c["height_change"] in text and "Height change" in text
    qml = cases_layer_qml()
    assert "height_change" in qml and 'name="Height change"' in qml
    assert main(["cases", "show", "--registry", str(registry), c["case_id"]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{'height_change':18s} {c['height_change']}" in lines
    assert f"{'height_gain_m':18s} {c['height_gain_m']:g}" in lines
    assert main(["cases", "list", "--registry", str(registry)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-1] == "height"
    row = next(line for line in out if line.startswith(c["case_id"]))
    assert row.endswith(f"+{c['height_gain_m']:.1f} m")


def _with_heights(names, gains, baselines):
    frame = candidates(names)
    frame["height_gain_m"] = gains
    frame["baseline_height_m"] = baselines
    frame["current_height_m"] = [None if g is None else b + g for g, b in zip(gains, baselines)]
    return frame


def test_older_registry_upgraded_and_heights_kept_on_a_night_without_dsm(scene):  # noqa: F811
    from detector.review import nightly

    baseline, current, config, root = scene
    run_night(scene, ["A", "B"], date(2024, 5, 1))
    conn = sqlite3.connect(str(config.registry))
    for column in HEIGHT_CASE_COLUMNS:  # as an older buildwatch wrote it
        conn.execute(f'ALTER TABLE cases DROP COLUMN "{column}"')
    conn.commit()
    conn.close()

    def night(frame, day):
        return nightly.update_cases(
            frame,
            config,
            run_id=f"run-{day}",
            night=day,
            baseline_path=baseline,
            current_path=current,
            out_dir=root / f"out-{day}",
        )

    night(_with_heights(["A", "B", "C"], [3.14, 0.2, 6.0], [6.0, 4.0, 0.0]), date(2024, 5, 2))
    cases = cases_by_id(config.registry)
    columns = [
        row[1]
        for row in sqlite3.connect(str(config.registry)).execute('PRAGMA table_info("cases")')
    ]
    assert set(HEIGHT_CASE_COLUMNS) <= set(columns)
    a, b, c = cases["LG20240501-0001"], cases["LG20240501-0002"], cases["LG20240502-0001"]
    assert (a["height_gain_m"], a["baseline_height_m"], a["current_height_m"]) == (3.14, 6.0, 9.14)
    assert a["height_change"] == "new storey, +3.1 m"
    assert b["height_change"] == "no height change (+0.2 m)"
    assert c["height_change"] == "new building, +6.0 m"
    # a night without DSMs (no height columns, or NULL ones) keeps what was measured
    night(candidates(["A", "B", "C"]), date(2024, 5, 3))
    night(_with_heights(["A", "B", "C"], [None, None, None], [None, None, None]), date(2024, 5, 4))
    again = cases_by_id(config.registry)
    assert again["LG20240501-0001"]["times_seen"] == 4
    for case_id in ("LG20240501-0001", "LG20240501-0002", "LG20240502-0001"):
        assert [again[case_id][n] for n in HEIGHT_CASE_COLUMNS] == [
            cases[case_id][n] for n in HEIGHT_CASE_COLUMNS
        ]
    # a later night with DSMs measures again
    night(_with_heights(["A"], [6.3], [6.0]), date(2024, 5, 5))
    assert (
        cases_by_id(config.registry)["LG20240501-0001"]["height_change"] == "2 new storeys, +6.3 m"
    )
    assert reg.read_cases_frame(config.registry)["height_gain_m"].tolist()[:3] == [6.3, 0.2, 6.0]
