"""YOLO OBB dataset writer: 6-channel pair chips (6-page TIFF) and 3-channel single chips (PNG).

numpy + OpenCV only, so the same code builds datasets on a machine without GDAL/shapely.

Layout written (what ultralytics expects)::

    <root>/images/{train,val}/<stem>.tif|.png
    <root>/labels/{train,val}/<stem>.txt     cls x1 y1 x2 y2 x3 y3 x4 y4   (normalised 0..1)
    <root>/data.yaml                         path, train, val, names, channels

Channel order of a pair chip is (baseline R, G, B, current R, G, B): ultralytics stacks the
pages of a multi-page grayscale TIFF in page order and flips channel order only for
3-channel images, so the model sees exactly the runtime's input layout. A single chip is a
normal PNG (stored BGR as OpenCV does; ultralytics turns it back into RGB).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from detector.errors import InputError
from detector.fileio import atomic_path, atomic_write_text

SPLITS = ("train", "val")


@dataclass
class OrientedBox:
    """A labelled rotated rectangle in pixel coordinates of one chip."""

    class_id: int
    corners: np.ndarray  # (4, 2) float (x, y)


@dataclass
class ChipSample:
    """One training example: pixels (H, W, 3 or 6) uint8 and its oriented boxes."""

    stem: str
    image: np.ndarray
    boxes: list[OrientedBox] = field(default_factory=list)


def polygon_to_obb(polygon: np.ndarray) -> np.ndarray:
    """Smallest rotated rectangle around a polygon, as (4, 2) float32 corners."""
    pts = np.asarray(polygon, dtype=np.float32).reshape(-1, 2)
    return cv2.boxPoints(cv2.minAreaRect(pts)).astype(np.float32)


def convex_area(points: np.ndarray) -> float:
    """Area of a convex polygon given as (N, 2) points."""
    if points is None or len(points) < 3:
        return 0.0
    return float(cv2.contourArea(np.asarray(points, dtype=np.float32)))


def clip_box_to_window(
    corners: np.ndarray, x0: float, y0: float, width: int, height: int, min_visible: float = 0.5
) -> np.ndarray | None:
    """Shift a rotated box into a window's coordinates and clip it to the window.

    Parameters
    ----------
    corners : (4, 2) box corners in the parent image's pixels.
    x0, y0 : the window's upper-left corner in the parent image.
    width, height : window size in pixels.
    min_visible : keep the box only when at least this fraction of its area is inside.

    Returns
    -------
    numpy.ndarray or None
        (4, 2) corners of the smallest rotated rectangle around the visible part, in window
        pixels, or None when too little of the box is visible.
    """
    local = np.asarray(corners, dtype=np.float32) - np.float32([x0, y0])
    full = convex_area(local)
    if full <= 0:
        return None
    window = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    inter_area, inter = cv2.intersectConvexConvex(local, window)
    if inter is None or inter_area <= 0 or inter_area / full < min_visible:
        return None
    if inter_area / full > 0.999:
        return local
    return polygon_to_obb(inter.reshape(-1, 2))


def obb_label_line(class_id: int, corners: np.ndarray, width: int, height: int) -> str:
    """One YOLO OBB label line with corners normalised by the chip size (clamped to [0, 1])."""
    pts = np.asarray(corners, dtype=np.float64).reshape(4, 2) / [width, height]
    pts = np.clip(pts, 0.0, 1.0)
    return f"{int(class_id)} " + " ".join(f"{v:.6f}" for v in pts.reshape(-1))


def read_obb_labels(
    path: Path, width: int, height: int, num_classes: int | None = None
) -> list[OrientedBox]:
    """Read a YOLO OBB label file back into pixel corners.

    Raises
    ------
    InputError
        When the file is missing, a line is malformed, a class id is out of range or a
        coordinate lies outside the image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"{path}: label file not found; rebuild the dataset with 'buildwatch build-dataset'"
        )
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            values = [float(v) for v in parts]
        except ValueError:
            values = []
        if len(values) != 9:
            raise InputError(
                f"{path}:{number}: expected 'cls x1 y1 ... x4 y4' (9 numbers), got {len(parts)} fields"
            )
        class_id = int(values[0])
        if class_id < 0 or (num_classes is not None and class_id >= num_classes):
            raise InputError(
                f"{path}:{number}: class id {class_id} outside 0..{(num_classes or 1) - 1}"
            )
        coords = np.array(values[1:]).reshape(4, 2)
        if coords.min() < 0 or coords.max() > 1:
            raise InputError(
                f"{path}:{number}: label coordinates outside the image (must be normalised 0..1)"
            )
        boxes.append(OrientedBox(class_id, (coords * [width, height]).astype(np.float32)))
    return boxes


def atomic_image_write(path: Path, writer) -> None:
    """Write an image through ``writer(temporary name) -> bool`` (an OpenCV writer), renamed onto ``path``."""
    with atomic_path(
        path
    ) as tmp:  # the temporary name keeps the extension: OpenCV picks the codec from it
        if not writer(str(tmp)):
            raise InputError(f"{path}: OpenCV could not write the image")


def write_pair_tiff(path: Path, baseline: np.ndarray, current: np.ndarray) -> None:
    """Write a co-registered pair as a 6-page grayscale TIFF (baseline RGB, current RGB)."""
    if baseline.shape != current.shape or baseline.ndim != 3 or baseline.shape[2] != 3:
        raise InputError(
            f"{path}: pair size mismatch {baseline.shape} vs {current.shape}; both must be (H, W, 3)"
        )
    pages = [
        np.ascontiguousarray(img[:, :, band]) for img in (baseline, current) for band in range(3)
    ]
    atomic_image_write(
        Path(path), lambda p: cv2.imwritemulti(p, pages, [cv2.IMWRITE_TIFF_COMPRESSION, 5])
    )


