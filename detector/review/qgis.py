"""QGIS review setup: the cases layer's default style (QML) and a ``.qgs`` project.

The QML (stored in the GeoPackage's ``layer_styles`` table with ``useAsDefault=1``, so QGIS
applies it whenever the layer is added) holds

* a categorised renderer on the status, with one more category ``alert`` (a demolition
  alert: the structure is still standing) drawn over everything else;
* labels: case ID and area (m²), ``!`` before the ID of a case with an alert, and the height
  change in words when a DSM pair measured one ("new storey, +3.1 m"); labels of neighbouring
  cases do not block each other (polygons are not label obstacles);
* the attribute form: a drop-down value map on ``status`` (the enforcement lifecycle), a date
  picker on ``demolition_due``, the ``evidence`` field shown as an image (ExternalResource,
  document viewer = image, path relative to the GeoPackage's folder), the run-owned fields
  read-only, ``class`` editable (a corrected class is the operator's: the run keeps it).
  ``reviewer`` / ``reviewed_at`` are set by the registry when the status changes
  (:mod:`detector.review.triggers`); QGIS stamps ``edited_by`` with the user's name
  (:data:`USER_EXPRESSION`) on every edit;
* default values so that a drawn polygon becomes a case (``case_id`` ``pending-...``, replaced
  by the registry) and so that ``area_m2``, ``lon``, ``lat`` follow every outline edit.

The QGIS project that shows these layers is :mod:`detector.review.project`; the QML building blocks
shared with the night's ``candidates.gpkg`` are in :mod:`detector.styles`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from detector.review.vocab import (
    CONFIRMED_ILLEGAL,
    DEMOLISHED,
    DEMOLITION_ORDERED,
    FALSE_POSITIVE,
    INTERNAL_COLUMNS,
    NEW,
    ORIGIN_OPERATOR,
    PENDING_ID_PREFIX,
    PERMITTED,
    REFERRED,
    VERIFIED,
    cases_field_names,
)
from detector.styles import CLASS_STYLE, categorized_renderer, simple_labels
from detector.styles import qml_option as _option

# review status -> (label in the form and legend, RGB fill colour), in lifecycle order; one entry
# for every status of vocab.REVIEW_STATUSES. "new" (needs a look) and "confirmed illegal" (needs
# action) must never share a colour.
STATUS_STYLE: dict[str, tuple[str, tuple[int, int, int]]] = {
    NEW: ("New (not reviewed)", (255, 200, 0)),
    CONFIRMED_ILLEGAL: ("Confirmed illegal", (215, 25, 28)),
    DEMOLITION_ORDERED: ("Demolition ordered", (253, 110, 0)),
    DEMOLISHED: ("Demolished (to verify)", (44, 123, 182)),
    VERIFIED: ("Demolition verified", (0, 70, 120)),
    PERMITTED: ("Permitted", (77, 175, 74)),
    FALSE_POSITIVE: ("False positive", (150, 150, 150)),
    REFERRED: ("Referred", (152, 78, 163)),
}
ALERT = "alert"
ALERT_STYLE = ("ALERT: still standing after demolition", (255, 0, 255))
# the renderer's category: the status, or 'alert' while the run reports the structure still standing
CATEGORY_EXPRESSION = (
    'CASE WHEN "alert" IS NOT NULL AND "alert" <> \'\' THEN \'alert\' ELSE "status" END'
)
LABEL_EXPRESSION = (
    "CASE WHEN \"alert\" IS NOT NULL AND \"alert\" <> '' THEN '! ' ELSE '' END || \"case_id\" || "
    "'\\n' || format_number(\"area_m2\", 0) || ' m²' || "
    'CASE WHEN "height_change" IS NOT NULL AND "height_change" <> \'\' '
    "THEN '\\n' || \"height_change\" ELSE '' END"
)
# class: the operator's once corrected (class_edited)
EDITABLE_FIELDS = ("status", "demolition_due", "note", "class")
HIDDEN_FIELDS = (*INTERNAL_COLUMNS, "edited_by", "class_edited")
READ_ONLY_FIELDS = (
    "fid",
    "case_id",
    "reviewer",
    "reviewed_at",
    "alert",
    "area_m2",
    "lon",
    "lat",
    "community",
    "unit",
    "first_seen",
    "last_seen",
    "times_seen",
    "max_confidence",
    "last_confidence",
    "evidence",
    "tags",
    "candidate_id",
    "first_run_id",
    "last_run_id",
    "model_name",
    "geometry_edited",
    "origin",
    "height_gain_m",
    "baseline_height_m",
    "current_height_m",
    "height_change",
)
ALIASES = {
    "case_id": "Case ID",
    "status": "Review status",
    "reviewer": "Reviewer (set on status change)",
    "reviewed_at": "Reviewed at (UTC)",
    "note": "Note",
    "demolition_due": "Demolition due",
    "alert": "ALERT (demolition verification)",
    "class": "Class (yours once corrected)",
    "area_m2": "Area (m²)",
    "community": "Community",
    "unit": "Responsible unit",
    "first_seen": "First seen",
    "last_seen": "Last seen",
    "times_seen": "Nights seen",
    "max_confidence": "Max confidence",
    "evidence": "Evidence (before | after)",
    "geometry_edited": "Geometry edited by operator",
    "origin": "Origin (detector / operator)",
    "height_change": "Height change",
    "height_gain_m": "Height gain (m, DSM)",
    "baseline_height_m": "Height before (m above ground)",
    "current_height_m": "Height now (m above ground)",
}
EVIDENCE_ROOT_EXPRESSION = "file_path(layer_property(@layer, 'path'))"  # the folder of cases.gpkg
# who is editing: the global variable buildwatch_operator (operators sharing one account set it in
# Settings > Options > Variables), else the QGIS user; how a client stamps it: review.triggers
USER_EXPRESSION = (
    "coalesce(nullif(@buildwatch_operator, ''), "
    "if(length(@user_full_name) > 0, @user_full_name, @user_account_name))"
)


# how QGIS's value map writes "no value" (NULL) as an entry's value
QGIS_VALUE_MAP_NULL = "{2839923C-8B7D-419E-B84B-CA2FE9B80EC7}"


def _value_map_widget(field: ET.Element, entries_: list[tuple[str, str]]) -> None:
    """A drop-down of (label, value) entries: the status lifecycle, or the model's classes."""
    widget = ET.SubElement(field, "editWidget", {"type": "ValueMap"})
    config = ET.SubElement(ET.SubElement(widget, "config"), "Option", {"type": "Map"})
    entries = ET.SubElement(config, "Option", {"type": "List", "name": "map"})
    for label, value in entries_:
        _option(ET.SubElement(entries, "Option", {"type": "Map"}), label, value)


