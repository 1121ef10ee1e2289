"""Logging, set up one way: every handler the project adds goes through :func:`log_to`.

Every module logs to ``logging.getLogger(__name__)``, so all project records are under
:data:`LOG_ROOT` (``training`` under its own root). Where they go is decided by handlers,
added in four places, all with :func:`log_to`:

* the terminal (:func:`detector.cli.main`): one stderr handler on the root logger, filtered to
  the project's own loggers, quiet unless ``-v``;
* a night's ``buildwatch.log`` (:mod:`detector.run.night`): INFO and above from the project, and
  whatever the libraries in :data:`LIBRARY_LOGGERS` say (GDAL messages, warnings);
* ``buildwatch ortho`` called outside the CLI group: a plain stderr handler;
* a retraining's ``<work>/retrain.log`` (:func:`training.retrain.retrain`): INFO and above from
  ``training.retrain``.

:func:`stop_logging_to` takes a handler off again and closes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

#: The root of every project logger (``getLogger(__name__)`` in ``detector/``).
LOG_ROOT = "detector"
#: One line per record, everywhere.
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Library loggers whose records (GDAL messages, ``warnings``) a run's log file also gets.
LIBRARY_LOGGERS = ("py.warnings", "rasterio", "pyogrio", "fiona", "distributed")


def log_to(
    handler: logging.Handler,
    level: int,
    loggers: Iterable[str] = (LOG_ROOT,),
    *,
    also: Iterable[str] = (),
    fmt: str = FORMAT,
) -> logging.Handler:
    """Send records of ``level`` and above from ``loggers`` (and from ``also``) to ``handler``.

    Parameters
    ----------
    handler : logging.Handler
        Gets the project's format and ``level``. Adding it again is harmless (a logger holds a
        handler once): that is how a level is changed.
    level : int
    loggers : names
        Each is lowered to ``level`` when it would drop such records (``""`` is the root logger).
    also : names
        Loggers that get the handler with their own level left alone (libraries: lowering them
        would make them chattier everywhere).
    fmt : str
        The record format (:data:`FORMAT`).

    Returns
    -------
    logging.Handler
        ``handler``; give it to :func:`stop_logging_to` when done.
    """
    handler.setFormatter(logging.Formatter(fmt))
    handler.setLevel(level)
    for logger in map(logging.getLogger, loggers):
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > level:
            logger.setLevel(level)
    for logger in map(logging.getLogger, also):
        logger.addHandler(handler)
    logging.captureWarnings(True)  # library warnings become records of "py.warnings"
    return handler


def stop_logging_to(handler: logging.Handler, loggers: Iterable[str]) -> None:
    """Take ``handler`` off ``loggers`` and close it."""
    for logger in map(logging.getLogger, loggers):
        logger.removeHandler(handler)
    handler.close()
