"""Pose reading: EXIF GPS, DJI/senseFly XMP, CSV flight logs, and the JPEG pose writer."""

from __future__ import annotations

import numpy as np
import pytest

from detector.errors import InputError
from detector.flight.pose import (
    PoseError,
    parse_coordinate,
    pose_with_flight_log,
    read_flight_log,
    read_pose,
)
from detector.synth.frames import with_offsets, write_frame_jpeg


def _image(h=90, w=120):
    return (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)


def test_written_pose_reads_back_exactly(tmp_path):
    path = write_frame_jpeg(
        tmp_path / "f.jpg",
        _image(),
        lat=22.61234567,
        lon=114.0456789,
        rel_alt_m=87.5,
        yaw_deg=-131.3,
        pitch_deg=-85.0,
        roll_deg=1.5,
        abs_alt_m=160.25,
        focal_px=120 * 24 / 36,
    )
    pose = read_pose(path)
    assert pose.lat == pytest.approx(
        22.61234567, abs=1e-7
    )  # GDAL prints seconds to 4 decimals (3 mm)
    assert pose.lon == pytest.approx(
        114.0456789, abs=1e-7
    )  # GDAL prints seconds to 4 decimals (3 mm)
    assert (pose.rel_alt_m, pose.abs_alt_m) == (pytest.approx(87.5), pytest.approx(160.25))
    assert (pose.yaw_deg, pose.pitch_deg, pose.roll_deg) == (
        pytest.approx(-131.3),
        pytest.approx(-85.0),
        pytest.approx(1.5),
    )
    assert pose.focal_px == pytest.approx(80.0)
    assert (pose.width, pose.height) == (120, 90)


def test_southern_western_hemisphere(tmp_path):
    path = write_frame_jpeg(
        tmp_path / "f.jpg",
        _image(),
        lat=-8.5,
        lon=-13.25,
        rel_alt_m=50,
        yaw_deg=0,
        pitch_deg=-90,
        focal_px=80,
    )
    pose = read_pose(path)
    assert (pose.lat, pose.lon) == (pytest.approx(-8.5), pytest.approx(-13.25))


def test_missing_gps_and_orientation_give_reasons(tmp_path):
    no_gps = write_frame_jpeg(
        tmp_path / "a.jpg",
        _image(),
        lat=None,
        lon=None,
        rel_alt_m=50,
        yaw_deg=0,
        pitch_deg=-90,
        focal_px=80,
    )
    with pytest.raises(PoseError, match="no GPS"):
        read_pose(no_gps)
    no_gimbal = write_frame_jpeg(
        tmp_path / "b.jpg",
        _image(),
        lat=1.0,
        lon=2.0,
        rel_alt_m=50,
        yaw_deg=None,
        pitch_deg=None,
        focal_px=80,
    )
    with pytest.raises(PoseError, match="orientation"):
        read_pose(no_gimbal)
    with pytest.raises(PoseError, match="heading"):
        read_pose(no_gimbal, default_pitch_deg=-90.0)


def test_corrupt_file_is_a_pose_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0not a jpeg at all")
    with pytest.raises(PoseError, match="not a readable image"):
        read_pose(bad)


def test_with_offsets_moves_the_pose_on_the_ground(tmp_path):
    from pyproj import Geod

    path = write_frame_jpeg(
        tmp_path / "f.jpg",
        _image(),
        lat=45.0,
        lon=7.0,
        rel_alt_m=50,
        yaw_deg=10,
        pitch_deg=-90,
        focal_px=80,
    )
    pose = read_pose(path)
    moved = with_offsets(pose, yaw_deg=2.0, dx_m=30.0, dy_m=-40.0)
    az, _, dist = Geod(ellps="WGS84").inv(pose.lon, pose.lat, moved.lon, moved.lat)
    assert dist == pytest.approx(50.0, abs=1e-6)
    assert az == pytest.approx(180 - 36.8699, abs=1e-3)  # east 30, south 40
    assert moved.yaw_deg == pytest.approx(12.0)


def test_parse_coordinate_forms():
    assert parse_coordinate("8 deg 27' 55.22\" N") == pytest.approx(8 + 27 / 60 + 55.22 / 3600)
    assert parse_coordinate("13 deg 12' 0.92\" W") == pytest.approx(-(13 + 12 / 60 + 0.92 / 3600))
    assert parse_coordinate("-13.5") == -13.5


def test_flight_log_overrides_exif(tmp_path):
    path = write_frame_jpeg(
        tmp_path / "DJI_0001.JPG",
        _image(),
        lat=None,
        lon=None,
        rel_alt_m=None,
        yaw_deg=None,
        pitch_deg=None,
        focal_px=80,
    )
    log = tmp_path / "log.csv"
    log.write_text(
        "FileName,GPSLatitude,GPSLongitude,RelativeAltitude,GimbalYawDegree,GimbalPitchDegree\n"
        'dji_0001.jpg,"22 deg 30\' 0.00"" N",114.25,75.5,45,-88\n'
    )
    entries = read_flight_log(log)
    pose = pose_with_flight_log(path, entries["dji_0001.jpg"])
    assert (pose.lat, pose.lon, pose.rel_alt_m) == (
        pytest.approx(22.5),
        pytest.approx(114.25),
        75.5,
    )
    assert (pose.yaw_deg, pose.pitch_deg, pose.source) == (45.0, -88.0, "flight-log")


def test_flight_log_without_name_column(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("lat,lon\n1,2\n")
    with pytest.raises(InputError, match="file-name column"):
        read_flight_log(log)


@pytest.mark.realdata
def test_real_dji_and_sensefly_xmp(shared_data):
    pose = read_pose(shared_data / "drone_brighton_beach" / "images" / "DJI_0027.JPG")
    assert pose.lat == pytest.approx(46 + 50 / 60 + 33.3794 / 3600)
    assert pose.lon == pytest.approx(-(91 + 59 / 60 + 38.698 / 3600))
    assert (pose.rel_alt_m, pose.yaw_deg, pose.pitch_deg) == (40.0, -131.3, -89.9)
    assert pose.focal_px == pytest.approx(
        3.61 / 6.17 * 4000
    )  # FC300S sensor width from the camera table
    sf = read_pose(shared_data / "webodm_test_fixtures" / "tiny_drone_image.jpg")
    assert sf.pitch_deg == pytest.approx(
        2.360064983367920 - 90
    )  # senseFly 0 = nadir -> DJI -90 = nadir
    assert sf.yaw_deg == pytest.approx(274.931243896484375)


@pytest.mark.realdata
def test_real_flight_log(shared_data):
    entries = read_flight_log(
        shared_data / "dronetm_freetown_flight_metadata" / "image_metadata.csv"
    )
    assert len(entries) == 1452
    e = entries["dji_20250416072557_0201_d.jpg"]
    assert e.lat == pytest.approx(8 + 27 / 60 + 55.22 / 3600)
    assert e.lon == pytest.approx(-(13 + 12 / 60 + 0.92 / 3600))
    assert (e.abs_alt_m, e.pitch_deg, e.yaw_deg) == (390.734, -80.0, -89.6)
