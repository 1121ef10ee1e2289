"""Unit tests of single stages on hand-made arrays with exact answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from detector.night.align import apply_registration, register_tile
from detector.night.detect import decode, nms_rotated
from detector.night.georef import merge_duplicates
from detector.night.model import parse_metadata
from detector.night.mosaic import WorkingGrid
from detector.night.tiles import core_bounds, iter_tiles
from pipeline_util import textured_image

META = {
    "task": "obb",
    "channels": "6",
    "imgsz": "[256, 256]",
    "buildwatch_gsd_m": "0.25",
    "names": "{0: 'new_building', 1: 'extension', 2: 'temporary_structure', 3: 'construction_site'}",
}


def spec(**kw):
    return parse_metadata({**META, **kw}, "m.onnx", "0" * 64)


def test_decode_end2end_obb():
    out = np.zeros((1, 300, 7), np.float32)
    out[0, 0] = [100, 50, 20, 10, 0.9, 1, 0.3]
    out[0, 1] = [10, 10, 5, 5, 0.1, 0, 0.0]  # below threshold
    dets = decode(out, spec(end2end="True"), conf=0.25, iou=0.5)[0]
    assert len(dets) == 1
    d = dets[0]
    assert (d.cx, d.cy, d.w, d.h, d.class_name) == (100, 50, 20, 10, "extension")
    assert d.angle == pytest.approx(0.3) and d.confidence == pytest.approx(0.9)


def test_decode_raw_obb_applies_nms():
    nc = 4
    out = np.zeros((1, 4 + nc + 1, 5), np.float32)
    # two overlapping boxes of class 0 and one of class 2 at the same place
    out[0, :4, 0] = [100, 100, 40, 20]
    out[0, 4, 0] = 0.9
    out[0, :4, 1] = [102, 101, 40, 20]
    out[0, 4, 1] = 0.8
    out[0, :4, 2] = [100, 100, 40, 20]
    out[0, 6, 2] = 0.7
    out[0, 8, :] = 0.1  # angle
    dets = decode(out, spec(end2end="False"), conf=0.25, iou=0.5)[0]
    assert sorted(d.class_name for d in dets) == ["new_building", "temporary_structure"]
    assert max(d.confidence for d in dets) == pytest.approx(0.9)


def _dense_reference(boxes, scores, classes, iou):
    """Greedy NMS over the full IoU matrix, every pair intersected (the definition)."""
    from shapely.geometry import Polygon

    from detector.types import box_corners

    polys = [Polygon(c) for c in box_corners(boxes)]
    order = np.argsort(-scores, kind="stable")
    keep, dead = [], set()
    for a in order:
        if a in dead:
            continue
        keep.append(a)
        for b in order:
            if b not in dead and b != a and classes[b] == classes[a] and b not in keep:
                inter = polys[a].intersection(polys[b]).area
                if inter / (polys[a].area + polys[b].area - inter) > iou:
                    dead.add(b)
    return keep


@pytest.mark.parametrize("seed", range(6))
def test_nms_rotated_and_iou_matrix_equal_the_dense_definition(seed):
    """A cluttered tile: 300 rotated anchors in clumps, 2 classes."""
    from shapely.geometry import Polygon

    from detector.night.detect import rotated_iou_matrix
    from detector.types import box_corners

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 512, (25, 2))
    n = 300
    at = centres[rng.integers(0, 25, n)] + rng.normal(0, 4, (n, 2))
    boxes = np.column_stack(
        [at, rng.uniform(8, 60, n), rng.uniform(8, 60, n), rng.uniform(-1.6, 1.6, n)]
    )
    scores, classes = rng.uniform(0.1, 1.0, n), rng.integers(0, 2, n)
    for iou in (0.0, 0.3, 0.7):
        assert list(nms_rotated(boxes, scores, classes, iou)) == _dense_reference(
            boxes, scores, classes, iou
        )
    polys = [Polygon(c) for c in box_corners(boxes[:60])]
    dense = np.array(
        [[p.intersection(q).area / p.union(q).area for q in polys[30:]] for p in polys[:30]]
    )
    np.testing.assert_allclose(rotated_iou_matrix(boxes[:30], boxes[30:60]), dense, atol=1e-9)


def test_nms_rotated_keeps_disjoint_boxes():
    boxes = np.array([[10, 10, 8, 8, 0], [11, 10, 8, 8, 0.1], [50, 50, 8, 8, 0]], float)
    keep = nms_rotated(boxes, np.array([0.5, 0.9, 0.7]), np.zeros(3, int), 0.5)
    assert list(keep) == [1, 2]


@pytest.mark.parametrize("dx,dy", [(0, 0), (3.0, -2.0), (-5.5, 4.25), (7, 7)])
def test_tile_registration_recovers_known_shift_under_illumination_change(dx, dy):
    img = textured_image(256, 256, seed=4)
    moved = cv2.warpAffine(
        img, np.float32([[1, 0, dx], [0, 1, dy]]), (256, 256), borderMode=cv2.BORDER_REFLECT
    )
    moved = np.clip(moved * 0.7 + 30, 0, 255).astype(np.uint8)  # illumination change
    reg = register_tile(img, moved, np.ones((256, 256), bool), 0.25, max_shift_m=3.0)
    assert reg.ok and reg.source == "tile"
    assert reg.dx_px == pytest.approx(dx, abs=0.1) and reg.dy_px == pytest.approx(dy, abs=0.1)
    back, valid = apply_registration(moved, np.ones((256, 256), bool), reg)
    assert valid[20:-20, 20:-20].all()


def test_shift_beyond_maximum_is_flagged():
    img = textured_image(256, 256, seed=5)
    moved = np.roll(img, (0, 20), axis=(0, 1))  # 20 px = 5 m at 0.25 m
    reg = register_tile(img, moved, np.ones((256, 256), bool), 0.25, max_shift_m=3.0)
    assert not reg.ok and reg.reason


def grid(left, top, w, h, gsd=0.25):
    return WorkingGrid("", "", gsd, left, top, w, h)


def test_tile_ids_are_stable_when_the_mosaic_extent_changes():
    a = {t.tile_id: t.bounds for t in iter_tiles(grid(1000.0, 5000.0, 2000, 2000), 256, 64)}
    b = {t.tile_id: t.bounds for t in iter_tiles(grid(1013.25, 4990.0, 1900, 2100), 256, 64)}
    common = set(a) & set(b)
    assert len(common) > 50
    assert all(a[k] == b[k] for k in common)


def test_tile_cores_partition_the_plane():
    g = grid(1000.0, 5000.0, 1000, 800)
    tiles = list(iter_tiles(g, 256, 64))
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(1000, 1250, 500), rng.uniform(4800, 5000, 500)])
    cores = np.array([core_bounds(t, 256, 64, 0.25) for t in tiles])
    for x, y in pts:
        inside = (cores[:, 0] <= x) & (x < cores[:, 2]) & (cores[:, 1] < y) & (y <= cores[:, 3])
        assert inside.sum() == 1


def test_merge_duplicates_is_class_aware():
    from shapely.geometry import box

    geoms = [
        box(0, 0, 10, 10),
        box(1, 0, 11, 10),
        box(0, 0, 10, 10),
        box(50, 50, 60, 60),
        box(2, 2, 6, 6),
    ]
    classes = ["new_building", "new_building", "extension", "new_building", "new_building"]
    kept = merge_duplicates(
        geoms, classes, [0.5, 0.9, 0.6, 0.4, 0.3], iou=0.3, ioa=0.6, cross_class_iou=0.95
    )
    assert sorted(kept) == [1, 2, 3]  # 0 duplicates 1 (IoU), 4 lies inside 1 (IoA)


def test_merge_duplicates_joins_one_outline_predicted_as_two_classes():
    from shapely.geometry import box

    geoms = [
        box(0, 0, 10, 10),
        box(0.5, 0, 10.5, 10),
        box(10, 0, 14, 10),
    ]  # 2 = an extension beside it
    classes = ["temporary_structure", "extension", "extension"]
    assert sorted(merge_duplicates(geoms, classes, [0.4, 0.3, 0.8], iou=0.3, ioa=0.6)) == [0, 2]


@pytest.mark.parametrize(
    "meta,needle",
    [
        ({"channels": "4"}, "4 input channels"),
        ({"task": "segment"}, "not supported"),
        ({"buildwatch_gsd_m": "-1"}, "must be > 0"),
        ({"names": "not a dict"}, "malformed"),
    ],
)
def test_bad_metadata_is_refused(meta, needle):
    from detector.errors import ModelError

    with pytest.raises(ModelError, match=needle):
        spec(**meta)
