"""The second view's reading of the baseline, kept between nights (``detect.second_view.baseline_cache``).

The baseline mosaic is the same night after night, and the working grid is anchored to the
ground (:func:`detector.geo.grid.make_grid`), so the building model's detections on a baseline
tile are the same every night. The first night that needs a tile's baseline view stores it; later
nights read it instead of running the model (one inference instead of two on a tile with
candidates).

Layout: ``FOLDER/KEY/TILE_ID.json``, one small file per tile written atomically, so concurrent
workers and a killed run leave only whole files. ``KEY`` is a sha256 of everything the
detections depend on (the baseline's content hash, the working grid, tile size and overlap, the
building model's sha256, the confidence and IoU asked, the baseline's stretch, the software
version): a new baseline, model or setting starts a new subfolder, never reads a stale one.
``FOLDER/KEY/key.json`` says what the key stands for. Old subfolders can be deleted at any time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from detector.fileio import atomic_write_text, json_digest
from detector.types import Detection

log = logging.getLogger(__name__)

KEY_FILE = "key.json"


def cache_key(facts: dict) -> str:
    """The subfolder name for a night's baseline views: a sha256 (24 hex digits) of ``facts``."""
    return json_digest(facts, 24)


def open_views(folder: Path, facts: dict, about: dict | None = None) -> Path:
    """The folder holding the baseline views for ``facts`` (created, with its ``key.json``: the
    facts and ``about``, e.g. the baseline's path, which does not enter the key).

    The caller has checked that ``folder`` is writable (:func:`detector.fileio.check_output_folder`).
    """
    path = Path(folder) / cache_key(facts)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / KEY_FILE).exists():
        atomic_write_text(
            path / KEY_FILE,
            json.dumps({**facts, **(about or {})}, indent=1, sort_keys=True, default=str) + "\n",
        )
    return path


def load_view(folder: Path, tile_id: str) -> list[Detection] | None:
    """A tile's stored baseline detections, or None (not stored yet, or unreadable: computed again)."""
    path = Path(folder) / f"{tile_id}.json"
    try:
        rows = json.loads(path.read_text())
        return [
            Detection(float(cx), float(cy), float(w), float(h), float(a), float(c), str(name))
            for cx, cy, w, h, a, c, name in rows
        ]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("%s: unreadable stored baseline view (%s); computing it again", path, exc)
        return None


def store_view(folder: Path, tile_id: str, dets: list[Detection]) -> None:
    """Store a tile's baseline detections (exact floats: a later night reads back what this one computed)."""
    rows = [[d.cx, d.cy, d.w, d.h, d.angle, d.confidence, d.class_name] for d in dets]
    try:
        atomic_write_text(Path(folder) / f"{tile_id}.json", json.dumps(rows))
    except OSError as exc:  # a full disk must not stop the night: the view is only a shortcut
        log.warning(
            "%s: cannot store the baseline view of tile %s (%s)", folder, tile_id, exc.strerror
        )
