"""Camera pose of raw drone frames: EXIF GPS, DJI / senseFly XMP, or a CSV flight log.

Angles follow the DJI convention throughout: ``yaw`` is the heading the camera looks
towards, degrees clockwise from north; ``pitch`` is 0 at the horizon and -90 straight down
(nadir); ``roll`` is the rotation about the viewing direction. senseFly XMP (``Camera:Pitch``
0 = nadir) is converted on read.

Nothing here needs Pillow: EXIF tags come from GDAL (``rasterio``'s ``tags()``), the XMP
packet is found by scanning the file bytes for ``<x:xmpmeta`` ... ``</x:xmpmeta>``.
"""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

# Sensor widths (mm) of common drone cameras, keyed by EXIF Model. Used before the 35 mm
# equivalent focal length because the latter is defined on the full sensor and is
# ambiguous for 16:9 crops.
CAMERA_SENSOR_WIDTH_MM = {
    "FC300S": 6.17,  # Phantom 3 Advanced/Professional
    "FC300X": 6.17,
    "FC330": 6.17,  # Phantom 4
    "FC6310": 13.2,  # Phantom 4 Pro (1")
    "FC6310S": 13.2,
    "FC220": 6.17,  # Mavic Pro
    "L1D-20C": 13.2,  # Mavic 2 Pro
    "FC3170": 6.4,  # Mavic Air 2
    "FC3411": 13.2,  # Air 2S
    "FC3582": 9.6,  # Mini 3 Pro
    "FC8482": 9.6,  # Mini 4 Pro
    "M3E": 17.3,  # Mavic 3 Enterprise (4/3)
    "Canon PowerShot S110": 7.44,  # senseFly eBee
    "Canon PowerShot SX260 HS": 6.17,
}

_XMP_ATTR = re.compile(r'([A-Za-z][\w.-]*):(\w+)\s*=\s*["\']([^"\']*)["\']')
_XMP_ELEM = re.compile(r"<([A-Za-z][\w.-]*):(\w+)>\s*([^<\s][^<]*?)\s*</\1:\2>")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class FramePose:
    """Everything needed to project one frame onto the ground.

    Attributes
    ----------
    path : Path
        The image file.
    lat, lon : float
        Camera position, WGS84 degrees.
    abs_alt_m : float or None
        Altitude above the GPS datum (usually MSL), metres.
    rel_alt_m : float or None
        Height above the take-off point (DJI ``RelativeAltitude``) or above ground.
    yaw_deg, pitch_deg, roll_deg : float
        Camera orientation (DJI convention, see the module docstring).
    focal_px : float
        Focal length in pixels of the image as stored on disk.
    width, height : int
        Image size in pixels.
    camera_model : str
        EXIF ``Model`` (or the flight log's camera column), for information.
    source : str
        Where the pose came from (``"exif"``, ``"flight-log"``, ``"exif+flight-log"``).
    """

    path: Path
    lat: float
    lon: float
    abs_alt_m: float | None
    rel_alt_m: float | None
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    focal_px: float
    width: int
    height: int
    camera_model: str = ""
    source: str = "exif"


class PoseError(ValueError):
    """A frame lacks what its pose needs; the message is the per-frame reason."""


def parse_gdal_rational_list(text: str) -> list[float]:
    """Numbers in a GDAL EXIF value such as ``"(46) (50) (33.3794)"``."""
    return [float(v) for v in _NUMBER.findall(text or "")]


def dms_to_degrees(parts: list[float], ref: str = "") -> float:
    """Degrees/minutes/seconds (1 to 3 numbers) to signed decimal degrees."""
    if not parts:
        raise PoseError("empty coordinate")
    value = sum(p / 60.0**i for i, p in enumerate(parts[:3]))
    return -value if ref.strip().upper()[:1] in ("S", "W") else value


def parse_coordinate(text: str) -> float:
    """A latitude/longitude written as decimal degrees or as a DMS string.

    Accepts ``"8.46"``, ``"-13.2"``, ``"8 deg 27' 55.22\\" N"`` (exiftool) and
    ``"13°12'0.92\\"W"``.
    """
    text = str(text).strip()
    if not text:
        raise PoseError("empty coordinate")
    try:
        return float(text)
    except ValueError:
        pass
    numbers = [float(v) for v in _NUMBER.findall(text)]
    hemisphere = re.search(r"[NSEW]\s*$", text.upper())
    return dms_to_degrees(
        [abs(n) for n in numbers],
        hemisphere.group(0) if hemisphere else ("S" if text.startswith("-") else ""),
    )


