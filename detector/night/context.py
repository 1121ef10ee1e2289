"""The night's context: what every tile worker gets, and the checks of the night's inputs.

:class:`RunContext` is everything a worker needs to process any tile (picklable: a local pool
or a Dask cluster gets it once). It is built by :func:`detector.run.prepare.prepare`, which
checks everything that can be checked before a tile is processed; the checks of the night's own
inputs are here: every input is a regular readable file (:func:`check_inputs`), the model
(GSD within :data:`MODEL_GSD_RANGE_M`, :func:`check_model_gsd`; the model registry,
:func:`resolve_model`; the second view's building model, :func:`load_second_view`), the
mosaics' resolution against the model's (:func:`check_source_gsd`), the size of the tile grid
(:data:`MAX_TILES`, :func:`count_tiles`) and the exclusion layers (:func:`check_exclusions`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from detector.config import RunConfig
from detector.errors import ConfigError, InputError, ModelError
from detector.fileio import check_regular_file
from detector.geo.dsm import DsmPair
from detector.geo.location import is_remote
from detector.night.align import MosaicModel
from detector.night.model import (
    DEFAULT_BUILDING_MODEL_PATH,
    DEFAULT_MODEL_PATH,
    ModelSpec,
    load_model_spec,
)
from detector.night.mosaic import MosaicInfo, WorkingGrid, source_gsd_m

log = logging.getLogger(__name__)

#: Working GSDs a model may declare (``buildwatch_gsd_m``): a drone model works at centimetres
#: to a metre or two; 0.0001 m would make a 4 km² mosaic a 20-billion-pixel grid.
MODEL_GSD_RANGE_M = (0.01, 5.0)
#: A mosaic coarser than this many times the model's GSD cannot show what the model looks for.
MAX_SOURCE_GSD_RATIO = 8.0
#: Largest tile grid one run takes (~3,000 km² at 0.25 m, 512 px tiles): bounded memory and time.
MAX_TILES = 250_000


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
    mosaic_model: MosaicModel | None = (
        None  # the epochs' similarity transform; tiles refine it or fall back to it
    )
    dsm: DsmPair | None = (
        None  # the DSM pair (detector.geo.dsm, made by detector.night.height), when the run has one
    )
    model_version: str = (
        ""  # the model registry version run ("" = a model given by path, or the shipped one)
    )
    second: ModelSpec | None = None  # the second view's building model (detect.second_view.model)
    baseline_views: Path | None = (
        None  # where this night's baseline views are kept (detector.night.view_cache)
    )


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
            raise ModelError(
                f"{path}: detect.second_view.model not found; fix the path, or leave the key out for "
                "the shipped building model"
            )
        log.warning(
            "the shipped building model %s is missing: the pair model decides alone", path.name
        )
        return None
    second = load_model_spec(path)
    problem = ""
    if second.is_pair:
        problem = (
            "must be a single-epoch (3-channel) building model; this one takes a 6-channel pair"
        )
    elif second.imgsz != spec.imgsz or abs(second.gsd_m - spec.gsd_m) > 1e-9:
        problem = (
            f"works on {second.imgsz[0]} px tiles at {second.gsd_m:g} m, the pair model {spec.path.name} on "
            f"{spec.imgsz[0]} px at {spec.gsd_m:g} m; export it for the same tile size and GSD"
        )
    if problem and opts.model is not None:
        raise ModelError(f"{second.path}: detect.second_view.model {problem}")
    if problem:
        log.warning("second view left out: the shipped building model %s", problem)
        return None
    return second


def check_inputs(cfg: RunConfig) -> None:
    """Every input the run reads is a regular, readable file (no folder, FIFO or device: a FIFO
    would block the first read forever)."""
    for raster, what in (
        (cfg.baseline, "baseline mosaic"),
        (cfg.current, "current mosaic"),
        (cfg.baseline_dsm, "baseline DSM"),
        (cfg.current_dsm, "current DSM"),
    ):
        if raster is not None and not is_remote(raster):  # a URL is checked when it is opened
            check_regular_file(raster, what)
    check_regular_file(cfg.model or DEFAULT_MODEL_PATH, "model file", error=ModelError)
    for layer in cfg.change.exclusions:
        check_regular_file(layer.path, f"exclusion layer ({layer.kind})")
    if cfg.cases.boundaries is not None:
        check_regular_file(cfg.cases.boundaries, "boundary layer (cases.boundaries)")
    if cfg.scheduler:
        from detector.night.distributed import check_scheduler

        check_scheduler(cfg.scheduler)


def check_model_gsd(spec: ModelSpec) -> None:
    """The model's working GSD is within :data:`MODEL_GSD_RANGE_M`."""
    lo, hi = MODEL_GSD_RANGE_M
    if not lo <= spec.gsd_m <= hi:
        raise ModelError(
            f"{spec.path}: model metadata buildwatch_gsd_m = {spec.gsd_m:g} m is outside {lo:g}-{hi:g} m; "
            "the metadata is wrong: re-export the model"
        )


