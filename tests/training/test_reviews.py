"""Operators' reviews become training chips: confirmed cases labelled, rejected ones hard negatives."""

from __future__ import annotations

from datetime import date

import geopandas as gpd
import numpy as np
import pytest

from detector.config import CasesConfig
from detector.review import registry as reg
from detector.review.gpkg import connect
from detector.synth.scene import generate_scene, write_scene
from training.datasets import convex_area, read_obb_labels
from training.reviews import review_samples, write_review_dataset

GSD = 0.25


@pytest.fixture
def reviewed_night(tmp_path):
    scene = generate_scene(11, size=1024, gsd=GSD)
    paths = write_scene(scene, tmp_path / "scene")
    truth = gpd.read_file(
        paths["truth"] if "truth" in paths else tmp_path / "scene" / "truth.geojson"
    )
    frame = truth.assign(candidate_id=[f"t{i}" for i in range(len(truth))], confidence=0.8, tags="")
    config = CasesConfig(registry=tmp_path / "cases.gpkg", evidence=False, report=False)
    reg.update_registry(
        frame,
        config,
        run_id="r1",
        night=date(2026, 5, 2),
        baseline_path=tmp_path / "scene" / "baseline.tif",
        current_path=tmp_path / "scene" / "current.tif",
    )
    con = connect(config.registry)
    ids = [r[0] for r in con.execute("SELECT case_id FROM cases ORDER BY case_id")]
    rejected = ids[0]
    con.execute("UPDATE cases SET status = 'confirmed_illegal', reviewer = 'li'")
    con.execute("UPDATE cases SET status = 'false_positive' WHERE case_id = ?", (rejected,))
    con.commit()
    con.close()
    return tmp_path, config.registry, rejected, len(ids)


def test_reviews_become_labelled_chips(reviewed_night):
    root, registry, rejected, n_cases = reviewed_night
    chips = review_samples(
        registry, root / "scene" / "baseline.tif", root / "scene" / "current.tif", GSD, 256
    )
    assert chips.positives == n_cases - 1 and chips.negatives == 1 and chips.skipped_unreviewed == 0
    assert chips.skipped_unregistered == 0  # registered as the nightly run registers its tiles
    cases = gpd.read_file(registry, layer="cases").set_index("case_id")
    for split, sample in chips.samples:
        assert split in ("train", "val") and sample.image.shape == (256, 256, 6)
        case_id = sample.stem.removeprefix("review_")
        centre_boxes = [b for b in sample.boxes if np.hypot(*(b.corners.mean(0) - 128)) < 2.0]
        if case_id == rejected:
            assert (
                not centre_boxes
            )  # the rejected structure is a hard negative: no label where it is
        else:
            assert len(centre_boxes) == 1  # the case is labelled at the chip's centre
            box = centre_boxes[0]
            area_m2 = convex_area(box.corners) * GSD**2
            assert area_m2 == pytest.approx(
                cases.loc[case_id].geometry.minimum_rotated_rectangle.area, rel=0.1
            )
    data_yaml = write_review_dataset(root / "ds", chips)
    labels = sorted((root / "ds" / "labels").glob("*/*.txt"))
    assert data_yaml.exists() and len(labels) == n_cases
    assert sum(len(read_obb_labels(p, 256, 256)) for p in labels) == sum(
        len(s.boxes) for _, s in chips.samples
    )


def test_chips_with_unreviewed_cases_are_skipped(reviewed_night):
    root, registry, rejected, n_cases = reviewed_night
    con = connect(registry)
    con.execute("UPDATE cases SET status = 'new'")
    con.execute("UPDATE cases SET status = 'false_positive' WHERE case_id = ?", (rejected,))
    con.commit()
    con.close()
    chips = review_samples(
        registry, root / "scene" / "baseline.tif", root / "scene" / "current.tif", GSD, 256
    )
    assert chips.positives == 0
    assert chips.negatives + chips.skipped_unreviewed == 1


def test_legacy_cases_are_no_training_labels(reviewed_night):
    """A legacy case (``buildwatch cases import``) stood before the baseline: nothing new to learn."""
    root, registry, rejected, n_cases = reviewed_night
    con = connect(registry)
    legacy = [
        r[0]
        for r in con.execute("SELECT case_id FROM cases WHERE case_id <> ? LIMIT 2", (rejected,))
    ]
    con.executemany("UPDATE cases SET origin = 'legacy' WHERE case_id = ?", [(c,) for c in legacy])
    con.commit()
    con.close()
    chips = review_samples(
        registry, root / "scene" / "baseline.tif", root / "scene" / "current.tif", GSD, 256
    )
    assert chips.positives == n_cases - 3 and chips.negatives == 1
    assert not {s.stem.removeprefix("review_") for _, s in chips.samples} & set(legacy)
