"""Real imagery + building footprints, resampled to the working GSD, split by geography.

Each loader returns :class:`SourceImage` objects: an RGB image at the working GSD and the
building polygons in its pixels. The split (train/val) is decided per *ground area*, never
per chip, so no chip of one split overlaps the other.

Sets (all under ``../shared/data``; see its README for licences and hold-outs):

- ``oam_banepa_fair``: 32 OpenAerialMap drone chips (≈13 cm) mosaicked, OSM footprints.
  train = tile rows y ≤ 220246, val = rows 220247–220248 (the southern quarter). The
  official hold-out (x = 386694–386695) is not in the folder and never used.
- ``oam_kampala_fair``: z21 tiles (7.5 cm) of area B (train) and area A (val); z19/z20
  tiles are the same ground and are left out.
- ``spacenet1_rio``: SpaceNet-1 chips (≈0.5 m, upsampled); img57 and img60 are val.
- ``negatives_deepforest``: building-free tiles (no labels); OSBS_029 is val.

SpaceNet Atlanta (the runtime's end-to-end test), LEVIR-CD, DSIFN and xBD are never loaded here.

The *pack* (:func:`save_pack` / :func:`load_pack`) stores sources as JPEG + JSON so that a
machine without GDAL can build datasets from them (numpy + OpenCV only).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from detector.errors import InputError
from detector.geo.crs import pixel_size_m, unit_lengths_m
from detector.geo.raster import apply_stretch, rgb_bands, stretch_from_array

ATTRIBUTIONS = {
    "oam_banepa_fair": "OpenAerialMap imagery (HOTOSM, CC-BY-4.0) with building footprints "
    "© OpenStreetMap contributors (ODbL), via hotosm/fAIr-models",
    "oam_kampala_fair": "OpenAerialMap imagery (CC-BY-4.0) with building polygons "
    "© OpenStreetMap contributors (ODbL) / fAIr, via hotosm/fAIr-utilities",
    "spacenet1_rio": "SpaceNet-1 Rio de Janeiro (SpaceNet, CC BY-SA 4.0)",
    "negatives_deepforest": "DeepForest sample tiles (weecology/DeepForest, MIT; NEON / OAM-TCD imagery)",
}
ALL_SETS = tuple(ATTRIBUTIONS)
EARTH_RADIUS_M = 6378137.0


@dataclass
class SourceImage:
    """One real image at the working GSD with building footprints in its pixels."""

    name: str
    dataset: str
    split: str  # "train" | "val"
    rgb: np.ndarray  # (H, W, 3) uint8
    polygons: list[np.ndarray] = field(default_factory=list)  # (N, 2) float (x, y) pixels
    gsd_m: float = 0.25


def _resize(rgb: np.ndarray, sx: float, sy: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    size = (max(1, int(round(w * sx))), max(1, int(round(h * sy))))
    interp = cv2.INTER_AREA if sx * sy < 1 else cv2.INTER_CUBIC
    return cv2.resize(rgb, size, interpolation=interp)


def _geojson_rings(path: Path) -> list[np.ndarray]:
    """Exterior rings (lon, lat) of every polygon in a GeoJSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read footprints ({exc})") from None
    rings = []
    for feature in data.get("features", []):
        geom = feature.get("geometry") or {}
        polys = (
            [geom["coordinates"]]
            if geom.get("type") == "Polygon"
            else geom.get("coordinates", [])
            if geom.get("type") == "MultiPolygon"
            else []
        )
        for poly in polys:
            if poly and len(poly[0]) >= 4:
                rings.append(np.asarray(poly[0], dtype=np.float64)[:, :2])
    return rings


def load_banepa(root: Path, gsd_m: float = 0.25, val_rows_from: int = 220247) -> list[SourceImage]:
    """Mosaic the Banepa chips (EPSG:4326 grid in ``.aux.xml``) per split; footprints from OSM."""
    import rasterio

    folder = Path(root) / "oam_banepa_fair" / "train"
    chips = sorted((folder / "oam").glob("OAM-*-*-19.tif"))
    if not chips:
        raise InputError(f"{folder / 'oam'}: no OAM-*.tif chips found")
    rings = _geojson_rings(next((folder / "osm").glob("*.geojson")))
    out = []
    for split in ("train", "val"):
        members = [
            c for c in chips if (int(c.stem.split("-")[2]) >= val_rows_from) == (split == "val")
        ]
        infos = []
        for chip in members:
            with rasterio.open(chip) as ds:
                infos.append((ds.transform, ds.read([1, 2, 3]).transpose(1, 2, 0)))
        dlon, dlat = infos[0][0].a, -infos[0][0].e
        lon0 = min(t.c for t, _ in infos)
        lat0 = max(t.f for t, _ in infos)
        width = int(round((max(t.c for t, _ in infos) - lon0) / dlon)) + 512
        height = int(round((lat0 - min(t.f for t, _ in infos)) / dlat)) + 512
        mosaic = np.zeros((height, width, 3), np.uint8)
        for t, img in infos:
            x, y = int(round((t.c - lon0) / dlon)), int(round((lat0 - t.f) / dlat))
            mosaic[y : y + img.shape[0], x : x + img.shape[1]] = img
        mx, my = unit_lengths_m("EPSG:4326", lon0, lat0)  # metres per degree of longitude, latitude
        sx, sy = dlon * mx / gsd_m, dlat * my / gsd_m
        polys = [
            np.column_stack([(r[:, 0] - lon0) / dlon * sx, (lat0 - r[:, 1]) / dlat * sy])
            for r in rings
        ]
        polys = [p for p in polys if _inside(p, width * sx, height * sy)]
        out.append(
            SourceImage(
                f"banepa_{split}", "oam_banepa_fair", split, _resize(mosaic, sx, sy), polys, gsd_m
            )
        )
    return out