def check_source_gsd(info: MosaicInfo, spec: ModelSpec) -> None:
    """A mosaic far coarser than the model's GSD (a thumbnail, a 100 m product) is refused."""
    gsd = source_gsd_m(info)
    if gsd > MAX_SOURCE_GSD_RATIO * spec.gsd_m:
        raise InputError(
            f"{info.path}: pixels are {gsd:.3g} m, {gsd / spec.gsd_m:.0f}x coarser than the model's "
            f"{spec.gsd_m:g} m (at most {MAX_SOURCE_GSD_RATIO:g}x); is this the full-resolution "
            "orthomosaic?"
        )


def count_tiles(grid: WorkingGrid, size: int, overlap: int) -> int:
    """Number of tiles :func:`iter_tiles` yields, without making them."""
    stride = (size - overlap) * grid.gsd
    cols = (
        math.floor((grid.left + grid.width * grid.gsd - 1e-9) / stride)
        - math.floor(grid.left / stride)
        + 1
    )
    rows = (
        math.floor((-(grid.top - grid.height * grid.gsd) - 1e-9) / stride)
        - math.floor(-grid.top / stride)
        + 1
    )
    return cols * rows


def resolve_model(cfg: RunConfig) -> tuple[Path | None, str]:
    """The model to run and its registry version: ``model`` if given, else the promoted (or
    ``model_version``) version of the registry ``models``, else the shipped model (None, "")."""
    if cfg.model is not None:
        if cfg.model_version is not None:
            raise ConfigError(
                "give either model (a file) or model_version (a version of the models registry), not both"
            )
        return cfg.model, ""
    if cfg.models is None:
        if cfg.model_version is not None:
            raise ConfigError(
                f"model_version {cfg.model_version} needs the registry folder (--models or models:)"
            )
        return None, ""
    from detector.night.model_registry import ModelRegistry

    if not Path(cfg.models).is_dir():
        raise ConfigError(
            f"{cfg.models}: model registry folder not found (create one with 'buildwatch retrain')"
        )
    chosen = ModelRegistry(cfg.models).resolve(cfg.model_version)
    return chosen.model, chosen.version


def check_exclusions(cfg: RunConfig, current_date: date | None) -> None:
    """Fail before any tile is processed when an exclusion layer is unusable."""
    from detector.geo.crs import check_crs
    from detector.night.change import exclusion_layer_info

    for layer in cfg.change.exclusions:
        info = exclusion_layer_info(layer)
        check_crs(info["crs"], f"{layer.path}: exclusion layer ({layer.kind})")
        dated = layer.kind == "permitted" and any(
            f and f in list(info["fields"]) for f in (layer.valid_from_field, layer.valid_to_field)
        )
        if dated and current_date is None:
            raise ConfigError(
                f"{cfg.current}: the current mosaic has no acquisition date (TIFFTAG_DATETIME), so "
                f"permit validity in {layer.path.name} cannot be checked; set current_date in the config"
            )
