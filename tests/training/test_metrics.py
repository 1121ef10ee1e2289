import numpy as np
import pytest

from training.metrics import (
    ObjectScores,
    mask_components,
    match_one_to_one,
    object_scores,
    pixel_scores,
    polygon_masks,
)


def square(x, y, s):
    return np.array([[x, y], [x + s, y], [x + s, y + s], [x, y + s]], float)


def test_polygon_mask_counts_exact_pixels():
    (mask,) = polygon_masks([square(2, 3, 10)], (20, 20))
    assert mask.sum() == 100
    assert mask[3:13, 2:12].all()


def test_components_are_4_connected_and_small_ones_dropped():
    m = np.zeros((10, 10), np.uint8)
    m[1, 1] = m[2, 2] = 255  # diagonal neighbours: two 4-connected components of 1 px
    m[5:8, 5:8] = 255  # 9 px
    comps = mask_components(m, min_area_px=2)
    assert len(comps) == 1 and comps[0].sum() == 9
    assert len(mask_components(m, 0)) == 3


def test_object_scores_exact_precision_recall_f1():
    shape = (100, 100)
    truth = polygon_masks([square(0, 0, 10), square(30, 30, 10), square(60, 60, 10)], shape)
    preds = polygon_masks(
        [
            square(0, 0, 10),  # exact: IoU 1
            square(33, 30, 10),  # IoU 70/130 = 0.538
            square(80, 0, 10),
        ],
        shape,
    )  # nothing there
    s3 = object_scores(preds, truth, 0.3)
    assert (s3.tp, s3.fp, s3.fn) == (2, 1, 1)
    assert (
        s3.precision == pytest.approx(2 / 3)
        and s3.recall == pytest.approx(2 / 3)
        and s3.f1 == pytest.approx(2 / 3)
    )
    s6 = object_scores(preds, truth, 0.6)
    assert (s6.tp, s6.fp, s6.fn) == (1, 2, 2)
    assert s6.f1 == pytest.approx(1 / 3)


def test_matching_is_one_to_one():
    ious = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert sorted(match_one_to_one(ious, 0.3)) == [
        (0, 0)
    ]  # p1's only good truth is taken; 0.1 < 0.3
    assert object_scores([], [], 0.3).f1 == 0.0
    total = ObjectScores(0.3, 1, 0, 1) + ObjectScores(0.3, 1, 2, 0)
    assert (total.tp, total.fp, total.fn) == (2, 2, 1) and total.precision == 0.5


def test_pixel_scores():
    p = np.zeros((4, 4), np.uint8)
    t = np.zeros((4, 4), np.uint8)
    p[0, :] = 255
    t[0, :2] = 255
    t[1, 0] = 255
    s = pixel_scores(p, t)
    assert (s.tp, s.fp, s.fn) == (2, 2, 1)
    assert s.f1 == pytest.approx(4 / 7) and s.iou == pytest.approx(2 / 5)
