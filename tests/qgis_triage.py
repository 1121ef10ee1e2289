"""Drive the buildwatch triage plugin in a real QGIS, as an operator does: keys on the map.

Run with the system Python that has QGIS (``/usr/bin/python3``), headless::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_triage.py '<json plan>'

A QGIS-like main window is built (map canvas, layer tree view, the bridge that makes the canvas
follow the layer tree, as the QGIS application has them) with a small stand-in for QGIS's
``iface``; the project is read, the plugin is imported from ``plugin_dir`` (the unpacked zip
``buildwatch qgis-plugin`` writes), its ``classFactory`` / ``initGui`` run and its toolbar action
opens the dock. Then the plan's steps, one JSON line (prefixed ``{``) per step. Imports only QGIS
and the standard library. Used by tests/review/test_triage_plugin.py and
scripts/triage_screenshot.py.

Plan: ``{"project": p, "plugin_dir": d, "steps": [...]}``; steps:

``{"state": true}``
    The queue (case IDs in order), the case at hand, the progress line, the dock's message, the
    layers the map shows, the cases layer's current style, the status keys.
``{"filter": {"which": "to_review"|"new"|"all", "community": name, "tonight": bool}}``
    Set the dock's filters (rebuilds the queue); reports the state.
``{"note": text}``
    Type into the note field.
``{"key": k}``
    Press key ``k`` with the focus on the map canvas; reports the state afterwards.
``{"type_note": text}``
    Type ``text`` key by key into the note field (digits and letters type, they are no keys there).
``{"enter_note": text}``
    Type ``text`` into the note field and press Enter there.
``{"editor_default": expression}``
    Change the cases layer's ``edited_by`` default (applied on update), as a project might.
``{"edit_buffer": true}``
    Start editing the cases layer and leave a change unsaved (another operator's work in progress).
``{"add_layer": [path, name]}``
    Add a vector layer to the project (shown), as an operator adds boundaries or a basemap.
``{"toggle": true}``
    Press the plugin's toolbar button (closes an open dock, opens a closed one).
``{"clear": true}``
    Close the project (QGIS's *New Project*): the dock lets go of the layer.
``{"rollback": true}``
    Discard the cases layer's edit buffer (and leave edit mode).
``{"image": path, "size": [w, h]}``
    Render the map, then save the window (map and dock) as a PNG.
"""

from __future__ import annotations

import json
import os
import sys


