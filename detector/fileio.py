"""Small file helpers shared by every stage: atomic writes and YAML settings files.

Every file buildwatch writes goes to a temporary name beside its target and is renamed into
place only when complete, so a killed run never leaves a half-written file where a user (or
QGIS) would read it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from detector.errors import ConfigError


def readable_mode() -> int:
    """0o666 minus the umask (mkstemp creates 0o600 files, which a reviewer's account could not read)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``suffix`` (default: the target's) keeps the extension that format drivers look at.
    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix or path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, readable_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def apply_dotted_overrides(data: dict, overrides: dict | None) -> dict:
    """Set ``{"detect.conf": 0.3}``-style overrides into nested ``data`` (None values are skipped)."""
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


def read_yaml_mapping(path: Path | str, what: str = "config file", hint: str = "") -> dict:
    """A YAML file's top-level mapping; :class:`ConfigError` naming the file otherwise."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: {what} not found{hint}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data
