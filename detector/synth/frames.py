"""Synthetic drone frames with exact truth, for tests, benchmarks and demos (never the nightly run).

* :func:`render_frame_from_orthophoto` — what a camera sees of an orthophoto lying on the ground;
* :func:`write_frame_jpeg` — a JPEG with DJI-style EXIF GPS and XMP gimbal angles, which
  :func:`detector.flight.pose.read_pose` reads back;
* :func:`with_offsets` — a pose moved on the ground and turned, to simulate GPS/compass error.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from detector.flight.baseline import Grid, WorldFrame
from detector.flight.camera import Camera
from detector.flight.pose import FramePose


def render_frame_from_orthophoto(
    ortho_rgb: np.ndarray, ortho_grid: Grid, camera: Camera, world: WorldFrame, ground
) -> np.ndarray:
    """Simulate a drone frame: what ``camera`` sees of an orthophoto lying on ``ground``.

    Used to make synthetic frames with exact truth (tests, benchmarks). Returns BGR uint8
    (camera.height, camera.width, 3); pixels whose ray misses the orthophoto are black.
    """
    import cv2

    u, v = np.meshgrid(np.arange(camera.width, dtype=float), np.arange(camera.height, dtype=float))
    rays = camera.rays(u.ravel(), v.ravel())
    z = ground.height(np.array([camera.center[0]]), np.array([camera.center[1]]))[0] * np.ones(
        rays.shape[0]
    )
    for _ in range(3):
        dist = (camera.center[2] - z) / np.maximum(-rays[:, 2], 1e-9)
        gx = camera.center[0] + rays[:, 0] * dist
        gy = camera.center[1] + rays[:, 1] * dist
        z = ground.height(gx, gy)
    bx, by = world.from_world(gx, gy)
    col = (
        ((bx - ortho_grid.left) / ortho_grid.res_x - 0.5)
        .reshape(camera.height, camera.width)
        .astype(np.float32)
    )
    row = (
        ((ortho_grid.top - by) / ortho_grid.res_y - 0.5)
        .reshape(camera.height, camera.width)
        .astype(np.float32)
    )
    frame = cv2.remap(
        np.ascontiguousarray(ortho_rgb[..., ::-1]),
        col,
        row,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
    )
    return frame


def _ifd(entries: list[tuple[int, int, int, bytes]], start: int) -> bytes:
    """A little-endian TIFF IFD at file offset ``start`` with its out-of-line data appended."""
    import struct

    entries = sorted(entries)
    head_len = 2 + 12 * len(entries) + 4
    data = b""
    body = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if len(value) <= 4:
            body += struct.pack("<HHI", tag, typ, count) + value.ljust(4, b"\0")
        else:
            body += struct.pack("<HHII", tag, typ, count, start + head_len + len(data))
            data += value + (b"\0" if len(value) % 2 else b"")
    return body + struct.pack("<I", 0) + data


def _rationals(values: list[float], denominator: int = 10000) -> bytes:
    import struct

    return b"".join(
        struct.pack("<II", int(round(abs(v) * denominator)), denominator) for v in values
    )


def exif_segment(
    lat: float | None,
    lon: float | None,
    abs_alt_m: float | None,
    focal_mm: float,
    focal35_mm: float | None,
    width: int,
    height: int,
    model: str = "SYNTH-CAM",
) -> bytes:
    """An APP1 Exif segment with camera, focal length and (optionally) GPS tags."""
    import struct

    def ascii_(text: str) -> bytes:
        return text.encode("ascii") + b"\0"

    def dms(value: float) -> list[float]:
        value = abs(value)
        d = math.floor(value)
        m = math.floor((value - d) * 60)
        return [d, m, (value - d - m / 60.0) * 3600.0]

    exif_entries = [
        (0x920A, 5, 1, _rationals([focal_mm], 1000)),
        (0xA002, 4, 1, struct.pack("<I", width)),
        (0xA003, 4, 1, struct.pack("<I", height)),
        (0x9003, 2, 20, ascii_("2024:05:01 10:00:00")),
    ]
    if focal35_mm:
        exif_entries.append((0xA405, 3, 1, struct.pack("<H", int(round(focal35_mm)))))
    gps_entries = []
    if lat is not None and lon is not None:
        gps_entries = [
            (0x0000, 1, 4, bytes([2, 3, 0, 0])),
            (0x0001, 2, 2, ascii_("N" if lat >= 0 else "S")),
            (0x0002, 5, 3, _rationals(dms(lat), 1_000_000)),
            (0x0003, 2, 2, ascii_("E" if lon >= 0 else "W")),
            (0x0004, 5, 3, _rationals(dms(lon), 1_000_000)),
        ]
        if abs_alt_m is not None:
            gps_entries += [
                (0x0005, 1, 1, bytes([0 if abs_alt_m >= 0 else 1])),
                (0x0006, 5, 1, _rationals([abs_alt_m], 1000)),
            ]
    ifd0_entries = [
        (0x010F, 2, 6, ascii_("SYNTH")),
        (0x0110, 2, len(model) + 1, ascii_(model)),
        (0x8769, 4, 1, b"\0\0\0\0"),
    ] + ([(0x8825, 4, 1, b"\0\0\0\0")] if gps_entries else [])
    ifd0_len = len(_ifd(ifd0_entries, 8))
    exif_at = 8 + ifd0_len
    exif_ifd = _ifd(exif_entries, exif_at)
    gps_at = exif_at + len(exif_ifd)
    ifd0_entries = [
        (
            t,
            ty,
            c,
            struct.pack("<I", exif_at)
            if t == 0x8769
            else struct.pack("<I", gps_at)
            if t == 0x8825
            else v,
        )
        for t, ty, c, v in ifd0_entries
    ]
    tiff = b"II*\0" + struct.pack("<I", 8) + _ifd(ifd0_entries, 8) + exif_ifd
    if gps_entries:
        tiff += _ifd(gps_entries, gps_at)
    payload = b"Exif\0\0" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def xmp_segment(properties: dict[str, float | str]) -> bytes:
    """An APP1 XMP segment holding ``drone-dji:`` attributes (names without prefix)."""
    import struct

    attrs = " ".join(
        f'drone-dji:{k}="{v:+.4f}"' if isinstance(v, float) else f'drone-dji:{k}="{v}"'
        for k, v in properties.items()
    )
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="DJI Meta Data" xmlns:drone-dji="http://www.dji.com/drone-dji/1.0/" {attrs}/>'
        "</rdf:RDF></x:xmpmeta>"
    )
    payload = b"http://ns.adobe.com/xap/1.0/\0" + packet.encode()
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def write_frame_jpeg(
    path: str | Path,
    image_bgr,
    lat: float | None,
    lon: float | None,
    rel_alt_m: float | None,
    yaw_deg: float | None,
    pitch_deg: float | None,
    roll_deg: float = 0.0,
    abs_alt_m: float | None = None,
    focal_mm: float = 8.8,
    focal35_mm: float | None = None,
    focal_px: float | None = None,
    quality: int = 92,
) -> Path:
    """Write a JPEG with DJI-style EXIF GPS and XMP gimbal angles.

    ``focal_px`` (if given) sets ``FocalLengthIn35mmFilm`` so that :func:`focal_length_px`
    reads it back (rounded to a whole millimetre, as EXIF stores it; choose ``focal_px`` as
    ``f35 / 36 * max(w, h)`` with an integer ``f35`` for an exact round trip). Angles or
    position given as None are left out, to make deliberately incomplete frames.
    """
    import cv2

    path = Path(path)
    height, width = image_bgr.shape[:2]
    if focal_px is not None:
        focal35_mm = focal_px * 36.0 / max(width, height)
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    props: dict[str, float | str] = {}
    if abs_alt_m is not None:
        props["AbsoluteAltitude"] = float(abs_alt_m)
    if rel_alt_m is not None:
        props["RelativeAltitude"] = float(rel_alt_m)
    for key, value in (
        ("GimbalYawDegree", yaw_deg),
        ("GimbalPitchDegree", pitch_deg),
        ("GimbalRollDegree", roll_deg),
    ):
        if value is not None and (key != "GimbalRollDegree" or pitch_deg is not None):
            props[key] = float(value)
    data = bytes(buf)
    segments = exif_segment(lat, lon, abs_alt_m, focal_mm, focal35_mm, width, height) + (
        xmp_segment(props) if props else b""
    )
    path.write_bytes(data[:2] + segments + data[2:])
    return path


def with_offsets(
    pose: FramePose, yaw_deg: float = 0.0, dx_m: float = 0.0, dy_m: float = 0.0
) -> FramePose:
    """A copy of ``pose`` shifted on the ground (east, north metres, geodesic) and turned (yaw)."""
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    lon, lat = pose.lon, pose.lat
    if dx_m or dy_m:
        lon, lat, _ = geod.fwd(
            lon, lat, math.degrees(math.atan2(dx_m, dy_m)), math.hypot(dx_m, dy_m)
        )
    return replace(pose, lat=lat, lon=lon, yaw_deg=pose.yaw_deg + yaw_deg)
