# SPDX-License-Identifier: AGPL-3.0-or-later
"""The triage dock: the queue, the case at hand, its note, and the keys.

Keys (active while the dock or the map has the focus; typing in the note field types):

* ``0``-``7``: set the status (in the order of the form's drop-down: 0 new, 1 confirmed illegal,
  ...), with the note as typed, in one commit; then on to the next case not reviewed yet;
* ``N`` / ``P``: next / previous case; ``Z``: zoom to the case again;
* ``B``: flip between the map themes ``baseline`` and ``tonight``; ``H``: the ``height`` theme;
* ``Enter`` in the note field: save the note alone.
"""

from html import escape

from qgis.core import QgsProject, QgsWkbTypes
from qgis.gui import QgsRubberBand
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (
    QAction,
    QCheckBox,
    QComboBox,
    QDockWidget,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .queue import (
    ALL_COMMUNITIES,
    FILTERS,
    NEW_STATUS,
    TriageQueue,
    editor_expression,
    find_cases_layer,
    statuses,
    value,
)

BASELINE_THEME, TONIGHT_THEME, HEIGHT_THEME = "baseline", "tonight", "height"
THEMES = (BASELINE_THEME, TONIGHT_THEME, HEIGHT_THEME)  # the map themes cases.qgs carries
ZOOM_MARGIN_M = 25.0  # around the case when zooming (map units of a projected CRS)
HIGHLIGHT = QColor(0, 230, 255)  # the case at hand: an outline only, the roof stays visible
NO_LAYER = "no buildwatch cases layer in this project: open the cases.qgs buildwatch writes"
UNSIGNED_STYLE = (
    "the cases layer has no edited_by default (not buildwatch's style): changes would be "
    "credited to nobody; open cases.qgs, or add the layer from cases.gpkg"
)


class TriageDock(QDockWidget):
    """The review queue of the project's cases layer, driven by keys."""

    def __init__(self, iface, parent=None):
        super().__init__("buildwatch triage", parent)
        self.setObjectName("BuildwatchTriageDock")
        self.iface = iface
        self.queue = None
        self.theme = TONIGHT_THEME
        self.status_actions = {}
        self.band = None
        self._build_widgets()
        self._build_actions()
        self.refresh()

    # ------------------------------------------------------------------ widgets

    def _build_widgets(self):
        body = QWidget(self)
        box = QVBoxLayout(body)
        filters = QHBoxLayout()
        self.which = QComboBox(body)
        for key, label in FILTERS:
            self.which.addItem(label, key)
        self.community = QComboBox(body)
        self.community.setSizeAdjustPolicy(QComboBox.AdjustToContents)
        self.tonight = QCheckBox("new tonight", body)
        refresh = QPushButton("Refresh", body)
        refresh.setToolTip("Read the cases layer again and rebuild the queue with these filters")
        filters.addWidget(self.which, 1)
        filters.addWidget(self.community, 1)
        box.addLayout(filters)
        progress = QHBoxLayout()
        self.progress = QLabel(body)
        self.progress.setStyleSheet("font-weight: bold")
        progress.addWidget(self.progress, 1)
        progress.addWidget(self.tonight)
        progress.addWidget(refresh)
        box.addLayout(progress)
        self.list = QListWidget(body)
        box.addWidget(self.list, 3)
        self.details = QLabel(body)
        self.details.setTextFormat(Qt.RichText)
        self.details.setWordWrap(True)
        box.addWidget(self.details)
        self.note = QLineEdit(body)
        self.note.setPlaceholderText("note (saved with the status key; Enter saves it alone)")
        box.addWidget(self.note)
        self.status_grid = QGridLayout()
        box.addLayout(self.status_grid)
        self.nav = QHBoxLayout()
        box.addLayout(self.nav)
        self.message = QLabel(body)
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color: #b00")
        box.addWidget(self.message)
        self.setWidget(body)

        self.which.currentIndexChanged.connect(lambda _: self.rebuild())
        self.community.currentIndexChanged.connect(lambda _: self.rebuild())
        self.tonight.toggled.connect(lambda _: self.rebuild())
        refresh.clicked.connect(self.refresh)
        self.list.currentRowChanged.connect(self._row_chosen)
        self.note.returnPressed.connect(self.save_note)

    def _action(self, text, key, slot):
        action = QAction(text, self)
        action.setShortcut(key)
        action.setShortcutContext(Qt.WidgetWithChildrenShortcut)
        action.triggered.connect(slot)
        self.addAction(action)
        canvas = self.iface.mapCanvas()
        if canvas is not None:
            canvas.addAction(action)
        return action

    def _button(self, action):
        button = QToolButton(self)
        button.setDefaultAction(action)
        button.setToolButtonStyle(Qt.ToolButtonTextOnly)
        return button

    def _build_actions(self):
        self.actions_nav = [
            self._action("◀ P previous", "P", lambda: self.go(-1)),
            self._action("N next ▶", "N", lambda: self.go(1)),
            self._action("Z zoom", "Z", lambda: self.zoom()),
            self._action("B baseline / tonight", "B", self.flip_imagery),
            self._action("H height", "H", lambda: self.apply_theme(HEIGHT_THEME)),
        ]
        for action in self.actions_nav:
            self.nav.addWidget(self._button(action))

    def _build_status_actions(self, layer):
        for action in self.status_actions.values():
            self.removeAction(action)
            canvas = self.iface.mapCanvas()
            if canvas is not None:
                canvas.removeAction(action)
        while self.status_grid.count():
            item = self.status_grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.status_actions = {}
        for number, (status, label) in enumerate(statuses(layer) if layer else []):
            if number > 9:
                break
            action = self._action(
                f"{number} {label}", str(number), lambda _=False, s=status: self.set_status(s)
            )
            self.status_actions[status] = action
            self.status_grid.addWidget(self._button(action), number // 2, number % 2)

    # ------------------------------------------------------------------ the queue

    def refresh(self):
        """Find the cases layer again, refill the community list, rebuild the queue."""
        layer = find_cases_layer()
        if layer is None:
            self.queue = None
            self._build_status_actions(None)
            self.list.clear()
            self.progress.setText("")
            self.details.setText("")
            self.message.setText(NO_LAYER)
            self._highlight(None)
            return
        if self.queue is None or self.queue.layer is not layer:
            self.queue = TriageQueue(layer)
            self._build_status_actions(layer)
        chosen = self.community.currentData()
        self.community.blockSignals(True)
        self.community.clear()
        self.community.addItem("all communities", ALL_COMMUNITIES)
        for name in self.queue.communities():
            self.community.addItem(name, name)
        found = self.community.findData(chosen) if chosen else 0
        self.community.setCurrentIndex(max(found, 0))
        self.community.blockSignals(False)
        self.message.setText("" if editor_expression(layer) else UNSIGNED_STYLE)
        self.rebuild()

    def rebuild(self):
        if self.queue is None:
            return
        self.queue.build(
            self.which.currentData(), self.community.currentData() or "", self.tonight.isChecked()
        )
        self._fill_list()
        self.show_case(self.queue.current())

    def _fill_list(self):
        self.list.blockSignals(True)
        self.list.clear()
        features = self.queue.features()
        for fid in self.queue.entries:
            self.list.addItem(self._line(features[fid]))
        self.list.blockSignals(False)

    def _line(self, feature):
        mark = "✓" if self.queue.reviewed(feature.id(), feature) else "·"
        alert = "  ! alert" if value(feature, "alert") else ""
        return (
            f"{mark} {value(feature, 'case_id')}  {value(feature, 'community') or ''}  "
            f"{value(feature, 'status')}  {value(feature, 'first_seen') or ''}{alert}"
        )

    def go(self, step):
        """``step`` cases on in the queue (negative: back)."""
        if self.queue is not None:
            self.show_case(self.queue.move(step))

    def case_ids(self):
        """The queue as case IDs, in order (what the list shows)."""
        if self.queue is None:
            return []
        return [self.queue.case_ids[fid] for fid in self.queue.entries]

    def _row_chosen(self, row):
        if self.queue is not None and row >= 0:
            self.show_case(self.queue.go_to(row))

    def show_case(self, fid):
        """Show the case (details, note), select it in the list, outline it on the map, zoom to it."""
        if self.queue is None:
            return
        self.progress.setText(self.queue.progress())
        if fid is None:
            self.details.setText("nothing to review with these filters")
            self.note.setText("")
            self._highlight(None)
            return
        feature = self.queue.feature(fid)
        self.list.blockSignals(True)
        self.list.setCurrentRow(self.queue.index)
        self.list.blockSignals(False)
        alert = value(feature, "alert")
        what = [value(feature, "class"), f"{float(value(feature, 'area_m2') or 0):.0f} m²"]
        what.append(value(feature, "height_change"))
        where = [value(feature, "community"), value(feature, "unit")]
        times = value(feature, "times_seen") or 0
        seen = (
            f"seen {times}× ({value(feature, 'first_seen')} – {value(feature, 'last_seen')})"
            if times
            else f"not detected yet (added {value(feature, 'first_seen')})"
        )
        lines = [
            f"<b>{escape(str(value(feature, 'case_id')))}</b> — {escape(str(value(feature, 'status')))}",
            f"<b style='color:#c0c'>ALERT: {escape(str(alert))}</b>" if alert else "",
            escape(", ".join(str(x) for x in what if x)),
            escape(" · ".join(str(x) for x in where if x)),
            escape(seen),
        ]
        self.details.setText("<br>".join(line for line in lines if line))
        self.note.setText(value(feature, "note") or "")
        self._highlight(feature)
        self.zoom()

    def _highlight(self, feature):
        canvas = self.iface.mapCanvas()
        if canvas is None:
            return
        if self.band is None:
            self.band = QgsRubberBand(canvas, QgsWkbTypes.PolygonGeometry)
            self.band.setStrokeColor(HIGHLIGHT)
            self.band.setFillColor(QColor(0, 0, 0, 0))
            self.band.setWidth(3)
        if feature is None or not feature.hasGeometry():
            self.band.reset(QgsWkbTypes.PolygonGeometry)
        else:
            self.band.setToGeometry(feature.geometry(), self.queue.layer)

    def clear_highlight(self):
        if self.band is not None:
            self.band.reset(QgsWkbTypes.PolygonGeometry)

    def highlighted(self):
        """The outline drawn on the map (map CRS), or None."""
        if self.band is None or self.band.numberOfVertices() == 0:
            return None
        return self.band.asGeometry()

    def remove_highlight(self):
        if self.band is not None:
            canvas = self.iface.mapCanvas()
            if canvas is not None:
                canvas.scene().removeItem(self.band)
            self.band = None

    def zoom(self):
        canvas = self.iface.mapCanvas()
        feature = self.queue.feature() if self.queue is not None else None
        if canvas is None or feature is None or not feature.hasGeometry():
            return
        box = canvas.mapSettings().layerExtentToOutputExtent(
            self.queue.layer, feature.geometry().boundingBox()
        )
        margin = max(ZOOM_MARGIN_M, box.width(), box.height())
        box.grow(margin)
        canvas.setExtent(box)
        canvas.refresh()

    # ------------------------------------------------------------------ changes

    def _commit(self, changes):
        fid = self.queue.current() if self.queue is not None else None
        if fid is None:
            return False
        committed, errors = self.queue.apply(fid, changes)
        self.message.setText("" if committed else "not saved: " + "; ".join(errors))
        return committed

    def set_status(self, status):
        """The status key: status (and the note as typed) in one commit, then the next case."""
        if self.queue is None or self.queue.current() is None:
            return
        feature = self.queue.feature()
        changes = {"status": status}
        note = self.note.text().strip()
        if note != (value(feature, "note") or ""):
            changes["note"] = note or None
        if not self._commit(changes):
            return
        row = self.queue.index
        self.list.item(row).setText(self._line(self.queue.feature()))
        if status != NEW_STATUS:
            self.queue.advance()
        self.show_case(self.queue.current())

    def save_note(self):
        if self.queue is None or self.queue.current() is None:
            return
        note = self.note.text().strip()
        if note != (value(self.queue.feature(), "note") or ""):
            self._commit({"note": note or None})

    # ------------------------------------------------------------------ map themes

    def apply_theme(self, name):
        """Show one of buildwatch's map themes, touching only the layers those themes name.

        The layers of the theme are switched on (with the cases layer's style the theme names),
        the layers only the other themes name (the other mosaic) are switched off; every other
        layer (a basemap, boundaries the operator added) stays as it is, where QGIS's own
        *View > Map Themes* would hide it.
        """
        project = QgsProject.instance()
        themes = project.mapThemeCollection()
        if not themes.hasMapTheme(name):
            self.message.setText(
                f"this project has no map theme '{name}': open the cases.qgs buildwatch writes"
            )
            return False
        named = set()
        for theme in THEMES:
            if themes.hasMapTheme(theme):
                named |= {
                    r.layer().id() for r in themes.mapThemeState(theme).layerRecords() if r.layer()
                }
        root = project.layerTreeRoot()
        shown = set()
        for record in themes.mapThemeState(name).layerRecords():
            layer = record.layer()
            node = root.findLayer(layer.id()) if layer else None
            if node is None:
                continue
            shown.add(layer.id())
            node.setItemVisibilityCheckedParentRecursive(True)
            if record.usingCurrentStyle and record.currentStyle in layer.styleManager().styles():
                layer.styleManager().setCurrentStyle(record.currentStyle)
        for layer_id in named - shown:
            node = root.findLayer(layer_id)
            if node is not None:
                node.setItemVisibilityChecked(False)
        self.theme = name
        self.message.setText("")
        return True

    def flip_imagery(self):
        self.apply_theme(TONIGHT_THEME if self.theme == BASELINE_THEME else BASELINE_THEME)
