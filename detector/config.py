"""One validated run configuration (pydantic, ``extra="forbid"``).

A YAML file (``configs/*.yaml``) may hold every setting; CLI flags override it. The
resolved config is stored in the output's ``runs`` table, so a run can be reproduced.

Paths: a relative path in a run config file is relative to the folder of that file, wherever
the command is run from (:func:`resolve_relative_paths`); a relative path given on the command
line is relative to the working folder. Training configs follow another rule, for a reason:
:func:`load_config` says both and why.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from detector.errors import ConfigError
from detector.fileio import apply_dotted_overrides, is_inside, read_yaml_mapping, same_file
from detector.geo.location import as_location, is_remote


class _Strict(BaseModel):
    # no inf/nan: every number is a threshold, a size or a distance ('.inf' m of shift overflows)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


#: Most worker processes / ONNX threads a setting may ask for: a few per core. More only
#: oversubscribes the machine (``detect.intra_op_threads: 100000`` would hang it).
MAX_THREADS = 4 * (os.cpu_count() or 1)


def _bounded_threads(value: int) -> int:
    if value > MAX_THREADS:
        raise ValueError(
            f"{value} is more than 4 x the {os.cpu_count()} CPU cores ({MAX_THREADS}); "
            "more would only oversubscribe the machine"
        )
    return value


def _no_empty_path(value):
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty; give a path (or leave the setting out)")
    return value


def _raster_location(value):
    if not isinstance(value, (str, Path)):
        raise ValueError(f"expected a path or URL, got {type(value).__name__}")
    return as_location(value)


class SettingConflict(ValueError):
    """A setting that contradicts another, or means nothing without one (raised by a model
    validator): ``key`` is the dotted setting to name, relative to the model raising it."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


#: A user string that becomes part of a file name (``cases.district_prefix`` starts every case ID,
#: which names the case's evidence PNG): letters, digits, ``_`` and ``-`` only, so that no setting
#: can make a path (``../``, ``/``, a backslash, a drive letter) or a hidden file.
FILE_NAME_PART = re.compile(r"[\w-]")
MAX_FILE_NAME_PART = 32


def _file_name_part(value: str) -> str:
    if len(value) > MAX_FILE_NAME_PART:
        raise ValueError(f"is {len(value)} characters long; use at most {MAX_FILE_NAME_PART}")
    bad = sorted({ch for ch in value if not FILE_NAME_PART.fullmatch(ch)})
    if bad:
        raise ValueError(
            f"{value!r} becomes part of file names and may hold only letters, digits, '_' and '-' "
            f"(not {' '.join(repr(ch) for ch in bad)}); remove those"
        )
    return value


#: A string setting that becomes part of a file name (see :data:`FILE_NAME_PART`).
FileNamePart = Annotated[str, AfterValidator(_file_name_part)]


#: A raster input: a local path, or a URL / GDAL ``/vsi...`` path kept verbatim (see
#: :mod:`detector.geo.location`; ``pathlib`` would turn ``https://`` into ``https:/``).
RasterLocation = Annotated[
    Any, PlainValidator(_raster_location), PlainSerializer(str, return_type=str, when_used="json")
]


class ExclusionLayer(_Strict):
    """An OGR vector file (any CRS) whose polygons explain away a candidate."""

    path: Path
    kind: Literal["permitted", "known_building"]
    action: Literal["drop", "tag"] = "tag"
    min_overlap: float = Field(
        0.3, ge=0, le=1, description="fraction of the candidate's area covered"
    )
    valid_from_field: str | None = "valid_from"  # permits only: dates compared to current_date
    valid_to_field: str | None = "valid_to"
    id_field: str | None = None


