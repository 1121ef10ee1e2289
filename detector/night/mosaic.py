"""Open and validate the two orthomosaics and read them tile by tile at the working GSD.

Both epochs are read through a :class:`rasterio.vrt.WarpedVRT` onto one *working grid*:
north-up, the model's GSD in metres, in the baseline's CRS (or, when the baseline is in a
geographic CRS such as EPSG:4326, in the UTM zone of its centre so that pixels are metres).
GDAL picks overviews when the working GSD is coarser than the source, so full-resolution
pixels are never read only to be thrown away, and only one tile's window is in memory at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np

from detector.errors import InputError

SUPPORTED_DTYPES = ("uint8", "uint16")


@dataclass(frozen=True)
class MosaicInfo:
    """What the run needs to know about one input mosaic (validated)."""

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

    @property
    def colour_bands(self) -> int:
        return self.count - (1 if self.has_alpha else 0)

    @property
    def is_rgb(self) -> bool:
        return self.colour_bands >= 3


@dataclass(frozen=True)
class WorkingGrid:
    """The north-up pixel grid all tiles are cut from."""

    crs_wkt: str  # working (metric) CRS
    output_crs_wkt: str  # the baseline's CRS: candidates are written in it
    gsd: float  # metres per pixel
    left: float
    top: float
    width: int
    height: int

    @property
    def transform(self):
        from affine import Affine

        return Affine(self.gsd, 0.0, self.left, 0.0, -self.gsd, self.top)


def _acquisition_date(tags: dict, path: Path) -> date | None:
    raw = tags.get("TIFFTAG_DATETIME") or tags.get("ACQUISITIONDATETIME") or tags.get("DATE")
    if raw:
        text = raw.strip()
        for fmt, n in (("%Y:%m:%d %H:%M:%S", 19), ("%Y-%m-%d %H:%M:%S", 19), ("%Y-%m-%dT%H:%M:%S", 19),
                       ("%Y-%m-%d", 10), ("%Y:%m:%d", 10)):
            try:
                return datetime.strptime(text[:n], fmt).date()
            except ValueError:
                continue
    return None


def open_mosaic(path: Path | str, role: str) -> MosaicInfo:
    """Validate one input mosaic; raise :class:`InputError` naming the file and the fix."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import RasterioIOError
    from rasterio.windows import Window

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {role} mosaic not found; check the path")
    if path.is_dir():
        raise InputError(f"{path}: {role} mosaic is a folder; give a GeoTIFF file")
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise InputError(f"{path}: {role} mosaic has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:4547) and rerun")
            if src.transform.is_identity:
                raise InputError(f"{path}: {role} mosaic has no georeferencing (identity geotransform)")
            dtype = src.dtypes[0]
            if dtype not in SUPPORTED_DTYPES:
                raise InputError(f"{path}: {role} mosaic has pixel type {dtype}; buildwatch reads uint8 or uint16 imagery")
            has_alpha = ColorInterp.alpha in src.colorinterp
            colour_bands = src.count - (1 if has_alpha else 0)
            if colour_bands == 2 or colour_bands < 1:
                raise InputError(f"{path}: {role} mosaic has {src.count} band(s); need RGB (3+ bands) or one panchromatic band")
            # Touch the data once: a low-resolution read (overviews) and the last full-resolution
            # block, which is what a truncated file (COGs store overviews first) is missing.
            step = max(1, max(src.width, src.height) // 256)
            src.read(1, out_shape=(max(1, src.height // step), max(1, src.width // step)))
            bh, bw = src.block_shapes[0]
            last = Window(max(0, src.width - bw), max(0, src.height - bh), min(bw, src.width), min(bh, src.height))
            src.read(window=last)
            info = MosaicInfo(
                path=path,
                crs_wkt=src.crs.to_wkt(),
                bounds=tuple(src.bounds),
                width=src.width,
                height=src.height,
                count=src.count,
                dtype=dtype,
                res=src.res,
                has_alpha=has_alpha,
                acquired=_acquisition_date(src.tags(), path),
            )
    except InputError:
        raise
    except RasterioIOError as exc:
        msg = str(exc).splitlines()[0][:160]
        raise InputError(f"{path}: {role} mosaic cannot be read ({msg}); it is not a raster, or it is truncated or "
                         "corrupt: export or copy it again") from None
    except Exception as exc:  # GDAL errors on truncated files surface as several types
        raise InputError(f"{path}: {role} mosaic is unreadable or truncated ({type(exc).__name__}: {str(exc)[:160]})") from None
    return info


MAX_SCALE_ERROR = 0.005  # a projected CRS whose metre is off by more than this is not used as the grid


def _centre_lonlat(info: MosaicInfo) -> tuple[float, float]:
    from pyproj import Transformer

    left, bottom, right, top = info.bounds
    to_ll = Transformer.from_crs(info.crs_wkt, "EPSG:4326", always_xy=True)
    return to_ll.transform((left + right) / 2, (bottom + top) / 2)


def working_crs_for(info: MosaicInfo) -> str:
    """The baseline's CRS when its units are true ground metres there, else the UTM zone of its centre.

    Geographic CRSs (degrees), feet-based state planes and Web Mercator (metres that grow with
    latitude) would make the model's GSD, areas and shift limits wrong by their scale factor.
    """
    from pyproj import CRS, Proj

    crs = CRS.from_wkt(info.crs_wkt)
    lon, lat = _centre_lonlat(info)
    if crs.is_projected and crs.axis_info[0].unit_name in ("metre", "meter"):
        factors = Proj(crs).get_factors(lon, lat)
        scale = max(abs(factors.meridional_scale - 1), abs(factors.parallel_scale - 1))
        if scale <= MAX_SCALE_ERROR:
            return info.crs_wkt
    zone = int(math.floor((lon + 180) / 6) + 1)
    epsg = (32600 if lat >= 0 else 32700) + zone
    return CRS.from_epsg(epsg).to_wkt()


def make_grid(baseline: MosaicInfo, current: MosaicInfo, gsd: float) -> WorkingGrid:
    """The working grid over the baseline's footprint; refuses pairs that do not overlap."""
    from rasterio.warp import transform_bounds

    work_crs = working_crs_for(baseline)
    b = transform_bounds(baseline.crs_wkt, work_crs, *baseline.bounds, densify_pts=21)
    c = transform_bounds(current.crs_wkt, work_crs, *current.bounds, densify_pts=21)
    inter = (max(b[0], c[0]), max(b[1], c[1]), min(b[2], c[2]), min(b[3], c[3]))
    if inter[0] >= inter[2] or inter[1] >= inter[3]:
        raise InputError(
            f"{current.path}: current mosaic does not overlap the baseline {baseline.path}; "
            "check that both cover the same area and carry the right CRS"
        )
    # Anchor to a world grid of whole pixels so the same ground gets the same pixels every night.
    left = math.floor(b[0] / gsd) * gsd
    top = math.ceil(b[3] / gsd) * gsd
    width = int(math.ceil((b[2] - left) / gsd))
    height = int(math.ceil((top - b[1]) / gsd))
    return WorkingGrid(crs_wkt=work_crs, output_crs_wkt=baseline.crs_wkt, gsd=gsd, left=left, top=top,
                       width=width, height=height)


def source_gsd_m(info: MosaicInfo) -> float:
    """The mosaic's coarser pixel side on the ground in metres, measured geodesically at its centre.

    Works for any CRS: metres, feet, degrees or Web Mercator.
    """
    from pyproj import Geod, Transformer

    left, bottom, right, top = info.bounds
    cx, cy = (left + right) / 2, (bottom + top) / 2
    rx, ry = abs(info.res[0]), abs(info.res[1])
    to_ll = Transformer.from_crs(info.crs_wkt, "EPSG:4326", always_xy=True)
    (lon0, lon1, lon2), (lat0, lat1, lat2) = to_ll.transform([cx, cx + rx, cx], [cy, cy, cy + ry])
    geod = Geod(ellps="WGS84")
    return max(geod.inv(lon0, lat0, lon1, lat1)[2], geod.inv(lon0, lat0, lon2, lat2)[2])


def choose_overview_level(info: MosaicInfo, gsd: float) -> int | None:
    """Index of the coarsest overview still at least as fine as ``gsd`` (None: full resolution)."""
    import rasterio

    with rasterio.open(info.path) as src:
        factors = src.overviews(1)
    native = source_gsd_m(info)
    best = None
    for level, factor in enumerate(factors):
        if native * factor <= gsd * 1.001:
            best = level
    return best


class EpochReader:
    """Reads windows of one epoch on the working grid (RGB uint8 + validity mask)."""

    def __init__(self, info: MosaicInfo, grid: WorkingGrid, stretch: tuple[np.ndarray, np.ndarray] | None = None):
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        self.info = info
        self.grid = grid
        self.overview_level = choose_overview_level(info, grid.gsd)
        if self.overview_level is None:
            self._src = rasterio.open(info.path)
        else:  # read a pyramid level at or just finer than the working GSD, not the full resolution
            self._src = rasterio.open(info.path, overview_level=self.overview_level)
        self._vrt = WarpedVRT(
            self._src,
            crs=grid.crs_wkt,
            transform=grid.transform,
            width=grid.width,
            height=grid.height,
            resampling=Resampling.bilinear,
            add_alpha=not info.has_alpha,
            warp_mem_limit=64,
        )
        colour = [i + 1 for i, ci in enumerate(self._src.colorinterp) if ci.name != "alpha"]
        self._bands = colour[:3] if len(colour) >= 3 else [colour[0]] * 3
        self.stretch = stretch if stretch is not None else (None if info.dtype == "uint8" else self.percentile_stretch())

    def percentile_stretch(self, low: float = 1.0, high: float = 99.0):
        """Per-band 1–99 % stretch to uint8, estimated from a decimated read (uses overviews)."""
        src = self._src
        step = max(1, max(src.width, src.height) // 1024)
        shape = (max(1, src.height // step), max(1, src.width // step))
        data = src.read(self._bands, out_shape=(3, *shape), masked=True)
        lo = np.zeros(3)
        hi = np.ones(3)
        for i in range(3):
            vals = data[i].compressed()
            vals = vals[vals > 0] if vals.size else vals
            if vals.size == 0:
                lo[i], hi[i] = 0, 1
            else:
                lo[i], hi[i] = np.percentile(vals, [low, high])
                hi[i] = max(hi[i], lo[i] + 1)
        return lo, hi

    def read(self, col_off: int, row_off: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB and (H, W) bool validity for a window of the working grid.

        Windows may extend past the grid; the outside is returned invalid.
        """
        from rasterio.windows import Window

        out = np.zeros((height, width, 3), dtype=np.uint8)
        valid = np.zeros((height, width), dtype=bool)
        c0, r0 = max(col_off, 0), max(row_off, 0)
        c1, r1 = min(col_off + width, self.grid.width), min(row_off + height, self.grid.height)
        if c1 <= c0 or r1 <= r0:
            return out, valid
        win = Window(c0, r0, c1 - c0, r1 - r0)
        data = self._vrt.read(self._bands, window=win)
        mask = self._vrt.dataset_mask(window=win) > 0
        if self.stretch is not None:
            lo, hi = self.stretch
            data = (data.astype(np.float32) - lo[:, None, None]) * (255.0 / (hi - lo))[:, None, None]
            data = np.clip(data, 0, 255)
        data = data.astype(np.uint8)
        ys, xs = slice(r0 - row_off, r1 - row_off), slice(c0 - col_off, c1 - col_off)
        out[ys, xs] = np.moveaxis(data, 0, -1)
        valid[ys, xs] = mask
        return out, valid

    def close(self) -> None:
        self._vrt.close()
        self._src.close()