STATUS_ENTRIES = [(label, status) for status, (label, _) in STATUS_STYLE.items()]
# a drawn case has no class until a night's detection matches it (or the operator picks one)
CLASS_ENTRIES = [("(not set)", QGIS_VALUE_MAP_NULL)] + [
    (label, name) for name, (label, _) in CLASS_STYLE.items()
]


def _image_widget(field: ET.Element) -> None:
    widget = ET.SubElement(field, "editWidget", {"type": "ExternalResource"})
    config = ET.SubElement(ET.SubElement(widget, "config"), "Option", {"type": "Map"})
    _option(config, "DocumentViewer", 1, "int")  # 1 = image
    _option(config, "DocumentViewerHeight", 280, "int")
    _option(config, "DocumentViewerWidth", 520, "int")
    _option(config, "FileWidget", "true", "bool")
    _option(config, "FileWidgetButton", "false", "bool")
    # relative to a root path computed per layer: the GeoPackage's own folder, so the chip shows in
    # cases.qgs, with the GeoPackage added alone to any project, and in a copied folder
    _option(config, "RelativeStorage", 2, "int")
    _option(config, "StorageMode", 0, "int")
    collection = ET.SubElement(config, "Option", {"type": "Map", "name": "PropertyCollection"})
    _option(collection, "name", "")
    properties = ET.SubElement(collection, "Option", {"type": "Map", "name": "properties"})
    root_path = ET.SubElement(properties, "Option", {"type": "Map", "name": "propertyRootPath"})
    _option(root_path, "active", "true", "bool")
    _option(root_path, "expression", EVIDENCE_ROOT_EXPRESSION)
    _option(root_path, "type", 3, "int")  # expression-based property
    _option(collection, "type", "collection")


