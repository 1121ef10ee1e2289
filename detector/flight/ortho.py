"""Raw drone frames -> an orthomosaic on the baseline's grid: the ``buildwatch ortho`` orchestrator.

Pipeline per frame (see :func:`orthomosaic`):

1. pose from EXIF/XMP or a flight log (:mod:`detector.flight.pose`);
2. **direct georeferencing** (:mod:`detector.flight.project`): a pinhole camera
   (:mod:`detector.flight.camera`, optional radial distortion k1, k2) at the GPS position,
   looking along the gimbal angles; every output ground pixel (on a plane at the take-off
   height, or on a DEM) is projected into the image and sampled with ``cv2.remap``;
3. **refinement** (:mod:`detector.flight.refine`): the orthorectified frame is matched to the
   baseline at a common working GSD (ORB or SIFT + ratio test + RANSAC
   similarity/affine/homography); poor fits are rejected (the direct georeferencing is kept and
   the frame is flagged); the correction is folded into the projection so that the pixels are
   resampled only once;
4. **mosaic** (:mod:`detector.flight.blend`): the pixel from the frame whose nadir point is
   nearest wins; per-frame gains match each frame to what is already mosaicked; written as a
   COG (:func:`detector.geo.raster.write_cog`) with per-frame residuals in its metadata.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from detector.errors import InputError
from detector.flight.baseline import Baseline, WorldFrame, open_baseline
from detector.flight.blend import blend_frame, nadir_distance_buffer
from detector.flight.camera import Camera, GroundDEM, GroundPlane
from detector.flight.config import OrthoConfig, load_ortho_config
from detector.flight.pose import (
    FramePose,
    PoseError,
    pose_with_flight_log,
    read_flight_log,
    read_pose,
)
from detector.flight.project import (
    FrameSkipped,
    camera_for_pose,
    choose_reduction,
    ground_footprint,
    load_frame_pixels,
    orthorectify,
)
from detector.flight.refine import Refinement, match_to_baseline
from detector.geo.grid import Grid
from detector.geo.raster import write_cog

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff", ".png")

__all__ = [
    "FrameReport",
    "OrthoConfig",
    "OrthoResult",
    "PreparedFrame",
    "list_frames",
    "load_ortho_config",
    "orthomosaic",
    "prepare_frame",
]


@dataclass
class FrameReport:
    """What happened to one frame; one line of the run summary and of the output's metadata."""

    name: str
    status: str  # "refined" | "direct" (not refined: georeferenced from the pose only) | "skipped"
    reason: str = ""
    shift_m: float = float("nan")  # offset of the direct georeferencing vs the baseline
    residual_m: float = float("nan")  # residual after refinement
    inliers: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        def num(x: float):
            return None if x != x else round(x, 3)

        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "shift_m": num(self.shift_m),
            "residual_m": num(self.residual_m),
            "inliers": self.inliers,
            "seconds": round(self.seconds, 2),
        }


@dataclass
class PreparedFrame:
    """A frame placed on the ground: camera, footprint grid (output GSD), correction."""

    pose: FramePose
    camera: Camera
    grid: Grid  # the output-grid window the frame covers
    nadir_xy: tuple[float, float]  # camera position in the baseline CRS
    correction: np.ndarray | None
    report: FrameReport
    reduce: int = 1


def working_res(grid: Grid, cfg: OrthoConfig, baseline: Baseline) -> float:
    """Pixel size (CRS units) for matching: the baseline's, coarsened so the frame is <= refine_max_px."""
    if cfg.refine_gsd_m:
        return cfg.refine_gsd_m / baseline.metre_per_unit
    span = max(grid.width * grid.res_x, grid.height * grid.res_y)
    return max(baseline.grid.res_x, grid.res_x, span / cfg.refine_max_px)


