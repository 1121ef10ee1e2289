"""Drive a real QGIS as a reviewer does: edit the cases layer, open the project, add layers, render labels.

Run with the system Python that has QGIS (``/usr/bin/python3``), headless::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_review.py '<json plan>'

The plan is a JSON list of steps; one JSON object per step is printed (one line, prefixed
``{``). Used by tests/review/test_review_qgis.py; imports only QGIS and the standard library.

Steps
-----
``{"op": "edit", "registry": p, "status": [[case_id, status], ...], "set": [[case_id, field, value], ...],
"move": [[case_id, dx, dy], ...], "delete": [case_id, ...], "add": [wkt, ...], "user": name}``
    Edit through QGIS's editing buffer with the layer's default style (so its default values
    apply, as in the attribute form), commit; report success and errors. ``user``: edit as that
    operator (the ``buildwatch_operator`` variable, set on the layer so nothing persists).
``{"op": "form", "registry": p}``
    The fields an operator can edit in the form (not read-only, not hidden).
``{"op": "evidence", "registry": p}``
    The GeoPackage added alone: the root path the evidence widget resolves (data-defined) and
    each case's chip path under it.
``{"op": "project", "path": p, "add_layers": [[path, name], ...], "save": bool, "render": bool}``
    Read the project; report its CRS, every layer (name, valid, source, CRS) and each layer's
    extent in the project CRS; optionally add layers and save (as an operator would), optionally
    render the map at the cases' extent and count the labels drawn per layer.
"""

from __future__ import annotations

import json
import os
import sys


def _edit(step) -> dict:
    from qgis.core import (
        QgsExpressionContextUtils,
        QgsFeatureRequest,
        QgsGeometry,
        QgsVectorLayer,
        QgsVectorLayerUtils,
    )

    layer = QgsVectorLayer(f"{step['registry']}|layername=cases", "cases", "ogr")
    fields = layer.fields()
    result = {"valid": layer.isValid()}

    def feature_of(case_id):
        return next(
            layer.getFeatures(QgsFeatureRequest().setFilterExpression(f"\"case_id\" = '{case_id}'"))  # noqa: F821 - the del below comes after the last call
        )

    layer.startEditing()
    if step.get("user"):  # another operator: the variable the form's user expression reads first
        QgsExpressionContextUtils.setLayerVariable(layer, "buildwatch_operator", step["user"])
    for case_id, status in step.get("status", []):
        layer.changeAttributeValue(feature_of(case_id).id(), fields.indexOf("status"), status)
    for case_id, name, value in step.get("set", []):
        layer.changeAttributeValue(feature_of(case_id).id(), fields.indexOf(name), value)
    for case_id, dx, dy in step.get("move", []):
        feature = feature_of(case_id)
        geometry = feature.geometry()
        geometry.translate(float(dx), float(dy))
        layer.changeGeometry(feature.id(), geometry)
    for case_id in step.get("delete", []):
        layer.deleteFeature(feature_of(case_id).id())
    for wkt in step.get("add", []):
        context = layer.createExpressionContext()
        feature = QgsVectorLayerUtils.createFeature(layer, QgsGeometry.fromWkt(wkt), {}, context)
        result.setdefault("added_defaults", []).append(
            {
                name: (None if feature[name] is None else str(feature[name]))
                for name in ("case_id", "status", "origin", "area_m2", "lon", "lat", "edited_by")
            }
        )
        layer.addFeature(feature)
    result["committed"] = bool(layer.commitChanges())
    result["errors"] = [str(e) for e in layer.commitErrors()]
    if not result["committed"]:
        layer.rollBack()
    del layer
    return result


def _form(step) -> dict:
    """The attribute form of the cases layer as QGIS loads its default style: editable fields."""
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(f"{step['registry']}|layername=cases", "cases", "ogr")
    config = layer.editFormConfig()
    result = {
        "editable": sorted(
            field.name()
            for index, field in enumerate(layer.fields())
            if not config.readOnly(index) and layer.editorWidgetSetup(index).type() != "Hidden"
        )
    }
    del layer
    return result