class SecondViewConfig(_Strict):
    """Two views, one verdict (:mod:`detector.night.second_view`): a single-epoch (3-channel) building
    model looks at each epoch of a tile on its own and checks the pair model's change candidates."""

    enabled: bool = Field(True, description="False: the pair model decides alone")
    model: Path | None = Field(
        None,
        description="the 3-channel building model (ONNX, 'buildwatch export'); "
        "None = the shipped one (detector/models/buildwatch-buildings.onnx), used with "
        "any pair model of the same tile size and GSD",
    )
    conf: float | None = Field(
        None,
        gt=0,
        le=1,
        description="a building seen tonight; None = the model's "
        "recommendation. The baseline is asked at a quarter of it",
    )
    add: bool = Field(
        True,
        description="also report structures tonight that the baseline does not show and "
        "no pair candidate covers (the single-epoch rule), tagged 'second_view'",
    )
    add_conf: float | None = Field(
        None,
        gt=0,
        le=1,
        description="confidence a structure needs to be added on "
        "the second view's word alone; None = the building confidence a two-view "
        "model chose on its validation split, 0.3 with a separate building model "
        "(MODEL_CARD.md, 'Second view')",
    )
    confirm: bool = Field(
        False,
        description="keep a pair candidate of a structure class only where tonight's image "
        "shows a structure, and drop a new building the baseline already shows as large "
        "(off by default: it drops real finds on drone and synthetic pairs, MODEL_CARD.md)",
    )
    confirm_below: float = Field(
        1.0,
        gt=0,
        le=1,
        description="pair candidates at or above this confidence keep "
        "without confirmation (1: every candidate is checked)",
    )
    baseline_cache: Path | None = Field(
        None,
        description="folder where the building model's view of each "
        "baseline tile is kept between nights (the baseline does not change): "
        "later nights read it instead of running the model again; None = no "
        "cache. One subfolder per baseline, model and setting",
    )
    cover: float = Field(
        0.3,
        gt=0,
        le=1,
        description="share of the smaller of candidate and building box that "
        "must overlap for the building to confirm the candidate, or for a pair candidate to "
        "cover an addition",
    )


class DetectConfig(_Strict):
    conf: float | None = Field(
        None, gt=0, le=1, description="None = the model's recommendation; 0 would keep every anchor"
    )
    iou: float | None = Field(None, ge=0, le=1)
    overlap_px: int | None = Field(None, ge=0, description="None = the model's recommendation")
    batch_size: int = Field(4, ge=1, le=256)
    providers: list[str] = [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]  # those available are used
    intra_op_threads: int = Field(1, ge=1)
    second_view: SecondViewConfig = SecondViewConfig()

    _threads = field_validator("intra_op_threads")(_bounded_threads)


class AlignConfig(_Strict):
    """Co-registration of tonight's mosaic with the baseline (see ``detector/night/align.py``)."""

    enabled: bool = Field(True, description="off only for comparisons: users' runs register")
    max_shift_m: float = Field(
        10.0,
        ge=0,
        description="largest move between the epochs found and corrected "
        "(m). 10 covers flights without RTK/PPK: plain GNSS puts each flight 2-5 m off, "
        "so two of them up to 10 m apart; searched coarse to fine, so a wide range costs "
        "no more than a narrow one",
    )
    flight_accuracy_m: float = Field(
        3.0,
        gt=0,
        description="horizontal accuracy of each flight's georeferencing "
        "(m): plain GNSS 2-5, RTK/PPK or ground control 0.05-0.1. A night whose "
        "mosaic is moved from the baseline by more than twice this (both flights off, "
        "in opposite directions) is warned about by the run and 'buildwatch doctor'",
    )
    tile_tolerance_m: float = Field(
        0.75,
        ge=0,
        description="a tile's own estimate further than this from the "
        "mosaic model is not trusted; the model is used",
    )
    min_quality: float = Field(
        0.1,
        ge=0,
        le=1,
        description="peak distinctiveness (0..1) a tile's own estimate "
        "needs to refine the mosaic model",
    )
    min_inliers: int = Field(
        4, ge=2, description="blocks that must agree for the mosaic model to be used"
    )
    min_spread: float = Field(
        0.25,
        ge=0,
        le=1,
        description="share of the pair's extent the agreeing blocks "
        "must span to fix a rotation (else a pure shift)",
    )
    on_failure: Literal["flag", "georef"] = Field(
        "flag",
        description="a tile with neither a usable own estimate nor a mosaic model: 'flag' it (no "
        "candidates) or trust the georeferencing ('georef': processed unshifted, for RTK/PPK or GCP flights)",
    )


