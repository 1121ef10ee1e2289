"""The real-imagery benchmark sets, each run exactly as a user runs it (registration on).

:func:`measure` scores one model (and optionally one nightly config) on every set found in the
data folder: LEVIR-CD (pooled object F1@0.3), erased buildings on SpaceNet Atlanta and the
Banepa hold-out, the Banepa hold-out flown twice, and synthetic held-out scenes. Used by
``scripts/bench_real.py`` (one table) and ``scripts/bench_two_view.py`` (one table a rule);
evaluation only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from training.realpairs import banepa_val_mosaic, erase_buildings_pair, flown_twice


def run(base: Path, cur: Path, out: Path, model: Path | None, run_config: Path | None = None):
    """One nightly run of a pair with the user's defaults (or ``run_config``); its candidates."""
    import geopandas as gpd

    from detector.config import load_config
    from detector.run import run_pipeline

    cfg = load_config(
        run_config,
        {
            "baseline": str(base),
            "current": str(cur),
            "out": str(out),
            "workers": 1,
            "progress": False,
            "resume": False,
            "model": model and str(model),
        },
    )
    summary = run_pipeline(cfg)
    return gpd.read_file(summary.candidates_path, layer="candidates")


def erased_scores(
    image: Path, labels, tmp: Path, model: Path | None, run_config: Path | None = None
) -> dict:
    """Erase every third building; how many come back within 2 m, and candidates on untouched ones."""
    base, cur, erased, kept = erase_buildings_pair(image, labels, tmp, every=3)
    return score_erased(erased, kept, run(base, cur, tmp / "out", model, run_config))


def score_erased(erased, kept, cand) -> dict:
    """Erased buildings with a candidate centroid within 2 m; candidates on untouched buildings."""
    from detector.geo.crs import utm_crs

    lon, lat = erased.to_crs("EPSG:4326").union_all().centroid.coords[0]
    metric = utm_crs(lon, lat)
    e, k, c = (g.to_crs(metric) for g in (erased, kept, cand))
    cen = c.geometry.centroid
    dist = np.array([cen.distance(g.centroid).min() if len(c) else np.inf for g in e.geometry])
    # a candidate is "on an untouched building" when it covers more of untouched buildings than of
    # erased ones, and at least a quarter of itself (in dense blocks a box around an erased house
    # overlaps its neighbours' walls a little)
    on_kept = 0
    for g in c.geometry:
        ik, ie = (x.geometry.intersection(g).area.sum() / max(g.area, 1e-9) for x in (k, e))
        on_kept += int(ik > ie and ik >= 0.25)
    return {
        "erased": len(e),
        "within_2m": int((dist <= 2.0).sum()),
        "candidates": len(c),
        "on_untouched": int(on_kept),
    }


def sample_scores(
    sample: Path, tmp: Path, model: Path | None, run_config: Path | None = None
) -> dict:
    """The README's run on ``sample_tiles/``: planted changes matched one-to-one at IoU 0.3, false candidates."""
    import geopandas as gpd

    from training.metrics import match_one_to_one

    cand = run(sample / "baseline.tif", sample / "current.tif", tmp, model, run_config)
    truth = gpd.read_file(sample / "truth.geojson").to_crs(cand.crs)
    ious = np.array(
        [[c.intersection(t).area / c.union(t).area for t in truth.geometry] for c in cand.geometry]
    )
    found = len(match_one_to_one(ious, 0.3)) if len(cand) else 0
    return {"truth": len(truth), "found": found, "false": len(cand) - found}


