"""Bi-temporal test pairs made from real imagery: erase labelled buildings from a copy of the
image (the "baseline") so that they appear as new in the original (the "current")."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def erase_buildings_pair(image_path: Path, labels_path: Path, out_dir: Path, every: int = 3, dilate_m: float = 1.5):
    """Write ``baseline.tif`` (every ``every``-th labelled building inpainted away) and ``current.tif``.

    Returns (baseline path, current path, GeoDataFrame of erased buildings, GeoDataFrame of kept ones).
    """
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = gpd.read_file(labels_path)
    with rasterio.open(image_path) as src:
        profile = src.profile.copy()
        data = src.read()
        labels = labels.to_crs(src.crs)
        res = src.res[0]
        transform = src.transform
    order = labels.assign(_y=labels.centroid.y, _x=labels.centroid.x).sort_values(["_y", "_x"])
    erased = order.iloc[::every]
    kept = order.drop(index=erased.index)
    mask = rasterize(((g.buffer(dilate_m), 1) for g in erased.geometry), out_shape=data.shape[1:],
                     transform=transform, fill=0, dtype="uint8")
    baseline = np.empty_like(data)
    radius = max(3, int(round(3 / res)))
    for b in range(data.shape[0]):
        baseline[b] = cv2.inpaint(data[b], mask, radius, cv2.INPAINT_TELEA)
    profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    base_path, cur_path = out_dir / "baseline.tif", out_dir / "current.tif"
    with rasterio.open(base_path, "w", **profile) as dst:
        dst.write(baseline)
    with rasterio.open(cur_path, "w", **profile) as dst:
        dst.write(data)
    return base_path, cur_path, erased, kept
