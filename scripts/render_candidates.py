#!/usr/bin/env python
"""Draw a run's candidates (red) and optional truth (green) over baseline | current as one PNG.

    python scripts/render_candidates.py out/sample/candidates.gpkg sample_tiles/baseline.tif \
        sample_tiles/current.tif --truth sample_tiles/truth.geojson --out out/sample/preview.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import geopandas as gpd
import numpy as np
import rasterio
from rasterio.vrt import WarpedVRT

from detector.geo.grid import grid_for_bounds, map_to_pixel
from detector.geo.raster import apply_stretch, raster_stretch, rgb_bands


def read_on_grid(path: Path, crs, transform, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 of a mosaic on the panel grid, wider types with the project's stretch."""
    with (
        rasterio.open(path) as src,
        WarpedVRT(src, crs=crs, transform=transform, width=width, height=height) as vrt,
    ):
        bands = list(rgb_bands(src.colorinterp, src.count) or (1, 1, 1))
        img = vrt.read(bands)
    return np.ascontiguousarray(np.moveaxis(apply_stretch(img, raster_stretch(path, bands)), 0, -1))


def draw(img: np.ndarray, gdf, transform, colour, label: bool) -> None:
    for _, row in gdf.iterrows():
        geom = row.geometry
        for poly in getattr(geom, "geoms", [geom]):
            xy = np.asarray(poly.exterior.coords)[:, :2]
            rows, cols = map_to_pixel(transform, xy[:, 0], xy[:, 1])
            pts = np.column_stack([cols, rows])
            cv2.polylines(img, [np.round(pts).astype(np.int32)], True, colour, 2, cv2.LINE_AA)
            if label and "class" in row:
                x, y = pts.min(axis=0)
                text = f"{row['class'][:3]} {row.get('confidence', 0):.2f}"
                cv2.putText(
                    img,
                    text,
                    (int(x), max(10, int(y) - 3)),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.4,
                    colour,
                    1,
                )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("candidates", type=Path)
    ap.add_argument("baseline", type=Path)
    ap.add_argument("current", type=Path)
    ap.add_argument("--truth", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--width", type=int, default=1200, help="width of each panel in pixels")
    args = ap.parse_args()

    cand = gpd.read_file(args.candidates, layer="candidates")
    with rasterio.open(args.baseline) as src:
        crs, bounds = src.crs, src.bounds
    transform, height = grid_for_bounds(tuple(bounds), args.width)
    panels = [
        read_on_grid(p, crs, transform, args.width, height) for p in (args.baseline, args.current)
    ]
    cand = cand.to_crs(crs)
    truth = gpd.read_file(args.truth).to_crs(crs) if args.truth else None
    for img in panels:
        if truth is not None:
            draw(img, truth, transform, (0, 255, 0), False)
        draw(img, cand, transform, (255, 0, 0), True)
    out = np.concatenate([panels[0], np.full((height, 8, 3), 255, np.uint8), panels[1]], axis=1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    print(
        f"{args.out}: {len(cand)} candidates"
        + (f", {len(truth)} truth polygons" if truth is not None else "")
    )


if __name__ == "__main__":
    main()
