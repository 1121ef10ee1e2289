"""What the registry enforces inside SQLite, so QGIS edits obey it too: history, credit, no deletes, IDs.

A reviewer edits ``cases.gpkg`` through QGIS/GDAL, not through buildwatch, so the rules an
enforcement case needs live in the GeoPackage as plain-SQL triggers (core SQLite functions only;
every client runs them):

* **Time**: one format in every timestamp column, written by every path (these triggers,
  buildwatch, GDAL/QGIS): UTC ``YYYY-MM-DDTHH:MM:SS.SSSZ`` (:data:`UTC_NOW`; what GDAL writes
  for a GeoPackage DATETIME). Timestamps are compared normalised (:func:`normalised_sql`), so
  GDAL rewriting ``…06Z`` as ``…06.000Z`` is no change, and a ``reviewed_at`` typed in another
  form (``2024-05-01 10:00``, ``+08:00``) is stored normalised.
* **Who** (``edited_by``): every write that changes a case should carry the editor's name in
  ``edited_by`` *in that same write*. The triggers use it for that write (history, credit) and
  then clear it, so a stamp never outlives its write: a later change by a tool that stamps
  nothing (ogrinfo, a script) is credited to ``unknown``, never to the last QGIS user or run.
  (Measured in QGIS 3.22 / GDAL 3.6: a committed edit writes a feature's new outline first and
  its attributes, with the stamp, last; the outline is logged by that signed write, see
  ``logged_geom``; an outline changed by an unsigning tool is logged as ``unknown`` when the
  next night opens the registry.)
* **History** (``case_history``, append-only: its own triggers refuse UPDATE and DELETE):
  every INSERT of a case and every write that changes its ``status``, outline, ``class`` or
  ``alert`` appends a row: when (UTC), who (``edited_by``, else ``unknown``), what changed,
  old -> new status / alert / geometry. ``change`` separates people from the detector: a write
  stamped by a nightly run (``edited_by`` starting with
  :data:`~detector.review.vocab.RUN_EDITOR_PREFIX`) logs ``detector_geometry`` /
  ``detector_class`` / ``detector_alert``; anyone else's ``status``, ``geometry``, ``class``,
  ``alert`` (:data:`~detector.review.vocab.PEOPLE_CHANGES`).
* **Credit**: a status change sets ``reviewer`` to whoever made it (``unknown`` when unsigned)
  and ``reviewed_at`` to UTC now, unless the same write typed a different reviewer / time
  (compared normalised). Editing an outline, the class or a note does not touch them.
* **Class**: a ``class`` changed by anyone but a run sets ``class_edited`` = 1: the operator
  owns it from then on and the nightly run no longer writes it (like ``geometry_edited``).
* A case is never deleted: DELETE is refused with a message saying to set a status instead.
* A case drawn by an operator (``case_id`` = ``pending-...``, QGIS's default for a new feature)
  gets ``{prefix}{YYYYMMDD}-M{nnnn}`` (the night it was reviewed against: the registry's latest
  night, else today UTC; ``nnnn`` counts that night's drawn cases), ``origin`` ``operator``,
  ``first_seen`` that night, its evidence path, and ``class_edited`` when a class was typed.
  A case inserted with no ``case_id`` at all is refused with a hint.

How a client stamps the editor (the QGIS form does this; a plugin or script must do the same)
-------------------------------------------------------------------------------------------
Set the ``edited_by`` field of the feature in the same edit as the change, through the layer's
edit buffer (``layer.changeAttributeValue(fid, layer.fields().indexOf("edited_by"), name)``
before ``commitChanges()``), to the value of
:data:`detector.review.qgis.USER_EXPRESSION` evaluated in the layer's expression context::

    coalesce(nullif(@buildwatch_operator, ''), if(length(@user_full_name) > 0, @user_full_name,
             @user_account_name))

i.e. the global variable ``buildwatch_operator`` when the operators share one account
(*Settings > Options > Variables*), else the QGIS user's full name, else the account name. With
the layer's default style loaded the form's default value (``applyOnUpdate``) already sets it on
every ``changeAttributeValue`` / ``changeGeometry``; setting it explicitly is harmless. Rules:
a non-empty name that does not start with ``buildwatch `` (reserved for nightly runs); stamp every
commit (the stamp is consumed by the write that carries it); do not write ``reviewer`` /
``reviewed_at`` (the trigger sets them on a status change) unless recording a review made at
another time; never write ``class_edited``, ``logged_geom`` or ``case_history``. Tools outside
QGIS stamp the OS user (:func:`os_editor`), or leave it empty and are logged as ``unknown``.

:func:`ensure_schema` adds what a registry written by an older buildwatch lacks (columns, the
history table, the triggers), rewrites older timestamps in the one format, and is run by every
nightly update, so the rules follow the code.
"""

