"""The change rules (detector.night.change) on tiny hand-made arrays with exact answers.

Every test uses one 20 x 20 px tile at 1 m/px whose core cell is [4, 16) in both axes, and a
4 x 4 px box centred at (10, 10): its footprint (pixel centres inside or on the box, as
``polygon_mask`` rasterises it) is rows and columns 8..12, 25 pixels.
"""

from __future__ import annotations

import numpy as np
import pytest

from detector.config import ChangeConfig
from detector.night.change import (
    CHANGE_THRESHOLD,
    MAX_INVALID_IN_BOX,
    changes_in_tile,
    keep_detection,
    owns_centre,
    polygon_mask,
)
from detector.types import Detection

SIZE, GSD, MARGIN, STRIDE = 20, 1.0, 4, 12
RULES = ChangeConfig(min_area_m2=4.0, max_area_m2=100.0, min_pixel_change=0.15)
FOOT = (slice(8, 13), slice(8, 13))  # rows, cols of the box's 25 pixels


def box(cx=10.0, cy=10.0, w=4.0, h=4.0) -> Detection:
    return Detection(cx, cy, w, h, 0.0, 0.9, "new_building")


def tile(changed: int = 25, invalid: int = 0):
    """(diff, valid): the first ``changed`` footprint pixels changed, the last ``invalid`` ones nodata."""
    diff = np.zeros((SIZE, SIZE), np.float32)
    valid = np.ones((SIZE, SIZE), bool)
    rows, cols = np.mgrid[FOOT]
    rows, cols = rows.ravel(), cols.ravel()
    diff[rows[:changed], cols[:changed]] = CHANGE_THRESHOLD + 1
    if invalid:
        valid[rows[-invalid:], cols[-invalid:]] = False
    return diff, valid


def keep(d: Detection, diff, valid, rules=RULES):
    return keep_detection(d, diff, valid, GSD, rules, MARGIN, STRIDE)


def test_the_footprint_is_what_the_tests_assume():
    mask = polygon_mask((SIZE, SIZE), box().corners())
    expected = np.zeros((SIZE, SIZE), bool)
    expected[FOOT] = True
    assert (mask == expected).all()


def test_a_fully_changed_box_is_kept_with_its_change_share():
    assert keep(box(), *tile(changed=25)) == 1.0


@pytest.mark.parametrize(
    "cx,cy,owned",
    [
        (10, 10, True),
        (4, 4, True),
        (15.99, 15.99, True),  # the core is [margin, margin + stride)
        (16, 10, False),
        (10, 16, False),
        (3.99, 10, False),
        (10, 3.99, False),
    ],
)
def test_only_the_tile_owning_the_centre_reports_it(cx, cy, owned):
    assert owns_centre(box(cx, cy), MARGIN, STRIDE) is owned


def test_a_box_centred_outside_the_core_is_not_reported():
    d = box(cx=16.0)
    diff = np.full((SIZE, SIZE), 255, np.float32)
    assert keep(d, diff, np.ones((SIZE, SIZE), bool)) is None


@pytest.mark.parametrize(
    "w,h,kept",
    [
        (2, 2, True),  # 4 m²: min_area_m2 is inclusive
        (1.9, 2, False),  # 3.8 m²
        (10, 10, True),  # 100 m²: max_area_m2 is inclusive
        (10, 10.1, False),
    ],
)
def test_area_limits(w, h, kept):
    diff = np.full((SIZE, SIZE), 255, np.float32)
    result = keep(box(w=w, h=h), diff, np.ones((SIZE, SIZE), bool))
    assert (result is not None) is kept


def test_area_uses_the_ground_sampling_distance():
    diff, valid = tile()
    d = box()  # 4 x 4 px
    assert keep_detection(d, diff, valid, 0.5, RULES, MARGIN, STRIDE) == 1.0  # 4 m²: kept
    assert keep_detection(d, diff, valid, 0.49, RULES, MARGIN, STRIDE) is None  # 3.84 m²


@pytest.mark.parametrize("invalid,kept", [(0, True), (2, True), (3, False), (25, False)])
def test_nodata_inside_the_box(invalid, kept):
    # 2 / 25 = 0.08 <= MAX_INVALID_IN_BOX (0.10) < 3 / 25 = 0.12
    assert MAX_INVALID_IN_BOX == 0.10
    diff, valid = tile(changed=25, invalid=invalid)
    result = keep(box(), diff, valid)
    assert (result is not None) is kept
    if kept:
        assert result == 1.0  # the share counts valid pixels only


@pytest.mark.parametrize("changed,expected", [(3, None), (4, 4 / 25), (13, 13 / 25), (0, None)])
def test_min_pixel_change(changed, expected):
    # min_pixel_change 0.15: 3 / 25 = 0.12 is too little, 4 / 25 = 0.16 enough
    assert keep(box(), *tile(changed=changed)) == expected


def test_pixel_change_share_is_over_valid_pixels():
    diff, valid = tile(changed=4, invalid=1)  # 4 of the 24 valid pixels changed
    assert keep(box(), diff, valid) == 4 / 24


def test_a_difference_at_the_threshold_is_not_a_change():
    diff, valid = tile(changed=25)
    diff[diff > 0] = CHANGE_THRESHOLD
    assert keep(box(), diff, valid) is None


def test_changes_in_tile_keeps_order_and_reports_shares():
    diff, valid = tile(changed=13)
    dets = [box(), box(cx=16.0), box(w=1.0, h=1.0), box(cx=9.5)]
    out = changes_in_tile(dets, diff, valid, GSD, RULES, MARGIN, STRIDE)
    assert [d for d, _ in out] == [dets[0], dets[3]]
    assert out[0][1] == 13 / 25
    assert changes_in_tile([], diff, valid, GSD, RULES, MARGIN, STRIDE) == []
