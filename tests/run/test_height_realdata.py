"""Height change on a real DSM: the 2 m lidar DSM of Alexandria, Virginia (shared data), with a
+3 m storey added to 10 of its buildings, through ``run_pipeline``.

The imagery is the same texture in both epochs and the model a contract model with no
detections, so every candidate comes from the height step: all 10 storeys must come back as
``extension`` candidates with their gain, and nothing else.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest

from detector.config import RunConfig
from detector.run import run_pipeline
from pipeline_util import make_contract_model, textured_image, write_geotiff

pytestmark = pytest.mark.slow

STOREY_M = 3.0
DATUM_OFFSET_M = 0.8  # the current survey sits 0.8 m higher everywhere (a datum / bias difference)


def _storey_pair(shared_data, tmp_path, n=10):
    """(baseline DSM, current DSM with +3 m on ``n`` buildings, their polygons in EPSG:26918, grid)."""
    import rasterio
    from rasterio.features import geometry_mask

    folder = shared_data / "opengeos_elevation_buildings"
    with rasterio.open(folder / "dsm.tif") as src:
        dsm = src.read(1)
        profile = src.profile
        transform, crs, shape = src.transform, src.crs, src.shape
    bld = gpd.read_file(folder / "buildings.geojson").to_crs(crs)
    bld = bld[(bld.area >= 150) & (bld.area <= 3000)].sort_values("SQMETERS").reset_index(drop=True)
    picked = []
    for geom in bld.geometry[:: max(1, len(bld) // 20)]:  # spread over sizes, apart from each other
        if all(geom.distance(p) > 12 for p in picked):
            picked.append(geom)
        if len(picked) == n:
            break
    assert len(picked) == n
    valid = dsm != profile["nodata"]
    cur = dsm.copy()
    rng = np.random.default_rng(5)
    cur[valid] += DATUM_OFFSET_M + rng.normal(0, 0.05, int(valid.sum())).astype(np.float32)
    for geom in picked:
        inside = ~geometry_mask([geom], shape, transform) & valid
        cur[inside] += STOREY_M
    b_path = folder / "dsm.tif"
    c_path = tmp_path / "dsm_current.tif"
    with rasterio.open(c_path, "w", **profile) as dst:
        dst.write(cur, 1)
    return b_path, c_path, picked, (transform, crs, shape)


def _imagery(tmp_path, grid):
    """The same 1 m grey texture over the DSM's extent for both epochs (grey: no region looks like vegetation)."""
    from affine import Affine

    transform, crs, (h, w) = grid
    t = Affine(1.0, 0, transform.c, 0, -1.0, transform.f)
    rgb = np.repeat(textured_image(2 * h, 2 * w, seed=4)[..., :1], 3, axis=2)
    base = write_geotiff(tmp_path / "b.tif", rgb, crs.to_string(), t, date="2026:05:01 00:00:00")
    cur = write_geotiff(tmp_path / "c.tif", rgb, crs.to_string(), t, date="2026:06:01 00:00:00")
    return base, cur


def test_real_lidar_dsm_storeys_on_ten_buildings(shared_data, tmp_path):
    b_dsm, c_dsm, storeys, grid = _storey_pair(shared_data, tmp_path)
    base, cur = _imagery(tmp_path, grid)
    model = make_contract_model(tmp_path / "m.onnx", channels=6, imgsz=256, gsd=1.0, overlap=64)
    cfg = RunConfig(
        baseline=base,
        current=cur,
        out=tmp_path / "out",
        model=model,
        workers=1,
        progress=False,
        baseline_dsm=b_dsm,
        current_dsm=c_dsm,
    )
    summary = run_pipeline(cfg)
    gdf = gpd.read_file(summary.candidates_path, layer="candidates").to_crs(grid[1])
    found = [any(g.intersection(s).area > 0.3 * g.area for s in storeys) for g in gdf.geometry]
    hit = [any(g.intersection(s).area > 0.3 * s.area for g in gdf.geometry) for s in storeys]
    assert sum(hit) == 10, f"found {sum(hit)} of 10 storeys"
    assert all(found) and len(gdf) == 10, gdf[["class", "height_gain_m", "area_m2"]]
    assert set(gdf["class"]) == {"extension"}
    assert set(gdf["tags"]) == {"height_only"}
    assert np.allclose(gdf["height_gain_m"], STOREY_M, atol=0.25)
    assert (gdf["baseline_height_m"] > 2).all()
    assert np.allclose(gdf["current_height_m"] - gdf["baseline_height_m"], STOREY_M, atol=0.5)
