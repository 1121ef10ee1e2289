"""Bring an orthomosaic made by another tool (OpenDroneMap, DJI Terra, Pix4D, ...) into the
baseline's grid, validated, so that ``buildwatch run --current`` can take it; or that tool's DSM,
for ``--baseline-dsm`` / ``--current-dsm``.

The output uses the baseline's CRS and pixel size, aligned to the baseline's pixel grid, and
covers the part of the baseline the mosaic covers, as a COG: RGB uint8 with an internal mask, or
for a DSM float32 heights in metres with nodata :data:`DSM_NODATA`.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.errors import InputError
from detector.flight.baseline import open_baseline
from detector.geo.crs import source_gsd_m
from detector.geo.grid import warp_onto
from detector.geo.location import as_location
from detector.geo.raster import (
    apply_stretch,
    damaged_block_error,
    estimate_stretch,
    open_raster,
    source_window,
    write_cog,
)

log = logging.getLogger(__name__)

DSM_NODATA = -9999.0  # nodata of an ingested DSM (float32, metres)
STALE_TEMP_S = (
    24 * 3600
)  # temporary files/folders older than this beside the output are a killed run's


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


def _check_arguments(
    mosaic, baseline, out: Path, dsm: bool, units: str, min_coverage: float
) -> None:
    """What the arguments mean together, before any file is opened or made: an output that is not
    an input (ingest would rewrite its source), a file name, a height unit only for a DSM, a
    coverage that is a fraction."""
    from detector.errors import ConfigError
    from detector.fileio import same_file
    from detector.geo.location import is_remote

    if out.name in ("", ".", ".."):
        raise ConfigError(
            f"--out '{out}' is not a file name; give the output COG, e.g. current.tif"
        )
    for what, source in (("MOSAIC", mosaic), ("--baseline", baseline)):
        if not is_remote(source) and same_file(source, out):
            raise ConfigError(
                f"{out}: --out is the input {what} ({source}); ingest would overwrite it: "
                "give another output file"
            )
    if not 0 <= min_coverage <= 1:  # also NaN
        raise ConfigError(
            f"--min-coverage {min_coverage}: must be a fraction between 0 and 1 (0.01 = 1 %)"
        )
    if units != "auto" and not dsm:
        raise ConfigError(
            f"--units {units} is for a DSM's heights and needs --dsm; drop --units for an orthomosaic"
        )


def ingest(
    mosaic: str | Path,
    baseline: str | Path,
    out: str | Path,
    min_coverage: float = 0.01,
    max_gsd_ratio: float = 4.0,
    compress: str = "deflate",
    dsm: bool = False,
    units: str = "auto",
) -> IngestReport:
    """Reproject and resample an external orthomosaic (or DSM) onto the baseline's grid.

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
    dsm : bool
        ``mosaic`` is a DSM (heights in band 1, any numeric type): written as float32 metres.
    units : str
        The DSM's height unit (``metre``, ``foot``, ``us_survey_foot``); ``auto``: the one the file
        declares, else metres.

    Returns
    -------
    IngestReport

    Raises
    ------
    InputError
        Missing/unreadable file, no CRS, too few bands, no overlap, too little coverage.
    """
    import rasterio
    from rasterio.errors import RasterioIOError
    from rasterio.warp import transform_bounds
    from rasterio.windows import bounds as window_bounds

    from detector.fileio import check_output_folder, clean_stale_temps, made_folder

    mosaic, out = as_location(mosaic), Path(out)  # the mosaic may be a URL (s3://, https://)
    _check_arguments(mosaic, baseline, out, dsm, units, min_coverage)
    base = open_baseline(baseline)
    # a bare file name ('current_dsm.tif', the README's form) is written in the working folder
    check_output_folder(
        out.absolute().parent, files=(out.name,)
    )  # a file in the way, read-only, ... before the work

    # work folders of a killed ingest/ortho beside the output (a live one is younger than this)
    if out.absolute().parent.is_dir():
        clean_stale_temps(out.absolute().parent, older_than_s=STALE_TEMP_S)
    info = open_raster(mosaic, "DSM" if dsm else "mosaic", allow_pan=dsm, elevation=dsm)
    bands = list(info.bands)
    if dsm:
        from detector.geo.dsm import unit_scale

        scale = unit_scale(info, units)
    warnings: list[str] = []
    with rasterio.open(mosaic) as src:
        src_gsd = source_gsd_m(src.crs, src.transform, src.width, src.height)
        base_gsd = source_gsd_m(
            base.grid.crs, base.grid.transform, base.grid.width, base.grid.height
        )
        in_base = transform_bounds(src.crs, base.grid.crs, *info.bounds, densify_pts=21)
        grid = base.grid.sub_grid(in_base)
        if grid is None:
            raise InputError(
                f"{mosaic}: does not overlap the baseline {base.path.name}; check that both show the same site"
            )
        if src_gsd > max_gsd_ratio * base_gsd:
            warnings.append(
                f"mosaic GSD {src_gsd:.3f} m is {src_gsd / base_gsd:.1f}x coarser than the baseline's "
                f"{base_gsd:.3f} m; small structures will be missed"
            )
        resampling = "average" if src_gsd < base_gsd / 1.5 else "bilinear"
        with warp_onto(src, grid.crs, grid.transform, grid.width, grid.height, resampling) as vrt:
            profile = dict(
                driver="GTiff",
                width=grid.width,
                height=grid.height,
                count=3,
                dtype="uint8",
                crs=grid.crs,
                transform=grid.transform,
                tiled=True,
                blockxsize=256,
                blockysize=256,
                compress="deflate",
                photometric="RGB",
                bigtiff="IF_SAFER",
            )
            if dsm:
                profile.update(count=1, dtype="float32", nodata=DSM_NODATA, predictor=3)
                del profile["photometric"]
            valid_px = 0
            stretch = estimate_stretch(src, bands) if info.dtype != "uint8" and not dsm else None
            # like run --out: a new night's folder is made (and removed again if ingest fails)
            with (
                made_folder(out.parent) as folder,
                tempfile.TemporaryDirectory(prefix=".ingest-", dir=folder) as tmpdir,
            ):
                work = Path(tmpdir) / "current.tif"
                with (
                    rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
                    rasterio.open(work, "w", **profile) as dst,
                ):
                    if dsm:
                        dst.units = ("metre",)
                    for _, window in dst.block_windows(1):
                        try:
                            data = vrt.read(bands[:1] if dsm else bands, window=window)
                            mask = vrt.read_masks(1, window=window)
                        except RasterioIOError as exc:  # a block that does not decode
                            raise damaged_block_error(
                                mosaic,
                                "DSM" if dsm else "mosaic",
                                src,
                                exc,
                                source_window(src, window_bounds(window, grid.transform), grid.crs),
                            ) from None
                        valid_px += int(np.count_nonzero(mask))
                        if dsm:  # heights in metres; nodata where the source has none
                            heights = data.astype(np.float32) * np.float32(scale)
                            heights[:, mask == 0] = DSM_NODATA
                            dst.write(heights, window=window)
                        else:
                            dst.write(apply_stretch(data, stretch), window=window)
                            dst.write_mask(mask, window=window)
                    coverage = valid_px / float(base.grid.width * base.grid.height)
                    if valid_px == 0:
                        raise InputError(
                            f"{mosaic}: has no valid pixels over the baseline {base.path.name} (all nodata there)"
                        )
                    if coverage < min_coverage:
                        raise InputError(
                            f"{mosaic}: covers only {coverage:.2%} of the baseline (< {min_coverage:.0%}); "
                            f"check that both show the same site"
                        )
                    dst.update_tags(
                        TIFFTAG_SOFTWARE="buildwatch ingest",
                        buildwatch_ingest=json.dumps(
                            {
                                "source": str(mosaic),
                                "source_crs": src.crs.to_string(),
                                "source_gsd_m": round(src_gsd, 4),
                                "coverage": round(coverage, 4),
                                **({"kind": "dsm", "metres_per_unit": scale} if dsm else {}),
                            }
                        ),
                    )
                    date = src.tags().get("TIFFTAG_DATETIME")
                    if date:
                        dst.update_tags(TIFFTAG_DATETIME=date)
                write_cog(work, out, compress)
    for w in warnings:
        log.warning("%s: %s", mosaic.name, w)
    return IngestReport(
        out=out,
        source_crs=src.crs.to_string(),
        source_gsd_m=src_gsd,
        baseline_gsd_m=base_gsd,
        coverage=coverage,
        width=grid.width,
        height=grid.height,
        warnings=warnings,
    )
