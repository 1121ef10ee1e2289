"""A district's own labels as labelled pairs: reviewed cases and labelled tiles (``buildwatch retrain``).

Labelled tiles come in a folder, in one of two layouts:

``tiles``  one sub-folder per tile: ``baseline.tif`` + ``current.tif`` (GeoTIFF pair; or
           ``baseline.png`` + ``current.png``, not georeferenced, pixels of ``--tiles-gsd``) and
           one label file:

           - ``labels.geojson`` / ``labels.gpkg`` / ``truth.geojson``: change polygons in map
             coordinates (GeoTIFF pairs only); property ``class`` (one of the change classes;
             default ``new_building``);
           - ``change.png`` / ``change.tif``: a change mask (non-zero = change, LEVIR style); each
             4-connected component of at least 10 m² is one ``new_building``;
           - ``labels.txt``: YOLO OBB lines ``class x1 y1 ... x4 y4``, normalised to the tile.
``levir``  ``A/<name>.png``, ``B/<name>.png``, ``label/<name>.png`` (LEVIR-CD), pixels of
           ``--tiles-gsd`` (0.5 m for LEVIR-CD).

Every pair is brought to the model's GSD. Reviewed cases come from the case registry through
:func:`training.reviews.review_samples` (confirmed -> positives with the operator's geometry,
false positives -> hard negatives, permitted -> positives).

Geography-aware split: a tile is held out whole, together with every tile inside it (LEVIR
crops ``test_2_*`` go with the tile ``test_2``; georeferenced tiles by overlap).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from detector.errors import InputError
from detector.types import CHANGE_CLASSES

MIN_OBJECT_M2 = 10.0
POLYGON_FILES = ("labels.geojson", "labels.gpkg", "truth.geojson")
MASK_FILES = ("change.png", "change.tif")
YOLO_FILE = "labels.txt"


@dataclass
class LabelledPair:
    """One labelled pair at the model's GSD: (H, W, 6) uint8 and change polygons in its pixels."""

    name: str
    image: np.ndarray
    objects: list[tuple[int, np.ndarray]]  # (class id, (N, 2) polygon in pixels)
    source: str  # the file(s) it came from
    label_format: str
    bounds: tuple[float, float, float, float] | None = None  # map bounds (georeferenced tiles)
    group: str = ""  # tiles of one group stay on one side of the split
    sha256: dict = field(default_factory=dict)


def _sha(path: Path) -> str:
    from detector.fileio import file_sha256

    return file_sha256(path)


def _resize(img: np.ndarray, factor: float, interpolation=cv2.INTER_AREA) -> np.ndarray:
    if abs(factor - 1.0) < 1e-9:
        return img
    h, w = img.shape[:2]
    return cv2.resize(
        img, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=interpolation
    )


def mask_objects(mask: np.ndarray, gsd_m: float) -> list[np.ndarray]:
    """Outlines (pixel-edge polygons, corner convention) of the mask's 4-connected components >= 10 m²."""
    from rasterio.features import shapes

    binary = (mask > 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=4)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] * gsd_m**2 >= MIN_OBJECT_M2
    out = []
    for geom, _value in shapes(labels.astype(np.int32), mask=keep[labels], connectivity=4):
        out.append(np.asarray(geom["coordinates"][0], np.float64))
    return out


def _yolo_objects(path: Path, width: int, height: int) -> list[tuple[int, np.ndarray]]:
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 9:
            raise InputError(
                f"{path}:{i}: a YOLO OBB line needs 'class x1 y1 x2 y2 x3 y3 x4 y4' (9 values)"
            )
        try:
            cls, xy = int(parts[0]), np.asarray(parts[1:], np.float64).reshape(4, 2)
        except ValueError:
            raise InputError(f"{path}:{i}: not numbers") from None
        if not 0 <= cls < len(CHANGE_CLASSES) or xy.min() < -0.01 or xy.max() > 1.01:
            raise InputError(
                f"{path}:{i}: class must be 0..{len(CHANGE_CLASSES) - 1} and coordinates normalised 0..1"
            )
        out.append((cls, xy * [width, height]))
    return out


def _class_id(value) -> int:
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return 0
    if str(value) not in CHANGE_CLASSES:
        raise InputError(f"class '{value}' is not one of {', '.join(CHANGE_CLASSES)}")
    return CHANGE_CLASSES.index(str(value))


