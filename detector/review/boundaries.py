"""Community boundaries: which community (and responsible unit) a case lies in."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import shapely
from shapely.geometry.base import BaseGeometry

from detector.errors import InputError
from detector.geo.crs import check_crs


@dataclass
class Boundaries:
    """Community polygons in the registry CRS with their name and responsible unit."""

    geometries: list[BaseGeometry]
    names: list[str]
    units: list[str | None]

    def locate(self, geometry: BaseGeometry) -> tuple[str | None, str | None]:
        """(community, unit) containing the geometry's representative point, or the most overlapped one.

        Parameters
        ----------
        geometry : shapely geometry
            In the boundaries' CRS.

        Returns
        -------
        (str or None, str or None)
            ``(None, None)`` outside every community.
        """
        point = geometry.representative_point()
        for geom, name, unit in zip(self.geometries, self.names, self.units):
            if geom.contains(point):
                return name, unit
        best, best_area = None, 0.0
        for index, geom in enumerate(self.geometries):
            overlap = geom.intersection(geometry).area
            if overlap > best_area:
                best, best_area = index, overlap
        if best is None:
            return None, None
        return self.names[best], self.units[best]


def load_boundaries(path: Path, name_field: str, unit_field: str | None, crs) -> Boundaries:
    """Read a boundary layer (any OGR format and CRS) and reproject it to ``crs``.

    Parameters
    ----------
    path : Path
        The boundary layer (GeoPackage, GeoJSON, shapefile ...).
    name_field : str
        The field holding the community name.
    unit_field : str or None
        The field holding the responsible unit, if any.
    crs : pyproj.CRS
        The registry CRS.

    Returns
    -------
    Boundaries

    Raises
    ------
    InputError
        Missing/unreadable file, no CRS, or a missing name/unit field.
    """
    import geopandas as gpd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: boundary layer not found; fix cases.boundaries or remove it")
    try:
        frame = gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - any OGR failure is a user-fixable input problem
        raise InputError(
            f"{path}: cannot read the boundary layer ({str(exc).splitlines()[0]}); give an OGR vector file"
        ) from None
    if frame.crs is None:
        raise InputError(f"{path}: boundary layer has no CRS; save it with a CRS (e.g. EPSG:4547)")
    check_crs(frame.crs, f"{path}: boundary layer")
    for wanted, setting in (
        (name_field, "boundary_name_field"),
        (unit_field, "boundary_unit_field"),
    ):
        if wanted is not None and wanted not in frame.columns:
            fields = ", ".join(c for c in frame.columns if c != "geometry")
            raise InputError(f"{path}: no field '{wanted}' (fields: {fields}); set cases.{setting}")
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty].to_crs(crs)
    geometries = [g if g.is_valid else shapely.make_valid(g) for g in frame.geometry]
    names = [str(v) for v in frame[name_field]]
    units = (
        [None if v is None or v != v else str(v) for v in frame[unit_field]]
        if unit_field
        else [None] * len(frame)
    )
    return Boundaries(geometries, names, units)
