"""The reviewers' QGIS project ``cases.qgs``: created once, then only updated in the parts buildwatch owns.

buildwatch owns three layers, known by their IDs: the cases layer and the current and baseline
orthomosaics. Each night it

* links tonight's mosaics into ``imagery/`` next to the project (a hard link, or a copy where the
  mosaic is on another file system; with their ``.ovr`` / ``.aux.xml`` / ``.msk`` sidecars), so
  every path in the project is relative and inside the cases folder: copy the folder to a
  laptop and it opens with its imagery;
* updates those three layers' data sources and names; it re-adds one an operator removed. The
  cases layer's style is rewritten only when buildwatch's own style changed (its hash is kept in
  the layer's custom properties), so an operator's restyling survives until the next release;
* keeps three map themes (``View > Map Themes``, and the triage dock's keys): ``baseline`` (the
  cases over the baseline mosaic), ``tonight`` (over tonight's) and ``height`` (tonight's mosaic,
  the cases coloured by their height change: the cases layer's second named style ``height``).
  buildwatch sets only its own three layers in them; a layer an operator added to one of them,
  and any theme of their own, stay;
* leaves everything else as the operator saved it: layers and groups they added, the layer
  order, the map view, the project CRS once set.

A new project gets the registry CRS as project CRS, with ``SpatialRefSys/ProjectionsEnabled``
set (QGIS 3.22 ignores ``<projectCrs>`` without it and would draw a WGS84 layer at x=114, y=22),
and opens zoomed to the current mosaic.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from detector.fileio import atomic_write_text
from detector.geo.location import is_remote
from detector.review.qgis import cases_layer_qml, style_elements
from detector.review.vocab import (
    CASES_TABLE,
    EXISTING_ROOF_M,
    NO_HEIGHT_CHANGE_M,
    cases_field_names,
)
from detector.styles import categorized_renderer, simple_labels

log = logging.getLogger(__name__)

IMAGERY_DIR = "imagery"
SIDECARS = (".ovr", ".aux.xml", ".msk")
DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
STYLE_PROPERTY = "buildwatch_style"  # hash of the cases style buildwatch last wrote
ROLE_PROPERTY = "buildwatch_role"  # cases / current / baseline: the layers buildwatch owns

# the map themes buildwatch keeps: name -> (the imagery layer's role, the cases layer's named style)
BASELINE_THEME, TONIGHT_THEME, HEIGHT_THEME = "baseline", "tonight", "height"
THEMES = {
    BASELINE_THEME: ("baseline", "default"),
    TONIGHT_THEME: ("current", "default"),
    HEIGHT_THEME: ("current", "height"),
}
HEIGHT_STYLE = "height"  # the cases layer's second named style (QGIS's style manager)
# the height theme's categories: a case's height change as height_phrase words it
HEIGHT_CATEGORY_EXPRESSION = (
    "CASE WHEN \"height_gain_m\" IS NULL THEN 'unmeasured' "
    f"WHEN abs(\"height_gain_m\") < {NO_HEIGHT_CHANGE_M} THEN 'none' "
    "WHEN \"height_gain_m\" < 0 THEN 'lower' "
    f"WHEN \"baseline_height_m\" >= {EXISTING_ROOF_M} THEN 'storey' ELSE 'new' END"
)
HEIGHT_CATEGORIES: dict[str, tuple[str, tuple[int, int, int]]] = {
    "storey": ("Storeys added on a roof", (215, 25, 28)),
    "new": ("New building / structure (from the ground)", (253, 110, 0)),
    "none": ("No height change", (77, 175, 74)),
    "lower": ("Lower than before", (44, 123, 182)),
    "unmeasured": ("Not measured (no DSM pair)", (170, 170, 170)),
}
HEIGHT_LABEL_EXPRESSION = (
    '"case_id" || CASE WHEN "height_change" IS NOT NULL AND "height_change" <> \'\' '
    "THEN '\\n' || \"height_change\" ELSE '' END"
)


# --------------------------------------------------------------------------- imagery in the cases folder


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _place(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (copy across file systems), atomically replacing it."""
    if target.exists() and _same_file(source, target):
        return
    if target.exists() and not _same_file(source, target):
        src_stat, dst_stat = source.stat(), target.stat()
        if src_stat.st_size == dst_stat.st_size and int(src_stat.st_mtime) == int(
            dst_stat.st_mtime
        ):
            return  # a copy of this very file is already there
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp_name)
    try:
        try:
            os.link(source, tmp_name)
        except OSError:
            log.info(
                "copying %s into the cases folder (%.0f MB; not on the same file system)",
                source,
                source.stat().st_size / 1e6,
            )
            shutil.copy2(source, tmp_name)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def link_imagery(project_dir: Path, role: str, mosaic: Path) -> Path:
    """The mosaic as a file inside the cases folder: itself when it is already inside, else ``imagery/<role><ext>``.

    Parameters
    ----------
    project_dir : Path
        The folder of ``cases.qgs``.
    role : str
        ``current`` or ``baseline``.
    mosaic : Path or RemotePath
        Tonight's orthomosaic. A remote one (URL, ``/vsis3/``...) is returned as it is: the
        project refers to it there and QGIS reads it with the same GDAL environment.

    Returns
    -------
    Path or RemotePath
    """
    if is_remote(mosaic):  # on an object store or web server: QGIS opens the same GDAL location
        return mosaic
    mosaic = Path(mosaic).resolve()
    project_dir = Path(project_dir).resolve()
    if (
        project_dir in mosaic.parents
        and IMAGERY_DIR not in mosaic.relative_to(project_dir).parts[:1]
    ):
        return mosaic
    target = project_dir / IMAGERY_DIR / f"{role}{''.join(mosaic.suffixes) or '.tif'}"
    _place(mosaic, target)
    for sidecar in SIDECARS:
        extra = Path(str(mosaic) + sidecar)
        if extra.exists():
            _place(extra, Path(str(target) + sidecar))
        else:
            with contextlib.suppress(FileNotFoundError):
                Path(
                    str(target) + sidecar
                ).unlink()  # last night's overviews would not match tonight's mosaic
    return target


