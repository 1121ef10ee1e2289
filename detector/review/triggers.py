"""What the registry enforces inside SQLite, so QGIS edits obey it too: history, credit, no deletes, IDs.

A reviewer edits ``cases.gpkg`` through QGIS/GDAL, not through buildwatch, so the rules an
enforcement case needs live in the GeoPackage as plain-SQL triggers (core SQLite functions only;
every client runs them):

* ``case_history`` is an append-only table (its own triggers refuse UPDATE and DELETE). Every
  INSERT of a case and every UPDATE that changes its ``status``, geometry or ``alert`` appends a
  row: when (UTC), who, what changed, old -> new status / alert / geometry. "Who" is the
  ``edited_by`` the writer stamped on that very write (the QGIS form stamps the QGIS user on
  every edit; a nightly run stamps ``buildwatch <run_id>``), else ``unknown``. QGIS writes a
  moved outline first (unsigned) and the edit's attributes next, so a geometry change is logged
  by the first signed write after it (``logged_geom`` holds the geometry as last logged); one
  made by another tool is logged, as unsigned, when the next night opens the registry.
* Reviewer credit: a status change sets ``reviewer`` to whoever made it (``edited_by``; NULL
  when unknown) and ``reviewed_at`` to the UTC time, unless the same edit typed them
  explicitly. Editing an outline or a note does not touch them. ``edited_by`` is cleared once
  used for a history row, so a later status change by another tool is not credited to the last
  QGIS user (QGIS writes an edit's attributes and its geometry in two statements, attributes
  first: the stamp must survive the first to sign the second).
* A case is never deleted: DELETE is refused with a message saying to set a status instead.
* A case drawn by an operator (``case_id`` = ``pending-...``, QGIS's default for a new feature)
  gets an ID ``{prefix}{YYYYMMDD}-M{fid:04d}`` (UTC date it was drawn), ``origin`` ``operator``
  and its evidence path. A case inserted with no ``case_id`` at all is refused with a hint.

:func:`ensure_schema` adds what a registry written by an older buildwatch lacks (columns, the
history table, the triggers) and is run by every nightly update, so the rules follow the code.
"""

from __future__ import annotations

import sqlite3

from detector.review.vocab import (
    CASE_COLUMNS,
    CASES_TABLE,
    GEOMETRY_COLUMN,
    HISTORY_TABLE,
    NEW,
    ORIGIN_OPERATOR,
    PENDING_ID_PREFIX,
)

UTC_NOW = "strftime('%Y-%m-%dT%H:%M:%SZ', 'now')"
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
UNSIGNED = "unknown (edited outside the QGIS form)"

