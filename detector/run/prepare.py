"""Step *prepare* of a night: everything checked before a tile is processed, and the tile list.

:func:`prepare` checks every input is a regular readable file, the output folder (writable,
enough free space, no folder where a file goes), the case registry and boundary layer, the
model (:mod:`detector.night.context`), the mosaics' resolution against the model's, the size
of the tile grid, the coverage of tonight's mosaic over the baseline (``min_coverage``), the
exclusion layers and the mosaic registration model -- so that a user-fixable problem is one
line and exit 2 before any output exists; it returns the picklable
:class:`~detector.night.context.RunContext` that every tile worker gets, and the tiles.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from detector.config import RUN_OUTPUT_FILES, RUN_OUTPUT_FOLDERS, RunConfig, date_order_problem
from detector.errors import ConfigError, InputError, ModelError, OutputError
from detector.fileio import check_output_folder, check_regular_file
from detector.night.align import estimate_mosaic_model
from detector.night.context import (
    MAX_TILES,
    RunContext,
    check_exclusions,
    check_inputs,
    check_model_gsd,
    check_source_gsd,
    count_tiles,
    load_second_view,
    resolve_model,
)
from detector.night.height import prepare_dsms
from detector.night.model import load_model_spec
from detector.night.mosaic import (
    EpochReader,
    WorkingGrid,
    coverage_of_baseline,
    make_grid,
    open_mosaic,
)
from detector.night.tiles import iter_tiles
from detector.review import registry_check
from detector.types import Tile

__all__ = ["OUTPUT_FILES", "OUTPUT_FOLDERS", "prepare"]

log = logging.getLogger(__name__)

#: Files the run writes in its output folder, and folders it keeps there.
OUTPUT_FILES, OUTPUT_FOLDERS = RUN_OUTPUT_FILES, RUN_OUTPUT_FOLDERS
#: Free space a run needs: the GeoPackage and log, plus the per-tile work files.
BASE_OUTPUT_BYTES = 32 << 20
BYTES_PER_TILE = 16 << 10


def prepare(cfg: RunConfig) -> tuple[RunContext, list[Tile]]:
    """Validate inputs, outputs and model, build the working grid and the tile list.

    Raises
    ------
    BuildwatchError
        One line naming the file, what is wrong and what to do; raised before any output exists.
    """
    if cfg.baseline is None or cfg.current is None or cfg.out is None:
        raise ConfigError("need --baseline, --current and --out (or the same keys in --config)")
    check_inputs(cfg)
    check_output_folder(cfg.out, files=OUTPUT_FILES, folders=OUTPUT_FOLDERS)
    baseline = open_mosaic(cfg.baseline, "baseline")
    current = open_mosaic(cfg.current, "current")
    if baseline.is_rgb != current.is_rgb:
        raise InputError(
            f"{current.path}: current mosaic has {current.colour_bands} colour band(s) but the baseline "
            f"{baseline.path.name} has {baseline.colour_bands}: both epochs must be RGB, or both panchromatic"
        )
    model_path, model_version = resolve_model(cfg)
    spec = load_model_spec(model_path)
    check_model_gsd(spec)
    size = spec.imgsz[0]
    if spec.imgsz[0] != spec.imgsz[1]:
        raise ModelError(f"{spec.path}: non-square input {spec.imgsz} is not supported")
    if cfg.detect.overlap_px is not None:
        overlap = cfg.detect.overlap_px
    else:  # a structure is seen whole by the tile owning its centre only if it fits in the overlap
        overlap = min(
            max(spec.overlap_px, math.ceil(cfg.change.max_structure_m / spec.gsd_m)), size // 2 - 1
        )
    if not 0 <= overlap < size // 2:
        raise ConfigError(
            f"detect.overlap_px={overlap} must be between 0 and half the tile size ({size // 2})"
        )
    if overlap * spec.gsd_m < cfg.change.max_structure_m:
        log.warning(
            "tile overlap %.1f m is smaller than change.max_structure_m %.1f m: larger structures may be "
            "cut at tile borders",
            overlap * spec.gsd_m,
            cfg.change.max_structure_m,
        )
    for info in (baseline, current):
        check_source_gsd(info, spec)
    _check_dates(cfg, baseline, current)
    check_exclusions(cfg, cfg.current_date or current.acquired)
    try:
        grid = make_grid(baseline, current, spec.gsd_m)
    except (
        OverflowError,
        ValueError,
    ) as exc:  # coordinates that do not fit the CRS (degrees vs metres)
        raise InputError(
            f"{current.path}: its coordinates do not fit its CRS ({exc}); check the CRS label"
        ) from None
    n_tiles = count_tiles(grid, size, overlap)
    if n_tiles > MAX_TILES:
        raise InputError(
            f"{cfg.baseline}: the pair makes {n_tiles:,} tiles of {size} px at {spec.gsd_m:g} m "
            f"(at most {MAX_TILES:,}); split the district into several runs"
        )
    check_output_folder(
        cfg.out,
        files=OUTPUT_FILES,
        folders=OUTPUT_FOLDERS,
        need_bytes=BASE_OUTPUT_BYTES + BYTES_PER_TILE * n_tiles,
    )
    _check_cases(cfg, grid)
    second = load_second_view(cfg, spec)
    if second is not None and cfg.detect.second_view.baseline_cache is not None:
        check_output_folder(
            cfg.detect.second_view.baseline_cache,
            what="baseline view cache folder (detect.second_view.baseline_cache)",
        )
    ctx = RunContext(
        baseline=baseline,
        current=current,
        grid=grid,
        spec=spec,
        config=cfg,
        size=size,
        overlap=overlap,
        conf=cfg.detect.conf if cfg.detect.conf is not None else spec.conf,
        iou=cfg.detect.iou if cfg.detect.iou is not None else spec.iou,
        model_version=model_version,
        second=second,
    )
    ctx.dsm = prepare_dsms(cfg, grid)
    for info, attr in ((baseline, "stretch_baseline"), (current, "stretch_current")):
        if info.dtype != "uint8":  # computed once here, handed to every worker
            reader = EpochReader(info, grid)
            setattr(ctx, attr, reader.stretch)
            reader.close()
    stretches = (ctx.stretch_baseline, ctx.stretch_current)
    coverage = coverage_of_baseline(baseline, current, grid, stretches)
    if coverage < cfg.min_coverage:
        raise InputError(
            f"{current.path}: tonight's mosaic covers {coverage:.1%} of the baseline (less than "
            f"min_coverage {cfg.min_coverage:.1%}; all nodata, black or transparent there): was the "
            "flight processed?"
        )
    if cfg.align.enabled:
        a = cfg.align
        ctx.mosaic_model = estimate_mosaic_model(
            baseline,
            current,
            grid,
            stretches,
            max_shift_m=a.max_shift_m,
            min_inliers=a.min_inliers,
            min_spread=a.min_spread,
        )
    tiles = list(iter_tiles(grid, size, overlap))
    return ctx, tiles


def _check_dates(cfg: RunConfig, baseline, current) -> None:
    """The epochs' dates in order where both are known, a date set in the config or read from
    the raster (TIFFTAG_DATETIME); both from the config were checked by the config itself."""
    b, c = cfg.baseline_date or baseline.acquired, cfg.current_date or current.acquired
    problem = date_order_problem(b, c)
    if problem:
        source = (
            f"{current.path} (its TIFFTAG_DATETIME)"
            if cfg.current_date is None
            else f"{baseline.path} (its TIFFTAG_DATETIME)"
        )
        raise InputError(
            f"{source}: {problem}: are --baseline and --current swapped? If the dates are wrong, "
            "set baseline_date / current_date in the config"
        )


def _check_cases(cfg: RunConfig, grid: WorkingGrid) -> None:
    """The case registry and boundary layer are usable, checked read-only before any tile runs."""
    c = cfg.cases
    if c.registry is None:  # boundaries without a registry: refused by the config
        return
    registry = Path(c.registry)
    if registry.exists():
        check_regular_file(registry, "case registry (cases.registry)")
        registry_check.check_registry(registry, c.lock_wait_s)  # content, lock: read-only
    check_output_folder(registry.parent, what="case registry folder", files=(registry.name,))
    if registry.exists() and not os.access(registry, os.W_OK):
        raise OutputError(
            f"{registry}: case registry is read-only; the nightly run updates it: fix its permissions"
        )
    if c.boundaries is not None:
        from detector.review.boundaries import load_boundaries

        load_boundaries(c.boundaries, c.boundary_name_field, c.boundary_unit_field, grid.crs_wkt)
