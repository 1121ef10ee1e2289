from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.errors import InputError
from training.copypaste import synthesize_pair
from training.datasets import (
    ChipSample,
    DatasetWriter,
    OrientedBox,
    atomic_image_write,
    clip_box_to_window,
    polygon_to_obb,
    read_obb_labels,
    read_pair_tiff,
    write_pair_tiff,
)

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def rotated_rect(cx, cy, w, h, deg):
    return cv2.boxPoints(((cx, cy), (w, h), deg)).astype(np.float64)


def _same_rectangle(a, b, tol=1.0):
    # corners may start at a different vertex: compare each corner with its nearest counterpart
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    return d.min(axis=1).max() <= tol


def test_obb_labels_round_trip_within_one_pixel(tmp_path):
    rng = np.random.default_rng(3)
    writer = DatasetWriter(
        tmp_path / "ds",
        6,
        ["new_building", "extension", "temporary_structure", "construction_site"],
    )
    polys = [
        rotated_rect(
            rng.uniform(40, 470),
            rng.uniform(40, 470),
            rng.uniform(10, 60),
            rng.uniform(10, 60),
            rng.uniform(0, 90),
        )
        for _ in range(12)
    ]
    boxes = [OrientedBox(i % 4, polygon_to_obb(p)) for i, p in enumerate(polys)]
    pair = rng.integers(0, 255, (512, 512, 6), dtype=np.uint8)
    image = writer.add("train", ChipSample("chip", pair, boxes))
    writer.write_yaml()
    back = read_obb_labels(
        tmp_path / "ds" / "labels" / "train" / "chip.txt", 512, 512, num_classes=4
    )
    assert [b.class_id for b in back] == [i % 4 for i in range(12)]
    for poly, box in zip(polys, back):
        assert _same_rectangle(poly, box.corners, tol=1.0)
    assert np.array_equal(read_pair_tiff(image), pair)  # 6 pages, page order = channel order
    text = (tmp_path / "ds" / "data.yaml").read_text()
    assert "channels: 6" in text and "0: new_building" in text


def test_ultralytics_reads_pair_tiff_as_six_channels(tmp_path):
    patches = pytest.importorskip("ultralytics.utils.patches")
    writer = DatasetWriter(tmp_path, 6, ["new_building"])
    pair = np.zeros((64, 64, 6), np.uint8)
    pair[..., 4] = 200  # current green
    path = writer.add("val", ChipSample("p", pair))
    im = patches.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert im.shape == (64, 64, 6) and im[0, 0, 4] == 200 and im[0, 0, 1] == 0


def test_clip_box_keeps_visible_part_and_drops_mostly_outside():
    box = rotated_rect(100, 50, 40, 20, 0)  # x 80..120
    clipped = clip_box_to_window(box, 90, 0, 64, 64)  # 30 of 40 px visible
    assert clipped is not None
    assert clipped[:, 0].min() == pytest.approx(0, abs=1e-3) and clipped[
        :, 0
    ].max() == pytest.approx(30, abs=1e-3)
    assert clip_box_to_window(box, 115, 0, 64, 64) is None  # 5 of 40 px visible


def test_bad_labels_raise_one_clear_error(tmp_path):
    bad = tmp_path / "a.txt"
    bad.write_text("0 0.1 0.1 1.2 0.1 1.2 0.3 0.1 0.3\n")
    with pytest.raises(InputError, match="outside the image"):
        read_obb_labels(bad, 64, 64)
    with pytest.raises(InputError, match="not found"):
        read_obb_labels(tmp_path / "missing.txt", 64, 64)
    bad.write_text("7 0.1 0.1 0.2 0.1 0.2 0.3 0.1 0.3\n")
    with pytest.raises(InputError, match="class id 7"):
        read_obb_labels(bad, 64, 64, num_classes=4)
    with pytest.raises(InputError, match="mismatch"):
        write_pair_tiff(
            tmp_path / "x.tif", np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)
        )
    with pytest.raises(InputError, match="needs 6 channels"):
        DatasetWriter(tmp_path / "d", 6, ["x"]).add(
            "train", ChipSample("c", np.zeros((8, 8, 3), np.uint8))
        )
    assert not (tmp_path / "x.tif").exists()


def test_dataset_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    """Chips, labels and data.yaml go through detector.fileio's atomic writes: a failed image write
    leaves neither the chip nor a temporary file, a finished dataset holds only its own files."""
    writer = DatasetWriter(tmp_path / "ds", 3, ["building"])
    writer.add(
        "train",
        ChipSample(
            "a", np.zeros((16, 16, 3), np.uint8), [OrientedBox(0, rotated_rect(8, 8, 6, 4, 0))]
        ),
    )
    writer.write_yaml()
    with pytest.raises(InputError, match="could not write"):
        atomic_image_write(tmp_path / "ds" / "images" / "train" / "b.png", lambda name: False)
    files = sorted(
        p.relative_to(tmp_path / "ds").as_posix()
        for p in (tmp_path / "ds").rglob("*")
        if p.is_file()
    )
    assert files == ["data.yaml", "images/train/a.png", "labels/train/a.txt"]


def test_copy_paste_removes_labelled_buildings_from_baseline_only():
    img = np.full((256, 256, 3), 90, np.uint8)
    polys = [rotated_rect(60 + 70 * (i % 3), 60 + 70 * (i // 3), 30, 24, 0) for i in range(6)]
    for p in polys:
        cv2.fillPoly(img, [p.astype(np.int32)], (230, 40, 40))
    changed = 0
    for seed in range(8):
        ex = synthesize_pair(img, polys, np.random.default_rng(seed))
        if ex.mode == "no_change":
            assert ex.changes == []
            continue
        changed += 1
        assert ex.changes
        for poly in ex.changes:
            cx, cy = poly.mean(axis=0)
            x, y = int(round(cx)), int(round(cy))
            assert (
                ex.current[y, x, 0] > 150
            )  # still a red roof now (photometric changes keep it bright)
            assert ex.baseline[y, x, 0] < 150  # gone from the baseline
            assert abs(ex.baseline[y, x].astype(int) - [230, 40, 40]).sum() > 150
    assert changed >= 4  # the checks above ran on most seeds, not only on no-change pairs
    again = synthesize_pair(
        img, polys, np.random.default_rng(7)
    )  # a pure function of the generator's state
    first = synthesize_pair(img, polys, np.random.default_rng(7))
    assert again.mode == first.mode and np.array_equal(again.baseline, first.baseline)
    assert np.array_equal(again.current, first.current) and len(again.changes) == len(first.changes)
