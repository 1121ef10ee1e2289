"""Two views, one verdict: a single-epoch building model checks the pair model's change candidates.

The pair model (6 channels) sees both epochs at once and proposes changes. The second view is a
3-channel building detector (``detect.second_view.model``, trained on real footprints) that looks
at each epoch of the same co-registered tile on its own:

confirm (``detect.second_view.confirm``)
    A candidate of a structure class (below ``confirm_below`` pair confidence) (new building,
    extension, temporary structure) stays only where tonight's image shows a structure: a
    building box covering at least ``cover`` of the smaller of the two boxes. A *new* structure
    (new building, temporary structure) is dropped when the baseline already shows a structure
    at the same place (IoU >= ``baseline_match_iou``) at least :data:`AS_LARGE` as large as
    tonight's: an extension makes a building larger, a new building was not there. Construction
    sites pass unchecked: the building model does not know them.
add (``detect.second_view.add``)
    Structures tonight with at least ``add_conf`` that no baseline structure explains (the
    single-epoch rule, :func:`detector.night.change.new_in_current`, and no baseline structure
    over :data:`EXPLAINED_SHARE` of tonight's box: next to a change the baseline's box of the same
    old building can be drawn differently) and that no pair candidate covers are added as new
    buildings tagged ``second_view``, after the same change rules.

The building model runs only on tiles where the pair model has candidates, unless ``add`` asks
for every tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.types import Detection

STRUCTURE_CLASSES = ("new_building", "extension", "temporary_structure")
NEW_STRUCTURE_CLASSES = ("new_building", "temporary_structure")
AS_LARGE = 0.8  # a baseline structure this large (area ratio to tonight's) explains a "new" one
#: The baseline is asked at this share of tonight's confidence. A quarter, not the half that
#: single-epoch primary models use: the building model can read the same old roof at 0.69 tonight
#: and below 0.13 in the baseline under another light (sample_tiles/), and one false "new" building
#: on an old one costs an operator more than the 3 of 138 LEVIR-CD finds it cost (MODEL_CARD.md).
BASELINE_CONF_FACTOR = 0.25
EXPLAINED_SHARE = 0.5  # a baseline structure over this share of tonight's box explains it (add)


@dataclass(frozen=True)
class Verdict:
    """The second view's reading of one pair candidate."""

    keep: bool
    structure_conf: float  # best confidence of a building tonight covering the candidate (0: none)
    baseline_iou: float  # IoU of that building with the best-matching baseline structure
    reason: str = ""


def overlap_matrices(a: list[Detection], b: list[Detection]) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, intersection over the smaller box) between two lists of detections, shape (len(a), len(b))."""
    from detector.night.detect import detection_boxes, rotated_overlaps

    return rotated_overlaps(detection_boxes(a), detection_boxes(b))


def judge(
    candidates: list[Detection],
    current: list[Detection],
    baseline: list[Detection],
    cover: float,
    match_iou: float,
    confirm: bool = True,
    confirm_below: float = 1.0,
) -> list[Verdict]:
    """The second view's verdict on each pair candidate of a tile.

    Parameters
    ----------
    candidates : the pair model's change detections (tile pixels).
    current, baseline : the building model's detections in tonight's and the baseline's tile.
    cover : share of the smaller box a building must overlap to confirm a candidate.
    match_iou : IoU at which a baseline structure is the same as tonight's.
    confirm : False to only measure (every verdict keeps).
    confirm_below : candidates the pair model is at least this sure of keep without confirmation.

    Returns
    -------
    list of Verdict, one per candidate, in order.
    """
    if not candidates:
        return []
    _, cov = overlap_matrices(candidates, current)
    base_iou, _ = overlap_matrices(current, baseline)
    out = []
    for i, d in enumerate(candidates):
        check = confirm and d.confidence < confirm_below
        hits = np.flatnonzero(cov[i] >= cover) if len(current) else np.array([], dtype=int)
        if hits.size == 0:
            keep = not check or d.class_name not in STRUCTURE_CLASSES
            out.append(Verdict(keep, 0.0, 0.0, "" if keep else "no structure tonight"))
            continue
        j = int(hits[np.argmax([current[k].confidence for k in hits])])
        building = current[j]
        iou, explained = 0.0, False
        if len(baseline):
            k = int(np.argmax(base_iou[j]))
            iou = float(base_iou[j, k])
            explained = (
                iou >= match_iou
                and baseline[k].w * baseline[k].h >= AS_LARGE * building.w * building.h
            )
        keep = not (check and explained and d.class_name in NEW_STRUCTURE_CLASSES)
        out.append(
            Verdict(
                keep,
                float(building.confidence),
                iou,
                "" if keep else "the baseline shows it already",
            )
        )
    return out


def additions(
    current: list[Detection],
    baseline: list[Detection],
    candidates: list[Detection],
    add_conf: float,
    cover: float,
    match_iou: float,
) -> list[tuple[Detection, float]]:
    """Structures tonight (confidence >= ``add_conf``) that no baseline structure explains (IoU >=
    ``match_iou``, or over :data:`EXPLAINED_SHARE` of tonight's box) and no pair candidate covers;
    returns (detection, best baseline IoU), as ``new_building``."""
    from detector.night.change import new_in_current

    strong = [d for d in current if d.confidence >= add_conf]
    new = new_in_current(strong, baseline, match_iou)
    if new and baseline:
        _, cov = overlap_matrices(
            [d for d, _ in new], baseline
        )  # intersection over the smaller box
        areas = np.array([b.w * b.h for b in baseline])
        new = [
            (d, iou)
            for (d, iou), row in zip(new, cov)
            if not (row * np.minimum(areas, d.w * d.h) >= EXPLAINED_SHARE * d.w * d.h).any()
        ]
    if not new or not candidates:
        return [
            (Detection(d.cx, d.cy, d.w, d.h, d.angle, d.confidence, "new_building"), iou)
            for d, iou in new
        ]
    _, cov = overlap_matrices([d for d, _ in new], candidates)
    return [
        (Detection(d.cx, d.cy, d.w, d.h, d.angle, d.confidence, "new_building"), iou)
        for (d, iou), row in zip(new, cov)
        if not (row >= cover).any()
    ]


def tonight(detector, current_img: np.ndarray, conf: float, iou: float) -> list[Detection]:
    """The building model on tonight's tile."""
    return detector([current_img], conf, iou)[0]


def before(detector, baseline_img: np.ndarray, conf: float, iou: float) -> list[Detection]:
    """The building model on the baseline tile, asked at :data:`BASELINE_CONF_FACTOR` of the
    confidence: weak evidence of a structure there still explains a "new" one away."""
    return detector([baseline_img], conf * BASELINE_CONF_FACTOR, iou)[0]
