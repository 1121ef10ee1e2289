"""``buildwatch doctor``: check an installation before the first unattended night.

Each check prints one line, ``ok``, ``warn`` or ``FAIL``, with what to do; the exit code is 2
when any check fails, so a deployment script (or the systemd unit's ``ExecStartPre``) can
refuse to schedule a broken installation. Nothing is written except a probe file in the
folders checked for write access (removed at once).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

#: GDAL drivers the run needs: read GeoTIFF/COG, write COG (ingest/ortho), write GeoPackage.
RASTER_DRIVERS = ("GTiff", "COG")
VECTOR_DRIVERS = ("GPKG", "GeoJSON", "ESRI Shapefile")
MIN_FREE_BYTES = 1 << 30  # a night's outputs with evidence chips fit comfortably in 1 GB


def _check_gdal() -> list[tuple[str, str]]:
    import pyogrio
    import rasterio

    lines = []
    with rasterio.Env() as env:
        have = env.drivers()
    missing = [d for d in RASTER_DRIVERS if d not in have]
    lines.append(
        (
            "FAIL" if missing else "ok",
            f"GDAL {rasterio.__gdal_version__} (rasterio {rasterio.__version__}): raster drivers "
            + (
                f"missing {', '.join(missing)}; reinstall rasterio wheels"
                if missing
                else ", ".join(RASTER_DRIVERS)
            ),
        )
    )
    vector = pyogrio.list_drivers()
    missing = [d for d in VECTOR_DRIVERS if d not in vector or "w" not in vector[d]]
    lines.append(
        (
            "FAIL" if missing else "ok",
            f"pyogrio {pyogrio.__version__}: vector drivers "
            + (
                f"missing/read-only {', '.join(missing)}; reinstall pyogrio"
                if missing
                else ", ".join(VECTOR_DRIVERS)
            ),
        )
    )
    return lines


def _check_second_view(cfg) -> list[tuple[str, str]]:
    """The second view's building model (``detect.second_view``): checksum and contract."""
    from detector.night.model import DEFAULT_BUILDING_MODEL_PATH

    opts = cfg.detect.second_view
    if not opts.enabled:
        return [
            (
                "ok",
                "second view: off (detect.second_view.enabled: false); the pair model decides alone",
            )
        ]
    path = opts.model or DEFAULT_BUILDING_MODEL_PATH
    if opts.model is None and not path.exists():
        return [
            (
                "warn",
                f"second view: the shipped building model {path} is missing; the pair model decides alone",
            )
        ]
    return [(status, "second view: " + text) for status, text in _check_model(path)]


def _check_model(model: Path | None) -> list[tuple[str, str]]:
    from detector.errors import BuildwatchError, ModelError
    from detector.fileio import check_regular_file
    from detector.night.context import check_model_gsd
    from detector.night.model import DEFAULT_MODEL_PATH, load_model_spec

    path = model or DEFAULT_MODEL_PATH
    try:
        check_regular_file(path, "model file", error=ModelError)
        spec = load_model_spec(path)  # recomputes the sha256 against the .sha256 sidecar
        check_model_gsd(spec)
    except BuildwatchError as exc:
        return [("FAIL", f"model: {exc}")]
    sidecar = spec.path.with_name(spec.path.name + ".sha256")
    verified = (
        "checksum matches " + sidecar.name
        if sidecar.exists()
        else "no .sha256 sidecar to verify against"
    )
    return [
        (
            "ok" if sidecar.exists() else "warn",
            f"model {spec.model_name} ({spec.path}): sha256 {spec.sha256[:12]}…, {verified}; "
            f"{spec.channels}-channel {spec.task}, {spec.imgsz[0]} px at {spec.gsd_m:g} m",
        )
    ]


def _check_onnxruntime(providers: tuple[str, ...]) -> list[tuple[str, str]]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    line = f"ONNX Runtime {ort.__version__}: providers {', '.join(available)}"
    if "CPUExecutionProvider" not in available:
        return [("FAIL", line + "; CPUExecutionProvider missing: reinstall onnxruntime")]
    wanted = [p for p in providers if p not in available]
    used = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    if wanted and used == ["CPUExecutionProvider"] and "CPUExecutionProvider" in providers:
        # the default list (GPU first, then CPU) means "those available": CPU-only is a normal install
        return [("ok", line + f"; runs on CPU ({', '.join(wanted)} not in this install)")]
    if wanted:
        return [
            (
                "warn",
                line + f"; asked for {', '.join(wanted)}, which this install lacks (CPU is used)",
            )
        ]
    return [("ok", line)]


