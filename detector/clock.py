"""The one way to write "now": UTC, ISO 8601, ending in ``Z``.

``2025-05-01T21:03:07Z`` is what the model registry records; the case registry keeps every
timestamp with milliseconds (``2025-05-01T21:03:07.123Z``, ``timespec="milliseconds"``, the form
GDAL writes a GeoPackage DATETIME in): its triggers (``reviewed_at``, the case history:
:data:`detector.review.triggers.UTC_NOW`), GeoPackage's ``last_change`` and its night rows.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now(timespec: str = "seconds") -> str:
    """Now in UTC as ``YYYY-MM-DDTHH:MM:SSZ`` (``timespec`` as :meth:`datetime.isoformat`, truncated)."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")
