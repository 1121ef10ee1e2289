"""The review vocabulary: review statuses, the cases layer's columns and the registry's table names.

Defined here once and imported by the registry (:mod:`detector.review.registry`), the QGIS style
(:mod:`detector.review.qgis`), the nightly report, the ``buildwatch cases`` commands and the
retraining from reviews (:mod:`training.reviews`). This module imports nothing from the project.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- review statuses

NEW = "new"  # not reviewed yet (every case opens with it)
CONFIRMED_ILLEGAL = "confirmed_illegal"
DEMOLITION_ORDERED = "demolition_ordered"  # an order is out; ``demolition_due`` holds its deadline
DEMOLISHED = "demolished"  # the team reports it demolished; the nightly run verifies it stays down
VERIFIED = "demolition_verified"  # demolition checked on the imagery; still watched every night
PERMITTED = "permitted"  # a legal decision: the structure is real and new, but allowed
FALSE_POSITIVE = "false_positive"  # no new structure there
REFERRED = "referred"  # handed to another authority

# the enforcement lifecycle, in the order a team walks it (form drop-down and legend order):
# new -> confirmed_illegal -> demolition_ordered -> demolished -> demolition_verified,
# or new -> permitted / false_positive / referred
REVIEW_STATUSES = (
    NEW,
    CONFIRMED_ILLEGAL,
    DEMOLITION_ORDERED,
    DEMOLISHED,
    VERIFIED,
    PERMITTED,
    FALSE_POSITIVE,
    REFERRED,
)
# statuses on which a new sighting of the same structure is suppressed (never reopened)
SUPPRESSING_STATUSES = (FALSE_POSITIVE, PERMITTED)
# statuses that still need action: the "open backlog" (a case with an alert needs action too)
OPEN_STATUSES = (NEW, CONFIRMED_ILLEGAL, DEMOLITION_ORDERED, REFERRED)
# statuses on which the structure must be gone: a sighting raises an alert (demolition verification);
# DEMOLITION_ORDERED joins them once its ``demolition_due`` date has passed
MUST_BE_GONE_STATUSES = (DEMOLISHED, VERIFIED)
# statuses that take a case off the books: the structure is gone (verified), allowed, or was never
# there; a ``legacy`` case (below) with one of them is cleared from the historical backlog
CLEARED_STATUSES = (VERIFIED, PERMITTED, FALSE_POSITIVE)
# statuses saying a reviewer saw a real new structure there (labelled examples for retraining)
REAL_STRUCTURE_STATUSES = (CONFIRMED_ILLEGAL, DEMOLITION_ORDERED, REFERRED, PERMITTED)
# statuses saying the detection was wrong (hard negatives for retraining)
REJECTED_STATUSES = (FALSE_POSITIVE,)

# where a case came from
ORIGIN_DETECTOR = "detector"
ORIGIN_OPERATOR = "operator"  # drawn in QGIS by an operator: a structure the detector missed
# imported by ``buildwatch cases import``: a building illegal before the work plan's zero-increment
# target (the historical backlog). Where a case came from is its origin, not a status: a legacy
# case opens as confirmed_illegal and walks the same lifecycle (demolition_ordered -> demolished
# -> demolition_verified), it is never "new tonight", and the report counts it apart until cleared
ORIGIN_LEGACY = "legacy"
ORIGINS = (ORIGIN_DETECTOR, ORIGIN_OPERATOR, ORIGIN_LEGACY)
PENDING_ID_PREFIX = "pending-"  # QGIS's default case_id for a drawn case; the registry replaces it
OPERATOR_ID_MARK = "M"  # {prefix}{YYYYMMDD}-M{nnnn}: drawn by an operator
LEGACY_ID_MARK = "L"  # {prefix}{YYYYMMDD}-L{nnnn}: imported legacy case

# --------------------------------------------------------------------------- who made a change

# the stamp a nightly run puts in ``edited_by`` ("buildwatch <run id>"); the registry's triggers
# tell the detector's own updates from people's by it (detector.review.triggers)
RUN_EDITOR_PREFIX = "buildwatch "
UNKNOWN_EDITOR = "unknown"  # a change written without a stamp (ogrinfo, a script)
# history change types (``case_history.change``, space-separated when one write made several):
# people's edits, then the detector's own updates of a case it saw again
PEOPLE_CHANGES = ("created", "status", "geometry", "class", "alert")
DETECTOR_CHANGES = ("detector_geometry", "detector_class", "detector_alert")

# --------------------------------------------------------------------------- the registry's tables

CASES_TABLE = "cases"
GEOMETRY_COLUMN = "geom"
SIGHTINGS_TABLE = "case_sightings"
HISTORY_TABLE = (
    "case_history"  # append-only: every status, geometry and alert change, written by triggers
)
NIGHTS_TABLE = "registry_nights"
CASES_STYLE_NAME = "buildwatch review"
CASES_STYLE_DESCRIPTION = "categorised by review status; labels: case id and area; review form"

# the fields an operator owns; a nightly run never writes them (``class`` too, once an operator
# corrected it: ``class_edited``, as ``geometry_edited`` for the outline)
REVIEW_FIELDS = ("status", "demolition_due", "reviewer", "reviewed_at", "note")
# run bookkeeping: hidden in the QGIS form, dropped when the cases are read for people
INTERNAL_COLUMNS = ("run_geom_hash", "detected_wkb", "evidence_hash", "logged_geom")

# (name, SQL type) of the attribute columns of the cases layer, in order. Run-owned unless
# listed in REVIEW_FIELDS.
CASE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("case_id", "TEXT NOT NULL UNIQUE"),
    ("status", f"TEXT NOT NULL DEFAULT '{NEW}'"),
    ("reviewer", "TEXT"),
    ("reviewed_at", "DATETIME"),
    ("note", "TEXT"),
    ("demolition_due", "DATE"),
    ("alert", "TEXT"),
    ("class", "TEXT"),
    ("area_m2", "REAL"),
    ("height_gain_m", "REAL"),  # with a DSM pair: the candidate's height gain (see height_phrase)
    ("baseline_height_m", "REAL"),  # its height above the ground before
    ("current_height_m", "REAL"),  # and now
    ("height_change", "TEXT"),  # the gain in words, e.g. "new storey, +3.1 m" (height_phrase)
    ("lon", "REAL"),
    ("lat", "REAL"),
    ("community", "TEXT"),
    ("unit", "TEXT"),
    ("first_seen", "DATE"),
    ("last_seen", "DATE"),
    ("times_seen", "INTEGER NOT NULL DEFAULT 1"),
    ("max_confidence", "REAL"),
    ("last_confidence", "REAL"),
    ("evidence", "TEXT"),
    ("tags", "TEXT"),
    ("candidate_id", "TEXT"),
    ("first_run_id", "TEXT"),
    ("last_run_id", "TEXT"),
    ("model_name", "TEXT"),
    ("geometry_edited", "BOOLEAN NOT NULL DEFAULT 0"),
    ("origin", f"TEXT DEFAULT '{ORIGIN_DETECTOR}'"),
    ("edited_by", "TEXT"),
    ("run_geom_hash", "TEXT"),
    ("detected_wkb", "BLOB"),
    ("evidence_hash", "TEXT"),
    ("logged_geom", "BLOB"),  # the geometry as last written to the history (see review.triggers)
    # added by a later version: last, so a registry brought up to date has the same column order
    ("class_edited", "BOOLEAN NOT NULL DEFAULT 0"),  # an operator set the class: the run keeps it
    ("source_id", "TEXT"),  # a legacy case's ID in the layer it was imported from
)

# the height columns of a run's candidates layer a case carries (detector.night.height; NULL without DSMs)
HEIGHT_COLUMNS = ("height_gain_m", "baseline_height_m", "current_height_m")

# the columns of a run's ``candidates`` layer the registry needs
REQUIRED_CANDIDATE_COLUMNS = ("candidate_id", "class", "confidence", "geometry")


def cases_field_names() -> list[str]:
    """Field names of the cases layer as QGIS lists them (``fid`` first, geometry excluded).

    Returns
    -------
    list[str]
    """
    return ["fid", *[name for name, _ in CASE_COLUMNS]]


# --------------------------------------------------------------------------- height change in words

NO_HEIGHT_CHANGE_M = (
    1.25  # |gain| below this is "no height change" (half of height.min_gain_m's default)
)
# a baseline this high above the ground is a roof: a gain on it is a storey (height.existing_roof_m)
EXISTING_ROOF_M = 2.0
STOREY_M = 3.0  # one storey, for the count of storeys added


def height_phrase(gain_m, baseline_m=None, current_m=None, case_class=None) -> str:
    """A case's height change in words, as the QGIS form, the report and ``cases show`` print it.

    Parameters
    ----------
    gain_m : float or None
        ``height_gain_m`` (None or NaN: no DSM measured it; the phrase is empty).
    baseline_m, current_m : float, optional
        Heights above the ground before and now.
    case_class : str, optional
        The detected class (``new_building`` says "new building", other classes "new structure").

    Returns
    -------
    str
        ``"new storey, +3.1 m"`` (gain on a roof at least :data:`EXISTING_ROOF_M` high; ``"2 new
        storeys, +6.2 m"`` for about two :data:`STOREY_M`), ``"new building, +6.0 m"``
        (gain from the ground; ``"(4.5 m high)"`` added when the current height is not the
        gain), ``"no height change (+0.2 m)"``, ``"lower by 3.0 m"``, or ``""``.
    """

    def missing(value) -> bool:
        return value is None or (isinstance(value, float) and value != value)

    if missing(gain_m):
        return ""
    gain = float(gain_m)
    if abs(gain) < NO_HEIGHT_CHANGE_M:
        return f"no height change ({gain:+.1f} m)"
    if gain < 0:
        return f"lower by {-gain:.1f} m"
    if not missing(baseline_m) and float(baseline_m) >= EXISTING_ROOF_M:
        storeys = max(1, round(gain / STOREY_M))
        return f"{'new storey' if storeys == 1 else f'{storeys} new storeys'}, +{gain:.1f} m"
    what = "new building" if case_class == "new_building" else "new structure"
    # "(4.5 m high)" only when it says more than the gain (something stood there before)
    high = (
        ""
        if missing(current_m) or abs(float(current_m) - gain) < 0.5
        else f" ({float(current_m):.1f} m high)"
    )
    return f"{what}, +{gain:.1f} m{high}"
