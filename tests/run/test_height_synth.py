"""Height change on synthetic scenes with DSMs (detector/synth/dsm.py), through ``run_pipeline``.

The model is a contract model with no detections, so these measure the height step alone:
rooftop storeys and new buildings against the scene's exact truth (IoU >= 0.3), and no
candidate at all from tree growth, DSM noise, edge smear, a survey offset and the
misregistration on a scene where nothing was built.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest

from detector.config import RunConfig
from detector.run import run_pipeline
from detector.synth.scene import generate_scene, write_scene
from pipeline_util import make_contract_model

pytestmark = pytest.mark.slow

SIZE, GSD = 768, 0.25


def _run(tmp_path, folder, name):
    model = make_contract_model(tmp_path / "m.onnx", channels=6, imgsz=512, gsd=GSD, overlap=128)
    cfg = RunConfig(
        baseline=folder / "baseline.tif",
        current=folder / "current.tif",
        out=tmp_path / name,
        model=model,
        workers=1,
        progress=False,
        baseline_dsm=folder / "dsm_baseline.tif",
        current_dsm=folder / "dsm_current.tif",
        detect={"second_view": {"enabled": False}},
    )  # the image model finds nothing: height alone
    return gpd.read_file(run_pipeline(cfg).candidates_path, layer="candidates")


def _best_iou(geom, others):
    return max((geom.intersection(o).area / geom.union(o).area for o in others), default=0.0)


def test_storeys_and_new_buildings_found_from_height(tmp_path):
    storeys = new = storeys_hit = new_hit = false = 0
    for seed in (11, 12):
        scene = generate_scene(seed, size=SIZE, gsd=GSD, dsm=True)
        folder = tmp_path / f"s{seed}"
        write_scene(scene, folder)
        gdf = _run(tmp_path, folder, f"out{seed}")
        truth = gpd.read_file(folder / "truth.geojson").to_crs(gdf.crs)
        for _, t in truth.iterrows():
            hit = _best_iou(t.geometry, gdf.geometry) >= 0.3
            if t["class"] == "extension":
                storeys += 1
                storeys_hit += hit
            elif t["class"] == "new_building":
                new += 1
                new_hit += hit
        tall = truth[truth["class"].isin(["extension", "new_building", "temporary_structure"])]
        false += sum(_best_iou(g, tall.geometry) < 0.3 for g in gdf.geometry)
        assert set(gdf["tags"]) <= {"height_only"}
        assert (gdf["height_gain_m"] >= 2.5).all()
    print(f"storeys {storeys_hit}/{storeys}, new buildings {new_hit}/{new}, false {false}")
    assert storeys >= 4 and new >= 8
    assert storeys_hit / storeys >= 0.9, (storeys_hit, storeys)
    assert new_hit / new >= 0.95, (new_hit, new)
    assert false == 0


def _unchanged(tmp_path, seed, growth):
    """A scene where nothing was built between the surveys but every tree grew by ``growth`` (radius and height):
    the current image and DSM re-rendered from a plan without the night's changes."""
    from dataclasses import replace

    from detector.synth.canvas import make_textures
    from detector.synth.dsm import render_dsm
    from detector.synth.layout import build_plan
    from detector.synth.look import epoch_looks
    from detector.synth.render import render_epoch

    scene = generate_scene(seed, size=SIZE, gsd=GSD, nights=1, dsm=True)
    plan = build_plan(np.random.default_rng([seed, 1]), SIZE * GSD, 1, {})
    for st in plan.structures:
        if st.born >= 1:
            st.born = 99
        st.died = None
    looks = epoch_looks(np.random.default_rng([seed, 2]), 2, 3.0)
    look = replace(looks[1], veg_growth=growth)
    tex = make_textures(np.random.default_rng([seed, 3]), SIZE, GSD)
    scene.epochs[1] = render_epoch(plan, 1, look, tex, SIZE, GSD, seed)
    scene.dsms[1] = render_dsm(plan, 1, look, SIZE, GSD, seed)
    folder = tmp_path / f"unchanged{seed}"
    write_scene(scene, folder)
    return folder, scene


def test_unchanged_scene_with_tree_growth_gives_no_candidate(tmp_path):
    folder, scene = _unchanged(
        tmp_path, 13, growth=1.3
    )  # a season of growth: crowns 30 % wider and taller
    grown = scene.dsms[1] - scene.dsms[0]
    assert np.percentile(grown, 99.5) > 3  # crowns grew by more than a storey over many pixels
    gdf = _run(tmp_path, folder, "out")
    assert len(gdf) == 0, gdf[["class", "height_gain_m", "area_m2"]]
    # it is the greenness test that rejects the growth: without it the crowns would be candidates
    model = make_contract_model(tmp_path / "m.onnx", channels=6, imgsz=512, gsd=GSD, overlap=128)
    cfg = RunConfig(
        baseline=folder / "baseline.tif",
        current=folder / "current.tif",
        out=tmp_path / "nogreen",
        model=model,
        workers=1,
        progress=False,
        baseline_dsm=folder / "dsm_baseline.tif",
        current_dsm=folder / "dsm_current.tif",
        height={"max_greenness": 1.0},
    )
    assert len(gpd.read_file(run_pipeline(cfg).candidates_path, layer="candidates")) > 0
