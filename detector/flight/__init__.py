"""Acquisition: raw drone frames (pose from EXIF/XMP or a flight log) or another tool's mosaic ->
a COG on the baseline's grid (``buildwatch ortho`` / ``buildwatch ingest``)."""
