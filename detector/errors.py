"""Errors a user can fix. The CLI turns them into one line on stderr and exit code 2.

:func:`user_error_from` recognises the operating-system and SQLite failures that are the
user's to fix (a read-only folder, a full disk, a folder where a file belongs) when they
surface from deep inside a library, so that they too get one line and exit 2 instead of an
internal-error report.
"""

from __future__ import annotations

import errno


class BuildwatchError(Exception):
    """Bad input or configuration: the message names the file, what is wrong and what to do."""

    exit_code = 2


class InputError(BuildwatchError):
    """An input file (raster, vector, model, config) is missing or unusable."""


class ConfigError(BuildwatchError):
    """The run configuration is invalid."""


class ModelError(BuildwatchError):
    """The ONNX model is missing, unreadable, or does not follow the buildwatch contract."""


class OutputError(BuildwatchError):
    """An output location cannot be written (read-only, full, a folder where a file belongs, locked)."""


RESUME_HINT = "rerun the same command to resume"

_OS_FIXES = {
    errno.EACCES: ("permission denied", "choose a folder you can write to, or fix its permissions"),
    errno.EPERM: (
        "operation not permitted",
        "choose a folder you can write to, or fix its permissions",
    ),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
    errno.ENOSPC: ("no space left on device", f"free space, then {RESUME_HINT}"),
    errno.EDQUOT: ("disk quota exceeded", f"free space, then {RESUME_HINT}"),
    errno.EISDIR: ("is a folder where a file is expected", "remove or rename it"),
    errno.ENOTDIR: ("a path component is a file where a folder is expected", "fix the path"),
    errno.ENAMETOOLONG: ("file name too long", "use a shorter path"),
}

_SQLITE_FIXES = (
    ("disk is full", "no space left on device", f"free space, then {RESUME_HINT}"),
    ("readonly database", "the file or its folder is read-only", "use writable storage"),
    (
        "unable to open database file",
        "cannot open or create the database",
        "check the folder exists and is writable",
    ),
    ("file is not a database", "not a GeoPackage/SQLite file", "point at a buildwatch GeoPackage"),
)


def user_error_from(exc: BaseException) -> BuildwatchError | None:
    """The user-fixable cause of ``exc`` as one :class:`OutputError` line, or None (an internal error).

    Parameters
    ----------
    exc : BaseException
        Whatever escaped a command: :class:`OSError` with a user-fixable ``errno``, an
        :class:`sqlite3.Error` about a full disk or a read-only file, or any exception whose
        ``__cause__``/``__context__`` chain holds one.

    Returns
    -------
    BuildwatchError or None
    """
    import sqlite3

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, BuildwatchError):
            return exc
        if isinstance(exc, OSError) and exc.errno in _OS_FIXES:
            what, fix = _OS_FIXES[exc.errno]
            where = exc.filename if exc.filename else "output"
            return OutputError(f"{where}: {what}; {fix}")
        text = str(exc).lower()
        if (
            isinstance(exc, sqlite3.Error)
            or "sqlite" in type(exc).__module__.lower()
            or "disk" in text
        ):
            for needle, what, fix in _SQLITE_FIXES:
                if needle in text:
                    return OutputError(f"{what} ({str(exc).splitlines()[0][:120]}); {fix}")
        if "no space left on device" in text:
            return OutputError(
                f"no space left on device ({str(exc).splitlines()[0][:120]}); "
                f"free space, then {RESUME_HINT}"
            )
        exc = exc.__cause__ or exc.__context__
    return None