def _check_folder(folder: Path, what: str) -> list[tuple[str, str]]:
    from detector.errors import BuildwatchError
    from detector.fileio import check_output_folder, free_bytes

    try:
        check_output_folder(folder, what=what)
    except BuildwatchError as exc:
        return [("FAIL", str(exc))]
    probe = folder if folder.exists() else next(p for p in folder.absolute().parents if p.exists())
    free = free_bytes(probe)
    status = "ok" if free >= MIN_FREE_BYTES else "FAIL"
    hint = "" if status == "ok" else f" (less than {MIN_FREE_BYTES >> 30} GB: free space)"
    return [(status, f"{what} {folder}: writable, {free / 1e9:.1f} GB free{hint}")]


def _check_inputs(cfg) -> list[tuple[str, str]]:
    """The config's baseline (must be readable: local, or over the network with this machine's
    credentials) and tonight's mosaic (a warning only: it may not have been flown yet)."""
    from detector.errors import BuildwatchError
    from detector.geo.location import apply_network_defaults
    from detector.geo.raster import open_raster

    apply_network_defaults()
    lines = []
    for location, what, missing in (
        (cfg.baseline, "baseline mosaic", "FAIL"),
        (cfg.current, "current mosaic", "warn"),
        (cfg.baseline_dsm, "baseline DSM", "FAIL"),
    ):
        if location is None:
            continue
        try:
            info = open_raster(location, what, elevation=what.endswith("DSM"))
        except BuildwatchError as exc:
            lines.append(
                (
                    missing,
                    str(exc)
                    + ("" if missing == "FAIL" else " (tonight's flight may not be ready)"),
                )
            )
            continue
        lines.append(("ok", f"{what} {location}: {info.width:,} x {info.height:,} px, readable"))
    return lines


def _check_layers(cfg) -> list[tuple[str, str]]:
    """The layers a night reads besides the mosaics, checked as the run checks them before any
    tile: the exclusion layers (:func:`detector.night.context.check_exclusions`, the run's own
    check), the boundary layer (read and reprojected to the baseline's CRS) and an existing case
    registry (its content, read-only)."""
    from detector.errors import BuildwatchError
    from detector.night.context import check_exclusions
    from detector.review.boundaries import load_boundaries
    from detector.review.registry_check import check_registry

    lines = []
    if cfg.change.exclusions:
        try:  # as the run checks them (prepare): readable, a CRS on the Earth, permit dates
            acquired = None
            if cfg.current_date is None and cfg.current is not None:
                from detector.geo.raster import open_raster

                acquired = open_raster(cfg.current, "current mosaic").acquired
            check_exclusions(cfg, cfg.current_date or acquired)
            for layer in cfg.change.exclusions:
                lines.append(("ok", f"exclusion layer ({layer.kind}) {layer.path}: usable"))
        except BuildwatchError as exc:
            lines.append(("FAIL", str(exc)))
    c = cfg.cases
    if c.boundaries is not None:
        try:
            crs = "EPSG:4326"
            if cfg.baseline is not None:
                from detector.geo.raster import open_raster

                crs = open_raster(cfg.baseline, "baseline mosaic").crs_wkt
            from pyproj import CRS

            b = load_boundaries(
                c.boundaries, c.boundary_name_field, c.boundary_unit_field, CRS(crs)
            )
            lines.append(("ok", f"boundary layer {c.boundaries}: {len(b.names)} communities"))
        except BuildwatchError as exc:
            lines.append(("FAIL", str(exc)))
    if c.registry is not None and Path(c.registry).exists():
        try:
            check_registry(Path(c.registry), c.lock_wait_s)
            lines.append(("ok", f"case registry {c.registry}: readable, not locked"))
        except BuildwatchError as exc:
            lines.append(("FAIL", str(exc)))
    return lines


def _check_move(cfg, model_path: Path | None) -> list[tuple[str, str]]:
    """The move between the config's baseline and tonight's mosaic (the mosaic registration model,
    from a coarse read), against what the flights' stated accuracy (``align.flight_accuracy_m``) allows."""
    from detector.errors import BuildwatchError
    from detector.night.align import estimate_mosaic_model, judge_move
    from detector.night.model import DEFAULT_MODEL_PATH, load_model_spec
    from detector.night.mosaic import EpochReader, make_grid, open_mosaic, source_gsd_m

    a = cfg.align
    if not a.enabled or cfg.baseline is None or cfg.current is None:
        return []
    try:
        baseline, current = (
            open_mosaic(cfg.baseline, "baseline"),
            open_mosaic(cfg.current, "current"),
        )
    except BuildwatchError:
        return []  # the inputs check says why
    try:
        gsd = load_model_spec(model_path or DEFAULT_MODEL_PATH).gsd_m  # the run's grid
    except BuildwatchError:
        gsd = source_gsd_m(baseline)
    grid = make_grid(baseline, current, gsd)
    stretches = []
    for info in (baseline, current):
        if info.dtype == "uint8":
            stretches.append(None)
        else:
            reader = EpochReader(info, grid)
            stretches.append(reader.stretch)
            reader.close()
    model = estimate_mosaic_model(
        baseline,
        current,
        grid,
        tuple(stretches),
        max_shift_m=a.max_shift_m,
        min_inliers=a.min_inliers,
        min_spread=a.min_spread,
    )
    status, text = judge_move(model, a.flight_accuracy_m)
    if not model.ok and model.found:
        text += f"; the registration refuses it ({model.reason})"
        status = "warn"
    return [({"ok": "ok", "warn": "warn", "unknown": "warn"}[status], f"registration: {text}")]


