"""Height change from a DSM pair: new storeys and buildings that colour cannot show.

Every photogrammetry tool that makes the drone orthomosaic also makes a DSM of the same
flight. With ``baseline_dsm`` / ``current_dsm`` (``buildwatch run --baseline-dsm/--current-dsm``)
the run adds a height step to every tile:

1. **Inputs** (:func:`prepare_dsms`, once per run): each DSM is validated by the one raster
   opener (:func:`detector.geo.raster.open_raster` with ``elevation=True``: exists, readable to
   its end, CRS, geotransform), must overlap the working grid, and is read onto that grid
   (:class:`DsmReader`, bilinear, nodata and heights below −1000 m invalid). Heights are
   converted to metres (``height.*_units``, else the unit the file declares, else metres); a
   pair whose height ranges differ by the foot/metre factor is refused. The vertical offset
   between the surveys (datum, geoid vs ellipsoid, flying height bias) is the robust median of
   the difference over unchanged flat ground; one larger than ``height.max_vertical_offset_m``
   is refused.
2. **Per tile** (:func:`tile_heights`): the current DSM gets the imagery's registration of the
   tile (the same matrix), the tile's own offset refines the run's (median over flat pixels
   near the run's offset) and its noise σ is 1.4826 × their MAD (at least
   ``height.noise_floor_m``). A pixel's noise grows at edges, where a horizontal smear of
   ``height.edge_tolerance_m`` makes a height error of slope × tolerance:
   ``σ_px = sqrt(σ² + (tolerance × slope)²)``. Gain seeds are pixels with
   ``d ≥ noise_k × σ_px`` and ``d ≥ min_gain_m / 2``; a region is a connected patch of
   ``d ≥ min_gain_m / 2`` holding seeds (so it reaches over the noisy edge band to the true
   outline); regions of at least ``height.min_area_m2`` whose median seed gain is at least
   ``height.min_gain_m`` are kept.
3. **Fusion** (:func:`fuse`): an image candidate over a region of gain is confirmed (tag
   ``height_confirmed``, confidence ``1 − (1 − c)(1 − confirm_boost)``); an image candidate of
   ``no_change_classes`` the DSMs cover with no gain is down-weighted (× ``no_change_weight``,
   tag ``no_height_change``); a region no image candidate explains becomes a candidate of its
   own (tag ``height_only``): ``extension`` when the baseline already stood at least
   ``existing_roof_m`` above the ground there (a new storey), else ``new_building``. A region
   whose current image is mostly green (share of green pixels > ``max_greenness``) is
   vegetation growth and dropped.

Heights above ground (``baseline_height_m``, ``current_height_m``) are the region's median DSM
minus the ground: the 5th percentile of the baseline DSM in a box :data:`GROUND_MARGIN_M`
around the region.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from detector.errors import ConfigError, InputError
from detector.geo.dsm import DsmPair, DsmReader, open_dsm, unit_scale
from detector.geo.grid import WorkingGrid
from detector.geo.raster import MosaicInfo

log = logging.getLogger(__name__)

SAMPLE_SIDE = 512  # the run's offset is estimated on a grid at most this many pixels on a side
FLAT_SLOPE = 0.3  # m/m: "flat" ground and roofs used for offsets and noise
MIN_FLAT_PIXELS = 200  # a tile with fewer flat pixels uses the run's offset and noise
ROBUST_SAMPLE = (
    20000  # a tile's offset and noise come from at most about this many flat pixels (evenly spaced)
)
GROUND_MARGIN_M = 10.0
FOOT_RATIO = (0.45, 2.2)  # height range ratio outside this: one DSM in feet, the other in metres
MIN_RELIEF_M = 3.0  # the ratio test needs at least this much relief


@dataclass
class Region:
    """One connected region of height gain in a tile."""

    mask: np.ndarray  # (H, W) bool
    corners: np.ndarray  # (N, 2) outline in tile pixel-corner coordinates
    cx: float
    cy: float
    area_m2: float
    gain_m: float
    baseline_m: float | None  # height above ground before (None: no valid pixel)
    current_m: float | None  # and now


@dataclass
class TileHeights:
    """The height change of one tile (see :func:`tile_heights`)."""

    diff: np.ndarray  # (H, W) float32 current - baseline - offset, 0 where invalid
    valid: np.ndarray  # (H, W) bool, both DSMs valid
    baseline: np.ndarray  # (H, W) float32 metres
    current: np.ndarray  # (H, W) float32 metres, offset removed
    offset_m: float
    noise_m: float
    gsd: float  # metres per pixel
    regions: list[Region] = field(default_factory=list)


# ---------------------------------------------------------------- inputs


def prepare_dsms(cfg, grid: WorkingGrid) -> DsmPair | None:
    """Validate the run's DSM pair and estimate the vertical offset between the surveys.

    Parameters
    ----------
    cfg : detector.config.RunConfig
    grid : WorkingGrid

    Returns
    -------
    DsmPair or None
        None when the run has no DSMs.

    Raises
    ------
    ConfigError
        Only one of the two DSMs is given.
    InputError
        A DSM is missing, unreadable, without CRS, outside the mosaics, without valid heights,
        in feet while the other is in metres, or offset by more than ``max_vertical_offset_m``.
    """
    if cfg.baseline_dsm is None and cfg.current_dsm is None:
        return None
    if cfg.baseline_dsm is None or cfg.current_dsm is None:
        missing = (
            "--baseline-dsm (baseline_dsm)"
            if cfg.baseline_dsm is None
            else "--current-dsm (current_dsm)"
        )
        raise ConfigError(f"height change needs both DSMs: give {missing} too, or neither")
    h = cfg.height
    b, c = open_dsm(cfg.baseline_dsm, "baseline"), open_dsm(cfg.current_dsm, "current")
    for info in (b, c):
        _check_overlap(info, grid)
    bs, cs = unit_scale(b, h.baseline_units), unit_scale(c, h.current_units)
    step = max(1.0, max(grid.width, grid.height) / SAMPLE_SIDE)
    from affine import Affine

    t = grid.transform @ Affine.scale(step)
    w, hh = max(1, int(grid.width / step)), max(1, int(grid.height / step))
    readers = [DsmReader(b, grid.crs_wkt, t, w, hh, bs), DsmReader(c, grid.crs_wkt, t, w, hh, cs)]
    try:
        (hb, vb), (hc, vc) = (r.read(0, 0, w, hh) for r in readers)
    finally:
        for r in readers:
            r.close()
    valid = vb & vc
    for info, v in ((b, vb), (c, vc)):
        if not v.any():
            raise InputError(
                f"{info.path}: {info.path.name} has no valid heights over the mosaics (all nodata "
                "there); check its nodata value and extent"
            )
    if valid.mean() < 0.01:
        raise InputError(
            f"{c.path}: the two DSMs have (almost) no valid heights in common over the mosaics; "
            "check that both cover the flight area"
        )
    _check_units(b, hb[valid], c, hc[valid])
    offset, noise = ground_offset(hb, hc, valid, grid.gsd * step)
    if abs(offset) > h.max_vertical_offset_m:
        raise InputError(
            f"{c.path}: the current DSM lies {offset:+.1f} m from the baseline DSM {b.path.name} over "
            f"unchanged ground (height.max_vertical_offset_m {h.max_vertical_offset_m:g}); check the "
            "vertical datum and units of both, or raise the limit"
        )
    pair = DsmPair(b, c, bs, cs, float(offset), float(noise), float(valid.mean()))
    return pair


def _check_overlap(info: MosaicInfo, grid: WorkingGrid) -> None:
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(
        info.crs_wkt, grid.crs_wkt, *info.bounds, densify_pts=21
    )
    g_right, g_bottom = grid.left + grid.width * grid.gsd, grid.top - grid.height * grid.gsd
    if min(right, g_right) <= max(left, grid.left) or min(top, grid.top) <= max(bottom, g_bottom):
        raise InputError(
            f"{info.path}: {info.path.name} does not overlap the mosaics; check that it covers the "
            "same area and carries the right CRS"
        )


def _check_units(b: MosaicInfo, hb: np.ndarray, c: MosaicInfo, hc: np.ndarray) -> None:
    """Refuse a pair whose height ranges differ by about the foot/metre factor."""
    rb = float(np.subtract(*np.percentile(hb, [95, 5])))
    rc = float(np.subtract(*np.percentile(hc, [95, 5])))
    if min(rb, rc) < MIN_RELIEF_M:
        return
    ratio = rc / rb
    if not FOOT_RATIO[0] <= ratio <= FOOT_RATIO[1]:
        raise InputError(
            f"{c.path}: heights in the current DSM span {ratio:.2f}x those of the baseline DSM "
            f"{b.path.name} ({rc:.1f} vs {rb:.1f} m): one is in feet, the other in metres; set "
            "height.baseline_units / height.current_units (metre, foot, us_survey_foot)"
        )


def slope(h: np.ndarray, gsd: float) -> np.ndarray:
    """Slope magnitude (m/m) of a height grid (Sobel)."""
    gx = cv2.Sobel(h, cv2.CV_32F, 1, 0, ksize=3) / (8 * gsd)
    gy = cv2.Sobel(h, cv2.CV_32F, 0, 1, ksize=3) / (8 * gsd)
    return np.sqrt(gx * gx + gy * gy)


def _flat(sb: np.ndarray, sc: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Valid pixels (not at the border of the valid area) whose slope is small in both epochs."""
    inner = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return inner & (sb < FLAT_SLOPE) & (sc < FLAT_SLOPE)