class ChangeConfig(_Strict):
    min_area_m2: float = Field(4.0, ge=0)
    max_area_m2: float = Field(5000.0, gt=0)
    max_structure_m: float = Field(
        32.0,
        gt=0,
        description="structures up to this size are always seen whole by the "
        "tile that reports them (the tile overlap covers it); larger ones may be cut at a "
        'tile border. 24 m: held-out F1 as with 32 m, 13 % fewer tiles (docs/benchmarks.md, "Tile overlap")',
    )
    merge_iou: float = Field(0.3, ge=0, le=1)
    merge_ioa: float = Field(0.6, ge=0, le=1)
    # single-epoch (3-channel) models: a current structure is new when the baseline has no
    # structure overlapping it by more than this IoU and the pixels inside it changed.
    baseline_match_iou: float = Field(0.2, ge=0, le=1)
    min_pixel_change: float = Field(0.15, ge=0, le=1)
    exclusions: list[ExclusionLayer] = []

    @model_validator(mode="after")
    def _area_order(self):
        if self.min_area_m2 > self.max_area_m2:
            raise SettingConflict(
                "min_area_m2",
                f"{self.min_area_m2:g} m² is above max_area_m2 ({self.max_area_m2:g} m²), so no "
                "candidate could be kept; lower min_area_m2 or raise max_area_m2",
            )
        return self


HeightUnit = Literal["auto", "metre", "foot", "us_survey_foot"]


class HeightConfig(_Strict):
    """Height change from a DSM pair (``baseline_dsm`` / ``current_dsm``; see ``detector/night/height.py``)."""

    min_gain_m: float = Field(
        2.5, gt=0, description="height gain that counts as a new storey or structure"
    )
    min_area_m2: float = Field(6.0, ge=0, description="smallest region of gain reported")
    noise_k: float = Field(
        3.0, gt=0, description="a pixel's gain must exceed this many times its noise"
    )
    noise_floor_m: float = Field(
        0.1, gt=0, description="lower bound of the DSM noise estimated per tile"
    )
    edge_tolerance_m: float = Field(
        0.5,
        ge=0,
        description="horizontal DSM smear / residual misregistration: at "
        "steep edges the noise grows by slope x this",
    )
    max_vertical_offset_m: float = Field(
        150.0, gt=0, description="largest datum offset between the surveys accepted"
    )
    existing_roof_m: float = Field(
        2.0,
        ge=0,
        description="baseline height above ground that makes a region of gain "
        "an extension of an existing roof (else a new building)",
    )
    confirm_boost: float = Field(
        0.5,
        ge=0,
        le=1,
        description="an image candidate with height gain: confidence 1 - (1 - c) * (1 - boost)",
    )
    no_change_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="an image candidate with no height change where "
        "the DSMs cover it: confidence times this (1 = off)",
    )
    no_change_classes: list[str] = ["new_building", "extension"]
    max_greenness: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of green pixels (current image) above which "
        "a region of gain is vegetation growth, not a structure",
    )
    baseline_units: HeightUnit = "auto"  # auto = what the file declares, else metres
    current_units: HeightUnit = "auto"


class CasesConfig(_Strict):
    _paths = field_validator("registry", "boundaries", mode="before")(_no_empty_path)

    registry: Path | None = None  # cases.gpkg; None = do not update a case registry
    district_prefix: FileNamePart = ""  # starts every case ID, which names its evidence PNG
    boundaries: Path | None = None  # communities/grids, any OGR format and CRS
    boundary_name_field: str = "name"
    boundary_unit_field: str | None = "unit"
    match_iou: float = Field(0.2, ge=0, le=1)
    lock_wait_s: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="longest wait, in total, for another program (QGIS) to release the "
        "registry's write lock before the run gives up (exit 2, naming the holder)",
    )
    evidence: bool = True
    report: bool = True


