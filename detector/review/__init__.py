"""The review side: the case registry across nights and what reviewers read.

``vocab`` (statuses, case columns, table names) -> ``gpkg`` (GeoPackage storage engine),
``geometry``, ``boundaries``, ``matching`` -> ``registry`` (the night's update; returns what
changed; ``triggers`` keep history, credit, no-deletes and drawn-case IDs inside SQLite) ->
``evidence`` (before/after chips), ``qgis`` (style, form), ``project`` (cases.qgs), ``report`` ->
``nightly`` (:func:`~detector.review.nightly.update_cases`, what the nightly run calls)."""
