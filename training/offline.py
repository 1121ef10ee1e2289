"""Keep ultralytics offline: call :func:`prepare_offline` BEFORE importing ultralytics.

``YOLO_OFFLINE=true``, a project-local ``YOLO_CONFIG_DIR`` holding matplotlib's DejaVuSans as
``Arial.ttf`` / ``Arial.Unicode.ttf`` (ultralytics looks there before downloading a font).
Used by training, export and checkpoint recovery alike.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def prepare_offline(config_dir: Path | str = ".yolo") -> Path:
    """Set the environment so that ultralytics never downloads; call BEFORE importing ultralytics."""
    config_dir = Path(config_dir).resolve()
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "true"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("YOLO_VERBOSE", "true")
    font = _find_dejavu()
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = config_dir / name
        if font is not None and not target.exists():
            shutil.copyfile(font, target)
    return config_dir


def _find_dejavu() -> Path | None:
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return path if path.exists() else None
    except ImportError:
        return None