def read_xmp(path: Path, max_bytes: int = 1 << 20) -> dict[str, str]:
    """XMP properties of a JPEG as ``{"prefix:Name": "value"}`` (empty when absent).

    Only the first ``max_bytes`` of the file are scanned (XMP sits in an APP1 segment
    near the start). Both attribute form (``drone-dji:RelativeAltitude="+40.00"``) and
    element form (``<Camera:Pitch>2.36</Camera:Pitch>``) are read; for repeated keys
    the first value wins.
    """
    with open(path, "rb") as f:
        head = f.read(max_bytes)
    start = head.find(b"<x:xmpmeta")
    end = head.find(b"</x:xmpmeta>", start)
    if start < 0 or end < 0:
        return {}
    packet = head[start:end].decode("utf-8", errors="replace")
    props: dict[str, str] = {}
    for prefix, name, value in _XMP_ATTR.findall(packet) + _XMP_ELEM.findall(packet):
        if prefix in ("xmlns", "x", "rdf"):
            continue
        props.setdefault(f"{prefix}:{name}", value.strip())
    return props


def read_exif(path: Path) -> tuple[dict[str, str], int, int]:
    """EXIF tags (GDAL names, ``EXIF_*``) and the pixel size of a JPEG.

    Raises
    ------
    PoseError
        The file cannot be opened as an image.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return dict(src.tags()), src.width, src.height
    except RasterioIOError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "unreadable"
        raise PoseError(f"not a readable image ({first})") from None


def _xmp_float(xmp: dict[str, str], *keys: str) -> float | None:
    for key in keys:
        if key in xmp:
            try:
                return float(xmp[key])
            except ValueError:
                continue
    return None


def focal_length_px(
    tags: dict[str, str], width: int, height: int, sensor_width_mm: float | None = None
) -> float:
    """Focal length in pixels from EXIF.

    Order: an explicit sensor width, the camera table (:data:`CAMERA_SENSOR_WIDTH_MM`),
    EXIF focal-plane resolution, then the 35 mm equivalent (``f35 / 36 * max(w, h)``, the
    OpenSfM convention).

    Raises
    ------
    PoseError
        No focal length information at all.
    """
    focal_mm = (parse_gdal_rational_list(tags.get("EXIF_FocalLength", "")) or [None])[0]
    long_side = max(width, height)
    model = tags.get("EXIF_Model", "").strip()
    sensor = sensor_width_mm or CAMERA_SENSOR_WIDTH_MM.get(model)
    if focal_mm and sensor:
        return focal_mm / sensor * long_side
    res = parse_gdal_rational_list(tags.get("EXIF_FocalPlaneXResolution", ""))
    exif_width = parse_gdal_rational_list(tags.get("EXIF_PixelXDimension", "")) or [width]
    if focal_mm and res and res[0] > 0:
        unit_mm = {"2": 25.4, "3": 10.0, "4": 1.0, "5": 0.001}.get(
            tags.get("EXIF_FocalPlaneResolutionUnit", "2").strip(), 25.4
        )
        sensor_from_res = exif_width[0] / res[0] * unit_mm
        if 1.0 < sensor_from_res < 60.0:
            return focal_mm / sensor_from_res * long_side
    f35 = (parse_gdal_rational_list(tags.get("EXIF_FocalLengthIn35mmFilm", "")) or [None])[0]
    if f35:
        return f35 / 36.0 * long_side
    raise PoseError(
        "no focal length in EXIF (FocalLength with a known camera, or FocalLengthIn35mmFilm); "
        "set ortho.sensor_width_mm / focal_px in the config"
    )


def read_pose(
    path: str | Path,
    sensor_width_mm: float | None = None,
    focal_px: float | None = None,
    default_pitch_deg: float | None = None,
) -> FramePose:
    """Read a frame's pose from its EXIF and XMP.

    Parameters
    ----------
    path : str or Path
        A JPEG (or any GDAL-readable image with EXIF).
    sensor_width_mm, focal_px : float, optional
        Override the camera's intrinsics.
    default_pitch_deg : float, optional
        Pitch to assume when the file has no gimbal angles (e.g. -90 for a fixed nadir
        camera). Without it such a frame is refused.

    Returns
    -------
    FramePose

    Raises
    ------
    PoseError
        The message says what is missing (no GPS, no orientation, no focal length).
    """
    path = Path(path)
    tags, width, height = read_exif(path)
    xmp = read_xmp(path)
    lat_parts = parse_gdal_rational_list(tags.get("EXIF_GPSLatitude", ""))
    lon_parts = parse_gdal_rational_list(tags.get("EXIF_GPSLongitude", ""))
    if not lat_parts or not lon_parts:
        raise PoseError(
            "no GPS position in EXIF (GPSLatitude/GPSLongitude); give a --flight-log with this file name"
        )
    lat = dms_to_degrees(lat_parts, tags.get("EXIF_GPSLatitudeRef", "N"))
    lon = dms_to_degrees(lon_parts, tags.get("EXIF_GPSLongitudeRef", "E"))
    abs_alt = _xmp_float(xmp, "drone-dji:AbsoluteAltitude")
    if abs_alt is None:
        alt = parse_gdal_rational_list(tags.get("EXIF_GPSAltitude", ""))
        if alt:
            below = tags.get("EXIF_GPSAltitudeRef", "").strip() in ("0x01", "1")
            abs_alt = -alt[0] if below else alt[0]
    rel_alt = _xmp_float(xmp, "drone-dji:RelativeAltitude")
    yaw = _xmp_float(xmp, "drone-dji:GimbalYawDegree", "drone-dji:FlightYawDegree")
    pitch = _xmp_float(xmp, "drone-dji:GimbalPitchDegree")
    roll = _xmp_float(xmp, "drone-dji:GimbalRollDegree")
    if pitch is None and "Camera:Pitch" in xmp:  # senseFly: 0 = nadir
        pitch = _xmp_float(xmp, "Camera:Pitch") - 90.0
        yaw = _xmp_float(xmp, "Camera:Yaw")
        roll = _xmp_float(xmp, "Camera:Roll")
    if yaw is None:
        track = parse_gdal_rational_list(
            tags.get("EXIF_GPSImgDirection", "") or tags.get("EXIF_GPSTrack", "")
        )
        yaw = track[0] if track else None
    if pitch is None:
        if default_pitch_deg is None:
            raise PoseError(
                "no camera orientation in XMP (GimbalPitchDegree / Camera:Pitch); "
                "set ortho.default_pitch_deg: -90 for a fixed nadir camera, or give a --flight-log"
            )
        pitch = default_pitch_deg
    if yaw is None:
        raise PoseError(
            "no heading in XMP/EXIF (GimbalYawDegree, FlightYawDegree, GPSImgDirection); give a --flight-log"
        )
    fpx = focal_px or focal_length_px(tags, width, height, sensor_width_mm)
    return FramePose(
        path=path,
        lat=lat,
        lon=lon,
        abs_alt_m=abs_alt,
        rel_alt_m=rel_alt,
        yaw_deg=float(yaw),
        pitch_deg=float(pitch),
        roll_deg=float(roll or 0.0),
        focal_px=float(fpx),
        width=width,
        height=height,
        camera_model=tags.get("EXIF_Model", "").strip(),
        source="exif",
    )


# flight-log column names (lower-case) for each field, first match wins
_LOG_COLUMNS = {
    "name": ("filename", "file_name", "file", "name", "image", "sourcefile"),
    "lat": ("gpslatitude", "latitude", "lat"),
    "lon": ("gpslongitude", "longitude", "lon", "lng"),
    "rel_alt": ("relativealtitude", "relative_altitude", "rel_alt", "height", "agl"),
    "abs_alt": ("absolutealtitude", "gpsaltitude", "altitude", "alt"),
    "yaw": ("gimbalyawdegree", "camera_yaw", "yaw", "flightyawdegree", "azimuth", "heading"),
    "pitch": ("gimbalpitchdegree", "camera_pitch", "pitch"),
    "roll": ("gimbalrolldegree", "camera_roll", "roll"),
}


@dataclass(frozen=True)
class FlightLogEntry:
    """One row of a flight log; fields the log lacks are None."""

    name: str
    lat: float | None = None
    lon: float | None = None
    rel_alt_m: float | None = None
    abs_alt_m: float | None = None
    yaw_deg: float | None = None
    pitch_deg: float | None = None
    roll_deg: float | None = None


def read_flight_log(path: str | Path) -> dict[str, FlightLogEntry]:
    """Read a CSV flight log keyed by image file name (case-insensitive, no folder).

    Recognised columns (case-insensitive): a file name (``FileName``, ``SourceFile``,
    ``name``, ``image``), ``GPSLatitude``/``lat`` and ``GPSLongitude``/``lon`` (decimal or
    DMS text), ``RelativeAltitude``, ``AbsoluteAltitude``/``alt``, ``GimbalYawDegree``/``yaw``
    (else ``FlightYawDegree``), ``GimbalPitchDegree``/``pitch``, ``GimbalRollDegree``/``roll``.
    The exiftool export of DroneTM flights reads as is.

    Raises
    ------
    detector.errors.InputError
        The file is missing, has no file-name column, or a value is malformed.
    """
    from detector.errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: flight log not found; check --flight-log")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = {h.strip().lower(): h for h in (reader.fieldnames or [])}
        columns = {
            field: next((header[c] for c in names if c in header), None)
            for field, names in _LOG_COLUMNS.items()
        }
        if columns["name"] is None:
            raise InputError(
                f"{path}: flight log has no file-name column (one of {', '.join(_LOG_COLUMNS['name'])})"
            )
        entries: dict[str, FlightLogEntry] = {}
        for line_no, row in enumerate(reader, start=2):
            try:
                values = {}
                for field in ("lat", "lon"):
                    raw = row.get(columns[field] or "", "") if columns[field] else ""
                    values[field] = parse_coordinate(raw) if str(raw).strip() else None
                for field in ("rel_alt", "abs_alt", "yaw", "pitch", "roll"):
                    raw = row.get(columns[field], "") if columns[field] else ""
                    values[field] = float(raw) if str(raw).strip() else None
            except (ValueError, PoseError) as exc:
                raise InputError(
                    f"{path}: line {line_no}: malformed value ({exc}); fix or remove the row"
                ) from None
            name = Path(str(row[columns["name"]]).replace("\\", "/")).name.lower()
            entries[name] = FlightLogEntry(
                name=name,
                lat=values["lat"],
                lon=values["lon"],
                rel_alt_m=values["rel_alt"],
                abs_alt_m=values["abs_alt"],
                yaw_deg=values["yaw"],
                pitch_deg=values["pitch"],
                roll_deg=values["roll"],
            )
    return entries


def pose_with_flight_log(
    path: Path,
    entry: FlightLogEntry,
    sensor_width_mm: float | None = None,
    focal_px: float | None = None,
    default_pitch_deg: float | None = None,
) -> FramePose:
    """A frame's pose from its flight-log row, filling gaps from the file's EXIF/XMP.

    Raises
    ------
    PoseError
        Neither the log nor the file gives a position / orientation / focal length.
    """
    tags, width, height = read_exif(path)
    try:
        base = read_pose(path, sensor_width_mm, focal_px, default_pitch_deg)
    except PoseError:
        base = None
    lat = entry.lat if entry.lat is not None else (base.lat if base else None)
    lon = entry.lon if entry.lon is not None else (base.lon if base else None)
    if lat is None or lon is None:
        raise PoseError("no GPS position in the flight log row or in EXIF")
    pitch = (
        entry.pitch_deg
        if entry.pitch_deg is not None
        else (base.pitch_deg if base else default_pitch_deg)
    )
    yaw = entry.yaw_deg if entry.yaw_deg is not None else (base.yaw_deg if base else None)
    if pitch is None or yaw is None:
        raise PoseError("no camera orientation (pitch/yaw) in the flight log row or in XMP")
    roll = entry.roll_deg if entry.roll_deg is not None else (base.roll_deg if base else 0.0)
    fpx = (
        base.focal_px
        if base
        else (focal_px or focal_length_px(tags, width, height, sensor_width_mm))
    )
    return FramePose(
        path=Path(path),
        lat=lat,
        lon=lon,
        abs_alt_m=entry.abs_alt_m
        if entry.abs_alt_m is not None
        else (base.abs_alt_m if base else None),
        rel_alt_m=entry.rel_alt_m
        if entry.rel_alt_m is not None
        else (base.rel_alt_m if base else None),
        yaw_deg=float(yaw),
        pitch_deg=float(pitch),
        roll_deg=float(roll),
        focal_px=float(fpx),
        width=width,
        height=height,
        camera_model=tags.get("EXIF_Model", "").strip(),
        source="exif+flight-log" if base else "flight-log",
    )