# --------------------------------------------------------------------------- XML pieces


def _spatialrefsys(parent: ET.Element, crs) -> None:
    for child in list(parent):
        parent.remove(child)
    srs = ET.SubElement(parent, "spatialrefsys")
    ET.SubElement(srs, "wkt").text = crs.to_wkt()
    authority = crs.to_authority()
    ET.SubElement(srs, "authid").text = f"{authority[0]}:{authority[1]}" if authority else ""
    ET.SubElement(srs, "description").text = crs.name
    ET.SubElement(srs, "geographicflag").text = "true" if crs.is_geographic else "false"


def _relative(target: Path, start: Path) -> str:
    if is_remote(target):
        return str(target)
    relative = os.path.relpath(Path(target).resolve(), Path(start).resolve()).replace(os.sep, "/")
    return relative if relative.startswith("..") else "./" + relative


def _child(parent: ET.Element, tag: str, attrs: dict | None = None) -> ET.Element:
    found = parent.find(tag)
    return found if found is not None else ET.SubElement(parent, tag, attrs or {})


def _set_text(parent: ET.Element, tag: str, text: str) -> None:
    _child(parent, tag).text = text


def _height_style(crs) -> ET.Element:
    """The cases layer's ``height`` style: its whole default style (form, defaults: edits made
    while the height theme shows still stamp the editor), categorised and labelled by height."""
    style = ET.Element("qgis", {"styleCategories": "AllStyleCategories", "labelsEnabled": "1"})
    for element in style_elements(cases_field_names(), crs):
        if element.tag not in ("renderer-v2", "labeling"):
            style.append(element)
    categorized_renderer(style, HEIGHT_CATEGORY_EXPRESSION, HEIGHT_CATEGORIES)
    simple_labels(style, HEIGHT_LABEL_EXPRESSION)
    return style


def _style_hash(crs) -> str:
    text = cases_layer_qml(crs) + ET.tostring(_height_style(crs), encoding="unicode")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _style_manager(layer: ET.Element, crs) -> None:
    """The cases layer's named styles: ``default`` and buildwatch's ``height``; an operator's own stay."""
    manager = layer.find("map-layer-style-manager")
    if manager is None:
        manager = ET.SubElement(layer, "map-layer-style-manager")
    manager.set("current", "default")  # the layer's own style (just rewritten) is the default one
    for style in manager.findall("map-layer-style"):
        if style.get("name") in ("default", HEIGHT_STYLE):
            manager.remove(style)
    manager.insert(0, ET.Element("map-layer-style", {"name": "default"}))
    height = ET.Element("map-layer-style", {"name": HEIGHT_STYLE})
    height.append(_height_style(crs))
    manager.insert(1, height)