def _refine_camera(
    camera: Camera,
    path: Path,
    grid: Grid,
    baseline: Baseline,
    world: WorldFrame,
    ground,
    cfg: OrthoConfig,
) -> Refinement:
    """Orthorectify a frame at the working GSD and match it to the baseline.

    Raises
    ------
    FrameSkipped
        The frame does not overlap the baseline's valid data, or cannot be decoded.
    """
    work_grid = grid.resampled(working_res(grid, cfg, baseline))
    work_reduce = choose_reduction(camera, work_grid.res_x * baseline.metre_per_unit)
    image = load_frame_pixels(path, work_reduce)
    rgb, valid = orthorectify(
        image, work_reduce, camera, ground, world, work_grid, None, cfg.max_view_angle_deg
    )
    if not valid.any():
        raise FrameSkipped("frame footprint is outside the baseline")
    base_rgb, base_valid = baseline.read(work_grid)
    if not (base_valid & valid).any():
        raise FrameSkipped("frame footprint is outside the baseline's valid data")
    return match_to_baseline(
        rgb, valid, base_rgb, base_valid, work_grid, cfg, baseline.metre_per_unit
    )


def prepare_frame(
    pose: FramePose, baseline: Baseline, out_grid: Grid, world: WorldFrame, ground, cfg: OrthoConfig
) -> PreparedFrame:
    """Georeference and (optionally) refine one frame against the baseline.

    Raises
    ------
    FrameSkipped
        With the reason the frame cannot be used.
    """
    start = time.perf_counter()
    camera = camera_for_pose(pose, world, ground, cfg)
    pts = ground_footprint(camera, ground, cfg.max_view_angle_deg)
    bx, by = world.from_world(pts[:, 0], pts[:, 1])
    margin = cfg.max_correction_m / baseline.metre_per_unit if cfg.refine else 0.0
    footprint = (
        float(bx.min()) - margin,
        float(by.min()) - margin,
        float(bx.max()) + margin,
        float(by.max()) + margin,
    )
    grid = out_grid.sub_grid(footprint)
    if grid is None:
        raise FrameSkipped("frame footprint is outside the baseline")
    reduce = choose_reduction(camera, out_grid.res_x * baseline.metre_per_unit)
    nadir = world.from_world(np.array([camera.center[0]]), np.array([camera.center[1]]))
    report = FrameReport(name=pose.path.name, status="direct")
    prepared = PreparedFrame(
        pose=pose,
        camera=camera,
        grid=grid,
        nadir_xy=(float(nadir[0][0]), float(nadir[1][0])),
        correction=None,
        report=report,
        reduce=reduce,
    )
    if cfg.refine:
        yaw_offsets = (0.0, 180.0) if cfg.retry_flipped_yaw else (0.0,)
        first: Refinement | None = None
        for yaw_offset in yaw_offsets:
            cam = (
                camera
                if not yaw_offset
                else camera_for_pose(
                    replace(pose, yaw_deg=pose.yaw_deg + yaw_offset), world, ground, cfg
                )
            )
            ref = _refine_camera(cam, pose.path, grid, baseline, world, ground, cfg)
            first = first or ref
            if ref.ok:
                break
        if ref.ok:
            prepared.camera, prepared.correction = cam, ref.correction
            report.status, report.residual_m, report.shift_m, report.inliers = (
                "refined",
                ref.residual_m,
                ref.shift_m,
                ref.inliers,
            )
            if yaw_offset:
                report.reason = (
                    "yaw corrected by 180 deg: the pixels are rotated against the recorded gimbal yaw "
                    "(image rotated or re-saved after capture?)"
                )
            # the frame has moved: its output window moves with it
            corners = (
                np.array(
                    [
                        [footprint[0], footprint[1], 1],
                        [footprint[2], footprint[1], 1],
                        [footprint[2], footprint[3], 1],
                        [footprint[0], footprint[3], 1],
                    ],
                    float,
                )
                @ ref.correction.T
            )
            corners = corners[:, :2] / corners[:, 2:]
            moved = out_grid.sub_grid(
                (corners[:, 0].min(), corners[:, 1].min(), corners[:, 0].max(), corners[:, 1].max())
            )
            if moved is None:
                raise FrameSkipped("refined frame footprint is outside the baseline")
            prepared.grid = moved
        else:
            report.shift_m, report.inliers = first.shift_m, first.inliers
            report.reason = f"not refined: {first.reason}"
    report.seconds = time.perf_counter() - start
    return prepared