from __future__ import annotations

import getpass
import re
import sqlite3

from detector.review.vocab import (
    CASE_COLUMNS,
    CASES_TABLE,
    GEOMETRY_COLUMN,
    HISTORY_TABLE,
    NEW,
    NIGHTS_TABLE,
    OPERATOR_ID_MARK,
    ORIGIN_OPERATOR,
    PENDING_ID_PREFIX,
    RUN_EDITOR_PREFIX,
    UNKNOWN_EDITOR,
)

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%fZ"  # SQLite's %f is SS.SSS: 2024-05-01T21:03:07.123Z
UTC_NOW = f"strftime('{TIMESTAMP_FORMAT}', 'now')"
TRIGGER_PREFIX = "buildwatch_"
DELETE_REFUSED = (
    "buildwatch: cases are never deleted (they are the enforcement record); set the status to "
    "false_positive instead"
)
NO_CASE_ID = (
    f"buildwatch: a new case needs case_id; open cases.qgs (its form fills '{PENDING_ID_PREFIX}...' "
    "and the registry assigns the ID) or type any case_id starting with " + PENDING_ID_PREFIX
)
HISTORY_READ_ONLY = "buildwatch: case_history is append-only"
# who changed an outline outside QGIS (logged when the next night opens the registry)
UNSIGNED = UNKNOWN_EDITOR
# the timestamp columns kept in the one format (table, column)
TIMESTAMP_COLUMNS = ((CASES_TABLE, "reviewed_at"), (HISTORY_TABLE, "changed_at"))

HISTORY_DDL = f"""
CREATE TABLE IF NOT EXISTS "{HISTORY_TABLE}" (
    fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, case_id TEXT, changed_at DATETIME NOT NULL, changed_by TEXT,
    change TEXT NOT NULL, old_status TEXT, new_status TEXT, old_alert TEXT, new_alert TEXT,
    old_geom BLOB, new_geom BLOB);
"""


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def normalised_sql(expression: str) -> str:
    """SQL for a timestamp in the one format (:data:`TIMESTAMP_FORMAT`, UTC); unparseable text as is.

    Parameters
    ----------
    expression : str
        An SQL expression (a column, ``NEW.reviewed_at``).

    Returns
    -------
    str
    """
    return f"coalesce(strftime('{TIMESTAMP_FORMAT}', {expression}), {expression})"


def os_editor() -> str:
    """How a buildwatch command run by a person signs its writes: the OS user, else ``unknown``.

    Returns
    -------
    str
    """
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return UNKNOWN_EDITOR
    return name or UNKNOWN_EDITOR