HISTORY_DDL = f"""
CREATE TABLE IF NOT EXISTS "{HISTORY_TABLE}" (
    fid INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, case_id TEXT, changed_at DATETIME NOT NULL, changed_by TEXT,
    change TEXT NOT NULL, old_status TEXT, new_status TEXT, old_alert TEXT, new_alert TEXT,
    old_geom BLOB, new_geom BLOB);
"""


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


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
    who = "coalesce(nullif(NEW.edited_by, ''), 'unknown')"
    # a geometry change is logged by the first signed write after it (QGIS writes an edit's geometry,
    # unsigned, just before its attributes); logged_geom is the geometry as last logged
    geom_changed = f"(NEW.{g} IS NOT NEW.logged_geom AND NEW.edited_by IS NOT NULL)"
    changed = f"(OLD.status IS NOT NEW.status OR {geom_changed} OR OLD.alert IS NOT NEW.alert)"
    what = (
        "trim((CASE WHEN OLD.status IS NOT NEW.status THEN 'status ' ELSE '' END) || "
        f"(CASE WHEN {geom_changed} THEN 'geometry ' ELSE '' END) || "
        "(CASE WHEN OLD.alert IS NOT NEW.alert THEN 'alert' ELSE '' END))"
    )
    pending = f"NEW.case_id LIKE '{PENDING_ID_PREFIX}%'"
    new_id = f"{_sql_text(district_prefix)} || strftime('%Y%m%d', 'now') || '-M' || printf('%04d', NEW.fid)"
    return [
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}no_delete" BEFORE DELETE ON "{c}"
        BEGIN SELECT RAISE(ABORT, {_sql_text(DELETE_REFUSED)}); END""",
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}need_id" BEFORE INSERT ON "{c}" WHEN NEW.case_id IS NULL OR NEW.case_id = ''
        BEGIN SELECT RAISE(ABORT, {_sql_text(NO_CASE_ID)}); END""",
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}after_insert" AFTER INSERT ON "{c}"
        BEGIN
            UPDATE "{c}" SET case_id = {new_id}, origin = '{ORIGIN_OPERATOR}', status = coalesce(NEW.status, '{NEW}'),
                first_seen = coalesce(NEW.first_seen, date('now')), times_seen = coalesce(NEW.times_seen, 0),
                geometry_edited = 1, run_geom_hash = NULL, logged_geom = NEW.{g},
                evidence = 'evidence/' || {new_id} || '.png',
                reviewer = coalesce(nullif(NEW.reviewer, ''), nullif(NEW.edited_by, '')),
                reviewed_at = coalesce(NEW.reviewed_at, {UTC_NOW})
            WHERE fid = NEW.fid AND {pending};
            INSERT INTO "{h}" (case_id, changed_at, changed_by, change, new_status, new_alert, new_geom)
            SELECT case_id, {UTC_NOW},
                {who},
                'created', status, alert, {g} FROM "{c}" WHERE fid = NEW.fid;
            UPDATE "{c}" SET edited_by = NULL, logged_geom = NEW.{g} WHERE fid = NEW.fid;
        END""",
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}after_update" AFTER UPDATE ON "{c}"
        WHEN NEW.edited_by IS NOT NULL OR {changed}
        BEGIN
            INSERT INTO "{h}" (case_id, changed_at, changed_by, change, old_status, new_status, old_alert, new_alert,
                               old_geom, new_geom)
            SELECT NEW.case_id, {UTC_NOW}, {who}, {what}, OLD.status, NEW.status, OLD.alert, NEW.alert,
                CASE WHEN {geom_changed} THEN NEW.logged_geom END, CASE WHEN {geom_changed} THEN NEW.{g} END
            WHERE {changed} AND OLD.case_id NOT LIKE '{PENDING_ID_PREFIX}%';
            UPDATE "{c}" SET logged_geom = NEW.{g} WHERE fid = NEW.fid AND {geom_changed};
            UPDATE "{c}" SET
                reviewer = CASE WHEN NEW.reviewer IS NOT OLD.reviewer AND coalesce(NEW.reviewer, '') <> ''
                                THEN NEW.reviewer ELSE nullif(NEW.edited_by, '') END,
                reviewed_at = CASE WHEN NEW.reviewed_at IS NOT OLD.reviewed_at AND NEW.reviewed_at IS NOT NULL
                                   THEN NEW.reviewed_at ELSE {UTC_NOW} END
            WHERE fid = NEW.fid AND OLD.status IS NOT NEW.status;
            UPDATE "{c}" SET edited_by = NULL WHERE fid = NEW.fid AND edited_by IS NOT NULL AND {changed};
        END""",
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}history_no_update" BEFORE UPDATE ON "{h}"
        BEGIN SELECT RAISE(ABORT, {_sql_text(HISTORY_READ_ONLY)}); END""",
        f"""CREATE TRIGGER "{TRIGGER_PREFIX}history_no_delete" BEFORE DELETE ON "{h}"
        BEGIN SELECT RAISE(ABORT, {_sql_text(HISTORY_READ_ONLY)}); END""",
    ]


def ensure_schema(conn: sqlite3.Connection, district_prefix: str) -> list[str]:
    """Bring a registry up to this version: missing case columns, the history table, the triggers.

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