@dataclass
class OrthoResult:
    """What ``buildwatch ortho`` produced."""

    out: Path | None
    frames: list[FrameReport] = field(default_factory=list)
    width: int = 0
    height: int = 0
    seconds: float = 0.0

    @property
    def used(self) -> list[FrameReport]:
        return [f for f in self.frames if f.status != "skipped"]

    @property
    def skipped(self) -> list[FrameReport]:
        return [f for f in self.frames if f.status == "skipped"]


def list_frames(inputs: list[str | Path]) -> list[Path]:
    """Image files given directly or found (non-recursively) in the given folders, sorted.

    Raises
    ------
    InputError
        A path does not exist, or nothing to process.
    """
    frames: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            frames += sorted(
                q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file()
            )
        elif p.exists():
            frames.append(p)
        else:
            raise InputError(f"{p}: frame or folder not found")
    if not frames:
        raise InputError(
            f"{', '.join(str(i) for i in inputs)}: no image files (.jpg/.tif/.png) found"
        )
    return frames


def _frame_datetime(path: Path) -> str:
    import warnings

    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rasterio.open(path) as src:
                return src.tags().get("EXIF_DateTimeOriginal", "").strip()
    except Exception:  # noqa: BLE001 - a date is optional
        return ""


def orthomosaic(
    frames: list[str | Path],
    baseline_path: str | Path,
    out: str | Path,
    dem: str | Path | None = None,
    flight_log: str | Path | None = None,
    cfg: OrthoConfig | None = None,
    progress: bool = False,
) -> OrthoResult:
    """Orthorectify raw frames, refine them against the baseline and mosaic them to a COG.

    Parameters
    ----------
    frames : list of paths
        Frames and/or folders of frames.
    baseline_path : path
        The reference orthomosaic; the output uses its CRS and pixel grid alignment.
    out : path
        Output GeoTIFF (COG). Written atomically.
    dem : path, optional
        DEM/DSM GeoTIFF (any CRS); without it the ground is a plane at the take-off height.
    flight_log : path, optional
        CSV flight log; its rows override EXIF/XMP for the frames it names.
    cfg : OrthoConfig, optional

    Returns
    -------
    OrthoResult
        The frames' reports (skipped frames with their reasons); ``out`` is None when no
        frame could be used.

    Raises
    ------
    InputError
        Bad baseline/DEM/flight log, or no usable frame at all.
    """
    import rasterio

    cfg = cfg or OrthoConfig()
    t0 = time.perf_counter()
    out = Path(out)
    if not out.parent.exists():
        raise InputError(f"{out}: output folder does not exist")
    baseline = open_baseline(baseline_path)
    paths = list_frames(list(frames))
    log_entries = read_flight_log(flight_log) if flight_log else {}
    reports: list[FrameReport] = []
    poses: list[FramePose] = []
    for path in paths:
        try:
            entry = log_entries.get(path.name.lower())
            kwargs = dict(
                sensor_width_mm=cfg.sensor_width_mm,
                focal_px=cfg.focal_px,
                default_pitch_deg=cfg.default_pitch_deg,
            )
            poses.append(
                pose_with_flight_log(path, entry, **kwargs) if entry else read_pose(path, **kwargs)
            )
        except PoseError as exc:
            reports.append(FrameReport(name=path.name, status="skipped", reason=str(exc)))
            log.warning("%s: skipped: %s", path.name, exc)
    if not poses:
        raise InputError(
            f"no usable frame among {len(paths)}: "
            + "; ".join(f"{r.name}: {r.reason}" for r in reports[:3])
        )
    world = WorldFrame(baseline.grid.crs, poses[0].lon, poses[0].lat)
    if dem:
        xy = np.array([world.lonlat_to_world(p.lon, p.lat) for p in poses])
        reach = max(500.0, 3 * max((p.rel_alt_m or cfg.flight_altitude_m or 150.0) for p in poses))
        ground = GroundDEM(
            dem,
            world.crs,
            (
                xy[:, 0].min() - reach,
                xy[:, 1].min() - reach,
                xy[:, 0].max() + reach,
                xy[:, 1].max() + reach,
            ),
        )
    else:
        ground = GroundPlane(0.0)
    out_grid = (
        baseline.grid
        if not cfg.gsd_m
        else baseline.grid.resampled(cfg.gsd_m / baseline.metre_per_unit)
    )
    prepared: list[tuple[PreparedFrame, np.ndarray | None]] = []
    iterator = poses
    if progress:
        from tqdm import tqdm

        iterator = tqdm(poses, desc="georeference", unit="frame")
    for pose in iterator:
        try:
            item = prepare_frame(pose, baseline, out_grid, world, ground, cfg)
        except FrameSkipped as exc:
            reports.append(FrameReport(name=pose.path.name, status="skipped", reason=str(exc)))
            log.warning("%s: skipped: %s", pose.path.name, exc)
            continue
        rep = item.report
        log.info(
            "%s: %s, offset %.2f m, residual %.2f m, %d inliers%s",
            rep.name,
            rep.status,
            rep.shift_m,
            rep.residual_m,
            rep.inliers,
            f" ({rep.reason})" if rep.reason else "",
        )
        prepared.append(
            (item, None)
        )  # pixels are decoded again at output resolution (keeps memory flat)
    if not prepared:
        raise InputError(
            f"no usable frame among {len(paths)}: "
            + "; ".join(f"{r.name}: {r.reason}" for r in reports[:3])
        )
    left = min(p.grid.left for p, _ in prepared)
    top = max(p.grid.top for p, _ in prepared)
    right = max(p.grid.left + p.grid.width * p.grid.res_x for p, _ in prepared)
    bottom = min(p.grid.top - p.grid.height * p.grid.res_y for p, _ in prepared)
    mosaic_grid = out_grid.sub_grid((left, bottom, right, top))
    date = next((d for d in (_frame_datetime(p.pose.path) for p, _ in prepared) if d), "")
    with tempfile.TemporaryDirectory(prefix=".ortho-", dir=out.parent) as tmpdir:
        work = Path(tmpdir) / "mosaic.tif"
        profile = dict(
            driver="GTiff",
            width=mosaic_grid.width,
            height=mosaic_grid.height,
            count=3,
            dtype="uint8",
            crs=mosaic_grid.crs,
            transform=mosaic_grid.transform,
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
            bigtiff="IF_SAFER",
            photometric="RGB",
        )
        best = nadir_distance_buffer((mosaic_grid.height, mosaic_grid.width), Path(tmpdir))
        with (
            rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
            rasterio.open(work, "w+", **profile) as dst,
        ):
            for prep, _ in prepared:
                _paint_frame(dst, prep, mosaic_grid, best, world, ground, cfg)
            dst.update_tags(
                TIFFTAG_SOFTWARE="buildwatch ortho",
                buildwatch_ortho_frames=json.dumps(
                    [r.report.as_dict() for r, _ in prepared] + [r.as_dict() for r in reports]
                ),
            )
            if date:
                dst.update_tags(TIFFTAG_DATETIME=date)
        write_cog(work, out, cfg.compress)
    frames_out = [p.report for p, _ in prepared] + reports
    return OrthoResult(
        out=out,
        frames=frames_out,
        width=mosaic_grid.width,
        height=mosaic_grid.height,
        seconds=time.perf_counter() - t0,
    )


def _paint_frame(
    dst,
    prep: PreparedFrame,
    mosaic_grid: Grid,
    best: np.ndarray,
    world: WorldFrame,
    ground,
    cfg: OrthoConfig,
) -> None:
    """Render one frame at output resolution and blend it in where it is the nadir-most frame."""
    t = time.perf_counter()
    grid = mosaic_grid.sub_grid(prep.grid.bounds)
    if grid is None:
        return
    try:
        image = load_frame_pixels(prep.pose.path, prep.reduce)
    except (
        FrameSkipped
    ) as exc:  # cannot happen for refined frames (decoded once already), but be safe
        prep.report.status, prep.report.reason = "skipped", str(exc)
        return
    rgb, valid = orthorectify(
        image,
        prep.reduce,
        prep.camera,
        ground,
        world,
        grid,
        prep.correction,
        cfg.max_view_angle_deg,
    )
    del image
    blend_frame(dst, mosaic_grid, grid, rgb, valid, prep.nadir_xy, best, cfg.balance)
    prep.report.seconds += time.perf_counter() - t
