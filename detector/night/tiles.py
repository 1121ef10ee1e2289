"""A fixed tile grid in map coordinates, stable across nights.

Tiles step by ``stride = size - overlap`` pixels on a grid anchored at the map origin of the
working CRS (not at the mosaic's corner), so the same ground gets the same tile ID every
night even when a mosaic's extent changes. Each tile *owns* a core region — the stride-sized
cell centred in it — and the cores partition the plane: a detection is kept by the one tile
whose core holds its centre, which (with overlap >= the largest structure) sees it whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from detector.geo.grid import WorkingGrid, window_at
from detector.types import Tile


def tile_layout(size: int, overlap: int) -> tuple[int, int]:
    """(stride, margin): tiles step by ``stride``; the core starts ``margin`` px inside a tile."""
    if overlap >= size:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {size}")
    stride = size - overlap
    return stride, overlap // 2


def iter_tiles(grid: WorkingGrid, size: int, overlap: int) -> Iterator[Tile]:
    """All tiles whose core intersects the working grid, in row-major order."""
    stride, margin = tile_layout(size, overlap)
    cell = stride * grid.gsd
    # world cell index k covers x in [k*cell, (k+1)*cell); a tile's core is its cell.
    col0 = math.floor(grid.left / cell)
    col1 = math.floor((grid.left + grid.width * grid.gsd - 1e-9) / cell)
    row0 = math.floor(-grid.top / cell)  # rows count southwards
    row1 = math.floor((-(grid.top - grid.height * grid.gsd) - 1e-9) / cell)
    for row in range(row0, row1 + 1):
        for col in range(col0, col1 + 1):
            left = col * cell - margin * grid.gsd
            top = -row * cell + margin * grid.gsd
            yield Tile(
                tile_id=f"c{col}_r{row}",
                row=row,
                col=col,
                bounds=(left, top - size * grid.gsd, left + size * grid.gsd, top),
                width=size,
                height=size,
            )


def tile_window(grid: WorkingGrid, tile: Tile) -> tuple[int, int]:
    """(col_off, row_off) of the tile's upper-left pixel in the working grid (may be negative)."""
    return window_at(grid.transform, tile.bounds[0], tile.bounds[3])


def core_bounds(
    tile: Tile, size: int, overlap: int, gsd: float
) -> tuple[float, float, float, float]:
    """The map-coordinate cell this tile owns (left, bottom, right, top)."""
    stride, margin = tile_layout(size, overlap)
    left = tile.bounds[0] + margin * gsd
    top = tile.bounds[3] - margin * gsd
    return (left, top - stride * gsd, left + stride * gsd, top)


def tile_groups(tiles: list[Tile], group: int) -> list[list[Tile]]:
    """Tiles in square groups of ``group`` x ``group`` neighbours, each group in row-major order.

    One worker processes a group at a time: neighbouring tiles share source blocks (the tile
    overlap, and JPEG blocks that straddle tile edges), so a group decodes each block about once
    from GDAL's block cache instead of once per tile, and two workers rarely decode the same block.
    Groups are ordered row-major by their upper-left tile; the tiles are all kept, each once.
    """
    if group < 1:
        raise ValueError(f"tile group size must be >= 1, got {group}")
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in sorted(tiles, key=lambda t: (t.row, t.col)):
        groups.setdefault((t.row // group, t.col // group), []).append(t)
    return [groups[k] for k in sorted(groups)]