class RunConfig(_Strict):
    baseline: RasterLocation | None = None  # a path, URL (s3://, https://...) or GDAL /vsi... path
    current: RasterLocation | None = None
    out: Path | None = None
    model: Path | None = (
        None  # None = the promoted version of ``models``, else the shipped default model
    )
    models: Path | None = (
        None  # model registry folder (detector.night.model_registry); None = not used
    )
    model_version: FileNamePart | None = (
        None  # a version of ``models`` to run instead of the promoted one (a folder name)
    )
    baseline_date: date | None = None  # None = from the raster's TIFFTAG_DATETIME (else unknown)
    current_date: date | None = None
    baseline_dsm: RasterLocation | None = (
        None  # DSM of the baseline survey (optional; both or neither)
    )
    current_dsm: RasterLocation | None = None
    workers: int = Field(2, ge=1)
    min_coverage: float = Field(
        0.01,
        ge=0,
        le=1,
        description="refuse a current mosaic holding imagery for less "
        "than this share of the baseline (an unprocessed flight is not 'nothing new')",
    )
    scheduler: str | None = Field(
        None,
        description="Dask scheduler address (tcp://host:8786): tiles run on "
        "that cluster's workers (pip install 'buildwatch[dask]'); None = local processes",
    )
    resume: bool = True
    progress: bool = True
    detect: DetectConfig = DetectConfig()
    align: AlignConfig = AlignConfig()
    change: ChangeConfig = ChangeConfig()
    cases: CasesConfig = CasesConfig()
    height: HeightConfig = HeightConfig()

    _paths = field_validator(
        "baseline", "current", "out", "model", "baseline_dsm", "current_dsm", mode="before"
    )(_no_empty_path)
    _workers = field_validator("workers")(_bounded_threads)

    @model_validator(mode="after")
    def _settings_together(self):
        """Settings checked against each other: dates in order, an option that needs another,
        and no output that is an input (or another output)."""
        problem = date_order_problem(self.baseline_date, self.current_date)
        if problem:
            raise SettingConflict("current_date", f"{problem}; swap them or fix the dates")
        if self.cases.boundaries is not None and self.cases.registry is None:
            raise SettingConflict(
                "cases.boundaries",
                "is set but cases.registry is not: the boundary layer only names the "
                "communities of cases; give --cases (cases.registry) too, or drop --boundaries",
            )
        for side in ("baseline", "current"):
            units = getattr(self.height, f"{side}_units")
            if units != "auto" and getattr(self, f"{side}_dsm") is None:
                raise SettingConflict(
                    f"height.{side}_units",
                    f"is {units} but {side}_dsm is not given: the unit is that DSM's; give "
                    f"--{side}-dsm ({side}_dsm) or leave the unit 'auto'",
                )
        _check_distinct_paths(self)
        return self


#: Files a run writes in its output folder, and folders it keeps there (checked before the run by
#: :func:`detector.run.prepare.prepare`; no input or registry may be one of them).
RUN_OUTPUT_FILES = ("candidates.gpkg", "buildwatch.log", "report.html", "report.csv")
RUN_OUTPUT_FOLDERS = ("work",)


def date_order_problem(baseline: date | None, current: date | None) -> str | None:
    """The one rule for the two epochs' dates: where both are known, tonight's is not before the
    baseline's (the same day is allowed: a morning and an evening flight). None when in order."""
    if baseline is not None and current is not None and current < baseline:
        return f"the current date {current} is before the baseline date {baseline}"
    return None


def _local_paths(cfg: RunConfig) -> list[tuple[str, Path]]:
    """The run's local input files as (dotted key, path); URLs are not files here."""
    found = [
        ("baseline", cfg.baseline),
        ("current", cfg.current),
        ("baseline_dsm", cfg.baseline_dsm),
        ("current_dsm", cfg.current_dsm),
        ("model", cfg.model),
        ("detect.second_view.model", cfg.detect.second_view.model),
        ("cases.boundaries", cfg.cases.boundaries),
    ]
    found += [(f"change.exclusions.{i}.path", x.path) for i, x in enumerate(cfg.change.exclusions)]
    return [(key, Path(p)) for key, p in found if p is not None and not is_remote(p)]


def _check_distinct_paths(cfg: RunConfig) -> None:
    """No file the run writes is a file it reads, and the registry is not one of the run's own
    outputs: a run must never rewrite its input, nor fail after every tile because its registry
    is its ``candidates.gpkg``."""
    inputs = _local_paths(cfg)
    rasters = [
        (k, p) for k, p in inputs if k in ("baseline", "current", "baseline_dsm", "current_dsm")
    ]
    for i, (a, pa) in enumerate(rasters):  # four different surveys/products: four files
        for b, pb in rasters[i + 1 :]:
            if same_file(pa, pb):
                what = "tonight's survey" if b.startswith("current") else "the DSM"
                raise SettingConflict(b, f"{pb} is the same file as {a} ({pa}); give {what} as {b}")
    registry = cfg.cases.registry
    for key, source in inputs:
        if registry is not None and same_file(registry, source):
            raise SettingConflict(
                "cases.registry",
                f"{registry} is also the input {key}; the run rewrites the registry: give it "
                "a file of its own",
            )
        for name in RUN_OUTPUT_FILES if cfg.out is not None else ():
            if same_file(source, cfg.out / name):
                raise SettingConflict(
                    key,
                    f"{source} is the run's own output {name} in {cfg.out}, which the run "
                    "rewrites; copy it elsewhere and give the copy, or give another --out",
                )
    if registry is None or cfg.out is None:
        return
    for name in RUN_OUTPUT_FILES:
        if same_file(registry, cfg.out / name):
            raise SettingConflict(
                "cases.registry",
                f"{registry} is the run's own output {name}; give the case registry its own file "
                f"(e.g. {Path(cfg.out).parent / 'cases.gpkg'})",
            )
    if same_file(registry, cfg.out):
        raise SettingConflict(
            "cases.registry",
            f"{registry} is the run's output folder; give the case registry a file of its own "
            f"(e.g. {Path(cfg.out) / 'cases.gpkg'})",
        )
    for name in RUN_OUTPUT_FOLDERS:
        if is_inside(registry, cfg.out / name):
            raise SettingConflict(
                "cases.registry",
                f"{registry} is inside the run's {name} folder {cfg.out / name}, which the run "
                f"rewrites; give the case registry a file of its own (e.g. {Path(cfg.out) / 'cases.gpkg'})",
            )


