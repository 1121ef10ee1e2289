"""A digital surface model (DSM) as the project reads it: validated, in metres, on a grid.

The nightly run's height step (:mod:`detector.night.height`), the evidence chips' height panel
(:mod:`detector.review.evidence`) and ``buildwatch ingest --dsm`` (:mod:`detector.flight.ingest`)
all read DSMs the same way: opened by the one raster opener (:func:`open_dsm`), heights
converted to metres (:func:`unit_scale`), read onto a grid by the one grid reader
(:class:`DsmReader`, bilinear; nodata and heights below :data:`MIN_HEIGHT_M` invalid). A run's
validated pair with its vertical offset is a :class:`DsmPair` (made by
:func:`detector.night.height.prepare_dsms`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.geo.grid import WorkingGrid, clip_window, inner_slices, warp_onto
from detector.geo.raster import MosaicInfo, open_raster

log = logging.getLogger(__name__)

#: metres per unit
UNIT_SCALE = {"metre": 1.0, "foot": 0.3048, "us_survey_foot": 1200.0 / 3937.0}
MIN_HEIGHT_M = -1000.0  # heights below this are nodata (an undeclared -9999 / -32767)


@dataclass(frozen=True)
class DsmPair:
    """The run's DSMs, validated (picklable: every tile worker gets it)."""

    baseline: MosaicInfo
    current: MosaicInfo
    baseline_scale: float  # metres per file unit
    current_scale: float
    offset_m: float  # current minus baseline over unchanged ground (whole run)
    noise_m: float  # robust σ of that difference
    coverage: float  # share of the working grid both DSMs cover


def open_dsm(path: Path | str, role: str) -> MosaicInfo:
    """Validate one DSM (``role`` = ``"baseline"`` / ``"current"``) with the one raster opener."""
    return open_raster(path, f"{role} DSM", elevation=True)


def unit_scale(info: MosaicInfo, setting: str) -> float:
    """Metres per height unit of a DSM: the configured unit, else the declared one, else metres."""
    unit = setting if setting != "auto" else (info.z_unit or "metre")
    if setting == "auto" and not info.z_unit:
        log.info(
            "%s declares no height unit: read as metres (set height.*_units otherwise)",
            info.path.name,
        )
    return UNIT_SCALE[unit]


class DsmReader:
    """Reads windows of one DSM on a north-up grid, in metres, with a validity mask.

    Parameters
    ----------
    info : MosaicInfo
        From :func:`open_dsm`.
    crs_wkt, transform, width, height
        The grid (the run's working grid, or a coarser one of the same extent).
    scale : float
        Metres per file unit.
    """

    def __init__(
        self, info: MosaicInfo, crs_wkt: str, transform, width: int, height: int, scale: float = 1.0
    ):
        import rasterio

        self.info, self.scale, self.width, self.height = info, float(scale), width, height
        self._src = rasterio.open(info.path)
        src_nodata = info.nodata if info.nodata is not None else -9999.0
        self._vrt = warp_onto(
            self._src,
            crs_wkt,
            transform,
            width,
            height,
            "bilinear",
            src_nodata=src_nodata,
            nodata=np.nan,
            dtype="float32",
            warp_mem_limit=64,
        )

    @classmethod
    def on_grid(cls, info: MosaicInfo, grid: WorkingGrid, scale: float) -> DsmReader:
        return cls(info, grid.crs_wkt, grid.transform, grid.width, grid.height, scale)

    def read(
        self, col_off: int, row_off: int, width: int, height: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) float32 heights in metres (0 where invalid) and (H, W) bool validity."""
        from rasterio.windows import Window

        out = np.zeros((height, width), np.float32)
        valid = np.zeros((height, width), bool)
        wanted = Window(col_off, row_off, width, height)
        win = clip_window(wanted, self.width, self.height)
        if win is None:
            return out, valid
        data = self._vrt.read(1, window=win).astype(np.float32)
        ok = np.isfinite(data) & (data > MIN_HEIGHT_M / max(self.scale, 1e-9))
        if self.info.nodata is not None and np.isfinite(self.info.nodata):
            ok &= data != np.float32(self.info.nodata)
        ys, xs = inner_slices(wanted, win)
        out[ys, xs] = np.where(ok, data * self.scale, 0.0)
        valid[ys, xs] = ok
        return out, valid

    def close(self) -> None:
        self._vrt.close()
        self._src.close()


def describe(pair: DsmPair) -> str:
    """One log line about the run's DSM pair."""
    return (
        f"DSMs {pair.baseline.path.name} / {pair.current.path.name}: vertical offset {pair.offset_m:+.2f} m "
        f"(current - baseline, removed), noise {pair.noise_m:.2f} m, {100 * pair.coverage:.0f} % of the grid "
        "covered"
    )