def _evidence(step) -> dict:
    """The GeoPackage added alone (no project): where the form's evidence widget looks for each chip."""
    from qgis.core import QgsPropertyCollection, QgsVectorLayer
    from qgis.gui import QgsWidgetWrapper

    layer = QgsVectorLayer(f"{step['registry']}|layername=cases", "cases", "ogr")
    setup = layer.editorWidgetSetup(layer.fields().indexOf("evidence"))
    config = setup.config()
    collection = QgsPropertyCollection()
    collection.loadVariant(
        config.get("PropertyCollection", {}), QgsWidgetWrapper.propertyDefinitions()
    )
    context = layer.createExpressionContext()
    root, _ = collection.valueAsString(QgsWidgetWrapper.RootPath, context, "")
    result = {
        "widget": setup.type(),
        "relative_storage": config.get("RelativeStorage"),
        "root": root,
        "paths": {f["case_id"]: os.path.join(root, f["evidence"]) for f in layer.getFeatures()},
    }
    del layer
    return result


def _project(step) -> dict:
    from qgis.core import (
        QgsCoordinateTransform,
        QgsMapRendererSequentialJob,
        QgsMapSettings,
        QgsProject,
        QgsRasterLayer,
        QgsRectangle,
        QgsVectorLayer,
    )
    from qgis.PyQt.QtCore import QSize

    project = QgsProject.instance()
    result = {"read": bool(project.read(step["path"]))}
    result["crs"] = project.crs().authid()
    for path, name in step.get("add_layers", []):
        layer = (
            QgsRasterLayer(path, name, "gdal")
            if path.lower().endswith(".tif")
            else QgsVectorLayer(path, name, "ogr")
        )
        project.addMapLayer(layer)
    if step.get("save"):
        result["saved"] = bool(project.write())
    layers = []
    extents = {}
    for layer in project.mapLayers().values():
        to_project = QgsCoordinateTransform(layer.crs(), project.crs(), project)
        extent = (
            to_project.transformBoundingBox(layer.extent()) if layer.isValid() else QgsRectangle()
        )
        extents[layer.name()] = [
            extent.xMinimum(),
            extent.yMinimum(),
            extent.xMaximum(),
            extent.yMaximum(),
        ]
        layers.append(
            [
                layer.name(),
                layer.isValid(),
                project.pathResolver().writePath(layer.source()),
                layer.crs().authid(),
            ]
        )
    result["layers"] = sorted(layers)
    result["extents"] = extents
    if step.get("render"):
        cases = next(layer for layer in project.mapLayers().values() if layer.name() == "cases")
        settings = QgsMapSettings()
        order = [layer for layer in project.layerTreeRoot().layerOrder() if layer.isValid()]
        settings.setLayers(order)
        settings.setDestinationCrs(project.crs())
        extent = cases.extent()
        extent.grow(20)
        settings.setExtent(extent)
        settings.setOutputSize(QSize(900, 900))
        job = QgsMapRendererSequentialJob(settings)
        job.start()
        job.waitForFinished()
        labels = (
            job.takeLabelingResults().allLabels() if hasattr(job, "takeLabelingResults") else []
        )
        counts = {}
        for label in labels:
            name = (
                project.mapLayer(label.layerID).name()
                if project.mapLayer(label.layerID)
                else label.layerID
            )
            counts[name] = counts.get(name, 0) + 1
        result["labels"] = counts
        if step.get("image"):
            job.renderedImage().save(step["image"])
    project.clear()
    return result


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import Qgis, QgsApplication

    app = QgsApplication([], True)  # GUI on (offscreen): labels need fonts
    app.initQgis()
    for step in json.loads(sys.argv[1]):
        result = {"edit": _edit, "project": _project, "evidence": _evidence, "form": _form}[
            step["op"]
        ](step)
        result["qgis"] = Qgis.QGIS_VERSION
        print(json.dumps(result, default=str), flush=True)
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