def trigger_sql(district_prefix: str) -> list[str]:
    """The CREATE TRIGGER statements (cases and case_history), for one district prefix.

    Parameters
    ----------
    district_prefix : str
        ``CasesConfig.district_prefix``: operator-drawn case IDs start with it.

    Returns
    -------
    list[str]
    """
    c, h, g = CASES_TABLE, HISTORY_TABLE, GEOMETRY_COLUMN
    who = f"coalesce(nullif(NEW.edited_by, ''), '{UNKNOWN_EDITOR}')"
    signed = "coalesce(NEW.edited_by, '') <> ''"
    by_run = f"(substr(coalesce(NEW.edited_by, ''), 1, {len(RUN_EDITOR_PREFIX)}) = {_sql_text(RUN_EDITOR_PREFIX)})"
    # a geometry change is logged by the first signed write after it (QGIS writes an edit's geometry,
    # unsigned, just before its attributes); logged_geom is the geometry as last logged
    geom_changed = f"(NEW.{g} IS NOT NEW.logged_geom AND {signed})"
    class_changed = "(OLD.class IS NOT NEW.class)"
    changed = (
        f"(OLD.status IS NOT NEW.status OR {geom_changed} OR OLD.alert IS NOT NEW.alert "
        f"OR {class_changed})"
    )
    detector = f"(CASE WHEN {by_run} THEN 'detector_' ELSE '' END)"
    what = (
        "trim((CASE WHEN OLD.status IS NOT NEW.status THEN 'status ' ELSE '' END) || "
        f"(CASE WHEN {geom_changed} THEN {detector} || 'geometry ' ELSE '' END) || "
        f"(CASE WHEN {class_changed} THEN {detector} || 'class ' ELSE '' END) || "
        f"(CASE WHEN OLD.alert IS NOT NEW.alert THEN {detector} || 'alert' ELSE '' END))"
    )
    pending = f"NEW.case_id LIKE '{PENDING_ID_PREFIX}%'"
    night = f"coalesce((SELECT max(night) FROM \"{NIGHTS_TABLE}\"), date('now'))"
    id_base = (
        f"({_sql_text(district_prefix)} || strftime('%Y%m%d', {night}) || '-{OPERATOR_ID_MARK}')"
    )
    new_id = (
        f"({id_base} || printf('%04d', 1 + coalesce((SELECT max(CAST(substr(x.case_id, length({id_base}) + 1) "
        f'AS INTEGER)) FROM "{c}" x WHERE substr(x.case_id, 1, length({id_base})) = {id_base}), 0)))'
    )
    reviewed_at_typed = (
        f"({normalised_sql('NEW.reviewed_at')} IS NOT {normalised_sql('OLD.reviewed_at')} "
        "AND NEW.reviewed_at IS NOT NULL)"
    )
    return [
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}no_delete" BEFORE DELETE ON "{c}"
        BEGIN SELECT RAISE(ABORT, {_sql_text(DELETE_REFUSED)}); END""",
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}need_id" BEFORE INSERT ON "{c}" WHEN NEW.case_id IS NULL OR NEW.case_id = ''
        BEGIN SELECT RAISE(ABORT, {_sql_text(NO_CASE_ID)}); END""",
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}after_insert" AFTER INSERT ON "{c}"
        BEGIN
            UPDATE "{c}" SET case_id = {new_id}, origin = '{ORIGIN_OPERATOR}', status = coalesce(NEW.status, '{NEW}'),
                first_seen = coalesce(NEW.first_seen, {night}), times_seen = coalesce(NEW.times_seen, 0),
                geometry_edited = 1, run_geom_hash = NULL, logged_geom = NEW.{g},
                class_edited = (coalesce(NEW.class, '') <> ''),
                evidence = 'evidence/' || {new_id} || '.png',
                reviewer = coalesce(nullif(NEW.reviewer, ''), {who}),
                reviewed_at = coalesce({normalised_sql("NEW.reviewed_at")}, {UTC_NOW})
            WHERE fid = NEW.fid AND {pending};
            UPDATE "{c}" SET reviewed_at = {normalised_sql("reviewed_at")}
            WHERE fid = NEW.fid AND NOT {pending} AND reviewed_at IS NOT {normalised_sql("reviewed_at")};
            INSERT INTO "{h}" (case_id, changed_at, changed_by, change, new_status, new_alert, new_geom)
            SELECT case_id, {UTC_NOW}, {who}, 'created', status, alert, {g} FROM "{c}" WHERE fid = NEW.fid;
            UPDATE "{c}" SET edited_by = NULL, logged_geom = NEW.{g} WHERE fid = NEW.fid;
        END""",
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}after_update" AFTER UPDATE ON "{c}"
        WHEN {signed} OR {changed} OR NEW.reviewed_at IS NOT {normalised_sql("NEW.reviewed_at")}
        BEGIN
            INSERT INTO "{h}" (case_id, changed_at, changed_by, change, old_status, new_status, old_alert, new_alert,
                               old_geom, new_geom)
            SELECT NEW.case_id, {UTC_NOW}, {who}, {what}, OLD.status, NEW.status, OLD.alert, NEW.alert,
                CASE WHEN {geom_changed} THEN NEW.logged_geom END, CASE WHEN {geom_changed} THEN NEW.{g} END
            WHERE {changed} AND OLD.case_id NOT LIKE '{PENDING_ID_PREFIX}%';
            UPDATE "{c}" SET logged_geom = NEW.{g} WHERE fid = NEW.fid AND {geom_changed};
            UPDATE "{c}" SET class_edited = 1 WHERE fid = NEW.fid AND {class_changed} AND NOT {by_run};
            UPDATE "{c}" SET
                reviewer = CASE WHEN NEW.reviewer IS NOT OLD.reviewer AND coalesce(NEW.reviewer, '') <> ''
                                THEN NEW.reviewer ELSE {who} END,
                reviewed_at = CASE WHEN {reviewed_at_typed} THEN {normalised_sql("NEW.reviewed_at")} ELSE {UTC_NOW} END
            WHERE fid = NEW.fid AND OLD.status IS NOT NEW.status;
            UPDATE "{c}" SET reviewed_at = {normalised_sql("NEW.reviewed_at")}
            WHERE fid = NEW.fid AND OLD.status IS NEW.status
                AND NEW.reviewed_at IS NOT {normalised_sql("NEW.reviewed_at")};
            UPDATE "{c}" SET edited_by = NULL WHERE fid = NEW.fid AND NEW.edited_by IS NOT NULL;
        END""",
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}history_no_update" BEFORE UPDATE ON "{h}"
        BEGIN SELECT RAISE(ABORT, {_sql_text(HISTORY_READ_ONLY)}); END""",
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}history_no_delete" BEFORE DELETE ON "{h}"
        BEGIN SELECT RAISE(ABORT, {_sql_text(HISTORY_READ_ONLY)}); END""",
    ]


