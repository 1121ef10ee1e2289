"""QGIS layer styles: the shared vocabulary of the night's ``candidates.gpkg`` and the review registry.

Both the nightly export (:mod:`detector.night.export`: the ``candidates`` and ``tiles`` layers)
and the review side (:mod:`detector.review.qgis`: the cases layer and its form) describe their
layers to QGIS with the same building blocks, kept here below both:

* QML pieces: a categorised renderer (:func:`categorized_renderer`), simple labels
  (:func:`simple_labels`), one ``Option`` element (:func:`qml_option`), and the complete style of
  a layer without a form (:func:`simple_layer_qml`), with the candidate and tile styles;
* GeoPackage default styles: QGIS's ``layer_styles`` table (:data:`STYLES_TABLE`), one style
  stored as a layer's default (:func:`insert_default_style`), several written into a finished
  file (:func:`write_default_styles`). QGIS applies a default style whenever the layer is added.
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

STYLES_TABLE = "layer_styles"  # QGIS's own name for its default-style table


# --------------------------------------------------------------------------- QML pieces


def qml_option(parent: ET.Element, name: str | None, value, type_: str = "QString") -> ET.Element:
    attrs = {"type": type_}
    if name is not None:
        attrs["name"] = name
    if value is not None:
        attrs["value"] = str(value)
    return ET.SubElement(parent, "Option", attrs)


def _fill_symbol(
    parent: ET.Element,
    name: str,
    rgb: tuple[int, int, int],
    fill_alpha: int = 70,
    outline_width: float = 0.7,
) -> None:
    symbol = ET.SubElement(
        parent,
        "symbol",
        {"type": "fill", "name": name, "alpha": "1", "clip_to_extent": "1", "force_rhr": "0"},
    )
    layer = ET.SubElement(
        symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"}
    )
    options = ET.SubElement(layer, "Option", {"type": "Map"})
    r, g, b = rgb
    for key, value in (
        ("color", f"{r},{g},{b},{fill_alpha}"),
        ("outline_color", f"{r},{g},{b},255"),
        ("outline_style", "solid"),
        ("outline_width", str(outline_width)),
        ("outline_width_unit", "MM"),
        ("style", "solid"),
        ("joinstyle", "miter"),
    ):
        qml_option(options, key, value)


def categorized_renderer(
    root: ET.Element,
    attr: str,
    styles: dict[str, tuple[str, tuple[int, int, int]]],
    fill_alpha: dict[str, int] | int = 70,
    emphasised: tuple[str, ...] = (),
) -> None:
    """A categorised renderer on ``attr`` (a field or an expression): one fill per category
    (value -> (legend label, RGB)), a thicker outline for the ``emphasised`` values, and a yellow
    ``other`` category for values not listed."""
    renderer = ET.SubElement(
        root,
        "renderer-v2",
        {
            "type": "categorizedSymbol",
            "attr": attr,
            "symbollevels": "0",
            "enableorderby": "0",
            "forceraster": "0",
        },
    )
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for index, (value, (label, rgb)) in enumerate(styles.items()):
        ET.SubElement(
            categories,
            "category",
            {"render": "true", "symbol": str(index), "value": value, "label": label},
        )
        alpha = fill_alpha.get(value, 70) if isinstance(fill_alpha, dict) else fill_alpha
        _fill_symbol(symbols, str(index), rgb, alpha, 1.4 if value in emphasised else 0.7)
    other = str(len(styles))
    ET.SubElement(
        categories, "category", {"render": "true", "symbol": other, "value": "", "label": "other"}
    )
    _fill_symbol(symbols, other, (255, 255, 0))


def simple_labels(root: ET.Element, expression: str, obstacle: bool = False) -> None:
    """Simple labels; ``obstacle`` False: the layer's polygons never push other labels away."""
    labeling = ET.SubElement(root, "labeling", {"type": "simple"})
    settings = ET.SubElement(labeling, "settings", {"calloutType": "simple"})
    ET.SubElement(
        settings,
        "text-style",
        {
            "fieldName": expression,
            "isExpression": "1",
            "fontSize": "9",
            "fontSizeUnit": "Point",
            "fontWeight": "75",
            "textColor": "20,20,20,255",
            "textOpacity": "1",
        },
    )
    ET.SubElement(
        settings,
        "text-buffer",
        {
            "bufferDraw": "1",
            "bufferSize": "1",
            "bufferSizeUnits": "MM",
            "bufferColor": "255,255,255,255",
            "bufferOpacity": "0.9",
            "bufferNoFill": "1",
        },
    )
    ET.SubElement(settings, "text-format", {"multilineAlign": "1", "wrapChar": ""})
    ET.SubElement(
        settings,
        "placement",
        {"placement": "1", "centroidInside": "1", "fitInPolygonOnly": "0", "dist": "0"},
    )
    ET.SubElement(
        settings,
        "rendering",
        {
            "drawLabels": "1",
            "obstacle": "1" if obstacle else "0",
            "obstacleFactor": "1",
            "obstacleType": "0",
            "displayAll": "0",
            "scaleVisibility": "0",
            "upsidedownLabels": "0",
            "labelPerPart": "0",
        },
    )


