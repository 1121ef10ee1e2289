"""Load a buildwatch case registry in a real QGIS and check what a reviewer would get.

Run with the system Python that has QGIS (``/usr/bin/python3``), headless::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_check.py cases.gpkg \
        --crs EPSG:4547 --count 5 [--project cases.qgs]

Prints one JSON object (what was found) and exits 0 when every check passes, 1 otherwise.
Used by tests/review/test_cases_qgis.py; runs outside the project's virtualenv, so it imports only
QGIS and the standard library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CLASSES = {"new_building", "extension", "temporary_structure", "construction_site"}
STATUSES = {
    "new",
    "confirmed_illegal",
    "demolition_ordered",
    "demolished",
    "demolition_verified",
    "permitted",
    "false_positive",
    "referred",
}


def check_layer(layer, expected_crs: str, expected_count: int) -> tuple[dict, list[str]]:
    """Facts about the cases layer and the list of failed checks."""
    problems: list[str] = []
    facts: dict = {"valid": layer.isValid()}
    if not layer.isValid():
        return facts, ["cases layer is not valid"]
    facts["crs"] = layer.crs().authid()
    facts["count"] = layer.featureCount()
    renderer = layer.renderer()
    facts["renderer"] = renderer.type() if renderer else None
    facts["renderer_attr"] = (
        renderer.classAttribute() if renderer and renderer.type() == "categorizedSymbol" else None
    )
    facts["categories"] = (
        sorted(c.value() for c in renderer.categories()) if facts["renderer_attr"] else []
    )
    facts["labels"] = bool(layer.labelsEnabled())
    fields = layer.fields()
    status_setup = layer.editorWidgetSetup(fields.indexOf("status"))
    facts["status_widget"] = status_setup.type()
    value_map = status_setup.config().get("map", [])
    facts["status_values"] = sorted(v for entry in value_map for v in entry.values())
    class_setup = layer.editorWidgetSetup(fields.indexOf("class"))
    facts["class_widget"] = class_setup.type()
    facts["class_values"] = sorted(
        v for entry in class_setup.config().get("map", []) for v in entry.values()
    )
    evidence_setup = layer.editorWidgetSetup(fields.indexOf("evidence"))
    facts["evidence_widget"] = evidence_setup.type()
    facts["evidence_viewer"] = evidence_setup.config().get("DocumentViewer")

    if facts["crs"] != expected_crs:
        problems.append(f"crs {facts['crs']} != {expected_crs}")
    if facts["count"] != expected_count:
        problems.append(f"feature count {facts['count']} != {expected_count}")
    if facts["renderer"] != "categorizedSymbol" or '"status"' not in (facts["renderer_attr"] or ""):
        problems.append(
            f"renderer {facts['renderer']} on {facts['renderer_attr']}, expected categorizedSymbol on status"
        )
    if not STATUSES | {"alert"} <= set(facts["categories"]):
        problems.append(f"categories {facts['categories']} miss some statuses")
    if not facts["labels"]:
        problems.append("labels not enabled")
    if facts["status_widget"] != "ValueMap" or set(facts["status_values"]) != STATUSES:
        problems.append(
            f"status widget {facts['status_widget']} with values {facts['status_values']}"
        )
    # the operator corrects a class by picking one of the model's classes, or "(not set)" (NULL)
    if facts["class_widget"] != "ValueMap" or not CLASSES <= set(facts["class_values"]):
        problems.append(f"class widget {facts['class_widget']} with values {facts['class_values']}")
    if facts["evidence_widget"] != "ExternalResource" or int(facts["evidence_viewer"] or 0) != 1:
        problems.append(
            f"evidence widget {facts['evidence_widget']} viewer {facts['evidence_viewer']} (want image viewer 1)"
        )
    return facts, problems


def edit_like_a_reviewer(layer, statuses, moves) -> list[str]:
    """Edit the layer through QGIS's own editing buffer and commit, as a reviewer does."""
    from qgis.core import QgsFeatureRequest

    fields = layer.fields()
    layer.startEditing()
    for case_id, status in statuses:
        for feature in layer.getFeatures(
            QgsFeatureRequest().setFilterExpression(f"\"case_id\" = '{case_id}'")
        ):
            layer.changeAttributeValue(feature.id(), fields.indexOf("status"), status)
            layer.changeAttributeValue(feature.id(), fields.indexOf("reviewer"), "qgis-check")
    for case_id, dx, dy in moves:
        for feature in layer.getFeatures(
            QgsFeatureRequest().setFilterExpression(f"\"case_id\" = '{case_id}'")
        ):
            geometry = feature.geometry()
            geometry.translate(float(dx), float(dy))
            layer.changeGeometry(feature.id(), geometry)
    ok = layer.commitChanges()
    errors = [] if ok else [f"QGIS could not commit the edits: {layer.commitErrors()}"]
    del layer
    return errors


def check_project(project, path: str) -> tuple[dict, list[str]]:
    """Read a .qgs project: three valid layers, the cases layer styled."""
    problems: list[str] = []
    facts: dict = {"read": bool(project.read(path))}
    layers = list(project.mapLayers().values())
    facts["layers"] = sorted(
        (
            layer.name(),
            layer.type().value if hasattr(layer.type(), "value") else int(layer.type()),
            layer.isValid(),
        )
        for layer in layers
    )
    if not facts["read"]:
        problems.append("project could not be read")
    if len(layers) != 3 or not all(layer.isValid() for layer in layers):
        problems.append(f"project layers {facts['layers']}, want 3 valid layers")
    cases = [layer for layer in layers if layer.name() == "cases"]
    if cases:
        renderer = cases[0].renderer()
        facts["cases_renderer"] = renderer.type() if renderer else None
        if facts["cases_renderer"] != "categorizedSymbol":
            problems.append(f"project cases renderer {facts['cases_renderer']}")
        facts["cases_status_widget"] = (
            cases[0].editorWidgetSetup(cases[0].fields().indexOf("status")).type()
        )
        if facts["cases_status_widget"] != "ValueMap":
            problems.append("project cases layer lost the status value map")
    else:
        problems.append("project has no 'cases' layer")
    return facts, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("registry")
    parser.add_argument("--crs", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--project")
    parser.add_argument(
        "--set-status",
        nargs=2,
        metavar=("CASE_ID", "STATUS"),
        action="append",
        default=[],
        help="edit in QGIS first: set a case's review status (and reviewer 'qgis-check')",
    )
    parser.add_argument(
        "--move",
        nargs=3,
        metavar=("CASE_ID", "DX", "DY"),
        action="append",
        default=[],
        help="edit in QGIS first: translate a case's geometry by DX, DY map units",
    )
    args = parser.parse_args()

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import Qgis, QgsApplication, QgsProject, QgsVectorLayer

    app = QgsApplication([], False)
    app.initQgis()
    report: dict = {"qgis": Qgis.QGIS_VERSION}
    problems: list[str] = []
    if args.set_status or args.move:
        problems += edit_like_a_reviewer(
            QgsVectorLayer(f"{args.registry}|layername=cases", "edit", "ogr"),
            args.set_status,
            args.move,
        )
    layer = QgsVectorLayer(f"{args.registry}|layername=cases", "cases", "ogr")
    report["layer"], layer_problems = check_layer(layer, args.crs, args.count)
    problems += layer_problems
    del layer  # layers must go before exitQgis(), which otherwise segfaults
    if args.project:
        project = QgsProject.instance()
        report["project"], project_problems = check_project(project, args.project)
        problems += project_problems
        project.clear()
    report["problems"] = problems
    print(json.dumps(report, default=str))
    app.exitQgis()
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
