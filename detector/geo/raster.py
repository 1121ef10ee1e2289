"""Rasters done one way: open + validate, the one stretch to uint8, COG write, acquisition date.

* :func:`open_raster` validates an input orthomosaic for every role (nightly baseline/current,
  the ortho baseline, a foreign mosaic to ingest) with one set of rules and one wording; the
  role-specific options are whether a single panchromatic band is accepted and whether the
  grid must be north-up.
* :func:`rgb_bands` is the one band rule: red/green/blue by colour interpretation when the
  file labels them, else the first three non-alpha bands, else one band repeated (panchromatic).
* :func:`raster_stretch` / :func:`stretch_from_array` + :func:`apply_stretch` are the one
  stretch of wider pixel types (uint16, ...) to uint8: per band, the ``low``–``high``
  percentiles (1–99 %) of the valid, non-zero pixels are mapped linearly to 0–255; estimated
  once per raster from a decimated read (overviews), so every window of one raster — nightly
  tile, evidence chip, ortho matching window, ingested block — gets the same mapping.
* :func:`open_raster` with ``elevation=True`` validates a DSM (one band of heights, any
  numeric type) with the same checks and wording; :func:`vertical_unit` reads its height unit.
* :func:`write_cog` turns a tiled GeoTIFF into a COG atomically.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np

from detector.errors import InputError
from detector.geo.crs import check_crs
from detector.geo.location import as_location, is_remote

SUPPORTED_DTYPES = ("uint8", "uint16")
STRETCH_LOW, STRETCH_HIGH = 1.0, 99.0  # percentiles mapped to 0 and 255
STRETCH_SAMPLE_SIDE = (
    1024  # the stretch is estimated from a read at most this many pixels on a side
)


@dataclass(frozen=True)
class MosaicInfo:
    """What the run needs to know about one input raster (validated by :func:`open_raster`)."""

    path: Path
    crs_wkt: str
    bounds: tuple[float, float, float, float]  # in its own CRS
    width: int
    height: int
    count: int
    dtype: str
    res: tuple[float, float]
    has_alpha: bool
    acquired: date | None
    transform: object = None  # affine.Affine
    bands: tuple[int, int, int] = (1, 2, 3)  # the band indexes read as R, G, B (see rgb_bands)
    nodata: float | None = None  # the file's nodata value (elevation rasters)
    z_unit: str = ""  # elevation rasters: the height unit the file declares ("" = not declared)

    @property
    def colour_bands(self) -> int:
        return self.count - (1 if self.has_alpha else 0)

    @property
    def is_rgb(self) -> bool:
        return self.colour_bands >= 3


def acquisition_date(tags: dict) -> date | None:
    """The acquisition date in a raster's metadata (``TIFFTAG_DATETIME``, ``ACQUISITIONDATETIME``,
    ``DATE``; EXIF ``YYYY:MM:DD HH:MM:SS`` or ISO forms), or None."""
    raw = tags.get("TIFFTAG_DATETIME") or tags.get("ACQUISITIONDATETIME") or tags.get("DATE")
    if raw:
        text = raw.strip()
        for fmt, n in (
            ("%Y:%m:%d %H:%M:%S", 19),
            ("%Y-%m-%d %H:%M:%S", 19),
            ("%Y-%m-%dT%H:%M:%S", 19),
            ("%Y-%m-%d", 10),
            ("%Y:%m:%d", 10),
        ):
            try:
                return datetime.strptime(text[:n], fmt).date()
            except ValueError:
                continue
    return None


def rgb_bands(colorinterp, count: int) -> tuple[int, int, int] | None:
    """Band indexes (1-based) to read as R, G, B; None when the raster has 2 colour bands or none.

    Parameters
    ----------
    colorinterp : sequence of rasterio.enums.ColorInterp
        The raster's colour interpretation per band.
    count : int
        Number of bands.
    """
    from rasterio.enums import ColorInterp

    interp = list(colorinterp) + [ColorInterp.undefined] * (count - len(colorinterp))
    by_name = {c: i + 1 for i, c in enumerate(interp)}
    if all(c in by_name for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return by_name[ColorInterp.red], by_name[ColorInterp.green], by_name[ColorInterp.blue]
    colour = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
    if len(colour) >= 3:
        return colour[0], colour[1], colour[2]
    if len(colour) == 1:
        return colour[0], colour[0], colour[0]
    return None


def open_raster(
    path: Path | str,
    what: str,
    *,
    allow_pan: bool = True,
    north_up: bool = False,
    elevation: bool = False,
) -> MosaicInfo:
    """Validate an input orthomosaic; raise :class:`InputError` naming the file and the fix.

    Checks: the file exists and is a raster GDAL reads to its end (a decimated read, which uses
    the overviews, and the last full-resolution block, which a truncated COG lacks), it has a
    CRS and a geotransform, uint8 or uint16 pixels, and RGB bands (:func:`rgb_bands`).

    Parameters
    ----------
    path : path
        The GeoTIFF / COG.
    what : str
        How messages name it, e.g. ``"baseline mosaic"``, ``"mosaic"``.
    allow_pan : bool
        Accept a single (panchromatic) band, read as grey RGB. The nightly run does; ``ingest``
        and ``ortho`` need colour.
    north_up : bool
        Refuse rotated or south-up geotransforms (``ortho`` works on the baseline's pixel grid).
    elevation : bool
        A DSM: band 1 holds heights of any numeric pixel type (no RGB rule, no uint8/uint16
        rule); its nodata value and declared height unit (:func:`vertical_unit`) are recorded.

    Returns
    -------
    MosaicInfo

    Raises
    ------
    InputError
        One line: the file, what is wrong, what to do.
    """
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    from detector.fileio import check_regular_file

    path = as_location(path)
    remote = is_remote(path)
    if not remote:
        if not path.exists():
            raise InputError(f"{path}: {what} not found; check the path")
        if path.is_dir():
            raise InputError(f"{path}: {what} is a folder; give a GeoTIFF file")
        check_regular_file(path, what)  # a FIFO would block GDAL's first read forever
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise InputError(
                    f"{path}: {what} has no CRS (not georeferenced); assign one "
                    "(e.g. gdal_edit.py -a_srs EPSG:4547) and rerun"
                )
            t = src.transform
            if t.is_identity:
                raise InputError(f"{path}: {what} has no georeferencing (identity geotransform)")
            check_crs(src.crs, f"{path}: {what}")
            if src.crs.is_geographic:
                left, bottom, right, top = src.bounds
                if not (
                    -180.5 <= min(left, right)
                    and max(left, right) <= 360.5
                    and -90.5 <= min(bottom, top)
                    and max(bottom, top) <= 90.5
                ):
                    raise InputError(
                        f"{path}: {what} is labelled {src.crs.to_string()} (degrees) but its corners "
                        f"({left:.0f}, {top:.0f}) are not longitudes/latitudes: the CRS label is wrong; "
                        "assign the right one (gdal_edit.py -a_srs EPSG:...)"
                    )
            if north_up and (t.b != 0 or t.d != 0 or t.e >= 0):
                raise InputError(f"{path}: {what} is not a north-up grid; warp it first (gdalwarp)")
            dtype = src.dtypes[0]
            if elevation:
                if dtype in ("complex64", "complex128", "complex_int16") or dtype.startswith("c"):
                    raise InputError(
                        f"{path}: {what} has pixel type {dtype}; a DSM holds real heights "
                        "(float32, int16, ...)"
                    )
                if dtype == "uint8" and src.count >= 3:
                    raise InputError(
                        f"{path}: {what} has {src.count} uint8 bands: this is an image, not a DSM "
                        "(heights in one band); give the photogrammetry tool's DSM export"
                    )
            elif dtype not in SUPPORTED_DTYPES:
                raise InputError(
                    f"{path}: {what} has pixel type {dtype}; buildwatch reads uint8 or uint16 imagery"
                )
            has_alpha = ColorInterp.alpha in src.colorinterp
            bands = (1, 1, 1) if elevation else rgb_bands(src.colorinterp, src.count)
            if bands is None or (not allow_pan and bands[0] == bands[1]):
                colour = src.count - (1 if has_alpha else 0)
                pan = " or one panchromatic band" if allow_pan else ""
                raise InputError(
                    f"{path}: {what} has {src.count} band(s) ({colour} colour); needs RGB "
                    f"(3+ bands, optionally + alpha){pan}"
                )
            # Touch the data once: a low-resolution read (overviews) and the last full-resolution
            # block, which is what a truncated file (COGs store overviews first) is missing.
            step = max(1, max(src.width, src.height) // 256)
            src.read(1, out_shape=(max(1, src.height // step), max(1, src.width // step)))
            bh, bw = src.block_shapes[0]
            last = Window(
                max(0, src.width - bw),
                max(0, src.height - bh),
                min(bw, src.width),
                min(bh, src.height),
            )
            src.read(window=last)
            info = MosaicInfo(
                path=path,
                crs_wkt=src.crs.to_wkt(),
                bounds=footprint_bounds(t, src.width, src.height),
                width=src.width,
                height=src.height,
                count=src.count,
                dtype=dtype,
                res=src.res,
                has_alpha=has_alpha,
                acquired=acquisition_date(src.tags()),
                transform=t,
                bands=bands,
                nodata=src.nodata if elevation else None,
                z_unit=vertical_unit(src) if elevation else "",
            )
    except InputError:
        raise
    except RasterioIOError as exc:
        msg = str(exc).splitlines()[0][:160] if str(exc).strip() else "unreadable"
        if remote:
            raise InputError(
                f"{path}: {what} cannot be read over the network ({msg}); check the address, and the "
                "credentials and endpoint in GDAL's environment (AWS_*, GS_*, AZURE_*, GDAL_HTTP_*)"
            ) from None
        raise InputError(
            f"{path}: {what} cannot be read ({msg}); it is not a raster, or it is truncated "
            "or corrupt: export or copy it again"
        ) from None
    except Exception as exc:  # GDAL errors on truncated files surface as several types
        raise InputError(
            f"{path}: {what} is unreadable or truncated ({type(exc).__name__}: {str(exc)[:160]})"
        ) from None
    return info


def footprint_bounds(transform, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of a raster's four corners, whatever its orientation.

    rasterio's ``bounds`` are the geotransform's origin and far corner as they come, so a
    south-up grid (positive pixel height) gets ``bottom > top`` and a mirrored or rotated one
    worse; this is the footprint in its CRS, always ``left < right`` and ``bottom < top``, so
    every grid built from it is north-up (the reader warps any orientation onto it).
    """
    xs, ys = zip(
        *(transform @ (c, r) for c, r in ((0, 0), (width, 0), (0, height), (width, height)))
    )
    return (min(xs), min(ys), max(xs), max(ys))


def damaged_block(
    src, window=None, budget_s: float | None = None
) -> tuple[int, int, object] | None:
    """The first full-resolution block (all bands; in ``window``, default all) that GDAL cannot
    decode: ``(block_row, block_col, block_window)``, or None when every one decodes (or the
    search ran out of ``budget_s`` seconds).

    Used after a read failed, to name the block in the message; reads block by block.
    """
    import time

    from rasterio.windows import Window

    deadline = None if budget_s is None else time.monotonic() + budget_s

    bh, bw = src.block_shapes[0]
    if window is None:
        window = Window(0, 0, src.width, src.height)
    c0, r0 = max(0, int(window.col_off)) // bw, max(0, int(window.row_off)) // bh
    c1 = min(src.width, int(math.ceil(window.col_off + window.width)))
    r1 = min(src.height, int(math.ceil(window.row_off + window.height)))
    for row in range(r0, (max(r1, 1) - 1) // bh + 1):
        for col in range(c0, (max(c1, 1) - 1) // bw + 1):
            block = Window(
                col * bw, row * bh, min(bw, src.width - col * bw), min(bh, src.height - row * bh)
            )
            try:
                src.read(window=block)
            except Exception:  # noqa: BLE001 - GDAL's decode errors come as several types
                return row, col, block
            if deadline is not None and time.monotonic() > deadline:
                return None
    return None


def locate_damage(path, what: str, exc: BaseException, budget_s: float = 60.0) -> InputError | None:
    """After a read of ``path`` failed: :func:`damaged_block_error` when a block of it does not
    decode (searched for at most ``budget_s`` seconds), else None (the file is not the culprit,
    or the search ran out of time)."""
    import rasterio

    try:
        with rasterio.open(path) as src:
            found = damaged_block(src, budget_s=budget_s)
            if found is None:
                return None
            return damaged_block_error(path, what, src, exc, found[2])
    except Exception:  # noqa: BLE001 - unreadable even to open: the caller's message stands
        return None


def source_window(src, bounds, crs):
    """The window of open dataset ``src`` covering map ``bounds`` (left, bottom, right, top in
    ``crs``), whatever the source's orientation, one pixel wider on each side."""
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window

    left, bottom, right, top = transform_bounds(crs, src.crs, *bounds, densify_pts=21)
    inv = ~src.transform
    cols, rows = zip(*(inv @ (x, y) for x in (left, right) for y in (bottom, top)))
    c0, r0 = max(0, math.floor(min(cols)) - 1), max(0, math.floor(min(rows)) - 1)
    c1, r1 = min(src.width, math.ceil(max(cols)) + 1), min(src.height, math.ceil(max(rows)) + 1)
    return Window(c0, r0, max(0, c1 - c0), max(0, r1 - r0))


def damaged_block_error(path, what: str, src, exc: BaseException, window=None) -> InputError:
    """The one message for a raster that failed to decode mid-read: the file, the block when
    :func:`damaged_block` finds it (else GDAL's first line), and what to do."""
    found = damaged_block(src, window)
    if found is not None:
        row, col, b = found
        where = (
            f"its block at row {row}, column {col} (pixels x {int(b.col_off)}-"
            f"{int(b.col_off + b.width) - 1}, y {int(b.row_off)}-{int(b.row_off + b.height) - 1}) "
            "cannot be decoded"
        )
    else:
        msg = str(exc).splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        where = f"a block cannot be decoded ({msg})"
    return InputError(
        f"{path}: {what} is damaged: {where}; export or copy the file again "
        "(gdalinfo -checksum finds every damaged block)"
    )


def vertical_unit(src) -> str:
    """The height unit a DSM declares: ``"metre"``, ``"foot"``, ``"us_survey_foot"`` or ``""`` (none).

    Read from the band's unit (``src.units``, e.g. ``"m"``, ``"ft"``, ``"US survey foot"``),
    else from the vertical axis of a compound CRS.
    """
    names = [str(u).strip().lower() for u in (src.units or ()) if u]
    if not names and src.crs is not None:
        try:
            from pyproj import CRS

            crs = CRS.from_wkt(src.crs.to_wkt())
            names = [a.unit_name.lower() for a in crs.axis_info if a.direction == "up"]
        except Exception:  # noqa: BLE001 - an odd CRS just means "not declared"
            names = []
    for name in names[:1]:
        if "survey" in name and ("foot" in name or "feet" in name or "ft" in name):
            return "us_survey_foot"
        if (
            name in ("ft", "foot", "feet", "international foot", "foot (international)")
            or "foot" in name
        ):
            return "foot"
        if name in ("m", "metre", "meter", "metres", "meters"):
            return "metre"
    return ""


# --- the one stretch to uint8 -----------------------------------------------------------------

Stretch = tuple[np.ndarray, np.ndarray]  # per-band (low, high) values mapped to 0 and 255


def stretch_from_array(
    data: np.ndarray,
    valid: np.ndarray | None = None,
    low: float = STRETCH_LOW,
    high: float = STRETCH_HIGH,
) -> Stretch:
    """Per-band stretch of ``data`` (bands, H, W): the ``low``/``high`` percentiles of its valid,
    non-zero pixels (a band with none: 0–1). ``high`` is at least ``low + 1``.

    Parameters
    ----------
    data : numpy array or masked array, (bands, H, W)
    valid : bool array (H, W), optional
        Pixels to use (in addition to the mask of a masked array).
    low, high : float
        Percentiles (0–100).

    Returns
    -------
    (lo, hi) : two float arrays of length ``bands``
    """
    n = data.shape[0]
    lo, hi = np.zeros(n), np.ones(n)
    masked = np.ma.isMaskedArray(data)
    for i in range(n):
        skip = np.ma.getmaskarray(data[i]) if masked else np.zeros(data.shape[1:], bool)
        if valid is not None:
            skip = skip | ~valid
        vals = np.asarray(np.ma.getdata(data[i]))[~skip]
        vals = vals[vals > 0]
        if vals.size:
            lo[i], hi[i] = np.percentile(vals, [low, high])
            hi[i] = max(hi[i], lo[i] + 1)
    return lo, hi


def estimate_stretch(
    src,
    bands,
    low: float = STRETCH_LOW,
    high: float = STRETCH_HIGH,
    max_side: int = STRETCH_SAMPLE_SIDE,
) -> Stretch:
    """:func:`stretch_from_array` of an open rasterio dataset, from a read decimated to about
    ``max_side`` pixels on a side (GDAL serves it from the overviews)."""
    step = max(1, max(src.width, src.height) // max_side)
    shape = (max(1, src.height // step), max(1, src.width // step))
    data = src.read(list(bands), out_shape=(len(bands), *shape), masked=True)
    return stretch_from_array(data, low=low, high=high)


@functools.lru_cache(maxsize=32)
def _cached_stretch(
    path: str, mtime_ns: int, bands: tuple[int, ...], low: float, high: float
) -> Stretch:
    import rasterio

    with rasterio.open(path) as src:
        return estimate_stretch(src, bands, low, high)


def raster_stretch(
    path: Path | str, bands=None, low: float = STRETCH_LOW, high: float = STRETCH_HIGH
) -> Stretch | None:
    """The stretch of a raster file (None for uint8, which is used as is); cached per file version.

    ``bands`` defaults to :func:`rgb_bands`.
    """
    import rasterio

    with rasterio.open(path) as src:
        if src.dtypes[0] == "uint8":
            return None
        bands = (
            tuple(bands)
            if bands is not None
            else rgb_bands(src.colorinterp, src.count) or (1, 1, 1)
        )
    if is_remote(path):  # no cheap change stamp over the network: cached for this process's life
        return _cached_stretch(str(path), 0, tuple(bands), low, high)
    return _cached_stretch(
        str(Path(path).resolve()), Path(path).stat().st_mtime_ns, tuple(bands), low, high
    )


def apply_stretch(data: np.ndarray, stretch: Stretch | None) -> np.ndarray:
    """Map (bands, H, W) pixels to uint8 with ``stretch`` (None: already uint8, cast only)."""
    if stretch is None:
        return np.asarray(data).astype(np.uint8)
    lo, hi = (np.asarray(a, dtype=np.float64) for a in stretch)
    out = (np.asarray(data).astype(np.float32) - lo[:, None, None]) * (255.0 / (hi - lo))[
        :, None, None
    ]
    return np.clip(out, 0, 255).astype(np.uint8)


# --- writing ---------------------------------------------------------------------------------


def write_cog(src_path: Path | str, out: Path | str, compress: str = "deflate") -> None:
    """Copy a tiled GeoTIFF to a COG (overviews, internal mask) atomically at ``out``.

    Parameters
    ----------
    src_path : path
        The finished work file (tiled GeoTIFF, with its mask).
    out : path
        The COG; written to a temporary file beside it and renamed.
    compress : str
        ``deflate``, ``lzw``, ``zstd`` or ``jpeg`` (quality 90).
    """
    import rasterio
    import rasterio.shutil

    from detector.fileio import atomic_path

    opts = {
        "compress": compress.upper(),
        "overview_resampling": "average",
        "blocksize": 512,
        "bigtiff": "IF_SAFER",
    }
    if compress == "jpeg":
        opts["quality"] = 90
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), atomic_path(Path(out), suffix=".tif") as tmp:
        rasterio.shutil.copy(str(src_path), str(tmp), driver="COG", **opts)
