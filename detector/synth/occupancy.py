"""A coarse occupancy grid the planner uses to place objects without overlaps."""

from __future__ import annotations

import math

import cv2
import numpy as np

GRID_CELL_M = 0.5  # occupancy grid used while planning
FREE, ROAD, STRUCTURE, RESERVED, TREE = 0, 1, 2, 3, 4


class Occupancy:
    """Coarse raster of what is where, used to place objects without overlaps.

    Parameters
    ----------
    side_m : float
        Side of the (square) scene in metres; cells are ``GRID_CELL_M`` wide.
    """

    def __init__(self, side_m: float):
        self.n = int(math.ceil(side_m / GRID_CELL_M))
        self.side = side_m
        self.grid = np.zeros((self.n, self.n), np.uint8)

    def _mask(self, poly_m: np.ndarray):
        pts = poly_m / GRID_CELL_M - 0.5
        x0, y0 = np.floor(pts.min(0)).astype(int) - 1
        x1, y1 = np.ceil(pts.max(0)).astype(int) + 2
        x0c, y0c, x1c, y1c = max(x0, 0), max(y0, 0), min(x1, self.n), min(y1, self.n)
        if x0c >= x1c or y0c >= y1c:
            return None
        mask = np.zeros((y1c - y0c, x1c - x0c), np.uint8)
        cv2.fillPoly(mask, [np.round((pts - [x0c, y0c]) * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
        return (slice(y0c, y1c), slice(x0c, x1c)), mask.astype(bool)

    def is_free(self, poly_m: np.ndarray, allowed: tuple = (FREE,)) -> bool:
        """Whether every cell under a polygon (metres) holds one of the ``allowed`` codes.

        Parameters
        ----------
        poly_m : numpy.ndarray
            ``(N, 2)`` polygon in metres.
        allowed : tuple of int
            Codes (``FREE``, ``ROAD``, ...) that do not block.

        Returns
        -------
        bool
            False also when the polygon lies entirely outside the grid.
        """
        got = self._mask(poly_m)
        if got is None:
            return False
        roi, mask = got
        return bool(np.isin(self.grid[roi][mask], allowed).all())

    def mark(self, poly_m: np.ndarray, value: int) -> None:
        """Set the cells under a polygon (metres) to ``value``.

        Parameters
        ----------
        poly_m : numpy.ndarray
            ``(N, 2)`` polygon in metres.
        value : int
            One of ``FREE``, ``ROAD``, ``STRUCTURE``, ``RESERVED``, ``TREE``.
        """
        got = self._mask(poly_m)
        if got is not None:
            roi, mask = got
            self.grid[roi][mask] = value
