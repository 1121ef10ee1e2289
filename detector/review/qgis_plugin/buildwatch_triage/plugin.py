# SPDX-License-Identifier: AGPL-3.0-or-later
"""The plugin object QGIS loads: a toolbar button and a menu entry that show the triage dock."""

from qgis.core import QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QAction

from .dock import TriageDock

MENU = "&buildwatch"


class TriagePlugin:
    """Adds "buildwatch triage" to the Plugins menu and the toolbar; the dock opens on the right."""

    def __init__(self, iface):
        self.iface = iface
        self.action = None
        self.dock = None

    def initGui(self):  # noqa: N802 - QGIS's name
        self.action = QAction("buildwatch triage", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.setToolTip("The morning review: the queue of new cases, one key per status")
        self.action.toggled.connect(self.show_dock)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToMenu(MENU, self.action)
        project = QgsProject.instance()
        # another project, or the cases layer removed: the dock lets go of the old layer
        for signal in (project.readProject, project.cleared, project.layersRemoved):
            signal.connect(self._project_changed)

    def show_dock(self, visible=True):
        if self.dock is None:
            self.dock = TriageDock(self.iface, self.iface.mainWindow())
            self.iface.addDockWidget(Qt.RightDockWidgetArea, self.dock)
            self.dock.visibilityChanged.connect(self._dock_visible)
        self.dock.setVisible(visible)
        if visible:
            self.dock.refresh()
        return self.dock

    def _dock_visible(self, visible):
        if not visible and self.dock is not None:
            self.dock.clear_highlight()  # no outline left on the map once the dock is closed
        if self.action is not None and self.action.isChecked() != visible:
            self.action.setChecked(visible)

    def _project_changed(self, *args):
        if self.dock is not None:
            self.dock.refresh()

    def unload(self):
        project = QgsProject.instance()
        for signal in (project.readProject, project.cleared, project.layersRemoved):
            signal.disconnect(self._project_changed)
        if self.dock is not None:
            self.dock.remove_highlight()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removePluginMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