#: Every path setting of a run, as dotted keys (``*``: each item of a list).
RUN_PATH_KEYS = (
    "baseline",
    "current",
    "out",
    "model",
    "models",
    "baseline_dsm",
    "current_dsm",
    "detect.second_view.model",
    "detect.second_view.baseline_cache",
    "cases.registry",
    "cases.boundaries",
    "change.exclusions.*.path",
)


def resolve_relative_paths(data: dict, base: Path, keys=RUN_PATH_KEYS) -> None:
    """The rule for paths in a run config file: a relative one is relative to the file's folder
    ``base`` (wherever the command is run from); absolute paths and URLs are left alone.

    Parameters
    ----------
    data : dict
        The file's settings, changed in place.
    base : Path
        The config file's folder.
    keys : dotted keys
        The path settings (``"cases.registry"``; ``*`` for each item of a list).
    """

    def fix(node, parts: list[str]) -> None:
        if not parts:
            return
        head, rest = parts[0], parts[1:]
        if head == "*":
            for item in node if isinstance(node, list) else []:
                fix(item, rest)
            return
        if not isinstance(node, dict):
            return
        if rest:
            fix(node.get(head), rest)
            return
        value = node.get(head)
        if (
            isinstance(value, str)
            and value
            and not is_remote(value)
            and not Path(value).is_absolute()
        ):
            node[head] = os.path.normpath(base / value)  # configs/../out -> out

    for key in keys:
        fix(data, key.split("."))


def load_config(path: Path | str | None, overrides: dict | None = None) -> RunConfig:
    """Read a YAML config (optional) and apply CLI overrides (None values are ignored).

    Paths in config files, one rule per kind of file: in a run config (``configs/*.yaml``,
    :func:`detector.config.load_config`) a relative path is relative to the folder of that file,
    wherever the command is run from (:func:`detector.config.resolve_relative_paths`); in a
    training config (``configs/train/*.yaml``, :func:`training.config.load_train_config`) a
    relative path is relative to the working folder, which is the repository root. A relative
    path given on the command line is relative to the working folder, as for any command.

    Why they differ: a run config is an operator's file, kept with a district's data and run by
    cron from any folder; a training config describes a build of this repository (datasets under
    ``runs/``, architectures under ``training/arch/``, the shipped models under
    ``detector/models/``, the data in ``../shared/data`` beside the checkout), and every
    documented training command is run from the repository root. ``train.model`` may also be an
    ultralytics model name, not a file.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = read_yaml_mapping(path)
        resolve_relative_paths(data, path.parent)
    apply_dotted_overrides(data, overrides)  # "detect.conf" sets a nested setting
    return validate_settings(RunConfig, data, path)


def validate_settings(model: type[BaseModel], data: dict, source: Path | str | None):
    """``model.model_validate(data)``, with the first problem as one :class:`ConfigError` line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"]]
        msg = first["msg"]
        conflict = (first.get("ctx") or {}).get("error")
        if isinstance(conflict, SettingConflict):  # a model validator names its setting
            loc, msg = [*loc, conflict.key], str(conflict)
        where = f"{source}: " if source else ""
        more = exc.error_count() - 1
        also = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise ConfigError(f"{where}setting '{'.'.join(loc)}': {msg}{also}") from None