def district_prefix_of(conn: sqlite3.Connection) -> str:
    """The district prefix the registry's triggers were made with ("" when it has none yet).

    The registry keeps no settings table: its insert trigger (:func:`trigger_sql`) is the record
    of the prefix the nightly runs give it, read back for commands that have no config
    (``buildwatch cases import``).

    Parameters
    ----------
    conn : sqlite3.Connection

    Returns
    -------
    str
    """
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?",
        (TRIGGER_PREFIX + "after_insert",),
    ).fetchone()
    match = re.search(r"'((?:[^']|'')*)' \|\| strftime\('%Y%m%d'", row[0]) if row else None
    return match.group(1).replace("''", "'") if match else ""


def ensure_schema(conn: sqlite3.Connection, district_prefix: str) -> list[str]:
    """Bring a registry up to this version: missing case columns, the history table, the triggers.

    Also rewrites timestamps an older version wrote in another form (``…07Z``) in the one format
    (:data:`TIMESTAMP_FORMAT`), before the history's append-only triggers are recreated.
    Run inside the caller's write transaction (or on a private file being created).

    Parameters
    ----------
    conn : sqlite3.Connection
    district_prefix : str
        For operator-drawn case IDs.

    Returns
    -------
    list[str]
        The columns added (empty for a current registry).
    """
    present = {row[1] for row in conn.execute(f'PRAGMA table_info("{CASES_TABLE}")')}
    added = []
    for name, sql_type in CASE_COLUMNS:
        if name not in present:
            conn.execute(
                f'ALTER TABLE "{CASES_TABLE}" ADD COLUMN "{name}" {sql_type.replace(" UNIQUE", "")}'
            )
            added.append(name)
    conn.execute(HISTORY_DDL)
    conn.execute(
        "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description) "
        "VALUES (?, 'attributes', ?, 'append-only history of every case: status, geometry and alert changes')",
        (HISTORY_TABLE, HISTORY_TABLE),
    )
    existing = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE ?",
            (TRIGGER_PREFIX + "%",),
        )
    ]
    for name in existing:
        conn.execute(f'DROP TRIGGER "{name}"')
    for table, column in TIMESTAMP_COLUMNS:  # no trigger now: a format rewrite is no change
        conn.execute(
            f'UPDATE "{table}" SET "{column}" = {normalised_sql(column)} '
            f'WHERE "{column}" IS NOT {normalised_sql(column)}'
        )
    # a stamp an older version left behind is no one's signature on the next write
    conn.execute(f'UPDATE "{CASES_TABLE}" SET edited_by = NULL WHERE edited_by IS NOT NULL')
    for statement in trigger_sql(district_prefix):
        conn.execute(statement)
    if "logged_geom" in added:
        conn.execute(f'UPDATE "{CASES_TABLE}" SET logged_geom = "{GEOMETRY_COLUMN}"')
    # a geometry edited without a signature (not through the QGIS form) is logged now, unsigned
    conn.execute(
        f'UPDATE "{CASES_TABLE}" SET edited_by = ? WHERE "{GEOMETRY_COLUMN}" IS NOT logged_geom',
        (UNSIGNED,),
    )
    return added
