"""Small file helpers shared by every stage: atomic writes and YAML settings files.

Every file buildwatch writes goes to a temporary name beside its target and is renamed into
place only when complete, so a killed run never leaves a half-written file where a user (or
QGIS) would read it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from detector.errors import ConfigError, InputError, OutputError

#: Largest YAML settings file read (a config is a few KB; anything bigger is the wrong file).
MAX_YAML_BYTES = 1 << 20


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
    if path.is_dir():  # found now, before the work, not at the rename
        raise OutputError(
            f"{path}: is a folder where buildwatch writes a file; remove or rename it, or give a file name"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(
            f"{path}: cannot create its folder {path.parent}: a file is in the way; "
            "give another path (or remove the file)"
        ) from None
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{suffix or path.suffix}", dir=path.parent
    )
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


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


def _unique_key_loader():
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the
    last silently: two ``detect:`` blocks would drop the first one's settings)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # "<<": merged keys may repeat
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        if key in seen:
                            raise _DuplicateKey(key, key_node.start_mark.line + 1, seen[key] + 1)
                        seen[key] = key_node.start_mark.line
                    except TypeError:  # an unhashable key: SafeLoader reports it
                        continue
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_yaml_mapping(path: Path | str, what: str = "config file", hint: str = "") -> dict:
    """A YAML file's top-level mapping; :class:`ConfigError` naming the file otherwise.

    Refused with one line: a missing, special (FIFO, device) or oversized file, binary or
    non-UTF-8 content, invalid YAML, a key given twice in one mapping (with its line),
    impossible values (``2026-02-30``), nesting deep enough to exhaust the parser, or a top
    level that is not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: {what} not found{hint}")
    check_regular_file(path, what, error=ConfigError)
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(
            f"{path}: {what} is {path.stat().st_size / 1e6:.1f} MB; a settings file is a few KB: "
            "is this the right file?"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{path}: {what} is not UTF-8 text (a binary file?); give a YAML file"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{path}: {what} is not text (a binary file?); give a YAML file")
    try:
        data = yaml.load(text, Loader=_unique_key_loader()) or {}
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{path}: line {exc.line}: key '{exc.key}' is given twice (first on line {exc.first}); "
            "YAML would keep only the last: merge them into one"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())[:160]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: {what} is nested too deeply to be a settings file") from None
    except (
        ValueError,
        TypeError,
        OverflowError,
    ) as exc:  # e.g. a date 2026-02-30 in the YAML timestamp form
        raise ConfigError(f"{path}: {what} holds an impossible value ({exc}); fix it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return data


# --------------------------------------------------------------------------- up-front checks


def same_file(a: Path | str, b: Path | str) -> bool:
    """``a`` and ``b`` name one file: equal once resolved (symlinks, ``..``, the working folder),
    or, when both exist, one file under two names (a hard link: :func:`os.path.samefile`)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one is missing (an output not written yet)
        return False


def is_inside(path: Path | str, folder: Path | str) -> bool:
    """``path`` resolves to ``folder`` or to something below it (symlinks and ``..`` resolved)."""
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents


@contextmanager
def made_folder(folder: Path | str) -> Iterator[Path]:
    """Create ``folder`` (and its missing parents) for the block; if the block fails, remove the
    folders this made that are still empty, so that a refused command leaves nothing behind."""
    folder = Path(folder).absolute()
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)  # deepest first
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for p in missing:
            try:
                p.rmdir()
            except OSError:  # not empty (another process wrote there): keep it
                break
        raise


def check_regular_file(path: Path | str, what: str, *, error: type = InputError) -> Path:
    """Refuse anything but an existing, readable regular file (folders, FIFOs, devices, sockets).

    A FIFO named ``*.tif`` would block the first read forever; a folder given as a model fails
    deep inside a library. Both are refused here with one line naming ``path``.

    Raises
    ------
    InputError (or ``error``)
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found; check the path") from None
    except OSError as exc:
        raise error(f"{path}: {what} cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{path}: {what} is a folder; give a file")
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(st.st_mode)
            else "a device, socket or other special file"
        )
        raise error(
            f"{path}: {what} is {kind}, not a regular file; copy the data to a file and give that"
        )
    if not os.access(path, os.R_OK):
        raise error(f"{path}: {what} is not readable (permission denied); fix its permissions")
    return path


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def json_digest(obj, chars: int | None = None) -> str:
    """The one digest of structured facts: sha256 (hex) of ``obj`` as canonical JSON (sorted keys,
    ``str()`` for what JSON lacks), cut to its first ``chars`` digits when given.

    Names a night's work folder (:func:`detector.run.night._fingerprint`) and a folder of kept
    baseline views (:func:`detector.night.view_cache.cache_key`); equal facts give equal names.
    """
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
    return digest[:chars] if chars else digest


def free_bytes(folder: Path | str) -> int:
    """Free space available to this user on the file system holding ``folder``."""
    return shutil.disk_usage(folder).free


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


SQLITE_MAX_PATH = (
    512  # SQLite's unix VFS limit on a database's absolute path (MAX_PATHNAME), in bytes
)
SQLITE_PATH_MARGIN = 40  # what the atomic write's temporary name and the "-journal" suffix add