def _read_georeferenced(folder: Path, gsd_m: float) -> LabelledPair:
    """A GeoTIFF pair on the working grid at the model's GSD, labels converted to its pixels."""
    import geopandas as gpd
    import rasterio
    import shapely

    from detector.night.mosaic import EpochReader, make_grid, open_mosaic

    b_info, c_info = (
        open_mosaic(folder / "baseline.tif", "baseline"),
        open_mosaic(folder / "current.tif", "current"),
    )
    grid = make_grid(b_info, c_info, gsd_m)
    readers = [EpochReader(info, grid) for info in (b_info, c_info)]
    try:
        (b, vb), (c, vc) = (r.read(0, 0, grid.width, grid.height) for r in readers)
    finally:
        for r in readers:
            r.close()
    b[~vb], c[~vc] = 0, 0
    inv = ~grid.transform

    def to_px(geom_map) -> np.ndarray:
        xy = shapely.get_coordinates(geom_map)
        cols, rows = inv * (xy[:, 0], xy[:, 1])
        return np.column_stack([cols, rows])

    objects: list[tuple[int, np.ndarray]] = []
    poly_file = next((folder / n for n in POLYGON_FILES if (folder / n).exists()), None)
    mask_file = next((folder / n for n in MASK_FILES if (folder / n).exists()), None)
    if poly_file is not None:
        try:
            gdf = gpd.read_file(poly_file)
        except Exception as exc:  # noqa: BLE001 - pyogrio errors
            raise InputError(
                f"{poly_file}: cannot read ({str(exc).splitlines()[0][:100]})"
            ) from None
        if gdf.crs is None:
            raise InputError(f"{poly_file}: no CRS; save the labels with the tile's CRS")
        gdf = gdf[gdf.geometry.notna()].to_crs(grid.crs_wkt)
        for _, row in gdf.iterrows():
            cls = _class_id(row.get("class"))
            for part in getattr(row.geometry, "geoms", [row.geometry]):
                if part.geom_type == "Polygon" and not part.is_empty:
                    objects.append((cls, to_px(part.exterior)))
        fmt, label = "polygons", poly_file
    elif mask_file is not None:
        with rasterio.open(mask_file) as ds:
            mask, transform, crs = ds.read(1), ds.transform, ds.crs
        if mask_file.suffix == ".png" or crs is None:  # same pixels as the baseline
            with rasterio.open(folder / "baseline.tif") as ds:
                transform, crs = ds.transform, ds.crs
        res = abs(transform.a)
        import pyproj
        from shapely.ops import transform as shp_transform

        to_grid = pyproj.Transformer.from_crs(
            crs, pyproj.CRS.from_wkt(grid.crs_wkt), always_xy=True
        ).transform
        for poly in mask_objects(mask, res if crs.is_projected else gsd_m):
            ring = shapely.Polygon(np.column_stack(transform * (poly[:, 0], poly[:, 1])))
            objects.append((0, to_px(shp_transform(to_grid, ring).exterior)))
        fmt, label = "mask", mask_file
    elif (folder / YOLO_FILE).exists():
        with rasterio.open(folder / "baseline.tif") as ds:
            transform, crs, w, h = ds.transform, ds.crs, ds.width, ds.height
        import pyproj

        to_grid = pyproj.Transformer.from_crs(
            crs, pyproj.CRS.from_wkt(grid.crs_wkt), always_xy=True
        )
        for cls, px in _yolo_objects(folder / YOLO_FILE, w, h):
            mx, my = transform * (px[:, 0], px[:, 1])
            gx, gy = to_grid.transform(mx, my)
            cols, rows = inv * (np.asarray(gx), np.asarray(gy))
            objects.append((cls, np.column_stack([cols, rows])))
        fmt, label = "yolo_obb", folder / YOLO_FILE
    else:
        raise InputError(
            f"{folder}: no labels; put one of {', '.join(POLYGON_FILES + MASK_FILES)} or {YOLO_FILE} "
            "beside baseline.tif/current.tif"
        )
    bounds = (grid.left, grid.top - grid.height * gsd_m, grid.left + grid.width * gsd_m, grid.top)
    files = [folder / "baseline.tif", folder / "current.tif", label]
    return LabelledPair(
        folder.name,
        np.concatenate([b, c], axis=2),
        objects,
        str(folder),
        fmt,
        bounds,
        sha256={p.name: _sha(p) for p in files},
    )


