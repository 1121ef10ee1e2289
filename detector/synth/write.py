"""Write a scene to disk: GeoTIFF epochs, GeoJSON truth and footprints, and ``scene.json``.

rasterio and pyproj are imported inside the functions, so planning and rendering work on a
machine without GDAL (the training machine).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np

from detector.fileio import atomic_path, atomic_write_bytes
from detector.synth.geometry import is_ccw, polygon_area
from detector.synth.types import Scene

EPOCH_TIME = "10:00:00"  # local time written into TIFFTAG_DATETIME
DEFAULT_CRS = "EPSG:4547"
DEFAULT_CENTER_LONLAT = (114.25, 22.72)


def scene_transform(
    size: int, gsd: float, crs: str = DEFAULT_CRS, center_lonlat=DEFAULT_CENTER_LONLAT
):
    """The affine geotransform of a scene centred on ``center_lonlat`` in ``crs``.

    Projected CRS: square pixels of ``gsd`` grid units (metres). Geographic CRS (e.g.
    EPSG:4326): pixel width / height in degrees chosen so that the ground size at the centre
    latitude is ``gsd`` metres; axes are (lon, lat).

    Parameters
    ----------
    size : int
        Image side in pixels.
    gsd : float
        Metres per pixel.
    crs : str
        Anything pyproj accepts (``"EPSG:4547"``); metric projected or geographic.
    center_lonlat : tuple of float
        Scene centre, WGS84 degrees.

    Returns
    -------
    rasterio.Affine
    """
    from pyproj import CRS, Geod, Transformer
    from rasterio.transform import Affine

    from detector.errors import InputError

    try:
        crs_obj = CRS.from_user_input(crs)
    except Exception:  # noqa: BLE001 - pyproj raises several types
        raise InputError(
            f"--crs {crs}: unknown coordinate reference system; use e.g. EPSG:4547"
        ) from None
    lon, lat = center_lonlat
    half = size * gsd / 2
    if crs_obj.is_geographic:
        geod = Geod(ellps="WGS84")
        m_per_deg_lon = geod.inv(lon - 0.005, lat, lon + 0.005, lat)[2] / 0.01
        m_per_deg_lat = geod.inv(lon, lat - 0.005, lon, lat + 0.005)[2] / 0.01
        dlon, dlat = gsd / m_per_deg_lon, gsd / m_per_deg_lat
        return Affine(dlon, 0, lon - size * dlon / 2, 0, -dlat, lat + size * dlat / 2)
    unit = crs_obj.axis_info[0].unit_name if crs_obj.axis_info else ""
    if unit not in ("metre", "meter"):
        raise InputError(
            f"--crs {crs}: axis unit is '{unit}', need a metric projected CRS or EPSG:4326"
        )
    x, y = Transformer.from_crs("EPSG:4326", crs_obj, always_xy=True).transform(lon, lat)
    return Affine(gsd, 0, x - half, 0, -gsd, y + half)


def _write_geotiff(path: Path, image: np.ndarray, transform, crs: str, when: date) -> None:
    """A tiled JPEG-in-TIFF (YCbCr) with overviews, dated by ``TIFFTAG_DATETIME``."""
    import rasterio
    from rasterio.enums import Resampling

    profile = dict(
        driver="GTiff",
        width=image.shape[1],
        height=image.shape[0],
        count=3,
        dtype="uint8",
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="JPEG",
        photometric="YCBCR",
        jpeg_quality=90,
        interleave="pixel",
    )
    with atomic_path(path, suffix=".tif") as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(np.moveaxis(image, 2, 0))
            dst.update_tags(
                TIFFTAG_DATETIME=f"{when:%Y:%m:%d} {EPOCH_TIME}",
                TIFFTAG_SOFTWARE="buildwatch synth",
            )
            factors = [f for f in (2, 4, 8, 16) if image.shape[0] // f >= 128]
            if factors:
                dst.build_overviews(factors, Resampling.average)


def _write_dsm(path: Path, dsm: np.ndarray, transform, crs: str, when: date) -> None:
    """A tiled float32 DSM GeoTIFF (metres, nodata -9999) with overviews, dated like its epoch."""
    import rasterio
    from rasterio.enums import Resampling

    profile = dict(
        driver="GTiff",
        width=dsm.shape[1],
        height=dsm.shape[0],
        count=1,
        dtype="float32",
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        predictor=3,
        nodata=-9999.0,
    )
    with atomic_path(path, suffix=".tif") as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(dsm.astype(np.float32), 1)
            dst.units = ("metre",)
            dst.update_tags(
                TIFFTAG_DATETIME=f"{when:%Y:%m:%d} {EPOCH_TIME}",
                TIFFTAG_SOFTWARE="buildwatch synth",
            )
            factors = [f for f in (2, 4, 8, 16) if dsm.shape[0] // f >= 128]
            if factors:
                dst.build_overviews(factors, Resampling.average)


def _geojson_bytes(
    features: list[tuple[np.ndarray, dict]], transform, crs: str, gsd: float
) -> bytes:
    """A compact GeoJSON FeatureCollection of pixel polygons mapped through ``transform``."""
    from pyproj import CRS

    crs_obj = CRS.from_user_input(crs)
    geographic = crs_obj.is_geographic
    ndigits = 9 if geographic else 3
    out = []
    for poly, props in features:
        xs = transform.a * poly[:, 0] + transform.b * poly[:, 1] + transform.c
        ys = transform.d * poly[:, 0] + transform.e * poly[:, 1] + transform.f
        ring = [[round(float(x), ndigits), round(float(y), ndigits)] for x, y in zip(xs, ys)]
        if not is_ccw(np.array(ring)):  # RFC 7946: exterior ring counter-clockwise
            ring = ring[::-1]
        ring.append(ring[0])
        props = dict(props, area_m2=round(polygon_area(poly) * gsd * gsd, 2))
        out.append(
            {
                "type": "Feature",
                "properties": props,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    epsg = crs_obj.to_epsg()
    name = (
        "urn:ogc:def:crs:OGC:1.3:CRS84"
        if geographic and epsg == 4326
        else f"urn:ogc:def:crs:EPSG::{epsg}"
    )
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": name}},
        "features": out,
    }
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def write_scene(
    scene: Scene, outdir: Path, crs: str = DEFAULT_CRS, center_lonlat=DEFAULT_CENTER_LONLAT
) -> dict:
    """Write a scene as GeoTIFFs + GeoJSON into ``outdir`` (created if needed).

    Files: ``baseline.tif`` / ``current.tif`` (epochs 0 / 1), ``truth.geojson`` (changes
    0 -> 1; properties ``class``, ``structure_id``, ``area_m2``), ``footprints_baseline.geojson``,
    ``footprints_current.geojson`` and ``scene.json`` (seed, shifts, sun, dates). With more than
    one night also ``epoch_00.tif`` ..., ``truth_01.geojson`` ... (t-1 -> t) and
    ``footprints_00.geojson`` .... Every epoch shares the baseline's georeference; its
    ``TIFFTAG_DATETIME`` is ``2026:05:01 10:00:00`` + epoch days. A scene with DSMs
    (``Scene.dsms``) also gets ``dsm_baseline.tif`` / ``dsm_current.tif`` (float32 metres; with
    more than one night ``dsm_00.tif`` ...) and their survey offsets in ``scene.json``.

    Parameters
    ----------
    scene : Scene
    outdir : Path
    crs : str
        CRS of the written rasters and vectors (see :func:`scene_transform`).
    center_lonlat : tuple of float
        Scene centre, WGS84 degrees.

    Returns
    -------
    dict
        Name (e.g. ``"baseline"``, ``"truth_01"``) -> written Path.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    transform = scene_transform(scene.size, scene.gsd, crs, center_lonlat)
    paths: dict[str, Path] = {}
    nights = len(scene.changes)

    def tif(name: str, e: int) -> None:
        paths[name] = outdir / f"{name}.tif"
        _write_geotiff(paths[name], scene.epochs[e], transform, crs, scene.dates[e])

    def vec(name: str, features) -> None:
        paths[name] = outdir / f"{name}.geojson"
        atomic_write_bytes(paths[name], _geojson_bytes(features, transform, crs, scene.gsd))

    def truth_features(t: int):
        return [
            (c.polygon, {"class": c.cls, "structure_id": c.structure_id}) for c in scene.changes[t]
        ]

    def footprint_features(e: int):
        return [
            (f.polygon, {"kind": f.kind, "structure_id": f.structure_id})
            for f in scene.footprints[e]
        ]

    tif("baseline", 0)
    tif("current", 1)
    vec("truth", truth_features(0))
    vec("footprints_baseline", footprint_features(0))
    vec("footprints_current", footprint_features(1))

    def dsm(name: str, e: int) -> None:
        paths[name] = outdir / f"{name}.tif"
        _write_dsm(paths[name], scene.dsms[e], transform, crs, scene.dates[e])

    if scene.dsms:
        dsm("dsm_baseline", 0)
        dsm("dsm_current", 1)
    if nights >= 2:
        for e in range(nights + 1):
            tif(f"epoch_{e:02d}", e)
            if scene.dsms:
                dsm(f"dsm_{e:02d}", e)
            vec(f"footprints_{e:02d}", footprint_features(e))
            if e:
                vec(f"truth_{e:02d}", truth_features(e - 1))
    meta = {
        "seed": scene.seed,
        "size": scene.size,
        "gsd": scene.gsd,
        "crs": crs,
        "center_lonlat": list(center_lonlat),
        "nights": nights,
        "dates": [d.isoformat() for d in scene.dates],
        "shifts_px": [[round(dx, 4), round(dy, 4)] for dx, dy in scene.shifts],
        "sun_azimuth_elevation_deg": [[round(a, 2), round(b, 2)] for a, b in scene.sun],
        "changes_per_night": [len(c) for c in scene.changes],
        "demolished_structure_ids": [[f.structure_id for f in d] for d in scene.demolished],
        "frame": "all polygons in the baseline (epoch 0) pixel frame; epoch e content is shifted by shifts_px[e]",
    }
    if scene.dsms:
        from detector.synth.dsm import survey_offset

        meta["dsm_survey_offsets_m"] = [
            round(survey_offset(scene.seed, e), 4) for e in range(nights + 1)
        ]
    paths["scene"] = outdir / "scene.json"
    atomic_write_bytes(paths["scene"], (json.dumps(meta, indent=1) + "\n").encode())
    return paths