def _datetime_widget(field: ET.Element, date_only: bool = False) -> None:
    """QGIS's date/time picker: a timestamp (ISO, to the second) or, ``date_only``, a date."""
    widget = ET.SubElement(field, "editWidget", {"type": "DateTime"})
    config = ET.SubElement(ET.SubElement(widget, "config"), "Option", {"type": "Map"})
    _option(config, "allow_null", "true", "bool")
    _option(config, "calendar_popup", "true", "bool")
    _option(config, "display_format", "yyyy-MM-dd" if date_only else "yyyy-MM-dd HH:mm")
    _option(config, "field_format", "yyyy-MM-dd" if date_only else "yyyy-MM-ddTHH:mm:ss")
    _option(config, "field_iso_format", "false" if date_only else "true", "bool")


def default_expressions(crs=None) -> dict[str, tuple[str, bool]]:
    """QGIS default values of the cases layer: field -> (expression, apply on every update).

    ``edited_by``: the QGIS user, on every edit (the registry credits status changes with it);
    ``area_m2`` / ``lon`` / ``lat``: from the geometry on every edit, so a corrected outline
    shows its own figures at once (the nightly run recomputes them the same way: GEOS point on
    surface, planar area in the registry CRS); a drawn polygon gets ``case_id`` ``pending-...``
    (the registry assigns the real ID), origin ``operator`` and status ``new``.

    Parameters
    ----------
    crs : pyproj.CRS, optional
        The registry CRS (a projected one in metres gets the area expression).

    Returns
    -------
    dict
    """
    authority = crs.to_authority() if crs is not None else None
    source = f"'{authority[0]}:{authority[1]}'" if authority else "layer_property(@layer, 'crs')"
    point = f"transform(point_on_surface($geometry), {source}, 'EPSG:4326')"
    defaults = {
        "case_id": (f"'{PENDING_ID_PREFIX}' || uuid()", False),
        "status": (f"'{NEW}'", False),
        "origin": (f"'{ORIGIN_OPERATOR}'", False),
        "times_seen": ("0", False),
        "geometry_edited": ("1", False),
        "edited_by": (USER_EXPRESSION, True),
        "lon": (f"round(x({point}), 8)", True),
        "lat": (f"round(y({point}), 8)", True),
    }
    if crs is None or (
        not crs.is_geographic and crs.axis_info and crs.axis_info[0].unit_conversion_factor == 1.0
    ):
        defaults["area_m2"] = ("round(area($geometry), 2)", True)
    return defaults


def _simple_widget(field: ET.Element, widget_type: str) -> None:
    widget = ET.SubElement(field, "editWidget", {"type": widget_type})
    ET.SubElement(ET.SubElement(widget, "config"), "Option")