def _read_png_pair(
    name: str, a: Path, b: Path, label: Path, tiles_gsd: float, gsd_m: float, fmt: str
) -> LabelledPair:
    imgs = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in (a, b)]
    if any(i is None for i in imgs):
        raise InputError(f"{a}: unreadable image pair")
    if imgs[0].shape != imgs[1].shape:
        raise InputError(
            f"{a}: baseline {imgs[0].shape[:2]} and current {imgs[1].shape[:2]} differ in size"
        )
    h, w = imgs[0].shape[:2]
    factor = tiles_gsd / gsd_m
    if fmt == "mask":
        mask = cv2.imread(str(label), cv2.IMREAD_GRAYSCALE)
        if mask is None or mask.shape != (h, w):
            raise InputError(f"{label}: unreadable change mask or not {w}x{h} like the pair")
        objects = [(0, poly * factor) for poly in mask_objects(mask, tiles_gsd)]
    else:
        objects = [(cls, px * factor) for cls, px in _yolo_objects(label, w, h)]
    pair = np.concatenate(
        [
            _resize(i[:, :, ::-1], factor, cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA)
            for i in imgs
        ],
        axis=2,
    )
    return LabelledPair(
        name,
        np.ascontiguousarray(pair),
        objects,
        str(a.parent.parent if fmt == "mask" and a.parent.name == "A" else a.parent),
        fmt,
        sha256={f"{k}/{p.name}": _sha(p) for k, p in (("A", a), ("B", b), ("label", label))},
    )


def labelled_sources(folder: Path, tiles_gsd: float | None = None) -> list[tuple]:
    """The labelled pairs of a ``tiles`` or ``levir`` folder, listed and checked but not read.

    Everything :func:`read_labelled_tiles` refuses for the folder's layout (missing ``B/`` or
    ``label/`` files, PNGs without ``tiles_gsd``, no pairs at all) is refused here, so a command
    can check its data before it creates anything on disk.

    Returns
    -------
    list of tuple
        ``("tif", sub)`` for a georeferenced tile folder, ``("png", name, a, b, label, format)``
        for a PNG pair.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: labelled tiles folder not found")
    found: list[tuple] = []
    if (folder / "A").is_dir():
        if tiles_gsd is None:
            raise InputError(
                f"{folder}: LEVIR-style PNG pairs have no georeference; give their pixel size (--tiles-gsd 0.5)"
            )
        for sub in ("B", "label"):
            if not (folder / sub).is_dir():
                raise InputError(
                    f"{folder}: LEVIR layout needs A/, B/ and label/ folders; {sub}/ is missing"
                )
        for a in sorted((folder / "A").glob("*.png")):
            b, lab = folder / "B" / a.name, folder / "label" / a.name
            if not b.exists() or not lab.exists():
                raise InputError(
                    f"{a}: missing {b if not b.exists() else lab}; every A/ image needs B/ and label/ files"
                )
            found.append(("png", a.stem, a, b, lab, "mask"))
    else:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if (sub / "baseline.tif").exists() and (sub / "current.tif").exists():
                found.append(("tif", sub))
            elif (sub / "baseline.png").exists() and (sub / "current.png").exists():
                if tiles_gsd is None:
                    raise InputError(
                        f"{sub}: PNG pairs have no georeference; give their pixel size (--tiles-gsd)"
                    )
                mask = next((sub / n for n in MASK_FILES if (sub / n).exists()), None)
                if mask is not None:
                    found.append(
                        ("png", sub.name, sub / "baseline.png", sub / "current.png", mask, "mask")
                    )
                elif (sub / YOLO_FILE).exists():
                    found.append(
                        (
                            "png",
                            sub.name,
                            sub / "baseline.png",
                            sub / "current.png",
                            sub / YOLO_FILE,
                            "yolo_obb",
                        )
                    )
                else:
                    raise InputError(f"{sub}: PNG pairs need change.png or labels.txt")
    if not found:
        raise InputError(
            f"{folder}: no labelled pairs (tile folders with baseline/current, or A/ B/ label/)"
        )
    return found


def read_labelled_tiles(
    folder: Path, gsd_m: float, tiles_gsd: float | None = None
) -> list[LabelledPair]:
    """Every labelled pair of a ``tiles`` or ``levir`` folder (see the module docstring), at ``gsd_m``."""
    pairs: list[LabelledPair] = []
    for source in labelled_sources(folder, tiles_gsd):
        if source[0] == "tif":
            pairs.append(_read_georeferenced(source[1], gsd_m))
        else:
            _, name, a, b, label, fmt = source
            pairs.append(_read_png_pair(name, a, b, label, tiles_gsd, gsd_m, fmt))
    assign_groups(pairs)
    return pairs


def assign_groups(pairs: list[LabelledPair]) -> None:
    """Group tiles that share ground: a tile inside another (LEVIR ``test_2_5`` in ``test_2``, or
    georeferenced bounds that overlap) gets the enclosing tile's group."""
    names = {p.name for p in pairs}
    for p in pairs:
        p.group = p.name
        m = re.match(r"^(.*)_\d+$", p.name)
        while m and m.group(1) not in names and re.match(r"^(.*)_\d+$", m.group(1)):
            m = re.match(r"^(.*)_\d+$", m.group(1))
        if m and m.group(1) in names:
            p.group = m.group(1)
    geo = [p for p in pairs if p.bounds is not None]
    for i, p in enumerate(geo):  # union by overlap, first tile names the group
        for q in geo[:i]:
            l1, b1, r1, t1 = p.bounds
            l2, b2, r2, t2 = q.bounds
            if l1 < r2 and l2 < r1 and b1 < t2 and b2 < t1:
                p.group = q.group
                break