def _inside(poly: np.ndarray, width: float, height: float) -> bool:
    """True when some of the polygon lies inside the image."""
    return bool(
        poly[:, 0].max() > 0
        and poly[:, 1].max() > 0
        and poly[:, 0].min() < width
        and poly[:, 1].min() < height
    )


def _tile_lonlat(x: float, y: float, z: int) -> tuple[float, float]:
    n = 2.0**z
    lon = x / n * 360.0 - 180.0
    lat = math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * y / n))))
    return lon, lat


def _lonlat_to_tile_px(
    lon: np.ndarray, lat: np.ndarray, z: int, tile_px: int
) -> tuple[np.ndarray, np.ndarray]:
    n = 2.0**z * tile_px
    x = (lon + 180.0) / 360.0 * n
    lat_r = np.radians(lat)
    y = (1 - np.log(np.tan(lat_r) + 1 / np.cos(lat_r)) / math.pi) / 2 * n
    return x, y


def _read_any_image(path: Path) -> np.ndarray:
    """RGB uint8 from a PNG/JPEG read by content; transparent pixels become black."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{path}: not a readable image")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        alpha = img[:, :, 3]
        img = img[:, :, :3].copy()
        img[alpha == 0] = 0
    return np.ascontiguousarray(img[:, :, ::-1])


def load_kampala(root: Path, gsd_m: float = 0.25) -> list[SourceImage]:
    """Mosaic the z21 Kampala tiles per area (B west = train, A = val); footprints in Web Mercator pixels."""
    folder = Path(root) / "oam_kampala_fair"
    rings = _geojson_rings(folder / "labels.geojson")
    tiles = []
    for path in sorted((folder / "chips").glob("OAM-*-*-21.png")):
        m = re.match(r"OAM-(\d+)-(\d+)-21", path.stem)
        if m:
            tiles.append((int(m.group(1)), int(m.group(2)), path))
    if not tiles:
        raise InputError(f"{folder / 'chips'}: no z21 OAM tiles found")
    areas = {
        "val": [t for t in tiles if t[0] < 1238440],
        "train": [t for t in tiles if t[0] >= 1238440],
    }
    out = []
    for split, members in areas.items():
        if not members:
            continue
        x0, y0 = min(t[0] for t in members), min(t[1] for t in members)
        width = (max(t[0] for t in members) - x0 + 1) * 256
        height = (max(t[1] for t in members) - y0 + 1) * 256
        mosaic = np.zeros((height, width, 3), np.uint8)
        for tx, ty, path in members:
            img = _read_any_image(path)
            mosaic[(ty - y0) * 256 : (ty - y0 + 1) * 256, (tx - x0) * 256 : (tx - x0 + 1) * 256] = (
                img[:256, :256]
            )
        _, lat = _tile_lonlat(x0 + 0.5, y0 + 0.5, 21)
        native = 2 * math.pi * EARTH_RADIUS_M * math.cos(math.radians(lat)) / (2**21 * 256)
        scale = native / gsd_m
        polys = []
        for ring in rings:
            px, py = _lonlat_to_tile_px(ring[:, 0], ring[:, 1], 21, 256)
            poly = np.column_stack([(px - x0 * 256) * scale, (py - y0 * 256) * scale])
            if _inside(poly, width * scale, height * scale):
                polys.append(poly)
        out.append(
            SourceImage(
                f"kampala_{split}",
                "oam_kampala_fair",
                split,
                _resize(mosaic, scale, scale),
                polys,
                gsd_m,
            )
        )
    return out


def _read_rgb_resampled(path: Path, gsd_m: float) -> tuple[np.ndarray, float, float]:
    import rasterio

    with rasterio.open(path) as ds:
        bands = rgb_bands(ds.colorinterp, ds.count)
        if bands is None or bands[0] == bands[1]:
            raise InputError(f"{path}: needs 3 bands (RGB), has {ds.count}")
        rgb = ds.read(list(bands))
        if (
            rgb.dtype != np.uint8
        ):  # the nightly run's stretch (per band 1-99 %), so chips look like inference
            rgb = apply_stretch(rgb, stretch_from_array(rgb, ds.dataset_mask() > 0))
        rgb = rgb.astype(np.uint8).transpose(1, 2, 0)
        dx, dy = pixel_size_m(ds.crs, ds.transform, ds.width, ds.height)
    sx, sy = dx / gsd_m, dy / gsd_m
    return _resize(rgb, sx, sy), sx, sy


def load_rio(
    root: Path, gsd_m: float = 0.25, val_chips: tuple[str, ...] = ("img57", "img60")
) -> list[SourceImage]:
    """SpaceNet-1 Rio chips upsampled to the working GSD; footprints from the building masks."""
    import rasterio

    folder = Path(root) / "spacenet1_rio"
    out = []
    for image_path in sorted((folder / "images").glob("*.tif")):
        key = image_path.stem.split("_")[-1]
        if key == "img58":  # 100 % nodata
            continue
        rgb, sx, sy = _read_rgb_resampled(image_path, gsd_m)
        with rasterio.open(folder / "masks" / image_path.name) as ds:
            mask = ds.read(1)
        mask = cv2.resize(
            (mask > 127).astype(np.uint8) * 255,
            (rgb.shape[1], rgb.shape[0]),
            interpolation=cv2.INTER_NEAREST,
        )
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        polys = [
            c.reshape(-1, 2).astype(np.float64)
            for c in contours
            if len(c) >= 3 and cv2.contourArea(c) >= 16
        ]
        split = "val" if key in val_chips else "train"
        out.append(SourceImage(f"rio_{key}", "spacenet1_rio", split, rgb, polys, gsd_m))
    return out


def load_negatives(
    root: Path, gsd_m: float = 0.25, val_files: tuple[str, ...] = ("OSBS_029",)
) -> list[SourceImage]:
    """Building-free tiles at the working GSD (those smaller than 96 px after resampling are skipped)."""
    folder = Path(root) / "negatives_deepforest"
    out = []
    for path in sorted(folder.glob("*.tif")):
        rgb, _, _ = _read_rgb_resampled(path, gsd_m)
        if min(rgb.shape[:2]) < 96:
            continue
        split = "val" if path.stem in val_files else "train"
        out.append(
            SourceImage(f"neg_{path.stem[:24]}", "negatives_deepforest", split, rgb, [], gsd_m)
        )
    return out


LOADERS = {
    "oam_banepa_fair": load_banepa,
    "oam_kampala_fair": load_kampala,
    "spacenet1_rio": load_rio,
    "negatives_deepforest": load_negatives,
}


def load_sources(
    data_root: Path, sets: tuple[str, ...] | list[str] = ALL_SETS, gsd_m: float = 0.25
) -> list[SourceImage]:
    """Load the named real sets from ``data_root`` (``../shared/data``)."""
    data_root = Path(data_root)
    if not data_root.exists():
        raise InputError(f"{data_root}: data folder not found; point 'data_root' at ../shared/data")
    out = []
    for name in sets:
        if name not in LOADERS:
            raise InputError(
                f"{data_root}: unknown real set '{name}' (choose from {', '.join(LOADERS)})"
            )
        out.extend(LOADERS[name](data_root, gsd_m))
    return out


def save_pack(sources: list[SourceImage], folder: Path, quality: int = 95) -> Path:
    """Store sources as ``<name>.jpg`` + ``<name>.json`` (polygons, split, dataset, GSD)."""
    from detector.fileio import atomic_write_text
    from training.datasets import atomic_image_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for src in sources:
        bgr = np.ascontiguousarray(src.rgb[:, :, ::-1])
        atomic_image_write(
            folder / f"{src.name}.jpg",
            lambda p: cv2.imwrite(p, bgr, [cv2.IMWRITE_JPEG_QUALITY, quality]),  # noqa: B023 - called at once
        )
        meta = {
            "name": src.name,
            "dataset": src.dataset,
            "split": src.split,
            "gsd_m": src.gsd_m,
            "polygons": [np.round(p, 2).tolist() for p in src.polygons],
        }
        atomic_write_text(folder / f"{src.name}.json", json.dumps(meta))
        index.append(src.name)
    atomic_write_text(
        folder / "index.json",
        json.dumps({"sources": index, "attributions": ATTRIBUTIONS}, indent=1),
    )
    return folder


def load_pack(folder: Path) -> list[SourceImage]:
    """Read sources written by :func:`save_pack`."""
    folder = Path(folder)
    index_path = folder / "index.json"
    if not index_path.exists():
        raise InputError(
            f"{index_path}: source pack index not found; create it with 'buildwatch build-dataset --pack-sources'"
        )
    out = []
    for name in json.loads(index_path.read_text())["sources"]:
        meta = json.loads((folder / f"{name}.json").read_text())
        rgb = cv2.imread(str(folder / f"{name}.jpg"), cv2.IMREAD_COLOR)
        if rgb is None:
            raise InputError(f"{folder / name}.jpg: not readable")
        out.append(
            SourceImage(
                name,
                meta["dataset"],
                meta["split"],
                np.ascontiguousarray(rgb[:, :, ::-1]),
                [np.asarray(p, np.float64) for p in meta["polygons"]],
                meta["gsd_m"],
            )
        )
    return out
