"""Bi-temporal evaluation pairs made from real single-date imagery.

Real change pairs with labels are rare and mostly research-only; these make exact-truth pairs
from real georeferenced imagery and its building footprints:

- :func:`erase_buildings_pair`: every n-th labelled building inpainted away in a copy (the
  "baseline"), so it appears as new in the original (the "current");
- :func:`flown_twice`: the same ground "flown again" -- exposure, white balance, resampling,
  JPEG and a sub-metre warp -- where any candidate is a false alarm;
- :func:`banepa_val_mosaic`: the OpenAerialMap Banepa chips held out of training (rows from
  ``training.sources.BANEPA_VAL_ROWS_FROM``) as one GeoTIFF with their OSM footprints.

Used by ``scripts/bench_real.py`` and the real-data tests; evaluation only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np

from detector.errors import InputError

BANEPA_VAL_ROWS_FROM = 220247  # chips with this tile row or more are the held-out southern quarter


def erase_buildings_pair(image_path: Path, labels_path, out_dir: Path, every: int = 3, dilate_m: float = 1.5):
    """Write ``baseline.tif`` (every ``every``-th labelled building inpainted away) and ``current.tif``.

    Parameters
    ----------
    image_path : a georeferenced RGB GeoTIFF.
    labels_path : building footprints (any OGR file) or a GeoDataFrame.
    out_dir : folder for the pair.
    every : erase buildings 0, every, 2·every, … in row-major order of their centroids.
    dilate_m : the inpainted region extends this far (metres) around each footprint.

    Returns
    -------
    (baseline path, current path, GeoDataFrame of erased buildings, GeoDataFrame of kept ones),
    the footprints in the raster's CRS.
    """
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = labels_path if isinstance(labels_path, gpd.GeoDataFrame) else gpd.read_file(labels_path)
    from detector.geo.crs import pixel_size_m

    with rasterio.open(image_path) as src:
        profile = src.profile.copy()
        data = src.read()
        labels = labels.to_crs(src.crs)
        res = src.res[0]
        gsd_m = pixel_size_m(src.crs, src.transform, src.width, src.height)[0]
        transform = src.transform
    with warnings.catch_warnings():  # centroids of a geographic CRS: only their order is used
        warnings.simplefilter("ignore", UserWarning)
        order = labels.assign(_y=labels.centroid.y, _x=labels.centroid.x).sort_values(["_y", "_x"])
    order = order.drop(columns=["_y", "_x"])
    erased = order.iloc[::every]
    kept = order.drop(index=erased.index)
    dilate = dilate_m * res / gsd_m  # metres -> CRS units (degrees for a geographic raster)
    mask = rasterize(((g.buffer(dilate), 1) for g in erased.geometry), out_shape=data.shape[1:],
                     transform=transform, fill=0, dtype="uint8")
    baseline = np.empty_like(data)
    radius = max(3, int(round(3 / gsd_m)))
    for b in range(data.shape[0]):
        baseline[b] = cv2.inpaint(data[b], mask, radius, cv2.INPAINT_TELEA)
    profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    base_path, cur_path = out_dir / "baseline.tif", out_dir / "current.tif"
    with rasterio.open(base_path, "w", **profile) as dst:
        dst.write(baseline)
    with rasterio.open(cur_path, "w", **profile) as dst:
        dst.write(data)
    return base_path, cur_path, erased, kept


def flown_twice(image_path: Path, out_path: Path, seed: int = 0, shift_m: float = 0.5) -> Path:
    """The same ground as a second flight: exposure, white balance, resampling, JPEG, a small warp.

    The content is moved by ``shift_m`` metres (random direction) and rotated by up to 0.1°;
    it keeps the source's georeferencing, so registration has to find the move.
    """
    import rasterio

    from detector.geo.crs import pixel_size_m

    rng = np.random.default_rng(seed)
    with rasterio.open(image_path) as src:
        profile, data = src.profile.copy(), src.read([1, 2, 3])
        gx, gy = pixel_size_m(src.crs, src.transform, src.width, src.height)
    img = np.moveaxis(data, 0, -1)
    h, w = img.shape[:2]
    ang = rng.uniform(0, 2 * np.pi)
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), rng.uniform(-0.1, 0.1), 1.0)
    m[:, 2] += (shift_m * np.cos(ang) / gx, shift_m * np.sin(ang) / gy)
    # resampling: down by 1.2-1.6x and back (a slightly different flying height / focus)
    f = rng.uniform(1.2, 1.6)
    small = cv2.resize(img, (max(1, int(w / f)), max(1, int(h / f))), interpolation=cv2.INTER_AREA)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    gain = rng.uniform(0.8, 1.2) * rng.uniform(0.93, 1.07, size=3)  # exposure and white balance
    img = np.clip(img.astype(np.float32) * gain + rng.uniform(-10, 10), 0, 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 85))])
    img = cv2.imdecode(jpg, cv2.IMREAD_COLOR)[:, :, ::-1]
    profile.update(count=3, dtype="uint8", tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    profile.pop("nodata", None)
    with rasterio.open(out_path, "w", **profile) as dst:
        dst.write(np.moveaxis(img, -1, 0))
    return out_path


def banepa_val_mosaic(data_root: Path, out_path: Path):
    """The held-out OpenAerialMap Banepa chips as one EPSG:4326 GeoTIFF, and their OSM footprints.

    Returns (GeoTIFF path, GeoDataFrame of the footprints inside it, in EPSG:4326).
    """
    import geopandas as gpd
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import box

    folder = Path(data_root) / "oam_banepa_fair" / "train"
    chips = [c for c in sorted((folder / "oam").glob("OAM-*-*-19.tif"))
             if int(c.stem.split("-")[2]) >= BANEPA_VAL_ROWS_FROM]
    footprints = sorted((folder / "osm").glob("*.geojson"))
    if not chips or not footprints:
        raise InputError(f"{folder}: no held-out OAM-*-19.tif chips or OSM footprints found")
    infos = []
    for chip in chips:
        with rasterio.open(chip) as ds:
            infos.append((ds.transform, ds.read([1, 2, 3])))
    dlon, dlat = infos[0][0].a, -infos[0][0].e
    lon0, lat0 = min(t.c for t, _ in infos), max(t.f for t, _ in infos)
    width = int(round((max(t.c for t, _ in infos) - lon0) / dlon)) + 512
    height = int(round((lat0 - min(t.f for t, _ in infos)) / dlat)) + 512
    mosaic = np.zeros((3, height, width), np.uint8)
    for t, img in infos:
        x, y = int(round((t.c - lon0) / dlon)), int(round((lat0 - t.f) / dlat))
        mosaic[:, y:y + img.shape[1], x:x + img.shape[2]] = img
    transform = from_origin(lon0, lat0, dlon, dlat)
    with rasterio.open(out_path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=transform, nodata=0, tiled=True, blockxsize=256,
                       blockysize=256, compress="deflate") as dst:
        dst.write(mosaic)
    extent = box(lon0, lat0 - height * dlat, lon0 + width * dlon, lat0)
    fp = gpd.read_file(footprints[0]).to_crs("EPSG:4326")
    fp = fp[fp.geometry.within(extent)]
    return out_path, fp[["geometry"]].reset_index(drop=True)