def measure(
    model: Path | None,
    data: Path,
    skip_synthetic: bool = False,
    run_config: Path | None = None,
    levir_only: bool = False,
) -> tuple[list, dict]:
    """Every set's numbers for one model and nightly config: (table rows, numbers)."""
    from training.evaluate import evaluate_pairs

    rows, numbers = [], {}
    with tempfile.TemporaryDirectory(prefix="bw-real-") as tmp:
        tmp = Path(tmp)
        # LEVIR-CD, pooled over the 1024 tiles and 256 crops
        tp = fp = fn = 0
        for name in ("levir_cd_1024", "levir_cd_256"):
            if (data / name).is_dir():
                any3 = evaluate_pairs(
                    model, data / name, "levir", tmp / f"{name}.json", run_config=run_config
                )["summary"]["any_class"]["0.3"]
                tp, fp, fn = tp + any3["tp"], fp + any3["fp"], fn + any3["fn"]
                numbers[name] = any3
        if tp + fp + fn:
            f1 = 2 * tp / max(2 * tp + fp + fn, 1)
            numbers["levir_pooled_f1"] = round(f1, 3)
            rows.append(
                (
                    "LEVIR-CD 1024 + 256, object F1@0.3 (registration on)",
                    f"{f1:.3f} ({tp}/{fp}/{fn} TP/FP/FN)",
                    "≥ 0.45",
                )
            )
        if levir_only:
            return rows, numbers
        # DSIFN-CD 256 crops: general land-cover change (roads, cleared land too), GSD not stated
        # (read at the levir layout's 0.5 m): reported beside LEVIR, never a target
        if (data / "dsifn_cd_256").is_dir():
            d = evaluate_pairs(
                model, data / "dsifn_cd_256", "levir", tmp / "dsifn.json", run_config=run_config
            )["summary"]["any_class"]["0.3"]
            numbers["dsifn_cd_256"] = d
            rows.append(
                (
                    "DSIFN-CD 256 crops, object F1@0.3 (land-cover change; reported, no target)",
                    f"{d['f1']:.3f} ({d['tp']}/{d['fp']}/{d['fn']} TP/FP/FN)",
                    "–",
                )
            )
        # sample_tiles/: the README's run
        sample = Path(__file__).resolve().parents[1] / "sample_tiles"
        if (sample / "truth.geojson").exists():
            r = sample_scores(sample, tmp / "sample", model, run_config)
            numbers["sample_tiles"] = r
            rows.append(
                (
                    "sample_tiles/ (the README run), planted changes found at IoU 0.3; false",
                    f"{r['found']}/{r['truth']}; {r['false']} false",
                    "13/13; 0",
                )
            )
        # erased buildings
        atl = data / "spacenet4_atlanta_sample"
        if atl.is_dir():
            r = erased_scores(
                atl / "sample_geotiff.tif",
                atl / "geotiff_labels.geojson",
                tmp / "atlanta",
                model,
                run_config,
            )
            numbers["atlanta_erased"] = r
            rows.append(
                (
                    "SpaceNet Atlanta, erased buildings found within 2 m",
                    f"{r['within_2m']}/{r['erased']} ({r['within_2m'] / r['erased']:.0%}); "
                    f"{r['on_untouched']} of {r['candidates']} candidates on untouched buildings",
                    "≥ 90 %; 0",
                )
            )
        if (data / "oam_banepa_fair").is_dir():
            mosaic, fp_gdf = banepa_val_mosaic(data, tmp / "banepa_val.tif")
            r = erased_scores(mosaic, fp_gdf, tmp / "banepa", model, run_config)
            numbers["banepa_erased"] = r
            rows.append(
                (
                    "OAM Banepa hold-out (drone), erased buildings within 2 m",
                    f"{r['within_2m']}/{r['erased']} ({r['within_2m'] / r['erased']:.0%}); "
                    f"{r['on_untouched']} of {r['candidates']} candidates on untouched buildings",
                    "≥ 90 %; 0",
                )
            )
            import rasterio

            from detector.geo.crs import pixel_size_m

            counts, km2 = [], 0.0
            for seed in range(3):
                again = flown_twice(mosaic, tmp / f"again{seed}.tif", seed=seed)
                counts.append(len(run(mosaic, again, tmp / f"twice{seed}", model, run_config)))
            with rasterio.open(mosaic) as ds:
                gx, gy = pixel_size_m(ds.crs, ds.transform, ds.width, ds.height)
                valid = (ds.read(1) > 0).sum()
            km2 = valid * gx * gy / 1e6
            numbers["banepa_flown_twice"] = {"false_candidates": counts, "km2": round(km2, 4)}
            rows.append(
                (
                    "OAM Banepa hold-out flown twice (3 draws), false candidates",
                    f"{sum(counts)} on {3 * km2:.3f} km² = {sum(counts) / (3 * km2):.1f}/km²",
                    "≤ 5/km²",
                )
            )
        if not skip_synthetic:
            from detector.synth.scene import generate

            generate(tmp / "synth", seed=777, scenes=6, size=1024, gsd=0.25)
            s = evaluate_pairs(
                model, tmp / "synth", "synth", tmp / "synth.json", run_config=run_config
            )["summary"]
            nb, allc = s["per_class"]["new_building"]["0.3"]["f1"], s["all_classes"]["0.3"]["f1"]
            numbers["synthetic"] = {"new_building_f1": nb, "all_classes_f1": allc}
            rows.append(
                (
                    "synthetic held-out (seed 777), F1@0.3 new_building / all classes",
                    f"{nb} / {allc}",
                    "≥ 0.95 / ≥ 0.85",
                )
            )
    return rows, numbers
