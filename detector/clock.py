"""The one way to write "now": UTC, ISO 8601, ending in ``Z``.

``2025-05-01T21:03:07Z`` is what the case registry's triggers stamp (``reviewed_at``, the case
history: :data:`detector.review.triggers.UTC_NOW`) and what the model registry records;
GeoPackage's ``last_change`` and the registry's night rows want milliseconds
(``2025-05-01T21:03:07.123Z``, ``timespec="milliseconds"``).
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now(timespec: str = "seconds") -> str:
    """Now in UTC as ``YYYY-MM-DDTHH:MM:SSZ`` (``timespec`` as :meth:`datetime.isoformat`, truncated)."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")
