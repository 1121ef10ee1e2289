"""The review side of a nightly run: update the case registry, then write what reviewers read.

:func:`update_cases` is what the nightly run (:mod:`detector.run.night`) calls when
``cases.registry`` is set. In order:

1. :func:`detector.review.registry.update_registry` folds the night's candidates into
   ``cases.gpkg`` and returns what changed;
2. before/after evidence chips (:mod:`detector.review.evidence`) for the cases opened tonight and
   any case whose chip is missing (``cases.evidence``), with a height-difference panel when the
   run has a DSM pair;
3. the QGIS project ``cases.qgs`` next to the registry, created once and then only updated in
   the parts buildwatch owns (:mod:`detector.review.project`);
4. ``report.html`` / ``report.csv`` in the run's folder (:mod:`detector.review.report`,
   ``cases.report``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from detector.errors import InputError
from detector.geo.location import as_location
from detector.review.evidence import write_evidence_chip
from detector.review.gpkg import write_transaction
from detector.review.project import write_qgis_project
from detector.review.registry import (
    CaseRow,
    RegistryUpdate,
    open_registry,
    read_cases,
    registry_crs,
    update_registry,
)
from detector.review.report import write_report
from detector.review.vocab import CASES_TABLE

if TYPE_CHECKING:  # pragma: no cover
    import geopandas

    from detector.config import CasesConfig
    from detector.geo.dsm import DsmPair

log = logging.getLogger(__name__)


@dataclass
class NightlyCases(RegistryUpdate):
    """What one night did to the registry (:class:`RegistryUpdate`) and the files written for reviewers."""

    evidence_paths: list[Path] = field(default_factory=list)
    project_path: Path | None = None
    report_html: Path | None = None
    report_csv: Path | None = None


def update_cases(
    candidates: geopandas.GeoDataFrame,
    config: CasesConfig,
    *,
    run_id: str,
    night: date,
    baseline_path: Path,
    current_path: Path,
    out_dir: Path,
    dsm: DsmPair | None = None,
) -> NightlyCases:
    """Fold one night's candidates into the case registry, then write evidence, project and report.

    Parameters
    ----------
    candidates : geopandas.GeoDataFrame
        The run's ``candidates`` layer (any CRS; reprojected to the registry CRS).
    config : CasesConfig
        ``config.registry`` must be set; ``config.evidence`` and ``config.report`` switch those
        products on or off.
    run_id : str
        The run's ID (stored on every case it touches).
    night : datetime.date
        The night of the survey (the current mosaic's date); gives new case IDs their date.
    baseline_path, current_path : Path
        The orthomosaics, for evidence chips and the QGIS project.
    out_dir : Path
        The run's output folder: ``report.html`` and ``report.csv`` go there.
    dsm : detector.geo.dsm.DsmPair, optional
        The run's validated DSM pair (``RunContext.dsm``): evidence chips get a height panel.

    Returns
    -------
    NightlyCases
    """
    update = update_registry(
        candidates,
        config,
        run_id=run_id,
        night=night,
        baseline_path=baseline_path,
        current_path=current_path,
    )
    result = NightlyCases(**vars(update))
    conn = open_registry(update.registry)
    try:
        crs = registry_crs(conn)
        cases = read_cases(conn) if config.evidence else []
    finally:
        conn.close()
    if config.evidence:
        result.evidence_paths = write_case_evidence(
            cases, update, crs, as_location(baseline_path), as_location(current_path), dsm=dsm
        )
    result.project_path = write_qgis_project(
        update.registry.with_suffix(".qgs"),
        registry=update.registry,
        crs=crs,
        baseline_path=as_location(baseline_path),
        current_path=as_location(current_path),
    )
    if config.report:
        result.report_html, result.report_csv = write_report(
            update.registry,
            Path(out_dir),
            night=night,
            run_id=run_id,
            current_path=as_location(current_path),
            update=update,
        )
    return result


def write_case_evidence(
    cases: list[CaseRow],
    update: RegistryUpdate,
    crs,
    baseline_path: Path,
    current_path: Path,
    dsm: DsmPair | None = None,
) -> list[Path]:
    """Before/after chips for the cases opened tonight, any case whose chip is missing, and edited cases.

    A case whose outline or class changed since its chip was drawn (``evidence_hash`` differs
    from :attr:`CaseRow.evidence_key`) gets a new chip when it was seen tonight (tonight's
    imagery still shows it); the hash is stored in the registry. A registry from an older version
    (no hash yet) records the hash without redrawing.

    Parameters
    ----------
    cases : list[CaseRow]
        Every case of the registry (after tonight's update).
    update : RegistryUpdate
        Tonight's update (which cases were opened and seen).
    crs : pyproj.CRS
        The registry CRS.
    baseline_path, current_path : Path
        The orthomosaics.
    dsm : detector.geo.dsm.DsmPair, optional
        The run's DSM pair: a third panel shows the height difference; the title says the
        case's height change ("new storey, +3.1 m").

    Returns
    -------
    list[Path]
        The chips written. A chip that cannot be read from the mosaics is logged and skipped.
    """
    written = []
    hashes: dict[int, str] = {}
    night_label = update.night.isoformat()
    seen_tonight = set(update.opened_ids) | set(update.updated_ids) | set(update.suppressed_ids)
    for case in cases:
        if not case.evidence:
            continue
        target = update.registry.parent / case.evidence
        key = case.evidence_key
        edited = (
            case.evidence_hash is not None
            and case.evidence_hash != key
            and case.case_id in seen_tonight
        )
        if case.case_id not in update.opened_ids and target.exists() and not edited:
            if case.evidence_hash is None:
                hashes[case.fid] = key
            continue
        note = f"  redrawn {night_label} (edited)" if edited else ""
        height = f"  {case.height_change}" if dsm is not None and case.height_change else ""
        try:
            write_evidence_chip(
                target,
                case.geometry,
                crs,
                baseline_path,
                current_path,
                title=f"{case.case_id}  first seen {case.first_seen or night_label}{height}{note}",
                dsm=dsm,
                within=update.registry.parent,
            )
            written.append(target)
            hashes[case.fid] = key
        except InputError as exc:
            log.warning("evidence for %s not written: %s", case.case_id, exc)
    if hashes:
        conn = open_registry(update.registry)
        try:
            with write_transaction(conn):
                conn.executemany(
                    f'UPDATE "{CASES_TABLE}" SET evidence_hash = ? WHERE fid = ?',
                    [(key, fid) for fid, key in hashes.items()],
                )
        finally:
            conn.close()
    return written
