"""Bi-temporal evaluation pairs made from real single-date imagery.

Real change pairs with labels are rare and mostly research-only; these make exact-truth pairs
from real georeferenced imagery and its building footprints:

- :func:`erase_buildings_pair`: every n-th labelled building inpainted away in a copy (the
  "baseline"), so it appears as new in the original (the "current");
- :func:`flown_twice`: the same ground "flown again" -- exposure, white balance, resampling,
  JPEG and a sub-metre warp -- where any candidate is a false alarm;
- :func:`banepa_val_mosaic`: the OpenAerialMap Banepa chips held out of training (rows from
  ``training.sources.BANEPA_VAL_ROWS_FROM``) as one GeoTIFF with their OSM footprints.

Used by :mod:`training.realbench` (``scripts/bench_real.py``) and the real-data tests; evaluation only.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np

from detector.errors import InputError
from detector.fileio import atomic_path

BANEPA_VAL_ROWS_FROM = 220247  # chips with this tile row or more are the held-out southern quarter


def erase_buildings_pair(
    image_path: Path, labels_path, out_dir: Path, every: int = 3, dilate_m: float = 1.5
):
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
    labels = (
        labels_path if isinstance(labels_path, gpd.GeoDataFrame) else gpd.read_file(labels_path)
    )
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
    mask = rasterize(
        ((g.buffer(dilate), 1) for g in erased.geometry),
        out_shape=data.shape[1:],
        transform=transform,
        fill=0,
        dtype="uint8",
    )
    baseline = np.empty_like(data)
    radius = max(3, int(round(3 / gsd_m)))
    for b in range(data.shape[0]):
        baseline[b] = cv2.inpaint(data[b], mask, radius, cv2.INPAINT_TELEA)
    profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    base_path, cur_path = out_dir / "baseline.tif", out_dir / "current.tif"
    _write_tif(base_path, baseline, profile)
    _write_tif(cur_path, data, profile)
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
    ok, jpg = cv2.imencode(
        ".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 85))]
    )
    img = cv2.imdecode(jpg, cv2.IMREAD_COLOR)[:, :, ::-1]
    profile.update(
        count=3, dtype="uint8", tiled=True, blockxsize=256, blockysize=256, compress="deflate"
    )
    profile.pop("nodata", None)
    _write_tif(out_path, np.moveaxis(img, -1, 0), profile)
    return out_path


def _write_tif(path: Path, data: np.ndarray, profile: dict) -> None:
    """Write a (bands, H, W) array as a GeoTIFF, atomically (:func:`detector.fileio.atomic_path`)."""
    import rasterio

    with atomic_path(path, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)


def banepa_val_mosaic(data_root: Path, out_path: Path):
    """The held-out OpenAerialMap Banepa chips as one EPSG:4326 GeoTIFF, and their OSM footprints.

    Returns (GeoTIFF path, GeoDataFrame of the footprints inside it, in EPSG:4326).
    """
    import geopandas as gpd
    from rasterio.merge import merge
    from rasterio.transform import array_bounds
    from shapely.geometry import box

    folder = Path(data_root) / "oam_banepa_fair" / "train"
    chips = [
        c
        for c in sorted((folder / "oam").glob("OAM-*-*-19.tif"))
        if int(c.stem.split("-")[2]) >= BANEPA_VAL_ROWS_FROM
    ]
    footprints = sorted((folder / "osm").glob("*.geojson"))
    if not chips or not footprints:
        raise InputError(f"{folder}: no held-out OAM-*-19.tif chips or OSM footprints found")
    # the chips are web-mercator tiles resampled to EPSG:4326, so their pixel heights differ in the
    # 5th digit; merge puts every chip on the first chip's pixel grid (each lands within 0.02 px of a
    # whole-pixel offset, so no chip is resampled) and a later chip wins where two meet, as before
    mosaic, transform = merge(chips, indexes=[1, 2, 3], method="last")
    height, width = mosaic.shape[1:]
    _write_tif(
        out_path,
        mosaic,
        dict(
            driver="GTiff",
            width=width,
            height=height,
            count=3,
            dtype="uint8",
            crs="EPSG:4326",
            transform=transform,
            nodata=0,
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
        ),
    )
    extent = box(*array_bounds(height, width, transform))
    fp = gpd.read_file(footprints[0]).to_crs("EPSG:4326")
    fp = fp[fp.geometry.within(extent)]
    return out_path, fp[["geometry"]].reset_index(drop=True)
