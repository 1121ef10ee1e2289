"""The QGIS triage plugin kept in this package, as the zip QGIS's "Install from ZIP" takes.

The plugin's source is ``detector/review/qgis_plugin/buildwatch_triage/`` (shipped as package
data; a plain folder of this package, never imported by buildwatch: it imports only QGIS, PyQt
and the standard library). :func:`write_plugin_zip` packs it as QGIS expects: one top folder
named after the plugin, holding ``metadata.txt`` and ``__init__.py`` with ``classFactory``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from detector.errors import OutputError
from detector.fileio import atomic_path, check_output_folder

PLUGIN_NAME = "buildwatch_triage"
PLUGIN_DIR = Path(__file__).resolve().parent / "qgis_plugin" / PLUGIN_NAME
PLUGIN_FILES = ("metadata.txt", "__init__.py", "plugin.py", "dock.py", "queue.py")
ZIP_DATE = (2024, 1, 1, 0, 0, 0)  # fixed member times: the same source gives the same zip


def plugin_files() -> list[Path]:
    """The plugin's source files (what goes into the zip), in a fixed order."""
    return [PLUGIN_DIR / name for name in PLUGIN_FILES]


def write_plugin_zip(out: Path | str) -> Path:
    """Write the plugin as ``out`` (a ``.zip``), atomically.

    Parameters
    ----------
    out : path
        The zip to write; its folder is created.

    Returns
    -------
    Path

    Raises
    ------
    OutputError
        ``out`` does not end in ``.zip``, is a folder, or its folder cannot be written.
    """
    out = Path(out)
    if out.is_dir():
        raise OutputError(
            f"{out}: is a folder; give --out the zip's file name, e.g. {out / (PLUGIN_NAME + '.zip')}"
        )
    if out.suffix.lower() != ".zip":
        raise OutputError(
            f"{out}: the plugin is written as a .zip (QGIS installs it from a zip); "
            f"give --out a file name ending in .zip, e.g. {PLUGIN_NAME}.zip"
        )
    check_output_folder(out.absolute().parent, what="folder of the plugin zip", files=(out.name,))
    with atomic_path(out) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in plugin_files():
                info = zipfile.ZipInfo(f"{PLUGIN_NAME}/{path.name}", ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
    return out
