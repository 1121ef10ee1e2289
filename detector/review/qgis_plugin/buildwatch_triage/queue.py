# SPDX-License-Identifier: AGPL-3.0-or-later
"""The review queue over buildwatch's cases layer, and the one way the dock changes a case.

Nothing here knows buildwatch's vocabulary by heart: the statuses (and their order, which gives
the keys) are read from the layer's own ``status`` drop-down (the value map of the form
buildwatch's style configures), and the editor of a change is stamped by the layer's own
``edited_by`` default value (applied on update, exactly as the attribute form applies it) when
:meth:`TriageQueue.apply` writes through the edit buffer. The registry's triggers then write
the history row and the reviewer credit from that stamp.
"""

from qgis.core import NULL, QgsFeatureRequest, QgsProject, QgsVectorLayer

ROLE_PROPERTY = "buildwatch_role"  # set by buildwatch on the layers it owns in cases.qgs
NEW_STATUS = "new"  # the status every case opens with (first in the form's drop-down)
FILTER_TO_REVIEW, FILTER_NEW, FILTER_ALL = "to_review", "new", "all"
FILTERS = (
    (FILTER_TO_REVIEW, "To review (new + alerts)"),
    (FILTER_NEW, "New only"),
    (FILTER_ALL, "All cases"),
)
ALL_COMMUNITIES = ""
NO_COMMUNITY = "(no community)"
UNSAVED_EDITS = (
    "the cases layer has unsaved edits: save or discard them first (Layer > Save Layer Edits), "
    "then press the key again"
)


def value(feature, name):
    """A feature's attribute as a Python value (None for NULL or a missing field)."""
    if feature.fields().indexOf(name) < 0:
        return None
    result = feature[name]
    if result is None or result == NULL:
        return None
    if hasattr(result, "toString"):  # QDate / QDateTime
        return result.toString("yyyy-MM-dd")
    return result


def find_cases_layer(project=None):
    """The cases layer of a buildwatch project: the layer buildwatch marked ``cases``, else a
    layer named ``cases`` with ``case_id`` and ``status`` fields; None when there is none."""
    project = project or QgsProject.instance()
    layers = [layer for layer in project.mapLayers().values() if isinstance(layer, QgsVectorLayer)]
    for layer in layers:
        if layer.customProperty(ROLE_PROPERTY) == "cases":
            return layer
    for layer in layers:
        names = layer.fields().names()
        if layer.name() == "cases" and "case_id" in names and "status" in names:
            return layer
    return None


def statuses(layer):
    """(value, label) of each review status, in the order of the layer's ``status`` drop-down."""
    setup = layer.editorWidgetSetup(layer.fields().indexOf("status"))
    entries = setup.config().get("map", []) if setup.type() == "ValueMap" else []
    if isinstance(entries, dict):  # an older QGIS stores a single map
        entries = [{label: item} for label, item in entries.items()]
    result = []
    for entry in entries:
        for label, item in entry.items():
            result.append((str(item), str(label)))
    return result


def editor_expression(layer):
    """The expression that stamps ``edited_by`` on every edit (the layer's default value), or ''."""
    index = layer.fields().indexOf("edited_by")
    if index < 0:
        return ""
    default = layer.defaultValueDefinition(index)
    return default.expression() if default.applyOnUpdate() else ""