def _check_dask(scheduler: str | None) -> list[tuple[str, str]]:
    try:
        import distributed
    except ImportError:
        status = "FAIL" if scheduler else "ok"
        return [
            (
                status,
                "Dask not installed (only needed for --scheduler: pip install 'buildwatch[dask]')",
            )
        ]
    if not scheduler:
        return [("ok", f"Dask distributed {distributed.__version__} installed")]
    from detector.errors import BuildwatchError
    from detector.night.distributed import connect

    try:
        client = connect(scheduler)
    except BuildwatchError as exc:
        return [("FAIL", str(exc))]
    try:
        workers = client.scheduler_info().get("workers", {})
    finally:
        client.close()
    status = "ok" if workers else "FAIL"
    return [
        (
            status,
            f"Dask scheduler {scheduler}: {len(workers)} worker(s)"
            + ("" if workers else "; start workers"),
        )
    ]


@click.command("doctor")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The nightly config: its model, output folder, registry and scheduler are checked.",
)
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    help="ONNX model to verify (default: the config's or shipped).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Output folder to check for write access and free space.",
)
@click.option(
    "--scheduler", type=str, help="Dask scheduler to reach (default: the config's, if any)."
)
def doctor(config_path, model, out, scheduler):
    """Check GDAL drivers, the model's checksum, ONNX Runtime providers, the config's inputs (local or
    URLs) and the move between them, write access and free space."""
    from detector.cli import error_log_path
    from detector.config import RunConfig, load_config

    cfg = load_config(config_path) if config_path else RunConfig()
    if model is None:  # the model the run would use: the file, the registry's version, or shipped
        from detector.night.context import resolve_model

        model = resolve_model(cfg)[0]
    out = out or cfg.out
    scheduler = scheduler or cfg.scheduler
    lines = [
        (
            "ok",
            f"buildwatch {__import__('detector').__version__}, Python {os.sys.version.split()[0]}, "
            f"{os.cpu_count()} CPU cores",
        )
    ]
    checks = [
        ("GDAL", _check_gdal),
        ("model", lambda: _check_model(model)),
        ("second view", lambda: _check_second_view(cfg)),
        ("ONNX Runtime", lambda: _check_onnxruntime(tuple(cfg.detect.providers))),
    ]
    if cfg.baseline is not None or cfg.current is not None:
        checks.append(("inputs", lambda: _check_inputs(cfg)))
        checks.append(("registration", lambda: _check_move(cfg, model)))
    if out is not None:
        checks.append(("output folder", lambda: _check_folder(Path(out), "output folder")))
    if cfg.cases.registry is not None:
        checks.append(
            (
                "registry",
                lambda: _check_folder(Path(cfg.cases.registry).parent, "case registry folder"),
            )
        )
    if cfg.change.exclusions or cfg.cases.boundaries is not None or cfg.cases.registry is not None:
        checks.append(("layers", lambda: _check_layers(cfg)))
    views = cfg.detect.second_view.baseline_cache
    if views is not None and cfg.detect.second_view.enabled:
        checks.append(
            ("baseline views", lambda: _check_folder(Path(views), "baseline view cache folder"))
        )
    checks.append(("error log", lambda: _check_folder(error_log_path().parent, "error log folder")))
    checks.append(("Dask", lambda: _check_dask(scheduler)))
    for name, check in checks:
        try:
            lines += check()
        except Exception as exc:  # noqa: BLE001 - a broken component is a FAIL line, not a crash
            lines.append(
                ("FAIL", f"{name}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            )
    for status, text in lines:
        click.echo(f"{status:<4} {text}")
    failed = sum(s == "FAIL" for s, _ in lines)
    if failed:
        from detector.errors import BuildwatchError

        raise BuildwatchError(f"doctor: {failed} check(s) failed; fix the FAIL lines above")
