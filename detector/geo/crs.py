"""The one metric working-CRS rule, and ground distances, areas and lon/lat for any CRS.

Everything that needs metres — the model's GSD, areas, shift limits, camera heights, the
context around an evidence chip — works in a CRS whose unit is a true ground metre. A
baseline is used as is when its unit is the metre *and* its scale error at the site is at
most :data:`MAX_SCALE_ERROR` (a national grid, UTM, a Gauss-Krüger zone); geographic CRSs
(degrees), feet-based state planes and Web Mercator (metres that grow with latitude: 1.41 at
45°) are replaced by the UTM zone of the site, which pyproj looks up
(:func:`pyproj.database.query_utm_crs_info`).

Ground lengths are measured geodesically on the WGS84 ellipsoid, so the same functions serve
metres, feet, degrees and Web Mercator alike; no "metres per degree" constant is needed.
"""

from __future__ import annotations

import numpy as np
from pyproj import CRS, Geod, Proj, Transformer

MAX_SCALE_ERROR = (
    0.005  # a projected CRS whose metre is off by more than this is not used as the grid
)

_GEOD = Geod(ellps="WGS84")
_METRE_NAMES = ("metre", "meter", "m")


def check_crs(crs, where: str) -> CRS:
    """The one CRS rule for inputs: ``crs`` must place its coordinates on the Earth.

    A geographic or projected CRS (any unit, any datum PROJ knows) is accepted; a local /
    engineering CRS (``LOCAL_CS``: a site grid with no datum) or one PROJ cannot transform to
    WGS84 is refused, because no ground metre, no UTM zone and no lon/lat can be derived from it.

    Parameters
    ----------
    crs : str, pyproj.CRS or rasterio CRS
    where : str
        How the message names its owner, e.g. ``"/data/c.tif: current mosaic"``.

    Returns
    -------
    pyproj.CRS

    Raises
    ------
    InputError
        One line: the owner, what is wrong and what to do.
    """
    from pyproj.exceptions import CRSError, ProjError

    from detector.errors import InputError

    fix = (
        "assign the real CRS (gdal_edit.py -a_srs EPSG:..., ogr2ogr -a_srs, or QGIS: Set Layer "
        "CRS) and rerun"
    )
    try:
        crs = as_crs(crs)
    except (CRSError, ProjError, TypeError, ValueError) as exc:
        raise InputError(
            f"{where}: PROJ cannot read its CRS ({str(exc).splitlines()[0][:100]}); {fix}"
        ) from None
    if crs.is_engineering or not (crs.is_geographic or crs.is_projected):
        raise InputError(
            f"{where}: its CRS '{crs.name}' is a local/engineering grid ({crs.type_name}) with no "
            f"place on the Earth, so no ground metre or lon/lat can be derived; {fix}"
        )
    try:
        Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    except (CRSError, ProjError) as exc:
        raise InputError(
            f"{where}: its CRS '{crs.name}' cannot be transformed to WGS84 "
            f"({str(exc).splitlines()[0][:100]}); {fix}"
        ) from None
    return crs


def as_crs(crs) -> CRS:
    """A :class:`pyproj.CRS` from a WKT string, ``"EPSG:…"``, rasterio or pyproj CRS."""
    if isinstance(crs, CRS):
        return crs
    return CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def to_lonlat(crs, x, y):
    """WGS84 (lon, lat) of points given in ``crs`` (scalars or arrays)."""
    return Transformer.from_crs(as_crs(crs), "EPSG:4326", always_xy=True).transform(x, y)


def scale_error(crs, lon: float, lat: float) -> float:
    """Largest relative scale error of a projected CRS at (lon, lat) (PROJ's meridional and parallel
    scale factors): 0.0004 on a UTM central meridian, 0.41 for Web Mercator at 45°N; ``inf`` for a
    geographic CRS, which has no linear unit."""
    crs = as_crs(crs)
    if not crs.is_projected:
        return float("inf")
    factors = Proj(crs).get_factors(lon, lat)
    return max(abs(factors.meridional_scale - 1), abs(factors.parallel_scale - 1))


