"""Bring an orthomosaic made by another tool (OpenDroneMap, DJI Terra, Pix4D, ...) into the
baseline's grid, validated, so that ``buildwatch run --current`` can take it.

The output uses the baseline's CRS and pixel size, aligned to the baseline's pixel grid, and
covers the part of the baseline the mosaic covers; RGB uint8 with an internal mask, as a COG.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.errors import InputError
from detector.flight.ortho import _write_cog, open_baseline

log = logging.getLogger("buildwatch.ingest")


@dataclass
class IngestReport:
    """What was checked and written."""

    out: Path
    source_crs: str
    source_gsd_m: float
    baseline_gsd_m: float
    coverage: float  # fraction of the baseline's area covered by valid mosaic pixels
    width: int
    height: int
    warnings: list[str] = field(default_factory=list)


def _gsd_m(crs, transform, lat: float) -> float:
    """Pixel size in metres (geographic CRSs: at latitude ``lat``)."""
    if crs.is_geographic:
        return abs(transform.a) * 111_320.0 * math.cos(math.radians(lat))
    return abs(transform.a) * (crs.linear_units_factor[1] if crs.is_projected else 1.0)


def _rgb_bands(src) -> list[int]:
    """Band indexes holding RGB (skipping alpha), or raise if there are not three colour bands."""
    from rasterio.enums import ColorInterp

    colour = [i + 1 for i, c in enumerate(src.colorinterp) if c not in (ColorInterp.alpha, ColorInterp.undefined)]
    if src.count >= 3:
        by_name = {c: i + 1 for i, c in enumerate(src.colorinterp)}
        if all(c in by_name for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
            return [by_name[ColorInterp.red], by_name[ColorInterp.green], by_name[ColorInterp.blue]]
        return [1, 2, 3]
    raise InputError(f"{src.name}: has {src.count} band(s) ({len(colour)} colour); an orthomosaic needs RGB "
                     f"(3 bands, optionally + alpha)")


def ingest(mosaic: str | Path, baseline: str | Path, out: str | Path, min_coverage: float = 0.01,
           max_gsd_ratio: float = 4.0, compress: str = "deflate") -> IngestReport:
    """Reproject and resample an external orthomosaic onto the baseline's grid.

    Parameters
    ----------
    mosaic : path
        The orthomosaic (GeoTIFF/COG; any CRS; 3+ bands; uint8/uint16; nodata, alpha or mask).
    baseline : path
        The reference orthomosaic whose CRS and pixel grid the output takes.
    out : path
        Output COG (written atomically).
    min_coverage : float
        Refuse a mosaic covering less than this fraction of the baseline.
    max_gsd_ratio : float
        Warn when the mosaic is this many times coarser than the baseline.

    Returns
    -------
    IngestReport

    Raises
    ------
    InputError
        Missing/unreadable file, no CRS, too few bands, no overlap, too little coverage.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import transform_bounds

    mosaic, out = Path(mosaic), Path(out)
    base = open_baseline(baseline)
    if not mosaic.exists():
        raise InputError(f"{mosaic}: mosaic not found; check the path")
    if not out.parent.exists():
        raise InputError(f"{out}: output folder does not exist")
    try:
        src = rasterio.open(mosaic)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{mosaic}: not a readable raster ({str(exc).splitlines()[0][:120]})") from None
    warnings: list[str] = []
    with src:
        if src.crs is None:
            raise InputError(f"{mosaic}: has no CRS (not georeferenced); export it as a GeoTIFF with a CRS, "
                             f"or assign one with gdal_edit.py -a_srs")
        bands = _rgb_bands(src)
        if src.dtypes[0] not in ("uint8", "uint16"):
            raise InputError(f"{mosaic}: pixel type {src.dtypes[0]} is not an image (need uint8 or uint16 RGB)")
        lon0, lat0, lon1, lat1 = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
        src_gsd = _gsd_m(src.crs, src.transform, (lat0 + lat1) / 2)
        base_gsd = _gsd_m(base.grid.crs, base.grid.transform, (lat0 + lat1) / 2)
        in_base = transform_bounds(src.crs, base.grid.crs, *src.bounds, densify_pts=21)
        grid = base.grid.sub_grid(in_base)
        if grid is None:
            raise InputError(f"{mosaic}: does not overlap the baseline {base.path.name}; check that both show the same site")
        if src_gsd > max_gsd_ratio * base_gsd:
            warnings.append(f"mosaic GSD {src_gsd:.3f} m is {src_gsd / base_gsd:.1f}x coarser than the baseline's "
                            f"{base_gsd:.3f} m; small structures will be missed")
        resampling = Resampling.average if src_gsd < base_gsd / 1.5 else Resampling.bilinear
        with WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                       resampling=resampling) as vrt:
            profile = dict(driver="GTiff", width=grid.width, height=grid.height, count=3, dtype="uint8", crs=grid.crs,
                           transform=grid.transform, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                           photometric="RGB", bigtiff="IF_SAFER")
            valid_px = 0
            scale = None
            if src.dtypes[0] == "uint16":
                scale = _uint16_scale(src, bands)
            with tempfile.TemporaryDirectory(prefix=".ingest-", dir=out.parent) as tmpdir:
                work = Path(tmpdir) / "current.tif"
                with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(work, "w", **profile) as dst:
                    for _, window in dst.block_windows(1):
                        data = vrt.read(bands, window=window)
                        mask = vrt.read_masks(1, window=window)
                        if scale is not None:
                            data = np.clip(data.astype(np.float32) * scale, 0, 255).astype(np.uint8)
                        valid_px += int(np.count_nonzero(mask))
                        dst.write(data.astype(np.uint8), window=window)
                        dst.write_mask(mask, window=window)
                    coverage = valid_px / float(base.grid.width * base.grid.height)
                    if valid_px == 0:
                        raise InputError(f"{mosaic}: has no valid pixels over the baseline {base.path.name} (all nodata there)")
                    if coverage < min_coverage:
                        raise InputError(f"{mosaic}: covers only {coverage:.2%} of the baseline (< {min_coverage:.0%}); "
                                         f"check that both show the same site")
                    dst.update_tags(TIFFTAG_SOFTWARE="buildwatch ingest", buildwatch_ingest=json.dumps(
                        {"source": str(mosaic), "source_crs": src.crs.to_string(), "source_gsd_m": round(src_gsd, 4),
                         "coverage": round(coverage, 4)}))
                    date = src.tags().get("TIFFTAG_DATETIME")
                    if date:
                        dst.update_tags(TIFFTAG_DATETIME=date)
                with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                    _write_cog(work, out, compress)
    for w in warnings:
        log.warning("%s: %s", mosaic.name, w)
    return IngestReport(out=out, source_crs=src.crs.to_string(), source_gsd_m=src_gsd, baseline_gsd_m=base_gsd,
                        coverage=coverage, width=grid.width, height=grid.height, warnings=warnings)


def _uint16_scale(src, bands: list[int]) -> float:
    """Factor mapping a uint16 mosaic to uint8 (its 99.5th percentile -> 255), from an overview-sized read."""
    factor = max(1, int(max(src.width, src.height) / 1024))
    data = src.read(bands, out_shape=(len(bands), max(1, src.height // factor), max(1, src.width // factor)), masked=True)
    values = data.compressed()
    hi = float(np.percentile(values, 99.5)) if values.size else 255.0
    return 255.0 / max(hi, 1.0)