def split_groups(
    pairs: list[LabelledPair],
    holdout_fraction: float,
    holdout: list[str] | None = None,
    seed: int = 0,
) -> tuple[list[LabelledPair], list[LabelledPair]]:
    """(train, held-out): whole groups, chosen by name (``holdout``) or by a seeded hash of the
    group name until ``holdout_fraction`` of the pixels are held out."""
    groups: dict[str, list[LabelledPair]] = {}
    for p in pairs:
        groups.setdefault(p.group, []).append(p)
    if holdout:
        unknown = [g for g in holdout if g not in groups]
        if unknown:
            raise InputError(
                f"--holdout {unknown[0]}: no such tile group (groups: {', '.join(sorted(groups))})"
            )
        chosen = set(holdout)
    else:
        order = sorted(groups, key=lambda g: hashlib.sha1(f"{seed}:{g}".encode()).hexdigest())
        total = sum(p.image.shape[0] * p.image.shape[1] for p in pairs)
        chosen, held = set(), 0
        for g in order:
            if held >= holdout_fraction * total or len(chosen) == len(groups) - 1:
                break
            chosen.add(g)
            held += sum(p.image.shape[0] * p.image.shape[1] for p in groups[g])
    train = [p for p in pairs if p.group not in chosen]
    held_out = [p for p in pairs if p.group in chosen]
    if not train or not held_out:
        raise InputError(
            "the labelled tiles cannot be split: give at least two tiles that do not overlap "
            "(one to train on, one to hold out)"
        )
    return train, held_out


def write_holdout_scene(pair: LabelledPair, folder: Path, gsd_m: float) -> Path:
    """A held-out pair as a ``synth``-layout scene (``baseline.tif``, ``current.tif``, ``truth.geojson``
    in a local metric grid), so :func:`training.evaluate.evaluate_pairs` scores it through the runtime."""
    import geopandas as gpd
    import rasterio
    import shapely
    from rasterio.transform import from_origin

    from detector.fileio import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    h, w = pair.image.shape[:2]
    transform = from_origin(500000.0, 2500000.0, gsd_m, gsd_m)
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=3,
        dtype="uint8",
        crs="EPSG:32650",
        transform=transform,
    )
    for name, img in (
        ("baseline.tif", pair.image[:, :, :3]),
        ("current.tif", pair.image[:, :, 3:]),
    ):
        with atomic_path(folder / name) as tmp, rasterio.open(tmp, "w", **profile) as ds:
            ds.write(img.transpose(2, 0, 1))
    geoms, classes = [], []
    for cls, poly in pair.objects:
        xs, ys = transform * (poly[:, 0], poly[:, 1])
        g = shapely.Polygon(np.column_stack([xs, ys])).buffer(0)
        if not g.is_empty:
            geoms.append(g)
            classes.append(CHANGE_CLASSES[cls])
    with atomic_path(folder / "truth.geojson") as tmp:
        tmp.unlink()  # the GeoJSON driver creates the file itself
        gpd.GeoDataFrame({"class": classes}, geometry=geoms, crs="EPSG:32650").to_file(
            tmp, driver="GeoJSON"
        )
    return folder
