"""The run context: validated inputs, model, working grid and tile list of one night.

:func:`prepare` checks everything that can be checked before a tile is processed -- every
input is a regular readable file, the output folder (writable, enough free space, no folder
where a file goes), the case registry and boundary layer, the model (GSD within
:data:`MODEL_GSD_RANGE_M`), the mosaics' resolution against the model's, the size of the tile
grid (:data:`MAX_TILES`), the coverage of tonight's mosaic over the baseline
(``min_coverage``), the exclusion layers and the mosaic registration model -- so that a
user-fixable problem is one line and exit 2 before any output exists; it returns a picklable
:class:`RunContext` that every tile worker gets; :class:`NightRun` is what the main
process's steps of one run share.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from detector.config import RunConfig
from detector.errors import ConfigError, InputError, ModelError, OutputError
from detector.fileio import check_output_folder, check_regular_file
from detector.geo.location import is_remote
from detector.night.align import MosaicModel, estimate_mosaic_model
from detector.night.height import DsmPair, prepare_dsms
from detector.night.model import DEFAULT_BUILDING_MODEL_PATH, DEFAULT_MODEL_PATH, ModelSpec, load_model_spec
from detector.night.mosaic import EpochReader, MosaicInfo, WorkingGrid, coverage_of_baseline, make_grid, open_mosaic
from detector.night.mosaic import source_gsd_m
from detector.night.tiles import iter_tiles
from detector.types import Tile, TileResult

log = logging.getLogger(__name__)

#: Working GSDs a model may declare (``buildwatch_gsd_m``): a drone model works at centimetres
#: to a metre or two; 0.0001 m would make a 4 km² mosaic a 20-billion-pixel grid.
MODEL_GSD_RANGE_M = (0.01, 5.0)
#: A mosaic coarser than this many times the model's GSD cannot show what the model looks for.
MAX_SOURCE_GSD_RATIO = 8.0
#: Largest tile grid one run takes (~3,000 km² at 0.25 m, 512 px tiles): bounded memory and time.
MAX_TILES = 250_000
#: Files the run writes in its output folder, and folders it keeps there.
OUTPUT_FILES = ("candidates.gpkg", "buildwatch.log", "report.html", "report.csv")
OUTPUT_FOLDERS = ("work",)
#: Free space a run needs: the GeoPackage and log, plus the per-tile work files.
BASE_OUTPUT_BYTES = 32 << 20
BYTES_PER_TILE = 16 << 10


@dataclass
class RunContext:
    """Everything a worker needs to process any tile (picklable)."""

    baseline: MosaicInfo
    current: MosaicInfo
    grid: WorkingGrid
    spec: ModelSpec
    config: RunConfig
    size: int
    overlap: int
    conf: float
    iou: float
    stretch_baseline: tuple | None = None
    stretch_current: tuple | None = None
    mosaic_model: MosaicModel | None = None  # the epochs' similarity transform; tiles refine it or fall back to it
    dsm: DsmPair | None = None  # the DSM pair (detector.night.height), when the run has one
    model_version: str = ""  # the model registry version run ("" = a model given by path, or the shipped one)
    second: ModelSpec | None = None  # the second view's building model (detect.second_view.model)
    baseline_views: Path | None = None  # where this night's baseline views are kept (detector.night.view_cache)


def load_second_view(cfg: RunConfig, spec: ModelSpec) -> ModelSpec | None:
    """The second view's building model (``detect.second_view``), checked against the pair model.

    A model the config names must fit (3 channels, the pair model's tile size and GSD) or the run
    stops with a :class:`ModelError`; a two-view model (its own building head) is its own second
    view unless the config names another; the shipped one is used with every other pair model it
    fits, and left out, with a warning, for one it does not.
    """
    opts = cfg.detect.second_view
    if not opts.enabled or not spec.is_pair:  # a single-epoch model already is the building view
        return None
    if spec.building is not None and opts.model is None:
        return spec.building_view()
    path = opts.model or DEFAULT_BUILDING_MODEL_PATH
    if not path.exists():
        if opts.model is not None:
            raise ModelError(f"{path}: detect.second_view.model not found; fix the path, or leave the key out for "
                             "the shipped building model")
        log.warning("the shipped building model %s is missing: the pair model decides alone", path.name)
        return None
    second = load_model_spec(path)
    problem = ""
    if second.is_pair:
        problem = "must be a single-epoch (3-channel) building model; this one takes a 6-channel pair"
    elif second.imgsz != spec.imgsz or abs(second.gsd_m - spec.gsd_m) > 1e-9:
        problem = (f"works on {second.imgsz[0]} px tiles at {second.gsd_m:g} m, the pair model {spec.path.name} on "
                   f"{spec.imgsz[0]} px at {spec.gsd_m:g} m; export it for the same tile size and GSD")
    if problem and opts.model is not None:
        raise ModelError(f"{second.path}: detect.second_view.model {problem}")
    if problem:
        log.warning("second view left out: the shipped building model %s", problem)
        return None
    return second


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
        raise InputError(f"{current.path}: current mosaic has {current.colour_bands} colour band(s) but the baseline "
                         f"{baseline.path.name} has {baseline.colour_bands}: both epochs must be RGB, or both panchromatic")
    model_path, model_version = resolve_model(cfg)
    spec = load_model_spec(model_path)
    check_model_gsd(spec)
    size = spec.imgsz[0]
    if spec.imgsz[0] != spec.imgsz[1]:
        raise ModelError(f"{spec.path}: non-square input {spec.imgsz} is not supported")
    if cfg.detect.overlap_px is not None:
        overlap = cfg.detect.overlap_px
    else:  # a structure is seen whole by the tile owning its centre only if it fits in the overlap
        overlap = min(max(spec.overlap_px, math.ceil(cfg.change.max_structure_m / spec.gsd_m)), size // 2 - 1)
    if not 0 <= overlap < size // 2:
        raise ConfigError(f"detect.overlap_px={overlap} must be between 0 and half the tile size ({size // 2})")
    if overlap * spec.gsd_m < cfg.change.max_structure_m:
        log.warning("tile overlap %.1f m is smaller than change.max_structure_m %.1f m: larger structures may be "
                    "cut at tile borders", overlap * spec.gsd_m, cfg.change.max_structure_m)
    for info in (baseline, current):
        check_source_gsd(info, spec)
    _check_exclusions(cfg, cfg.current_date or current.acquired)
    try:
        grid = make_grid(baseline, current, spec.gsd_m)
    except (OverflowError, ValueError) as exc:  # coordinates that do not fit the CRS (degrees vs metres)
        raise InputError(f"{current.path}: its coordinates do not fit its CRS ({exc}); check the CRS label") from None
    n_tiles = count_tiles(grid, size, overlap)
    if n_tiles > MAX_TILES:
        raise InputError(f"{cfg.baseline}: the pair makes {n_tiles:,} tiles of {size} px at {spec.gsd_m:g} m "
                         f"(at most {MAX_TILES:,}); split the district into several runs")
    check_output_folder(cfg.out, files=OUTPUT_FILES, folders=OUTPUT_FOLDERS,
                        need_bytes=BASE_OUTPUT_BYTES + BYTES_PER_TILE * n_tiles)
    _check_cases(cfg, grid)
    second = load_second_view(cfg, spec)
    if second is not None and cfg.detect.second_view.baseline_cache is not None:
        check_output_folder(cfg.detect.second_view.baseline_cache, what="baseline view cache folder "
                            "(detect.second_view.baseline_cache)")
    ctx = RunContext(
        baseline=baseline, current=current, grid=grid, spec=spec, config=cfg, size=size, overlap=overlap,
        conf=cfg.detect.conf if cfg.detect.conf is not None else spec.conf,
        iou=cfg.detect.iou if cfg.detect.iou is not None else spec.iou, model_version=model_version,
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
        raise InputError(f"{current.path}: tonight's mosaic covers {coverage:.1%} of the baseline (less than "
                         f"min_coverage {cfg.min_coverage:.1%}; all nodata, black or transparent there): was the "
                         "flight processed?")
    if cfg.align.enabled:
        a = cfg.align
        ctx.mosaic_model = estimate_mosaic_model(baseline, current, grid, stretches, max_shift_m=a.max_shift_m,
                                                 min_inliers=a.min_inliers, min_spread=a.min_spread)
    tiles = list(iter_tiles(grid, size, overlap))
    return ctx, tiles


def check_inputs(cfg: RunConfig) -> None:
    """Every input the run reads is a regular, readable file (no folder, FIFO or device: a FIFO
    would block the first read forever)."""
    for raster, what in ((cfg.baseline, "baseline mosaic"), (cfg.current, "current mosaic"),
                         (cfg.baseline_dsm, "baseline DSM"), (cfg.current_dsm, "current DSM")):
        if raster is not None and not is_remote(raster):  # a URL is checked when it is opened
            check_regular_file(raster, what)
    check_regular_file(cfg.model or DEFAULT_MODEL_PATH, "model file", error=ModelError)
    for layer in cfg.change.exclusions:
        check_regular_file(layer.path, f"exclusion layer ({layer.kind})")
    if cfg.cases.boundaries is not None:
        check_regular_file(cfg.cases.boundaries, "boundary layer (cases.boundaries)")


def check_model_gsd(spec: ModelSpec) -> None:
    """The model's working GSD is within :data:`MODEL_GSD_RANGE_M`."""
    lo, hi = MODEL_GSD_RANGE_M
    if not lo <= spec.gsd_m <= hi:
        raise ModelError(f"{spec.path}: model metadata buildwatch_gsd_m = {spec.gsd_m:g} m is outside {lo:g}-{hi:g} m; "
                         "the metadata is wrong: re-export the model")


def check_source_gsd(info: MosaicInfo, spec: ModelSpec) -> None:
    """A mosaic far coarser than the model's GSD (a thumbnail, a 100 m product) is refused."""
    gsd = source_gsd_m(info)
    if gsd > MAX_SOURCE_GSD_RATIO * spec.gsd_m:
        raise InputError(f"{info.path}: pixels are {gsd:.3g} m, {gsd / spec.gsd_m:.0f}x coarser than the model's "
                         f"{spec.gsd_m:g} m (at most {MAX_SOURCE_GSD_RATIO:g}x); is this the full-resolution "
                         "orthomosaic?")


def count_tiles(grid: WorkingGrid, size: int, overlap: int) -> int:
    """Number of tiles :func:`iter_tiles` yields, without making them."""
    stride = (size - overlap) * grid.gsd
    cols = math.floor((grid.left + grid.width * grid.gsd - 1e-9) / stride) - math.floor(grid.left / stride) + 1
    rows = (math.floor((-(grid.top - grid.height * grid.gsd) - 1e-9) / stride) - math.floor(-grid.top / stride) + 1)
    return cols * rows


def _check_cases(cfg: RunConfig, grid: WorkingGrid) -> None:
    """The case registry and boundary layer are usable, checked read-only before any tile runs."""
    c = cfg.cases
    if c.registry is None:
        if c.boundaries is not None:
            log.warning("cases.boundaries is set but cases.registry is not: the boundary layer is not used")
        return
    registry = Path(c.registry)
    if registry.exists():
        check_regular_file(registry, "case registry (cases.registry)")
        check_registry(registry)
    check_output_folder(registry.parent, what="case registry folder", files=(registry.name,))
    if registry.exists() and not os.access(registry, os.W_OK):
        raise OutputError(f"{registry}: case registry is read-only; the nightly run updates it: fix its permissions")
    if c.boundaries is not None:
        from detector.review.boundaries import load_boundaries

        load_boundaries(c.boundaries, c.boundary_name_field, c.boundary_unit_field, grid.crs_wkt)


def check_registry(path: Path) -> None:
    """``path`` is a buildwatch case registry, opened read-only (nothing written, not even WAL).

    Raises
    ------
    InputError
        Not SQLite, no ``cases`` layer, or a ``cases`` layer that is not buildwatch's.
    """
    from detector.review.registry import open_registry

    open_registry(path, read_only=True).close()


def resolve_model(cfg: RunConfig) -> tuple[Path | None, str]:
    """The model to run and its registry version: ``model`` if given, else the promoted (or
    ``model_version``) version of the registry ``models``, else the shipped model (None, "")."""
    if cfg.model is not None:
        if cfg.model_version is not None:
            raise ConfigError("give either model (a file) or model_version (a version of the models registry), not both")
        return cfg.model, ""
    if cfg.models is None:
        if cfg.model_version is not None:
            raise ConfigError(f"model_version {cfg.model_version} needs the registry folder (--models or models:)")
        return None, ""
    from detector.night.model_registry import ModelRegistry

    if not Path(cfg.models).is_dir():
        raise ConfigError(f"{cfg.models}: model registry folder not found (create one with 'buildwatch retrain')")
    chosen = ModelRegistry(cfg.models).resolve(cfg.model_version)
    return chosen.model, chosen.version


def _check_exclusions(cfg: RunConfig, current_date: date | None) -> None:
    """Fail before any tile is processed when an exclusion layer is unusable."""
    from detector.night.change import exclusion_layer_info

    for layer in cfg.change.exclusions:
        info = exclusion_layer_info(layer)
        dated = layer.kind == "permitted" and any(
            f and f in list(info["fields"]) for f in (layer.valid_from_field, layer.valid_to_field))
        if dated and current_date is None:
            raise ConfigError(f"{cfg.current}: the current mosaic has no acquisition date (TIFFTAG_DATETIME), so "
                              f"permit validity in {layer.path.name} cannot be checked; set current_date in the config")


@dataclass
class NightRun:
    """What the steps of one run share (main process only)."""

    cfg: RunConfig
    ctx: RunContext
    tiles: list[Tile]
    out_dir: Path
    log_path: Path
    t0: float  # perf_counter at the start of the run
    hashes: dict  # input name -> sha256
    fingerprint: str  # inputs + model + config + software: names the work folder
    started: datetime
    run_id: str
    work_dir: Path
    resumed: dict[str, TileResult]  # finished by an earlier run of the same night
    todo: list[Tile]

    @property
    def baseline_date(self) -> date | None:
        return self.cfg.baseline_date or self.ctx.baseline.acquired

    @property
    def current_date(self) -> date | None:
        return self.cfg.current_date or self.ctx.current.acquired