def check_output_folder(
    folder: Path | str,
    *,
    what: str = "output folder",
    files: tuple[str, ...] = (),
    folders: tuple[str, ...] = (),
    need_bytes: int = 0,
) -> Path:
    """Check, before any work, that ``folder`` can take the outputs; :class:`OutputError` otherwise.

    Parameters
    ----------
    folder : path
        The output folder (created later if missing; its nearest existing parent is checked).
    files, folders : tuple of str
        Names inside ``folder`` that will be written as files / used as folders: a folder
        where a file belongs (or the reverse) is refused now, not after the whole run.
    need_bytes : int
        Estimated size of the outputs; refused when the file system has less free.
    """
    folder = Path(folder)
    if str(folder).strip() == "" or str(folder) == ".":
        raise OutputError("the output folder is empty (''); give --out a folder name")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: {what} is a file; give a folder (or remove the file)")
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise OutputError(f"{folder}: {what} cannot be created: {base} is a file")
    probe_dir = folder if folder.is_dir() else base
    try:
        fd, probe = tempfile.mkstemp(prefix=".buildwatch-probe.", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = {errno.EROFS: "is on read-only storage", errno.ENOSPC: "is on a full disk"}.get(
            exc.errno, f"is not writable ({exc.strerror})"
        )
        raise OutputError(f"{probe_dir}: {what} {reason}; choose a writable folder") from None
    for name in files:
        if (folder / name).is_dir():
            raise OutputError(
                f"{folder / name}: is a folder but buildwatch writes a file there; remove or rename it"
            )
        if name.endswith((".gpkg", ".sqlite")):
            # SQLite (so every GeoPackage) cannot open a file whose absolute path exceeds 512 bytes;
            # the atomic write's temporary name and the journal add a few more
            length = len(os.fsencode(os.path.abspath(folder / name))) + SQLITE_PATH_MARGIN
            if length > SQLITE_MAX_PATH:
                raise OutputError(
                    f"{folder / name}: the path is too long for a GeoPackage (SQLite opens at most "
                    f"{SQLITE_MAX_PATH} bytes, this needs {length}); choose a shorter {what} path"
                )
    for name in folders:
        if (folder / name).exists() and not (folder / name).is_dir():
            raise OutputError(
                f"{folder / name}: is a file but buildwatch keeps a folder there; remove or rename it"
            )
    if need_bytes:
        free = free_bytes(probe_dir)
        if free < need_bytes:
            raise OutputError(
                f"{probe_dir}: {what} has {free / 1e6:.0f} MB free, the run needs about "
                f"{need_bytes / 1e6:.0f} MB; free space or choose another folder"
            )
    return folder


# --------------------------------------------------------------------------- locks and leftovers


@contextmanager
def exclusive_lock(
    lock_path: Path | str,
    what: str,
    *,
    wait: bool = False,
    timeout_s: float | None = None,
    hint: str = "wait for it to finish (or give another --out)",
) -> Iterator[Path]:
    """Hold an advisory ``flock`` on ``lock_path`` for the block (released by the OS if killed).

    Parameters
    ----------
    lock_path : path
        The lock file (created; left in place, it holds no data).
    what : str
        What the lock protects, for the message.
    wait : bool
        Wait until the lock is free (for short critical sections, e.g. a registry update);
        otherwise refuse at once with :class:`OutputError` naming the holder's PID.
    timeout_s : float, optional
        With ``wait``: refuse the same way once this many seconds have passed (None: no limit).
        The wait polls, so a signal (SIGTERM) is acted on within a tenth of a second.
    hint : str
        What to do, ending the refusal's line.
    """
    import fcntl

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if wait and (deadline is None or time.monotonic() < deadline):
                    time.sleep(0.1)
                    continue
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                waited = f" for {timeout_s:g} s" if wait else ""
                raise OutputError(
                    f"{lock_path.parent}: another buildwatch process (pid {holder}) is using "
                    f"{what}{waited}; {hint}"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_path
    finally:
        os.close(fd)  # closing releases the lock


TEMP_MARKER = ".tmp"  # every temporary name buildwatch writes is hidden (".name.") and holds this


def clean_stale_temps(folder: Path | str, *, older_than_s: float = 0.0) -> list[Path]:
    """Remove temporary files (and SQLite ``-journal``/``-wal``/``-shm`` and ``.ovr`` companions)
    and temporary folders that a killed process left in ``folder`` (not recursive).

    Call it only while holding the folder's lock (:func:`exclusive_lock`), so that no live
    process's temporary file is removed. Names: hidden (``.``) and holding ``.tmp`` (from
    :func:`atomic_path` and the GeoPackage writers), or ``.ortho-*`` / ``.ingest-*`` work folders.

    Returns
    -------
    list of Path
        What was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        name = p.name
        if not name.startswith("."):
            continue
        litter = TEMP_MARKER in name or name.startswith((".ortho-", ".ingest-"))
        if not litter:
            continue
        try:
            if older_than_s and now - p.lstat().st_mtime < older_than_s:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            continue
    return removed