def _map_themes(root: ET.Element, layer_ids: dict[str, str]) -> None:
    """buildwatch's map themes (:data:`THEMES`) over its own layers (role -> layer ID).

    In each theme only buildwatch's three layers are set (each night, with tonight's IDs); a
    layer the operator added to a theme keeps its entry, and their own themes stay as they are.
    """
    presets = _child(root, "visibility-presets")
    owned = set(layer_ids.values())
    for name, (imagery, cases_style) in THEMES.items():
        preset = next(
            (p for p in presets.findall("visibility-preset") if p.get("name") == name), None
        )
        if preset is None:
            preset = ET.SubElement(presets, "visibility-preset", {"name": name})
        for entry in preset.findall("layer"):
            if entry.get("id") in owned:
                preset.remove(entry)
        entries = [
            ET.Element("layer", {"id": layer_ids["cases"], "visible": "1", "style": cases_style}),
            ET.Element("layer", {"id": layer_ids[imagery], "visible": "1"}),
        ]
        for position, entry in enumerate(entries):
            preset.insert(position, entry)


def _custom_property(layer: ET.Element, name: str) -> str | None:
    for option in layer.iter("Option"):
        if option.get("name") == name:
            return option.get("value")
    return None


def _set_custom_property(layer: ET.Element, name: str, value: str) -> None:
    props = _child(layer, "customproperties")
    holder = props.find("Option")
    if holder is None:
        holder = ET.SubElement(props, "Option", {"type": "Map"})
    for option in holder.findall("Option"):
        if option.get("name") == name:
            holder.remove(option)
    ET.SubElement(holder, "Option", {"name": name, "type": "QString", "value": value})


def _raster_info(path: Path):
    import rasterio
    from pyproj import CRS

    with rasterio.open(path) as src:
        return CRS.from_wkt(src.crs.to_wkt()), src.bounds, src.crs


def _ensure_projections_enabled(root: ET.Element, crs) -> None:
    properties = _child(root, "properties")
    srs = _child(properties, "SpatialRefSys")
    enabled = _child(srs, "ProjectionsEnabled", {"type": "int"})
    enabled.text = "1"
    if srs.find("ProjectCrs") is None:
        authority = crs.to_authority()
        ET.SubElement(srs, "ProjectCrs", {"type": "QString"}).text = (
            f"{authority[0]}:{authority[1]}" if authority else ""
        )
    paths = _child(properties, "Paths")
    _child(paths, "Absolute", {"type": "bool"}).text = "false"


def _new_project(title: str, crs, extent) -> ET.Element:
    root = ET.Element("qgis", {"projectname": title, "version": "3.22.0"})
    ET.SubElement(root, "homePath", {"path": ""})
    ET.SubElement(root, "title").text = title
    _spatialrefsys(ET.SubElement(root, "projectCrs"), crs)
    ET.SubElement(root, "layer-tree-group")
    ET.SubElement(root, "projectlayers")
    ET.SubElement(root, "layerorder")
    canvas = ET.SubElement(root, "mapcanvas", {"name": "theMapCanvas", "annotationsVisible": "1"})
    ET.SubElement(canvas, "units").text = "degrees" if crs.is_geographic else "meters"
    if extent is not None:
        box = ET.SubElement(canvas, "extent")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), extent):
            ET.SubElement(box, key).text = repr(float(value))
    _spatialrefsys(ET.SubElement(canvas, "destinationsrs"), crs)
    return root


def _owned_layer(
    root: ET.Element,
    role: str,
    layer_id: str,
    kind: str,
    name: str,
    source: str,
    provider: str,
    layer_crs,
    tree_position: int,
    visible: bool,
) -> tuple[ET.Element, bool]:
    """Find (by its ``buildwatch_role`` custom property, else its ID) or add one of
    buildwatch's layers and set its source."""
    layers = _child(root, "projectlayers")
    layer = next(
        (m for m in layers.findall("maplayer") if _custom_property(m, ROLE_PROPERTY) == role), None
    )
    if layer is None:
        layer = next((m for m in layers.findall("maplayer") if m.findtext("id") == layer_id), None)
    created = layer is None
    if not created:
        layer_id = layer.findtext("id")
    if created:
        attrs = {"type": kind, "hasScaleBasedVisibilityFlag": "0"}
        if kind == "vector":
            attrs.update({"geometry": "Polygon", "wkbType": "Polygon", "labelsEnabled": "1"})
        layer = ET.SubElement(layers, "maplayer", attrs)
        ET.SubElement(layer, "id").text = layer_id
    _set_text(layer, "datasource", source)
    _set_text(layer, "layername", name)
    _spatialrefsys(_child(layer, "srs"), layer_crs)
    _set_custom_property(layer, ROLE_PROPERTY, role)
    provider_element = _child(layer, "provider")
    provider_element.text = provider
    if kind == "vector":
        provider_element.set("encoding", "UTF-8")

    tree = _child(root, "layer-tree-group")
    entry = next((e for e in tree.iter("layer-tree-layer") if e.get("id") == layer_id), None)
    if entry is None:
        entry = ET.Element(
            "layer-tree-layer",
            {
                "id": layer_id,
                "expanded": "1" if kind == "vector" else "0",
                "checked": "Qt::Checked" if visible else "Qt::Unchecked",
            },
        )
        tree.insert(min(tree_position, len(tree)), entry)
    entry.set("name", name)
    entry.set("source", source)
    entry.set("providerKey", provider)
    order = _child(root, "layerorder")
    if not any(e.get("id") == layer_id for e in order.findall("layer")):
        order.insert(min(tree_position, len(order)), ET.Element("layer", {"id": layer_id}))
    return layer, created


