"""The night, orchestrated: the layer above the stages (:mod:`detector.night`) and the review
side (:mod:`detector.review`).

* :mod:`detector.run.prepare` -- step *prepare*: every check before a tile runs, the context and tiles;
* :mod:`detector.run.night` -- :func:`run_pipeline`: lock, output folder, log, resume, the tiles
  (on :mod:`detector.night.executors`), merge, outputs, and the case registry update.

``buildwatch run`` (:mod:`detector.cli.run_cmd`) and ``buildwatch evaluate`` (``training``)
call :func:`run_pipeline`.
"""

from detector.run.night import LOCK_NAME, RunSummary, run_pipeline
from detector.run.prepare import prepare

__all__ = ["LOCK_NAME", "RunSummary", "prepare", "run_pipeline"]
