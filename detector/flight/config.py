"""Settings of ``buildwatch ortho`` (YAML via ``--config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from detector.fileio import read_yaml_mapping


class OrthoConfig(BaseModel):
    """Settings of ``buildwatch ortho`` (YAML via ``--config``; unknown keys are refused)."""

    model_config = ConfigDict(extra="forbid")

    gsd_m: float | None = Field(
        None, gt=0, description="output GSD in CRS units; None = the baseline's"
    )
    flight_altitude_m: float | None = Field(
        None, gt=0, description="height above ground when a frame has no RelativeAltitude"
    )
    altitude_source: Literal["relative", "absolute"] = "relative"
    takeoff_height_m: float | None = Field(
        None,
        description="ground height of the take-off point in the DEM's datum: relative altitudes (DJI "
        "RelativeAltitude) are above it. None: above the ground below each frame (exact on flat ground)",
    )
    altitude_offset_m: float = Field(
        0.0, description="added to absolute altitudes (geoid/ellipsoid vs DEM datum)"
    )
    sensor_width_mm: float | None = Field(None, gt=0)
    focal_px: float | None = Field(None, gt=0)
    k1: float = 0.0
    k2: float = 0.0
    default_pitch_deg: float | None = Field(
        None, le=0, ge=-90, description="for cameras without gimbal angles"
    )
    max_pitch_deg: float = Field(
        -30.0, le=0, description="frames looking higher than this (towards the horizon) are skipped"
    )
    max_view_angle_deg: float = Field(
        70.0, gt=0, lt=89, description="ground pixels seen more obliquely are not used"
    )
    refine: bool = True
    refine_gsd_m: float | None = Field(
        None, gt=0, description="working GSD for matching; None = automatic"
    )
    refine_max_px: int = Field(
        1000, ge=200, description="longest side of the frame at the working GSD (automatic GSD)"
    )
    retry_flipped_yaw: bool = Field(
        True,
        description="when matching fails, try the yaw + 180 deg (frames rotated after capture)",
    )
    refine_model: Literal["similarity", "affine", "homography"] = "similarity"
    features: Literal["orb", "sift"] = "orb"
    min_inliers: int = Field(15, ge=4)
    min_match_side_px: int = Field(
        500, ge=50, description="windows smaller than this are upsampled (up to 4x) for matching"
    )
    max_residual_px: float = Field(
        2.0, gt=0, description="inlier RMS in working pixels above which a fit is refused"
    )
    max_correction_m: float = Field(10.0, gt=0, description="largest position correction accepted")
    max_rotation_deg: float = Field(10.0, gt=0)
    balance: bool = True
    compress: Literal["deflate", "lzw", "jpeg", "zstd"] = "deflate"


def load_ortho_config(path: str | Path | None, overrides: dict | None = None) -> OrthoConfig:
    """Read an :class:`OrthoConfig` from YAML (optional) plus overrides (None ignored).

    The YAML may hold the settings at the top level or under an ``ortho:`` key.

    Raises
    ------
    ConfigError
        Missing file, invalid YAML or an invalid setting (one line naming it).
    """

    data: dict = {}
    if path is not None:
        raw = read_yaml_mapping(path)
        data = raw.get("ortho", raw)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    from detector.config import validate_settings

    return validate_settings(OrthoConfig, data, path or "ortho config")