class Iface:
    """The parts of QGIS's ``iface`` the plugin uses."""

    def __init__(self, window, canvas, view):
        self._window, self._canvas, self._view = window, canvas, view
        self.toolbar = window.addToolBar("plugins")
        self.menus = {}

    def mainWindow(self):  # noqa: N802 - QGIS's names
        return self._window

    def mapCanvas(self):  # noqa: N802
        return self._canvas

    def layerTreeView(self):  # noqa: N802
        return self._view

    def addDockWidget(self, area, dock):  # noqa: N802
        self._window.addDockWidget(area, dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self._window.removeDockWidget(dock)

    def addToolBarIcon(self, action):  # noqa: N802
        self.toolbar.addAction(action)

    def removeToolBarIcon(self, action):  # noqa: N802
        self.toolbar.removeAction(action)

    def addPluginToMenu(self, name, action):  # noqa: N802
        self.menus.setdefault(name, []).append(action)

    def removePluginMenu(self, name, action):  # noqa: N802
        self.menus.get(name, []).remove(action)


def _wait_render(canvas, app, timeout_ms=20000):
    from qgis.PyQt.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    canvas.mapCanvasRefreshed.connect(loop.quit)
    QTimer.singleShot(timeout_ms, loop.quit)
    canvas.refresh()
    loop.exec_()
    canvas.mapCanvasRefreshed.disconnect(loop.quit)
    app.processEvents()


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import (
        Qgis,
        QgsApplication,
        QgsDefaultValue,
        QgsLayerTreeModel,
        QgsProject,
    )
    from qgis.gui import QgsLayerTreeMapCanvasBridge, QgsLayerTreeView, QgsMapCanvas
    from qgis.PyQt.QtCore import QSize, Qt
    from qgis.PyQt.QtTest import QTest
    from qgis.PyQt.QtWidgets import QApplication, QMainWindow

    plan = json.loads(sys.argv[1])
    app = QgsApplication([], True)
    app.initQgis()
    project = QgsProject.instance()
    window = QMainWindow()
    canvas = QgsMapCanvas(window)
    window.setCentralWidget(canvas)
    view = QgsLayerTreeView(window)
    model = QgsLayerTreeModel(project.layerTreeRoot(), window)
    model.setFlag(QgsLayerTreeModel.AllowNodeChangeVisibility)
    view.setModel(model)
    window.bridge = QgsLayerTreeMapCanvasBridge(project.layerTreeRoot(), canvas, window)
    iface = Iface(window, canvas, view)
    read = project.read(plan["project"])
    canvas.setDestinationCrs(project.crs())

    # QGIS's own plugin loader, as it starts a plugin installed from a zip in the profile's folder
    import qgis.utils

    sys.path.insert(0, plan["plugin_dir"])
    qgis.utils.plugin_paths = [plan["plugin_dir"]]
    qgis.utils.iface = iface
    qgis.utils.updateAvailablePlugins()
    name = "buildwatch_triage"
    metadata = qgis.utils.metadataParser()[name]
    loaded = {
        "available": name in qgis.utils.available_plugins,
        "metadata": {k: metadata.get("general", k) for k in ("name", "qgisMinimumVersion")},
    }
    size = plan.get("size", [1400, 820])
    window.resize(QSize(*size))
    window.show()  # QGIS's window is up before an operator opens the dock
    QApplication.setActiveWindow(window)
    app.processEvents()
    loaded["started"] = qgis.utils.loadPlugin(name) and qgis.utils.startPlugin(name)
    plugin = qgis.utils.plugins[name]
    plugin.action.setChecked(True)  # the toolbar button
    dock = plugin.dock
    window.resizeDocks([dock], [plan.get("dock_width", 470)], Qt.Horizontal)
    app.processEvents()
    layer = dock.queue.layer if dock.queue else None

    commits = []
    if layer is not None:
        layer.afterCommitChanges.connect(lambda: commits.append(1))

    def box(item) -> list:
        rect = item.boundingBox() if hasattr(item, "boundingBox") else item
        return [rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()]

    def state() -> dict:
        app.processEvents()
        layer = dock.queue.layer if dock.queue else None
        current = dock.queue.feature() if dock.queue and dock.queue.current() is not None else None
        return {
            "read": read,
            "plugin": loaded,
            "qgis": Qgis.QGIS_VERSION,
            "queue": dock.case_ids(),
            "current": current["case_id"] if current is not None else None,
            "progress": dock.progress.text(),
            "message": dock.message.text(),
            "note": dock.note.text(),
            "canvas_layers": sorted(x.name() for x in canvas.layers()),
            "cases_style": layer.styleManager().currentStyle() if layer else None,
            "keys": {a.shortcut().toString(): s for s, a in dock.status_actions.items()},
            "themes": sorted(project.mapThemeCollection().mapThemes()),
            "editable": layer.isEditable() if layer else None,
            "commits": len(commits),  # edit-buffer commits of the cases layer so far
            # the case at hand: outlined on the map, inside the map's extent
            "dock_visible": dock.isVisible(),
            "highlight": None if dock.highlighted() is None else box(dock.highlighted()),
            "extent": box(canvas.extent()),
        }

    for step in plan["steps"]:
        result = {}
        if "filter" in step:
            spec = step["filter"]
            if "which" in spec:
                dock.which.setCurrentIndex(dock.which.findData(spec["which"]))
            if "community" in spec:
                dock.community.setCurrentIndex(dock.community.findData(spec["community"]))
            if "tonight" in spec:
                dock.tonight.setChecked(spec["tonight"])
        if "note" in step:
            dock.note.setText(step["note"])
        if "editor_default" in step:
            index = layer.fields().indexOf("edited_by")
            layer.setDefaultValueDefinition(index, QgsDefaultValue(step["editor_default"], True))
            dock.refresh()
        if "edit_buffer" in step:
            layer.startEditing()
            first = next(layer.getFeatures())
            layer.changeAttributeValue(first.id(), layer.fields().indexOf("note"), "draft")
        if "type_note" in step:
            dock.note.setFocus()
            dock.note.clear()
            QTest.keyClicks(dock.note, step["type_note"])
        if "enter_note" in step:
            dock.note.setFocus()
            dock.note.setText(step["enter_note"])
            QTest.keyClick(dock.note, Qt.Key_Return)
        if "add_layer" in step:
            from qgis.core import QgsVectorLayer

            project.addMapLayer(QgsVectorLayer(step["add_layer"][0], step["add_layer"][1], "ogr"))
        if "toggle" in step:
            plugin.action.trigger()
        if "clear" in step:
            project.clear()
        if "rollback" in step:
            layer.rollBack()
        if "key" in step:
            canvas.setFocus()
            app.processEvents()
            QTest.keyClick(canvas, step["key"])
            app.processEvents()
        if "image" in step:
            _wait_render(canvas, app)
            result["saved"] = window.grab().save(step["image"])
        result.update(state())
        print(json.dumps(result, default=str), flush=True)

    layer = dock.queue.layer if dock.queue else None
    if layer is not None and layer.isEditable():
        layer.rollBack()
    if not qgis.utils.unloadPlugin(name):
        return 1
    project.clear()
    # the window (canvas, layer tree) goes before QGIS does, as when QGIS quits
    from qgis.PyQt import sip

    sip.delete(window)
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