def read_pair_tiff(path: Path) -> np.ndarray:
    """Read a 6-page pair TIFF back as (H, W, 6) uint8 (baseline RGB, current RGB)."""
    ok, pages = cv2.imreadmulti(str(path), flags=cv2.IMREAD_UNCHANGED)
    if not ok or len(pages) != 6:
        raise InputError(
            f"{path}: expected a 6-page pair TIFF, found {len(pages) if ok else 0} readable pages"
        )
    return np.stack(pages, axis=2)


def write_rgb_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG (OpenCV stores BGR)."""
    atomic_image_write(Path(path), lambda p: cv2.imwrite(p, np.ascontiguousarray(rgb[:, :, ::-1])))


def iter_windows(height: int, width: int, size: int, stride: int):
    """Upper-left corners (x0, y0) of size×size windows covering an image; the last ones end at its edge."""

    def starts(extent):
        if extent <= size:
            return [0]
        s = list(range(0, extent - size + 1, stride))
        if s[-1] != extent - size:
            s.append(extent - size)
        return s

    for y0 in starts(height):
        for x0 in starts(width):
            yield x0, y0


def pad_to(image: np.ndarray, size: int, fill: int = 114) -> np.ndarray:
    """Pad an (H, W, C) image at the bottom/right to at least size×size with a grey fill."""
    h, w = image.shape[:2]
    if h >= size and w >= size:
        return image
    out = np.full((max(h, size), max(w, size), image.shape[2]), fill, dtype=image.dtype)
    out[:h, :w] = image
    return out


class DatasetWriter:
    """Writes chips and labels into a YOLO OBB dataset folder and its ``data.yaml``.

    Parameters
    ----------
    root : dataset folder (created).
    channels : 6 for pair chips (6-page TIFF), 3 for single chips (PNG).
    names : class names in class-id order.
    """

    def __init__(self, root: Path, channels: int, names: tuple[str, ...] | list[str]):
        if channels not in (3, 6):
            raise InputError(f"{root}: channels must be 3 or 6, got {channels}")
        self.root = Path(root)
        self.channels = channels
        self.names = list(names)
        self.counts = {s: {"images": 0, "boxes": 0} for s in SPLITS}
        self.class_counts = {s: [0] * len(self.names) for s in SPLITS}
        for split in SPLITS:
            (self.root / "images" / split).mkdir(parents=True, exist_ok=True)
            (self.root / "labels" / split).mkdir(parents=True, exist_ok=True)

    def add(self, split: str, sample: ChipSample) -> Path:
        """Write one chip and its label file; returns the image path."""
        if split not in SPLITS:
            raise InputError(f"{self.root}: unknown split '{split}' (use train or val)")
        image = sample.image
        h, w = image.shape[:2]
        if image.ndim != 3 or image.shape[2] != self.channels:
            raise InputError(
                f"{sample.stem}: chip has shape {image.shape}, dataset needs {self.channels} channels"
            )
        if self.channels == 6:
            path = self.root / "images" / split / f"{sample.stem}.tif"
            write_pair_tiff(path, image[:, :, :3], image[:, :, 3:])
        else:
            path = self.root / "images" / split / f"{sample.stem}.png"
            write_rgb_png(path, image)
        lines = []
        for box in sample.boxes:
            if not 0 <= box.class_id < len(self.names):
                raise InputError(
                    f"{sample.stem}: class id {box.class_id} outside 0..{len(self.names) - 1}"
                )
            lines.append(obb_label_line(box.class_id, box.corners, w, h))
            self.class_counts[split][box.class_id] += 1
        label_path = self.root / "labels" / split / f"{sample.stem}.txt"
        atomic_write_text(label_path, "\n".join(lines) + ("\n" if lines else ""))
        self.counts[split]["images"] += 1
        self.counts[split]["boxes"] += len(lines)
        return path

    def write_yaml(self) -> Path:
        """Write ``data.yaml`` (absolute ``path``) and return it."""
        names = "\n".join(f"  {i}: {n}" for i, n in enumerate(self.names))
        text = (
            f"path: {self.root.resolve()}\ntrain: images/train\nval: images/val\n"
            f"channels: {self.channels}\nnames:\n{names}\n"
        )
        return atomic_write_text(self.root / "data.yaml", text)


def chip_samples(
    image: np.ndarray,
    boxes: list[OrientedBox],
    size: int,
    stride: int,
    stem: str,
    min_visible: float = 0.5,
) -> list[ChipSample]:
    """Cut an image with boxes in its pixels into size×size chips with clipped boxes."""
    h, w = image.shape[:2]
    padded = pad_to(image, size)
    out = []
    for x0, y0 in iter_windows(h, w, size, stride):
        chip = padded[y0 : y0 + size, x0 : x0 + size]
        chip_boxes = []
        for box in boxes:
            clipped = clip_box_to_window(
                box.corners, x0, y0, min(size, w - x0), min(size, h - y0), min_visible
            )
            if clipped is not None:
                chip_boxes.append(OrientedBox(box.class_id, clipped))
        out.append(ChipSample(f"{stem}_x{x0}_y{y0}", np.ascontiguousarray(chip), chip_boxes))
    return out
