"""The ``buildwatch`` command line: one click group; each subcommand lives in a module of this
package named after its topic (``run_cmd``, ``cases_cmd``, ``doctor_cmd``, ``synth_cmd``;
``ortho_cmd`` holds ``ortho`` and ``ingest``, ``model_cmd`` holds ``model-info`` and ``models``),
the training commands in :mod:`training.cli`. The commands are thin: they parse options and call
the library (:mod:`detector.run`, :mod:`detector.review`, :mod:`detector.flight`, ...).

Subcommands are loaded lazily so that ``buildwatch --help`` stays fast and heavy imports
(rasterio, onnxruntime, ultralytics) happen only in the command that needs them.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import click

from detector import __version__

# command name -> "module:attribute" (a click command).
COMMANDS = {
    "synth": "detector.cli.synth_cmd:synth",
    "run": "detector.cli.run_cmd:run",
    "ingest": "detector.cli.ortho_cmd:ingest",
    "ortho": "detector.cli.ortho_cmd:ortho",
    "cases": "detector.cli.cases_cmd:cases",
    "model-info": "detector.cli.model_cmd:model_info",
    "doctor": "detector.cli.doctor_cmd:doctor",
    "models": "detector.cli.model_cmd:models",
    "qgis-plugin": "detector.cli.plugin_cmd:qgis_plugin",
    "retrain": "training.cli:retrain",
    "train": "training.cli:train",
    "export": "training.cli:export",
    "evaluate": "training.cli:evaluate",
    "build-dataset": "training.cli:build_dataset",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = exc.name or "?"
            if missing.startswith(("detector", "training")):
                raise
            raise click.ClickException(
                f"'buildwatch {name}' needs the Python package '{missing}', which is not installed. "
                f"For training commands install the extra: pip install -e '.[train]'"
            ) from None
        return getattr(module, attr)


#: Loggers whose records reach the terminal; everything else (rasterio/GDAL, pyogrio,
#: ``py.warnings`` from :func:`logging.captureWarnings`) goes to the log file only.
TERMINAL_LOGGERS = ("detector", "training", "buildwatch")


class _OwnLoggers(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in TERMINAL_LOGGERS


class _Stderr(logging.StreamHandler):
    """A handler on whatever ``sys.stderr`` is now (not the one at creation)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _terminal_logging(level: int) -> None:
    """One stderr handler for the project's own loggers; library noise is kept off the terminal."""
    from detector.logs import log_to

    handler = next(
        (h for h in logging.getLogger().handlers if getattr(h, "_buildwatch", False)), None
    )
    if handler is None:
        handler = _Stderr()
        handler._buildwatch = True
        handler.addFilter(_OwnLoggers())
    log_to(
        handler, level, ("",)
    )  # the root logger; library warnings become log records (file only, see _OwnLoggers)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="buildwatch")
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log to the terminal too: -v warnings and progress messages, "
    "-vv debug (the progress bar shows whenever stderr is a terminal).",
)
def cli(verbose: int) -> None:
    """buildwatch: find newly built structures between two drone orthomosaics."""
    # Quiet by default (an unattended job's terminal is its mail): main() prints the one line a failure
    # needs; warnings and errors are in the run's log file.
    _terminal_logging((logging.CRITICAL, logging.INFO, logging.DEBUG)[min(verbose, 2)])


def error_log_path() -> Path:
    """Where tracebacks of internal errors go: ``$BUILDWATCH_ERROR_LOG``, else the user's cache folder."""
    env = os.environ.get("BUILDWATCH_ERROR_LOG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "buildwatch" / "errors.log"


def _log_traceback(exc: BaseException, argv) -> Path | None:
    """Append the traceback of ``exc`` to :func:`error_log_path` (never to the terminal)."""
    import tempfile
    import traceback
    from datetime import datetime

    text = (
        f"--- {datetime.now().isoformat(timespec='seconds')} buildwatch {__version__} "
        f"argv={list(argv) if argv is not None else sys.argv[1:]}\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    for path in (error_log_path(), Path(tempfile.gettempdir()) / "buildwatch-errors.log"):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.stat().st_size > 4 << 20:  # keep the last few MB
                path.replace(path.with_name(path.name + ".1"))
            with open(path, "a", encoding="utf-8") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return None


def _interrupted(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


INTERRUPTED = "interrupted; finished tiles are kept, rerun the same command to resume"


def main(argv=None) -> int:
    """Entry point: user errors -> one line + exit 2; Ctrl-C -> 130; internal errors -> exit 1.

    Nothing but that one line reaches the terminal on failure: tracebacks are appended to
    :func:`error_log_path` (and a run's ``buildwatch.log``), library warnings to the log file.
    """
    from detector.errors import BuildwatchError, user_error_from

    logging.captureWarnings(True)
    _stop_on_sigterm()
    try:
        cli.main(args=argv, standalone_mode=False)
    except BuildwatchError as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        return exc.exit_code
    except click.exceptions.Abort as exc:
        if _interrupted(exc):
            click.echo(INTERRUPTED, err=True)
            return 130
        click.echo("aborted", err=True)
        return 1
    except click.UsageError as exc:  # one line, not click's three
        names, ctx = [], exc.ctx
        while ctx is not None and ctx.parent is not None:
            names.insert(0, ctx.info_name)
            ctx = ctx.parent
        cmd = " ".join(["buildwatch", *names])
        click.echo(f"error: {_one_line(exc.format_message())} (see '{cmd} --help')", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"error: {_one_line(exc.format_message())}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo(INTERRUPTED, err=True)
        return 130
    except SystemExit as exc:  # click's --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except BaseException as exc:  # noqa: BLE001 - last resort; the traceback goes to a file
        if isinstance(exc, (GeneratorExit,)):
            raise
        logged = _log_traceback(exc, argv)
        user = user_error_from(exc)
        if user is not None:
            click.echo(f"error: {_one_line(user)}", err=True)
            return user.exit_code
        where = f"traceback in {logged}" if logged else "no log could be written"
        click.echo(
            f"internal error: {type(exc).__name__}: {_one_line(exc)[:300]} (please report; {where})",
            err=True,
        )
        return 1
    return 0


def _stop_on_sigterm() -> None:
    """``systemctl stop`` / ``kill`` (SIGTERM) ends a run like Ctrl-C: workers stopped, exit 130, resumable."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _one_line(obj) -> str:
    return " ".join(str(obj).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