class TriageQueue:
    """A snapshot of the cases to review, in review order, and what happened to them since.

    Order: new cases first, then by community, oldest first (``first_seen``), then by ID.
    """

    def __init__(self, layer):
        self.layer = layer
        self.entries = []  # feature IDs in review order
        self.case_ids = {}  # feature ID -> case ID (read when the queue is built)
        self.initial = {}  # feature ID -> status when the queue was built
        self.touched = set()  # feature IDs the dock set a status other than new on
        self.index = 0

    # ------------------------------------------------------------------ building

    def communities(self):
        """The communities of the layer's cases, sorted ('' when a case has none: NO_COMMUNITY)."""
        found = {value(f, "community") or NO_COMMUNITY for f in self._features()}
        return sorted(found)

    def latest_night(self):
        """The latest ``last_seen`` of any case: tonight."""
        nights = [value(f, "last_seen") for f in self._features()]
        nights = [str(n) for n in nights if n]
        return max(nights) if nights else None

    def _features(self):
        request = QgsFeatureRequest().setFlags(QgsFeatureRequest.NoGeometry)
        return self.layer.getFeatures(request)

    def build(self, which=FILTER_TO_REVIEW, community=ALL_COMMUNITIES, tonight_only=False):
        """Fill the queue from the layer with the filters; the position goes to the first case.

        ``tonight_only``: cases first seen tonight (the report's "new tonight"; tonight is the
        latest ``last_seen`` in the registry).
        """
        night = self.latest_night() if tonight_only else None
        chosen = []
        for feature in self._features():
            status = value(feature, "status")
            alert = value(feature, "alert")
            if which == FILTER_NEW and status != NEW_STATUS:
                continue
            if which == FILTER_TO_REVIEW and status != NEW_STATUS and not alert:
                continue
            place = value(feature, "community") or NO_COMMUNITY
            if community and place != community:
                continue
            if night and str(value(feature, "first_seen") or "") != night:
                continue
            key = (
                0 if status == NEW_STATUS else 1,
                place,
                str(value(feature, "first_seen") or "9999"),
                str(value(feature, "case_id") or ""),
            )
            chosen.append((key, feature.id(), status))
        chosen.sort()
        self.entries = [fid for _, fid, _ in chosen]
        self.case_ids = {fid: key[3] for key, fid, _ in chosen}
        self.initial = {fid: status for _, fid, status in chosen}
        self.touched = set()
        self.index = 0

    # ------------------------------------------------------------------ where we are

    def __len__(self):
        return len(self.entries)

    def current(self):
        """The feature ID at the position, or None for an empty queue."""
        return self.entries[self.index] if self.entries else None

    def feature(self, fid=None):
        fid = self.current() if fid is None else fid
        return None if fid is None else self.layer.getFeature(fid)

    def reviewed(self, fid, feature=None):
        """Reviewed: the dock set a status on it (other than new), or its status is not what it was
        when the queue was built. ``feature``: the case as just read (else it is read)."""
        feature = self.layer.getFeature(fid) if feature is None else feature
        return self._reviewed(fid, value(feature, "status"))

    def _reviewed(self, fid, status_now):
        return fid in self.touched or status_now != self.initial.get(fid)

    def features(self):
        """Feature ID -> feature (no geometry) of the whole queue, in one read."""
        request = QgsFeatureRequest().setFilterFids(list(self.entries))
        request.setFlags(QgsFeatureRequest.NoGeometry)
        return {f.id(): f for f in self.layer.getFeatures(request)}

    def statuses_now(self):
        """Feature ID -> status now, for the whole queue in one read (a morning holds hundreds)."""
        request = (
            QgsFeatureRequest()
            .setFilterFids(list(self.entries))
            .setFlags(QgsFeatureRequest.NoGeometry)
            .setSubsetOfAttributes(["status"], self.layer.fields())
        )
        return {f.id(): value(f, "status") for f in self.layer.getFeatures(request)}

    def reviewed_count(self):
        now = self.statuses_now()
        return sum(1 for fid in self.entries if self._reviewed(fid, now.get(fid)))

    def progress(self):
        """``"12 of 47 reviewed"``."""
        return f"{self.reviewed_count()} of {len(self.entries)} reviewed"

    def move(self, step):
        """Go ``step`` cases on (negative: back), staying inside the queue."""
        if self.entries:
            self.index = max(0, min(len(self.entries) - 1, self.index + step))
        return self.current()

    def go_to(self, index):
        if self.entries:
            self.index = max(0, min(len(self.entries) - 1, index))
        return self.current()

    def advance(self):
        """To the next case not reviewed yet after the position (else the first one before it);
        stays where it is when every case is reviewed. Returns the feature ID or None."""
        count = len(self.entries)
        now = self.statuses_now()
        for offset in range(1, count + 1):
            candidate = (self.index + offset) % count
            fid = self.entries[candidate]
            if not self._reviewed(fid, now.get(fid)):
                self.index = candidate
                return self.entries[candidate]
        return None

    # ------------------------------------------------------------------ the one way to change a case

    def apply(self, fid, changes):
        """Write ``changes`` (field -> value) on one case through the layer's edit buffer.

        startEditing, changeAttributeValue (the layer applies its on-update defaults: the
        ``edited_by`` stamp), commitChanges. A layer already in edit mode with other unsaved
        edits is left alone (they would be committed with this change).

        Returns
        -------
        (bool, list of str)
            Committed, and QGIS's commit errors (the registry's refusal, if any) otherwise.
        """
        layer = self.layer
        was_editing = layer.isEditable()
        if was_editing and layer.isModified():
            return False, [UNSAVED_EDITS]
        if not was_editing and not layer.startEditing():
            return False, [
                f"the layer {layer.name()} cannot be edited (is the GeoPackage read-only?)"
            ]
        fields = layer.fields()
        for name, new in changes.items():
            layer.changeAttributeValue(fid, fields.indexOf(name), new)
        if layer.commitChanges(not was_editing):
            if changes.get("status") == NEW_STATUS:  # set back to new: not reviewed any more
                self.touched.discard(fid)
            elif "status" in changes:
                self.touched.add(fid)
            layer.triggerRepaint()
            return True, []
        errors = [str(e) for e in layer.commitErrors()]
        layer.rollBack(not was_editing)
        return False, errors