def is_true_metric(crs, lon: float, lat: float) -> bool:
    """True when ``crs`` is projected, its axes are in metres and its scale error at (lon, lat) is
    at most :data:`MAX_SCALE_ERROR`."""
    crs = as_crs(crs)
    if not crs.is_projected or not crs.axis_info or crs.axis_info[0].unit_name not in _METRE_NAMES:
        return False
    return scale_error(crs, lon, lat) <= MAX_SCALE_ERROR


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS84 UTM zone CRS (EPSG:326xx / 327xx) covering (lon, lat), looked up by pyproj."""
    from pyproj.aoi import AreaOfInterest
    from pyproj.database import query_utm_crs_info

    found = query_utm_crs_info(
        datum_name="WGS 84", area_of_interest=AreaOfInterest(lon, lat, lon, lat)
    )
    if not found:  # pragma: no cover - pyproj covers the globe between 80°S and 84°N
        raise ValueError(f"no UTM zone covers lon {lon:.4f}, lat {lat:.4f}")
    # on a zone boundary two zones match: take the eastern one (zones are [west, east) intervals)
    best = max(
        found,
        key=lambda info: (
            info.area_of_use.west <= lon < info.area_of_use.east,
            info.area_of_use.west,
        ),
    )
    return CRS.from_epsg(int(best.code))


def working_crs(crs, lon: float, lat: float) -> CRS:
    """The metric CRS to work in at (lon, lat): ``crs`` itself when it is true metres there
    (:func:`is_true_metric`), else the UTM zone of (lon, lat).

    Parameters
    ----------
    crs : str, pyproj.CRS or rasterio CRS
        The baseline's CRS.
    lon, lat : float
        The site (WGS84 degrees), e.g. the baseline's centre.

    Returns
    -------
    pyproj.CRS
        The given CRS object itself (converted by :func:`as_crs`) when kept, so ``is`` tells.
    """
    crs = as_crs(crs)
    return crs if is_true_metric(crs, lon, lat) else utm_crs(lon, lat)


def working_crs_wkt(crs_wkt: str, bounds: tuple[float, float, float, float]) -> str:
    """:func:`working_crs` at the centre of ``bounds`` (left, bottom, right, top in ``crs_wkt``), as WKT;
    ``crs_wkt`` itself (the same string) when it is kept."""
    left, bottom, right, top = bounds
    lon, lat = to_lonlat(crs_wkt, (left + right) / 2, (bottom + top) / 2)
    return crs_wkt if is_true_metric(crs_wkt, lon, lat) else utm_crs(lon, lat).to_wkt()


def step_lengths_m(crs, x: float, y: float, dx: float, dy: float) -> tuple[float, float]:
    """Ground length in metres (geodesic, WGS84) of a step ``dx`` along the x axis and a step
    ``dy`` along the y axis of ``crs``, starting at (x, y) in ``crs``."""
    (lon0, lon1, lon2), (lat0, lat1, lat2) = to_lonlat(crs, [x, x + dx, x], [y, y, y + dy])
    return _GEOD.inv(lon0, lat0, lon1, lat1)[2], _GEOD.inv(lon0, lat0, lon2, lat2)[2]


def unit_lengths_m(crs, x: float, y: float) -> tuple[float, float]:
    """Metres on the ground of one unit of ``crs`` along x (east) and along y (north) at (x, y).

    EPSG:4326 at the equator: (111 319.5, 110 574.4); a metric UTM zone: its scale factor
    (0.9996 on the central meridian) for both; US survey feet: 0.3048006 for both.
    """
    h = 1.0 if as_crs(crs).is_projected else 1e-5  # about a metre: the local derivative
    ex, ny = step_lengths_m(crs, x, y, h, h)
    return ex / h, ny / h


def metres_per_unit(crs, x: float, y: float) -> float:
    """Metres on the ground of one unit of ``crs`` along its y axis at (x, y).

    For conformal projections (UTM, Gauss-Krüger, Lambert, Web Mercator) x and y agree; for a
    geographic CRS this is a degree of latitude (use :func:`unit_lengths_m` for longitude).
    """
    return unit_lengths_m(crs, x, y)[1]


def pixel_size_m(crs, transform, width: int, height: int) -> tuple[float, float]:
    """Ground size in metres of one pixel (along a row, along a column) at the raster's centre.

    Works for any CRS — metres, feet, degrees, Web Mercator — and rotated geotransforms.
    """
    from rasterio.transform import xy

    cx, cy = width / 2, height / 2
    xs, ys = xy(transform, [cy, cy, cy + 1], [cx, cx + 1, cx], offset="ul")
    (lon0, lon1, lon2), (lat0, lat1, lat2) = to_lonlat(crs, list(xs), list(ys))
    return _GEOD.inv(lon0, lat0, lon1, lat1)[2], _GEOD.inv(lon0, lat0, lon2, lat2)[2]


def source_gsd_m(crs, transform, width: int, height: int) -> float:
    """A raster's GSD in metres: the coarser pixel side on the ground at its centre (geodesic)."""
    return max(pixel_size_m(crs, transform, width, height))


