"""``buildwatch evaluate``: score the runtime (``detector.run.run_pipeline``) on labelled pairs.

Layouts
    ``synth``  ``DIR/<scene>/baseline.tif, current.tif, truth.geojson`` (as ``buildwatch synth``
               writes them; truth property ``class``); scored per class and class-agnostic.
    ``levir``  ``DIR/A/<name>.png, DIR/B/<name>.png, DIR/label/<name>.png`` (0/255), not
               georeferenced: each pair is written as GeoTIFFs in EPSG:32650 with square pixels
               of ``gsd_m`` (0.5 m), the runtime runs on them, and candidates are rasterised
               back to the pixel grid. Truth = 4-connected components >= 10 m²; class-agnostic.

Object metrics: one-to-one matching at mask IoU >= 0.3 and >= 0.5; pixel F1/IoU of the union
of candidate polygons. Writes JSON and a Markdown table beside it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from detector.errors import InputError
from detector.fileio import atomic_write_text
from detector.types import CHANGE_CLASSES
from training.metrics import (
    ObjectScores,
    PixelScores,
    mask_components,
    object_scores,
    pixel_scores,
    polygon_masks,
    union_mask,
)

IOU_THRESHOLDS = (0.3, 0.5)
MIN_TRUTH_AREA_M2 = 10.0


def _geoms_to_pixel_polys(geoms, transform) -> list[np.ndarray]:
    inv = ~transform
    out = []
    for geom in geoms:
        parts = getattr(geom, "geoms", [geom])
        for part in parts:
            if part.is_empty or part.geom_type != "Polygon":
                continue
            xy = np.asarray(part.exterior.coords)
            cols, rows = inv * (xy[:, 0], xy[:, 1])
            out.append(np.column_stack([cols, rows]))
    return out


def _run_runtime(
    baseline: Path,
    current: Path,
    model: Path | None,
    work: Path,
    conf: float | None,
    align: bool = True,
    run_config: Path | None = None,
):
    """Run the nightly pipeline on one pair (with the settings of ``run_config``, a nightly config,
    when given); return the candidates GeoDataFrame."""
    import geopandas as gpd

    from detector.config import load_config
    from detector.run import run_pipeline

    overrides = {
        "baseline": str(baseline),
        "current": str(current),
        "out": str(work),
        "model": model and str(model),
        "progress": False,
        "resume": False,
        "workers": 1,
    }
    cfg = load_config(run_config, overrides)
    if conf is not None:
        cfg.detect.conf = conf
    cfg.align.enabled = align
    summary = run_pipeline(cfg)
    return gpd.read_file(summary.candidates_path, layer="candidates")


def _write_levir_geotiff(path: Path, rgb: np.ndarray, gsd_m: float) -> None:
    import rasterio
    from rasterio.transform import from_origin

    h, w = rgb.shape[:2]
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=3,
        dtype="uint8",
        crs="EPSG:32650",
        transform=from_origin(500000.0, 2500000.0, gsd_m, gsd_m),
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(rgb.transpose(2, 0, 1))


def _levir_items(folder: Path):
    a_dir = folder / "A"
    if not a_dir.is_dir():
        raise InputError(f"{folder}: levir layout needs A/, B/ and label/ folders")
    for a in sorted(a_dir.glob("*.png")):
        b, lab = folder / "B" / a.name, folder / "label" / a.name
        if not b.exists() or not lab.exists():
            raise InputError(
                f"{a}: missing {b if not b.exists() else lab}; every A/ image needs B/ and label/ files"
            )
        yield a.stem, a, b, lab


def _score_levir_pair(
    name,
    a,
    b,
    lab,
    model,
    gsd_m,
    conf,
    tmp: Path,
    align: bool = True,
    run_config: Path | None = None,
) -> dict:
    import cv2

    imgs = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in (a, b)]
    label = cv2.imread(str(lab), cv2.IMREAD_GRAYSCALE)
    if any(i is None for i in imgs) or label is None:
        raise InputError(f"{a}: unreadable image or label PNG")
    if imgs[0].shape != imgs[1].shape or imgs[0].shape[:2] != label.shape:
        raise InputError(
            f"{a}: pair size mismatch (A {imgs[0].shape}, B {imgs[1].shape}, label {label.shape})"
        )
    work = tmp / name
    work.mkdir(parents=True, exist_ok=True)
    _write_levir_geotiff(work / "baseline.tif", imgs[0][:, :, ::-1], gsd_m)
    _write_levir_geotiff(work / "current.tif", imgs[1][:, :, ::-1], gsd_m)
    from rasterio.transform import from_origin

    # Registered as a user's run registers them (LEVIR pairs are years and seasons apart).
    cands = _run_runtime(
        work / "baseline.tif",
        work / "current.tif",
        model,
        work / "out",
        conf,
        align=align,
        run_config=run_config,
    )
    shape = label.shape
    preds = polygon_masks(
        _geoms_to_pixel_polys(cands.geometry, from_origin(500000.0, 2500000.0, gsd_m, gsd_m)), shape
    )
    truths = mask_components(label, MIN_TRUTH_AREA_M2 / gsd_m**2)
    return {
        "name": name,
        "any": {t: object_scores(preds, truths, t) for t in IOU_THRESHOLDS},
        "pixel": pixel_scores(union_mask(preds, shape), label > 0),
        "n_pred": len(preds),
        "n_truth": len(truths),
    }


def _score_synth_scene(
    scene_dir: Path, model, conf, tmp: Path, align: bool = True, run_config: Path | None = None
) -> dict:
    import geopandas as gpd
    import rasterio

    base, cur, truth_path = (
        scene_dir / "baseline.tif",
        scene_dir / "current.tif",
        scene_dir / "truth.geojson",
    )
    for p in (base, cur, truth_path):
        if not p.exists():
            raise InputError(
                f"{p}: missing; a synth pair folder needs baseline.tif, current.tif and truth.geojson"
            )
    with rasterio.open(base) as ds:
        transform, shape, crs = ds.transform, (ds.height, ds.width), ds.crs
    truth = gpd.read_file(truth_path)
    if "class" not in truth.columns:
        if len(truth):
            raise InputError(
                f"{truth_path}: truth features need a 'class' property ({', '.join(CHANGE_CLASSES)})"
            )
        truth["class"] = []  # a pair without change: an empty FeatureCollection has no columns
    if truth.crs is not None and crs is not None and truth.crs != crs:
        truth = truth.to_crs(crs)
    cands = _run_runtime(
        base, cur, model, tmp / scene_dir.name, conf, align=align, run_config=run_config
    )
    if len(cands) and cands.crs is not None and crs is not None and cands.crs != crs:
        cands = cands.to_crs(crs)
    out = {"name": scene_dir.name, "per_class": {}, "n_pred": len(cands), "n_truth": len(truth)}
    all_pred, all_truth = [], []
    for cls in CHANGE_CLASSES:
        p = (
            polygon_masks(
                _geoms_to_pixel_polys(cands.geometry[cands["class"] == cls], transform), shape
            )
            if len(cands)
            else []
        )
        t = polygon_masks(
            _geoms_to_pixel_polys(truth.geometry[truth["class"] == cls], transform), shape
        )
        out["per_class"][cls] = {th: object_scores(p, t, th) for th in IOU_THRESHOLDS}
        all_pred += p
        all_truth += t
    out["any"] = {th: object_scores(all_pred, all_truth, th) for th in IOU_THRESHOLDS}
    out["pixel"] = pixel_scores(union_mask(all_pred, shape), union_mask(all_truth, shape))
    return out


def _summarise(results: list[dict], layout: str) -> dict:
    def total(getter):
        acc = None
        for r in results:
            s = getter(r)
            acc = s if acc is None else acc + s
        return acc

    summary = {
        "pairs": len(results),
        "pixel": total(lambda r: r["pixel"]).as_dict() if results else {},
        "any_class": {str(t): total(lambda r, t=t: r["any"][t]).as_dict() for t in IOU_THRESHOLDS}
        if results
        else {},
    }
    if layout == "synth" and results:
        summary["per_class"] = {
            c: {
                str(t): total(lambda r, c=c, t=t: r["per_class"][c][t]).as_dict()
                for t in IOU_THRESHOLDS
            }
            for c in CHANGE_CLASSES
        }
        summary["all_classes"] = {
            str(t): total(
                lambda r, t=t: sum(
                    (r["per_class"][c][t] for c in CHANGE_CLASSES), ObjectScores(t, 0, 0, 0)
                )
            ).as_dict()
            for t in IOU_THRESHOLDS
        }
    return summary


def _markdown(report: dict) -> str:
    s = report["summary"]
    lines = [
        f"# Evaluation: {report['model_name']} on {report['pairs_dir']} ({report['layout']})",
        "",
        f"model sha256 `{report['model_sha256'][:16]}…`, {s['pairs']} pairs, {report['seconds']} s",
        "",
        "| scope | IoU | TP | FP | FN | P | R | F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [("any class (class-agnostic)", s.get("any_class", {}))]
    if "all_classes" in s:
        rows.append(("all classes (class-aware)", s["all_classes"]))
        rows += [(c, v) for c, v in s["per_class"].items()]
    for scope, by_t in rows:
        for t, v in by_t.items():
            lines.append(
                f"| {scope} | {t} | {v['tp']} | {v['fp']} | {v['fn']} "
                f"| {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} |"
            )
    if s.get("pixel"):
        lines += ["", f"Pixel F1 {s['pixel']['f1']:.3f}, IoU {s['pixel']['iou']:.3f}"]
    return "\n".join(lines) + "\n"


def _jsonable(obj):
    if isinstance(obj, (ObjectScores, PixelScores)):
        return obj.as_dict()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def evaluate_pairs(
    model: Path | None,
    pairs_dir: Path,
    layout: str,
    out: Path,
    gsd_m: float | None = None,
    conf: float | None = None,
    limit: int | None = None,
    align: bool = True,
    run_config: Path | None = None,
) -> dict:
    """Run the runtime over labelled pairs and write ``out`` (JSON) and ``out`` with ``.md``.

    Parameters
    ----------
    model : ONNX model (None = the shipped default).
    pairs_dir : folder in the ``synth`` or ``levir`` layout.
    layout : ``"synth"`` or ``"levir"``.
    out : report path; the Markdown goes to the same name with suffix ``.md``.
    gsd_m : pixel size for the levir layout (default 0.5 m).
    conf : confidence threshold override (default: the model's recommendation).
    limit : evaluate only the first N pairs.
    align : co-register the epochs as ``buildwatch run`` does (default); False only to compare.
    run_config : a nightly config (``buildwatch run --config``) whose settings the runs use (e.g.
        ``detect.second_view``); its inputs and output are replaced by each pair's.

    Returns
    -------
    dict
        The report (``summary`` holds the totals).
    """
    from detector.night.model import load_model_spec

    pairs_dir, out = Path(pairs_dir), Path(out)
    if not pairs_dir.is_dir():
        raise InputError(f"{pairs_dir}: pairs folder not found")
    spec = load_model_spec(model)
    start = time.time()
    results = []
    with tempfile.TemporaryDirectory(prefix="bw-eval-") as tmp:
        if layout == "levir":
            items = list(_levir_items(pairs_dir))[:limit]
            for name, a, b, lab in items:
                results.append(
                    _score_levir_pair(
                        name, a, b, lab, model, gsd_m or 0.5, conf, Path(tmp), align, run_config
                    )
                )
        elif layout == "synth":
            if (pairs_dir / "baseline.tif").exists():  # one scene folder, e.g. sample_tiles/
                scenes = [pairs_dir]
            else:
                scenes = sorted(p for p in pairs_dir.iterdir() if (p / "baseline.tif").exists())[
                    :limit
                ]
            if not scenes:
                raise InputError(
                    f"{pairs_dir}: no <scene>/baseline.tif found (synth layout); make some with 'buildwatch synth'"
                )
            for scene in scenes:
                results.append(_score_synth_scene(scene, model, conf, Path(tmp), align, run_config))
        else:
            raise InputError(f"{pairs_dir}: unknown layout '{layout}' (synth or levir)")
    report = {
        "model": str(spec.path),
        "model_name": spec.model_name,
        "model_sha256": spec.sha256,
        "channels": spec.channels,
        "run_config": str(run_config) if run_config else None,
        "layout": layout,
        "align": align,
        "pairs_dir": str(pairs_dir),
        "conf": conf or spec.conf,
        "seconds": round(time.time() - start, 1),
        "summary": _summarise(results, layout),
        "pairs": _jsonable(results),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(_jsonable(report), indent=1))
    atomic_write_text(out.with_suffix(".md"), _markdown(_jsonable(report)))
    return _jsonable(report)


def calibration_inputs(model: Path, count: int = 16, seed: int = 990000) -> list[np.ndarray]:
    """Model inputs for int8 calibration, cut from synthetic scenes (never evaluation seeds)."""
    from detector.night.model import load_model_spec
    from detector.synth.scene import generate_scene

    spec = load_model_spec(model)
    h, w = spec.imgsz
    out = []
    for i in range(max(1, count // 4)):
        scene = generate_scene(seed + i, size=2 * h, gsd=spec.gsd_m)
        for y0 in (0, h):
            for x0 in (0, w):
                b = scene.epochs[0][y0 : y0 + h, x0 : x0 + w]
                c = scene.epochs[1][y0 : y0 + h, x0 : x0 + w]
                img = np.concatenate([b, c], axis=2) if spec.channels == 6 else c
                out.append(img.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
    return out[:count]
