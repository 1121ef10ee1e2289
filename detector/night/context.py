"""The run context: validated inputs, model, working grid and tile list of one night.

:func:`prepare` checks everything that can be checked before a tile is processed (inputs,
model, tile overlap, exclusion layers, the mosaic registration model) and returns a picklable
:class:`RunContext` that every tile worker gets; :class:`NightRun` is what the main
process's steps of one run share.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from detector.config import RunConfig
from detector.errors import ConfigError, InputError, ModelError
from detector.night.align import MosaicModel, estimate_mosaic_model
from detector.night.height import DsmPair, prepare_dsms
from detector.night.model import ModelSpec, load_model_spec
from detector.night.mosaic import EpochReader, MosaicInfo, WorkingGrid, make_grid, open_mosaic
from detector.night.tiles import iter_tiles
from detector.types import Tile, TileResult

log = logging.getLogger(__name__)


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


def prepare(cfg: RunConfig) -> tuple[RunContext, list[Tile]]:
    """Validate inputs and model, build the working grid and the tile list."""
    if cfg.baseline is None or cfg.current is None or cfg.out is None:
        raise ConfigError("need --baseline, --current and --out (or the same keys in --config)")
    baseline = open_mosaic(cfg.baseline, "baseline")
    current = open_mosaic(cfg.current, "current")
    if baseline.is_rgb != current.is_rgb:
        raise InputError(f"{current.path}: current mosaic has {current.colour_bands} colour band(s) but the baseline "
                         f"{baseline.path.name} has {baseline.colour_bands}: both epochs must be RGB, or both panchromatic")
    model_path, model_version = resolve_model(cfg)
    spec = load_model_spec(model_path)
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
    _check_exclusions(cfg, cfg.current_date or current.acquired)
    grid = make_grid(baseline, current, spec.gsd_m)
    ctx = RunContext(
        baseline=baseline, current=current, grid=grid, spec=spec, config=cfg, size=size, overlap=overlap,
        conf=cfg.detect.conf if cfg.detect.conf is not None else spec.conf,
        iou=cfg.detect.iou if cfg.detect.iou is not None else spec.iou, model_version=model_version,
    )
    ctx.dsm = prepare_dsms(cfg, grid)
    for info, attr in ((baseline, "stretch_baseline"), (current, "stretch_current")):
        if info.dtype != "uint8":  # computed once here, handed to every worker
            reader = EpochReader(info, grid)
            setattr(ctx, attr, reader.stretch)
            reader.close()
    if cfg.align.enabled:
        a = cfg.align
        ctx.mosaic_model = estimate_mosaic_model(baseline, current, grid, (ctx.stretch_baseline, ctx.stretch_current),
                                                 max_shift_m=a.max_shift_m, min_inliers=a.min_inliers,
                                                 min_spread=a.min_spread)
    tiles = list(iter_tiles(grid, size, overlap))
    return ctx, tiles


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