# --------------------------------------------------------------------------- layer styles of the night

# class -> (legend label, RGB) for the nightly candidates layer; tile status for the tiles layer
CLASS_STYLE: dict[str, tuple[str, tuple[int, int, int]]] = {
    "new_building": ("New building", (228, 26, 28)),
    "extension": ("Extension / rooftop addition", (255, 127, 0)),
    "temporary_structure": ("Temporary structure (steel sheet)", (55, 126, 184)),
    "construction_site": ("Construction site", (152, 78, 163)),
}
TILE_STATUS_STYLE: dict[str, tuple[str, tuple[int, int, int]]] = {
    "done": ("Processed", (120, 120, 120)),
    "nodata": ("No data in an epoch", (200, 200, 200)),
    "unregistered": ("Not registered: not checked tonight", (255, 127, 0)),
}
CANDIDATE_LABEL = (
    "\"class\" || ' ' || format_number(\"confidence\", 2) || '\\n' || "
    "format_number(\"area_m2\", 0) || ' m²'"
)
# with a DSM pair: the height gain as a third line ("Δh 3.1 m")
CANDIDATE_LABEL += (
    " || if(\"height_gain_m\" IS NULL, '', '\\nΔh ' || format_number(\"height_gain_m\", 1) || ' m')"
)
TILE_LABEL = (
    "\"tile_id\" || CASE WHEN \"status\" = 'unregistered' THEN '\\n' || \"reason\" ELSE '' END"
)


# tiles are drawn as outlines (no fill dimming the imagery, none darker where tiles overlap);
# only a tile that could not be registered is tinted
TILE_FILL_ALPHA = {"done": 0, "nodata": 0, "unregistered": 60}


def simple_layer_qml(
    attr: str, styles: dict, label_expression: str, fill_alpha: dict[str, int] | int = 70
) -> str:
    """A QML with a categorised renderer on ``attr`` and one label expression (no form).

    The layer's polygons are never label obstacles (a tiles layer must not hide every case label).
    """
    root = ET.Element(
        "qgis", {"version": "3.22.0", "styleCategories": "AllStyleCategories", "labelsEnabled": "1"}
    )
    categorized_renderer(root, attr, styles, fill_alpha)
    simple_labels(root, label_expression, obstacle=False)
    ET.SubElement(root, "layerGeometryType").text = "2"
    ET.indent(root, space=" ")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(
        root, encoding="unicode"
    )


# --------------------------------------------------------------------------- GeoPackage default styles

LAYER_STYLES_DDL = f"""
CREATE TABLE IF NOT EXISTS "{STYLES_TABLE}" (
    id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
    f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT,
    styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));
"""


def create_layer_styles_table(conn: sqlite3.Connection) -> None:
    """Create QGIS's ``layer_styles`` table (if missing) and list it in ``gpkg_contents``.

    Parameters
    ----------
    conn : sqlite3.Connection
    """
    conn.executescript(LAYER_STYLES_DDL)
    conn.execute(
        "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description) "
        "VALUES (?, 'attributes', ?, 'QGIS layer styles')",
        (STYLES_TABLE, STYLES_TABLE),
    )


def insert_default_style(
    conn: sqlite3.Connection,
    layer: str,
    geometry_column: str,
    style_name: str,
    qml: str,
    description: str,
) -> None:
    """Store ``qml`` as a layer's default QGIS style (``useAsDefault=1``), replacing any style it had.

    Parameters
    ----------
    conn : sqlite3.Connection
        The ``layer_styles`` table must exist (:func:`create_layer_styles_table`).
    layer, geometry_column : str
        The styled feature table and its geometry column.
    style_name, qml, description : str
        QGIS applies the QML whenever the layer is added.
    """
    conn.execute(f'DELETE FROM "{STYLES_TABLE}" WHERE f_table_name = ?', (layer,))
    conn.execute(
        f'INSERT INTO "{STYLES_TABLE}" (f_table_catalog, f_table_schema, f_table_name, f_geometry_column, '
        "styleName, styleQML, styleSLD, useAsDefault, description, owner, ui) "
        "VALUES ('', '', ?, ?, ?, ?, '', 1, ?, 'buildwatch', '')",
        (layer, geometry_column, style_name, qml, description),
    )


def write_default_styles(
    gpkg: Path, styles: dict[str, tuple[str, str]], geometry_column: str = "geom"
) -> None:
    """Store QGIS default styles in an existing GeoPackage's ``layer_styles`` table.

    Parameters
    ----------
    gpkg : Path
        The GeoPackage (e.g. a night's ``candidates.gpkg``).
    styles : dict
        Layer name -> (style name, QML). QGIS applies them when the layer is added.
    geometry_column : str
        The layers' geometry column.
    """
    conn = sqlite3.connect(str(gpkg))
    try:
        with conn:
            create_layer_styles_table(conn)
            for layer, (name, qml) in styles.items():
                insert_default_style(
                    conn, layer, geometry_column, name, qml, f"buildwatch default style for {layer}"
                )
    finally:
        conn.close()