def _form(root: ET.Element, field_names: list[str], crs=None) -> None:
    configuration = ET.SubElement(root, "fieldConfiguration")
    for name in field_names:
        field = ET.SubElement(configuration, "field", {"name": name, "configurationFlags": "None"})
        if name == "status":
            _value_map_widget(field, STATUS_ENTRIES)
        elif name == "class":
            _value_map_widget(field, CLASS_ENTRIES)
        elif name == "evidence":
            _image_widget(field)
        elif name == "reviewed_at":
            _datetime_widget(field)
        elif name == "demolition_due":
            _datetime_widget(field, date_only=True)
        elif name == "note":
            widget = ET.SubElement(field, "editWidget", {"type": "TextEdit"})
            config = ET.SubElement(ET.SubElement(widget, "config"), "Option", {"type": "Map"})
            _option(config, "IsMultiline", "true", "bool")
            _option(config, "UseHtml", "false", "bool")
        elif name in HIDDEN_FIELDS:
            _simple_widget(field, "Hidden")
        elif name == "geometry_edited":
            widget = ET.SubElement(field, "editWidget", {"type": "CheckBox"})
            config = ET.SubElement(ET.SubElement(widget, "config"), "Option", {"type": "Map"})
            _option(config, "CheckedState", "1")
            _option(config, "UncheckedState", "0")
        else:
            _simple_widget(field, "TextEdit")
    aliases = ET.SubElement(root, "aliases")
    for index, name in enumerate(field_names):
        ET.SubElement(
            aliases, "alias", {"index": str(index), "field": name, "name": ALIASES.get(name, "")}
        )
    defaults = ET.SubElement(root, "defaults")
    expressions = default_expressions(crs)
    for name in field_names:
        expression, on_update = expressions.get(name, ("", False))
        ET.SubElement(
            defaults,
            "default",
            {"field": name, "expression": expression, "applyOnUpdate": "1" if on_update else "0"},
        )
    ET.SubElement(root, "editform", {"tolerant": "1"})
    ET.SubElement(root, "editorlayout").text = "generatedlayout"
    editable = ET.SubElement(root, "editable")
    for name in field_names:
        ET.SubElement(
            editable, "field", {"name": name, "editable": "1" if name in EDITABLE_FIELDS else "0"}
        )
    ET.SubElement(root, "previewExpression").text = '"case_id"'
    ET.SubElement(root, "mapTip").text = (
        '<b>[% "case_id" %]</b> [% "status" %] <b style="color:#c0c">[% coalesce("alert", \'\') %]</b><br>'
        '[% "class" %], [% format_number("area_m2", 0) %] m²[% if(length(coalesce("height_change", \'\')) > 0, '
        "', ' || \"height_change\", '') %]<br>"
        'seen [% "times_seen" %]× ([% "first_seen" %] – [% "last_seen" %])'
    )


def style_elements(field_names: list[str], crs=None) -> list[ET.Element]:
    """The children of a QML ``<qgis>`` root (also embedded in the project's maplayer)."""
    holder = ET.Element("holder")
    categorized_renderer(
        holder, CATEGORY_EXPRESSION, {ALERT: ALERT_STYLE, **STATUS_STYLE}, emphasised=(ALERT,)
    )
    simple_labels(holder, LABEL_EXPRESSION)
    ET.SubElement(holder, "blendMode").text = "0"
    ET.SubElement(holder, "featureBlendMode").text = "0"
    ET.SubElement(holder, "layerOpacity").text = "1"
    _form(holder, field_names, crs)
    ET.SubElement(holder, "layerGeometryType").text = "2"
    return list(holder)


def cases_layer_qml(crs=None) -> str:
    """The cases layer's QGIS style as a QML document (renderer, labels, attribute form).

    Parameters
    ----------
    crs : pyproj.CRS, optional
        The registry CRS (used by the lon/lat/area default expressions).

    Returns
    -------
    str
        QML text for the ``styleQML`` column of ``layer_styles`` or a ``.qml`` file.
    """
    root = ET.Element(
        "qgis", {"version": "3.22.0", "styleCategories": "AllStyleCategories", "labelsEnabled": "1"}
    )
    root.extend(style_elements(cases_field_names(), crs))
    ET.indent(root, space=" ")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(
        root, encoding="unicode"
    )