def _robust(x: np.ndarray, floor: float = 0.05) -> tuple[float, float]:
    """(median, 1.4826 MAD) of ``x`` after three rounds of clipping at 3 σ (changes drop out)."""
    m = float(np.median(x))
    keep = x
    for _ in range(3):
        s = max(1.4826 * float(np.median(np.abs(keep - m))), floor)
        keep = x[np.abs(x - m) < 3 * s]
        if keep.size == 0:
            break
        m = float(np.median(keep))
    s = 1.4826 * float(np.median(np.abs(keep - m))) if keep.size else 0.0
    return m, s


def ground_offset(
    hb: np.ndarray, hc: np.ndarray, valid: np.ndarray, gsd: float
) -> tuple[float, float]:
    """(offset, noise): robust median and σ of ``hc - hb`` over unchanged flat pixels."""
    flat = _flat(slope(hb, gsd), slope(hc, gsd), valid)
    pick = flat if flat.sum() >= 50 else valid
    return _robust((hc - hb)[pick])


# ---------------------------------------------------------------- one tile


def local_offset(
    hb: np.ndarray,
    hc: np.ndarray,
    valid: np.ndarray,
    gsd: float,
    pair: DsmPair,
    sb: np.ndarray | None = None,
    sc: np.ndarray | None = None,
) -> tuple[float, float]:
    """The vertical offset and noise of one window (a tile, an evidence chip): it refines the run's.

    Robust median and σ of ``hc - hb`` over flat pixels within ``max(1 m, 3 σ_run)`` of the run's
    offset (changes drop out); the run's offset and noise when fewer than ``MIN_FLAT_PIXELS``.

    Parameters
    ----------
    hb, hc : numpy.ndarray
        Baseline and current heights (metres) on the same grid.
    valid : numpy.ndarray
        Both valid.
    gsd : float
        Metres per pixel.
    pair : DsmPair
        The run's offset and noise.
    sb, sc : numpy.ndarray, optional
        Their slopes, when the caller has them already.

    Returns
    -------
    (float, float)
    """
    sb = slope(hb, gsd) if sb is None else sb
    sc = slope(hc, gsd) if sc is None else sc
    raw = hc - hb
    near = _flat(sb, sc, valid) & (np.abs(raw - pair.offset_m) < max(1.0, 3 * pair.noise_m))
    if near.sum() < MIN_FLAT_PIXELS:
        return pair.offset_m, pair.noise_m
    x = raw[near]
    return _robust(x[:: max(1, x.size // ROBUST_SAMPLE)])


def tile_heights(
    hb: np.ndarray, vb: np.ndarray, hc: np.ndarray, vc: np.ndarray, gsd: float, pair: DsmPair, rules
) -> TileHeights:
    """Height change of one co-registered tile and its regions of gain.

    Parameters
    ----------
    hb, vb : numpy.ndarray
        Baseline heights (metres) and validity.
    hc, vc : numpy.ndarray
        Current heights (metres, registered onto the baseline's pixels) and validity.
    gsd : float
        Metres per pixel.
    pair : DsmPair
        The run's offset and noise (used when the tile has too little flat ground).
    rules : detector.config.HeightConfig

    Returns
    -------
    TileHeights
    """
    valid = vb & vc
    sb, sc = slope(hb, gsd), slope(hc, gsd)
    raw = hc - hb
    offset, noise = local_offset(hb, hc, valid, gsd, pair, sb, sc)
    noise = max(noise, rules.noise_floor_m)
    cur = np.where(valid, hc - offset, 0).astype(np.float32)
    d = np.where(valid, raw - offset, 0).astype(np.float32)
    out = TileHeights(d, valid, hb, cur, float(offset), float(noise), gsd)
    if not valid.any():
        return out
    r_px = max(1, math.ceil(rules.edge_tolerance_m / gsd))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r_px + 1, 2 * r_px + 1))
    steep = cv2.dilate(np.maximum(sb, sc), kernel)  # the offset does not change the slope
    sigma = np.sqrt(noise * noise + (rules.edge_tolerance_m * steep) ** 2)
    half = 0.5 * rules.min_gain_m
    loose = valid & (d >= half)
    seeds = loose & (d >= rules.noise_k * sigma)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(
        loose.astype(np.uint8), connectivity=8
    )
    for k in np.unique(labels[seeds]):
        if k == 0:
            continue
        area = stats[k, cv2.CC_STAT_AREA] * gsd * gsd
        if area < rules.min_area_m2:
            continue
        mask = labels == k
        core = mask & seeds
        if not core.any():
            continue
        gain = float(np.median(d[core]))
        if gain < rules.min_gain_m:
            continue
        corners = outline(mask)
        if corners is None:
            continue
        base_m, cur_m = heights_above_ground(out, mask)
        out.regions.append(
            Region(
                mask,
                corners,
                float(cents[k][0]) + 0.5,
                float(cents[k][1]) + 0.5,
                float(area),
                gain,
                base_m,
                cur_m,
            )
        )
    return out


def outline(mask: np.ndarray) -> np.ndarray | None:
    """The outer outline of a region as (N, 2) pixel-corner coordinates (None: degenerate)."""
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return None
    cnt = max(contours, key=cv2.contourArea)
    poly = cv2.approxPolyDP(cnt, 0.75, True).reshape(-1, 2).astype(np.float64)
    if len(poly) < 3 or cv2.contourArea(poly.astype(np.float32)) < 1:
        x, y, w, h = cv2.boundingRect(cnt)
        poly = np.array(
            [[x, y], [x + w - 1, y], [x + w - 1, y + h - 1], [x, y + h - 1]], np.float64
        )
    # contour points are pixel centres; push the outline half a pixel outwards to the pixel corners
    c = poly.mean(axis=0)
    v = poly - c
    norm = np.maximum(np.abs(v).max(axis=1, keepdims=True), 1e-9)
    return poly + 0.5 + 0.5 * v / norm


def heights_above_ground(th: TileHeights, mask: np.ndarray) -> tuple[float | None, float | None]:
    """(baseline, current) median height of ``mask`` above the local ground (see the module docstring)."""
    inside = mask & th.valid
    if not inside.any():
        return None, None
    ys, xs = np.nonzero(inside)
    m = int(round(GROUND_MARGIN_M / th.gsd))
    h, w = mask.shape
    box = (
        slice(max(0, ys.min() - m), min(h, ys.max() + m + 1)),
        slice(max(0, xs.min() - m), min(w, xs.max() + m + 1)),
    )
    around = th.valid[box]
    ground = float(np.percentile(th.baseline[box][around], 5))
    return (
        round(float(np.median(th.baseline[inside])) - ground, 2),
        round(float(np.median(th.current[inside])) - ground, 2),
    )


def greenness(rgb: np.ndarray, mask: np.ndarray) -> float:
    """Share of ``mask`` whose colour is vegetation (excess green: green the largest chromaticity by 0.04+)."""
    px = rgb[mask].astype(np.float32)
    if not len(px):
        return 0.0
    s = px.sum(axis=1) + 1e-6
    r, g, b = (px[:, i] / s for i in range(3))
    return float(((2 * g - r - b > 0.08) & (g > r + 0.04) & (g > b + 0.04)).mean())


# ---------------------------------------------------------------- fusion


@dataclass
class Fused:
    """What the height step says about one image candidate or one height-only region."""

    confidence: float
    tags: list[str]
    gain_m: float | None = None  # None: the DSMs do not cover it
    baseline_m: float | None = None
    current_m: float | None = None
    class_name: str = ""  # height-only regions: "extension" | "new_building"
    corners: np.ndarray | None = None  # height-only regions: outline in tile pixel corners


def fuse(
    changes: list,
    th: TileHeights,
    rgb_current: np.ndarray,
    rules,
    margin: int,
    stride: int,
    polygon_mask,
) -> tuple[list[Fused], list[Fused]]:
    """Fuse a tile's image candidates with its height change.

    Parameters
    ----------
    changes : list of (Detection, float)
        The tile's image candidates (owned, rules passed) with their confidence in ``Detection.confidence``.
    th : TileHeights
    rgb_current : numpy.ndarray
        (H, W, 3) current image of the tile (for the vegetation test).
    rules : detector.config.HeightConfig
    margin, stride : int
        The tile's core cell: a height-only region is reported by the tile owning its centroid.
    polygon_mask : callable
        ``polygon_mask(shape, corners) -> bool mask`` (:func:`detector.night.change.polygon_mask`).

    Returns
    -------
    (list of Fused, list of Fused)
        One entry per image candidate, in order; and the height-only candidates.
    """
    kept = [r for r in th.regions if greenness(rgb_current, r.mask) <= rules.max_greenness]
    vegetation = len(th.regions) - len(kept)
    if vegetation:
        log.debug("%d region(s) of height gain are vegetation growth", vegetation)
    used = [False] * len(kept)
    out = []
    for d, _ in changes:
        m = polygon_mask(th.valid.shape, d.corners())
        n = int(m.sum())
        cover = m & th.valid
        f = Fused(float(d.confidence), [])
        if n == 0 or cover.sum() < 0.5 * n:
            out.append(f)  # the DSMs do not cover it: nothing to say
            continue
        hit = None
        for k, r in enumerate(kept):
            inter = int((m & r.mask).sum())
            if inter and (inter >= 0.3 * n or inter >= 0.5 * r.mask.sum()):
                used[k] = True
                if hit is None or r.gain_m > hit.gain_m:
                    hit = r
        if hit is not None:
            f.confidence = round(1 - (1 - f.confidence) * (1 - rules.confirm_boost), 4)
            f.tags.append("height_confirmed")
            f.gain_m = round(hit.gain_m, 2)
            f.baseline_m, f.current_m = hit.baseline_m, hit.current_m
        else:
            f.gain_m = round(float(np.median(th.diff[cover])), 2)
            f.baseline_m, f.current_m = heights_above_ground(th, cover)
            if f.gain_m < 0.5 * rules.min_gain_m and d.class_name in rules.no_change_classes:
                f.confidence = round(f.confidence * rules.no_change_weight, 4)
                f.tags.append("no_height_change")
        out.append(f)
    extra = []
    for k, r in enumerate(kept):
        if used[k] or not (margin <= r.cx < margin + stride and margin <= r.cy < margin + stride):
            continue
        existing = r.baseline_m is not None and r.baseline_m >= rules.existing_roof_m
        over = (r.gain_m - rules.min_gain_m) / rules.min_gain_m
        conf = round(0.5 + 0.4 * min(1.0, max(0.0, over + 0.5)), 4)
        extra.append(
            Fused(
                conf,
                ["height_only"],
                round(r.gain_m, 2),
                r.baseline_m,
                r.current_m,
                "extension" if existing else "new_building",
                r.corners,
            )
        )
    return out, extra
