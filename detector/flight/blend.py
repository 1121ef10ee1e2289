"""Mosaic compositing: each output pixel comes from the frame whose nadir point is nearest, with
per-frame gains matching a frame to what is already mosaicked (radiometric balancing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from detector.geo.grid import Grid

IN_MEMORY_MOSAIC_PX = (
    64_000_000  # above this the per-pixel nadir distance lives in a disk-backed array
)


def nadir_distance_buffer(shape: tuple[int, int], folder: Path) -> np.ndarray:
    """Per-pixel distance to the nadir of the frame that painted it, all ``inf`` (nothing painted).

    Small mosaics keep it in memory; above :data:`IN_MEMORY_MOSAIC_PX` it is a memory-mapped
    ``.npy`` in ``folder``, so memory does not grow with the flight.
    """
    if shape[0] * shape[1] <= IN_MEMORY_MOSAIC_PX:
        return np.full(shape, np.inf, np.float32)
    best = np.lib.format.open_memmap(
        Path(folder) / "nadir_distance.npy", mode="w+", dtype=np.float32, shape=shape
    )
    for r0 in range(0, shape[0], 1024):
        best[r0 : r0 + 1024] = np.inf
    return best


def frame_gains(
    new_rgb: np.ndarray, new_valid: np.ndarray, old_rgb: np.ndarray, old_valid: np.ndarray
) -> np.ndarray:
    """Per-channel gains (0.67–1.5) matching a frame's overlap with the mosaic to the mosaic; ones
    when they share fewer than 500 pixels."""
    both = new_valid & old_valid
    if both.sum() < 500:
        return np.ones(3, np.float32)
    new_mean = new_rgb[both].reshape(-1, 3).astype(np.float64).mean(axis=0)
    old_mean = old_rgb[both].reshape(-1, 3).astype(np.float64).mean(axis=0)
    return np.clip(old_mean / np.maximum(new_mean, 1.0), 0.67, 1.5).astype(np.float32)


def blend_frame(
    dst,
    mosaic_grid: Grid,
    grid: Grid,
    rgb: np.ndarray,
    valid: np.ndarray,
    nadir_xy: tuple[float, float],
    best: np.ndarray,
    balance: bool = True,
) -> None:
    """Write a rendered frame into the open mosaic ``dst`` where it is the nadir-most frame.

    Parameters
    ----------
    dst : rasterio dataset opened ``w+`` on ``mosaic_grid``
    mosaic_grid, grid : Grid
        The whole mosaic and the (aligned) part the frame was rendered on.
    rgb, valid : arrays (H, W, 3) uint8 and (H, W) bool on ``grid``
    nadir_xy : the camera position in the mosaic's CRS.
    best : the :func:`nadir_distance_buffer`, updated in place.
    balance : apply :func:`frame_gains`.
    """
    window = mosaic_grid.window_of(grid)
    bx, by = grid.pixel_centres()
    dist = np.hypot(bx - nadir_xy[0], by - nadir_xy[1]).astype(np.float32)
    rows, cols = window.toslices()
    region = best[rows, cols]
    wins = valid & (dist < region)
    if not wins.any():
        return
    old = np.moveaxis(dst.read(window=window), 0, -1)
    old_valid = np.isfinite(region)
    if balance:
        gains = frame_gains(rgb, valid, old, old_valid)
        if not np.allclose(gains, 1.0):
            rgb = np.clip(rgb.astype(np.float32) * gains, 0, 255).astype(np.uint8)
    merged = np.where(wins[..., None], rgb, old)
    region[wins] = dist[wins]
    dst.write(np.moveaxis(merged, -1, 0), window=window)
    dst.write_mask(np.where(np.isfinite(region), 255, 0).astype(np.uint8), window=window)