def _read_existing(path: Path) -> ET.Element | None:
    if not path.exists():
        return None
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        backup = path.with_suffix(path.suffix + ".unreadable")
        os.replace(path, backup)
        log.warning("%s could not be read (%s); kept as %s and written anew", path, exc, backup)
        return None


def write_qgis_project(
    path: Path,
    *,
    registry: Path,
    crs,
    baseline_path: Path,
    current_path: Path,
    title: str = "buildwatch cases",
) -> Path:
    """Create the QGIS project, or update the parts buildwatch owns in the one the operators saved.

    Parameters
    ----------
    path : Path
        The ``.qgs`` file (next to ``cases.gpkg``).
    registry : Path
        The case registry GeoPackage.
    crs : pyproj.CRS
        The registry CRS (the CRS of a new project).
    baseline_path, current_path : Path
        Tonight's orthomosaics; linked into ``imagery/`` beside the project (see the module).
    title : str
        Project title (new projects).

    Returns
    -------
    Path
    """
    from rasterio.warp import transform_bounds

    path = Path(path)
    project_dir = path.parent
    current = link_imagery(project_dir, "current", current_path)
    baseline = link_imagery(project_dir, "baseline", baseline_path)
    current_crs, current_bounds, current_rio_crs = _raster_info(current)
    baseline_crs = _raster_info(baseline)[0]

    root = _read_existing(path)
    if root is None:
        extent = transform_bounds(current_rio_crs, crs.to_wkt(), *current_bounds)
        root = _new_project(title, crs, extent)
    _ensure_projections_enabled(root, crs)

    suffix = uuid.uuid5(uuid.NAMESPACE_URL, str(Path(registry).resolve())).hex[:12]
    cases_source = f"{_relative(registry, project_dir)}|layername={CASES_TABLE}"
    cases_layer, created = _owned_layer(
        root, "cases", f"cases_{suffix}", "vector", "cases", cases_source, "ogr", crs, 0, True
    )
    style = _style_hash(crs)
    if created or _custom_property(cases_layer, STYLE_PROPERTY) != style:
        keep = {"id", "datasource", "layername", "srs", "provider", "customproperties", "extent"}
        keep.add("map-layer-style-manager")  # its named styles: buildwatch's are rewritten below
        for child in list(cases_layer):
            if child.tag not in keep:
                cases_layer.remove(child)
        cases_layer.extend(style_elements(cases_field_names(), crs))
        _style_manager(cases_layer, crs)
        _set_custom_property(cases_layer, STYLE_PROPERTY, style)
    current_layer, _ = _owned_layer(
        root,
        "current",
        f"current_{suffix}",
        "raster",
        f"current ({current_path.name})",
        _relative(current, project_dir),
        "gdal",
        current_crs,
        1,
        True,
    )
    baseline_layer, _ = _owned_layer(
        root,
        "baseline",
        f"baseline_{suffix}",
        "raster",
        f"baseline ({baseline_path.name})",
        _relative(baseline, project_dir),
        "gdal",
        baseline_crs,
        2,
        False,
    )
    _map_themes(
        root,
        {
            "cases": cases_layer.findtext("id"),
            "current": current_layer.findtext("id"),
            "baseline": baseline_layer.findtext("id"),
        },
    )

    ET.indent(root, space=" ")
    atomic_write_text(path, DOCTYPE + ET.tostring(root, encoding="unicode"))
    return path