def area_m2(geometries, crs) -> np.ndarray:
    """Ground area in square metres of each geometry given in ``crs`` (0 for a missing or empty one).

    The one area of the project (candidates and cases alike). In a CRS that is true metres at
    the geometries (:func:`is_true_metric`: the working grid, UTM, a national grid) it is the
    planar area; in any other -- degrees, feet, Web Mercator (whose metre at 22.5°N is 1.08 m on
    the ground, so planar areas come out 17 % too large) -- it is the geodesic area on the WGS84
    ellipsoid of the outline's vertices (:meth:`pyproj.Geod.geometry_area_perimeter`).

    Parameters
    ----------
    geometries : sequence of shapely geometries (or None), or one geometry
    crs : str, pyproj.CRS or rasterio CRS

    Returns
    -------
    numpy.ndarray or float
        float64, one area per geometry (a float for one geometry).
    """
    import shapely
    from shapely.geometry.base import BaseGeometry

    if geometries is None or isinstance(geometries, BaseGeometry):
        return float(area_m2([geometries], crs)[0])
    arr = np.empty(len(geometries), dtype=object)
    arr[:] = list(geometries)
    out = np.zeros(len(arr))
    present = np.array([g is not None and not g.is_empty for g in arr], dtype=bool)
    if not present.any():
        return out
    crs = as_crs(crs)
    if crs.is_projected:
        x0, y0, x1, y1 = shapely.total_bounds(arr[present])
        lon, lat = to_lonlat(crs, (x0 + x1) / 2, (y0 + y1) / 2)
        if is_true_metric(crs, lon, lat):
            factor = crs.axis_info[0].unit_conversion_factor
            out[present] = shapely.area(arr[present]) * factor * factor
            return out
    to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    for i in np.flatnonzero(present):
        lonlat = shapely.transform(
            arr[i], lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1]))
        )
        out[i] = abs(_GEOD.geometry_area_perimeter(lonlat)[0])
    return out


def lonlat_of(geometries, crs, point: str = "inside") -> np.ndarray:
    """WGS84 lon/lat of one point of each geometry given in ``crs``.

    Parameters
    ----------
    geometries : sequence of shapely geometries
    crs : str, pyproj.CRS or rasterio CRS
    point : str
        ``"inside"``: GEOS's point on surface (inside even an L-shaped outline; what QGIS's
        ``point_on_surface`` gives a reviewer); ``"centroid"``: the centroid (a rotated box's
        centre: the nightly candidates).

    Returns
    -------
    numpy.ndarray
        (N, 2) lon, lat in degrees.
    """
    import shapely

    if len(geometries) == 0:
        return np.zeros((0, 2))
    arr = np.empty(len(geometries), dtype=object)
    arr[:] = list(geometries)
    points = shapely.point_on_surface(arr) if point == "inside" else shapely.centroid(arr)
    lon, lat = Transformer.from_crs(as_crs(crs), "EPSG:4326", always_xy=True).transform(
        shapely.get_x(points), shapely.get_y(points)
    )
    return np.column_stack([lon, lat])
