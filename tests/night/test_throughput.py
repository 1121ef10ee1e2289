"""The throughput mechanisms of the nightly run give the same pixels and tiles as the plain path:
the warp-free read of a same-CRS epoch, tile groups, and the prefetching worker loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from detector.night.mosaic import EpochReader, make_grid, open_mosaic
from detector.night.tiles import iter_tiles, tile_groups, tile_layout
from pipeline_util import textured_image, write_geotiff

CRS = "EPSG:32650"


def _pair(
    tmp_path: Path, origin=(500003.03, 2500001.07), res=0.1, size=900, mask_cols=0, alpha=False
):
    """A same-CRS pair whose origin is off the working grid's whole pixels (so every grid pixel
    straddles source pixels and the extent ends mid-pixel)."""
    import rasterio

    rgb = textured_image(size, size, seed=5)
    t = Affine(res, 0, origin[0], 0, -res, origin[1])
    base = write_geotiff(tmp_path / "b.tif", rgb, CRS, t)
    cur = tmp_path / "c.tif"
    if mask_cols:
        a = np.full((size, size), 255, np.uint8)
        a[:, :mask_cols] = 0
        if alpha:
            write_geotiff(cur, rgb, CRS, t, alpha=a)
        else:
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                with rasterio.open(
                    cur,
                    "w",
                    driver="GTiff",
                    width=size,
                    height=size,
                    count=3,
                    dtype="uint8",
                    crs=CRS,
                    transform=t,
                    tiled=True,
                ) as dst:
                    dst.write(np.moveaxis(rgb, -1, 0))
                    dst.write_mask(a)
    else:
        write_geotiff(cur, rgb, CRS, t)
    return open_mosaic(base, "baseline"), open_mosaic(cur, "current")


def _read_both_ways(info, grid, windows):
    direct, warped = EpochReader(info, grid), EpochReader(info, grid)
    assert direct.direct
    warped.direct = False
    try:
        return [(direct.read(*w), warped.read(*w)) for w in windows]
    finally:
        direct.close()
        warped.close()


# windows inside, across every edge, and wholly outside the grid
WINDOWS = [
    (10, 10, 128, 128),
    (-40, -30, 128, 128),
    (300, 300, 128, 128),
    (330, -5, 64, 400),
    (-500, 0, 64, 64),
    (0, 0, 361, 361),
]


@pytest.mark.parametrize("mask", ["none", "internal", "alpha"])
def test_direct_read_matches_the_warped_read(tmp_path, mask):
    """0.1 m source, 0.25 m grid (2.5 source pixels a grid pixel): GDAL resamples, as the warper does."""
    b, c = _pair(tmp_path, mask_cols=0 if mask == "none" else 300, alpha=mask == "alpha")
    grid = make_grid(b, c, 0.25)
    assert (grid.width, grid.height) == (361, 361)  # 90 m from an origin off the 0.25 m world grid
    for (px, valid), (px_w, valid_w) in _read_both_ways(c, grid, WINDOWS):
        assert np.array_equal(
            valid, valid_w
        )  # the warper's validity rule: pixel centre inside the source
        # inside, the same bilinear resampling; on the rim of the valid area the warper
        # extrapolates the pixels only partly inside the source, the direct read repeats its neighbour
        diff = np.abs(px.astype(int) - px_w)
        assert diff[valid & ~_edge_of(valid)].max(initial=0) <= 1
        assert (px[~valid] == 0).all()
    if mask != "none":  # a third of the source is masked out
        (_, valid), _ = _read_both_ways(c, grid, [(0, 0, 361, 361)])[0]
        assert 0.30 < 1 - valid.mean() < 0.36


def _edge_of(valid: np.ndarray) -> np.ndarray:
    """Valid pixels with an invalid (or outside) 4-neighbour: where the two reads may differ."""
    p = np.pad(valid, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return valid & ~inner


def test_epoch_in_another_crs_is_warped(tmp_path):
    import rasterio
    from rasterio.warp import calculate_default_transform, reproject

    b, _ = _pair(tmp_path)
    dst = tmp_path / "c3857.tif"
    with rasterio.open(b.path) as src:
        t, w, h = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds
        )
        with rasterio.open(
            dst,
            "w",
            driver="GTiff",
            width=w,
            height=h,
            count=3,
            dtype="uint8",
            crs="EPSG:3857",
            transform=t,
        ) as out:
            for i in (1, 2, 3):
                reproject(rasterio.band(src, i), rasterio.band(out, i))
    c = open_mosaic(dst, "current")
    grid = make_grid(b, c, 0.25)
    assert EpochReader(b, grid).direct
    assert not EpochReader(c, grid).direct


def test_opencv_resampled_read_keeps_geometry_and_values(tmp_path):
    """0.2 m source (an overview level's usual factor, 1.25 source pixels a grid pixel): decoded
    pixels resampled by OpenCV. Same validity as the warper, values within its anti-aliasing, and
    a planted roof lands where it is on the ground to a tenth of a pixel (2.5 cm)."""
    import cv2

    t = Affine(0.2, 0, 500003.03, 0, -0.2, 2500001.07)
    textured = textured_image(600, 600, seed=7)
    flat = np.full((600, 600, 3), 100, np.uint8)
    flat[200:300, 250:330] = 250  # a 20 m x 16 m roof centred on source pixel (290, 250)
    for name, rgb in (("b.tif", textured), ("c.tif", textured), ("roof.tif", flat)):
        write_geotiff(tmp_path / name, rgb, CRS, t)
    b, c = open_mosaic(tmp_path / "b.tif", "baseline"), open_mosaic(tmp_path / "c.tif", "current")
    grid = make_grid(b, c, 0.25)
    (px, valid), (px_w, valid_w) = _read_both_ways(c, grid, [(-20, -20, 520, 520)])[0]
    assert np.array_equal(valid, valid_w)
    # the warper's bilinear widens its kernel with the factor (a little anti-aliasing), OpenCV's does
    # not: per-pixel noise differs by ~2 grey levels, what survives a 1-pixel blur by well under 1
    inner = valid & ~_edge_of(valid)
    diff = np.abs(px.astype(int) - px_w)[inner]
    smooth = np.abs(
        cv2.GaussianBlur(px, (0, 0), 1.0).astype(int) - cv2.GaussianBlur(px_w, (0, 0), 1.0)
    )[inner]
    assert diff.mean() < 2.5
    assert smooth.mean() < 1.0 and np.percentile(smooth, 99) <= 3

    roof = open_mosaic(tmp_path / "roof.tif", "current")
    window = (37, 11, 256, 256)  # wholly inside
    (px, _), (px_w, _) = _read_both_ways(roof, grid, [window])[0]
    truth = (
        (500003.03 + 290 * 0.2 - grid.left) / 0.25 - window[0] - 0.5,
        (grid.top - (2500001.07 - 250 * 0.2)) / 0.25 - window[1] - 0.5,
    )
    for img in (px, px_w):
        mass = img[..., 0].astype(float) - 100
        ys, xs = np.indices(mass.shape)
        assert mass.sum() == pytest.approx(
            80 * 100 * 150 * 0.2**2 / 0.25**2, rel=1e-3
        )  # brightness is kept
        centre = ((mass * xs).sum() / mass.sum(), (mass * ys).sum() / mass.sum())
        assert abs(centre[0] - truth[0]) < 0.1 and abs(centre[1] - truth[1]) < 0.1


@pytest.mark.parametrize("group", [1, 3, 4])
def test_tile_groups_partition_the_tiles_into_square_neighbourhoods(tmp_path, group):
    b, c = _pair(tmp_path, size=3000)
    grid = make_grid(b, c, 0.25)
    tiles = list(iter_tiles(grid, 128, 32))
    groups = tile_groups(tiles, group)
    flat = [t.tile_id for g in groups for t in g]
    assert sorted(flat) == sorted(t.tile_id for t in tiles) and len(flat) == len(set(flat))
    stride, _ = tile_layout(128, 32)
    n = -(-grid.width // stride)  # 750 px / 96 = 8 (or 9) tiles a side
    assert len(tiles) in (n * n, (n + 1) ** 2)
    for g in groups:
        rows, cols = {t.row for t in g}, {t.col for t in g}
        assert max(rows) - min(rows) < group and max(cols) - min(cols) < group
        assert len(g) <= group * group
        assert [(t.row, t.col) for t in g] == sorted(
            (t.row, t.col) for t in g
        )  # row-major inside a group
    with pytest.raises(ValueError):
        tile_groups(tiles, 0)


def test_prefetching_worker_keeps_tile_order_and_surfaces_read_errors(monkeypatch):
    from rasterio.errors import RasterioError

    import detector.night.executors as pipeline

    reads, done = [], []

    def read(ctx, tile, b, c):
        reads.append(tile)
        if tile == "bad":
            raise RasterioError("truncated")
        return ("pixels", tile)

    def process(ctx, tile, b, c, det, dsm_readers=None, pixels=None, second_view=None):
        assert pixels == ("pixels", tile)  # each tile gets its own prefetched pixels
        done.append(tile)
        return tile

    monkeypatch.setattr(pipeline, "read_tile", read)
    monkeypatch.setattr(pipeline, "process_tile", process)
    monkeypatch.setitem(pipeline._WORKER, "ctx", None)
    for k in ("b", "c", "det"):
        monkeypatch.setitem(pipeline._WORKER, k, None)
    assert pipeline._work(["t1", "t2", "t3"]) == ["t1", "t2", "t3"]
    assert reads == ["t1", "t2", "t3"] and done == ["t1", "t2", "t3"]
    assert pipeline._work([]) == []
    with pytest.raises(RasterioError):
        pipeline._work(["t1", "bad", "t3"])


def _difference_reference(baseline, current, valid):
    """The difference image's definition, written plainly (per band, statistics over valid pixels)."""
    import cv2

    b = cv2.GaussianBlur(baseline, (0, 0), 1.0).astype(np.float64)
    c = cv2.GaussianBlur(current, (0, 0), 1.0).astype(np.float64)
    for i in range(3):
        bv, cv_ = b[..., i][valid], c[..., i][valid]
        c[..., i] = (c[..., i] - cv_.mean()) * (bv.std() / max(cv_.std(), 1e-3)) + bv.mean()
    d = np.abs(b - c).max(axis=2)
    d[~valid] = 0
    return d


def test_difference_image_cancels_a_scene_wide_shift_and_keeps_local_change():
    from detector.night.change import CHANGE_THRESHOLD, difference_image

    base = textured_image(256, 256, seed=11)
    cur = np.clip(base.astype(int) * 0.8 + 20, 0, 255).astype(
        np.uint8
    )  # exposure/season: the whole scene
    cur[100:140, 60:120] = (230, 30, 30)  # a new red roof, 40 x 60 px
    valid = np.ones((256, 256), bool)
    valid[:, :30] = False  # nodata strip: excluded from the statistics, zero in the result
    diff = difference_image(base, cur, valid)
    assert diff.dtype == np.float32 and diff.shape == (256, 256)
    assert np.abs(diff - _difference_reference(base, cur, valid)).max() < 1e-3
    assert (diff[:, :30] == 0).all()
    roof = np.zeros_like(valid)
    roof[102:138, 62:118] = True
    assert (diff[roof] > CHANGE_THRESHOLD).mean() > 0.95
    far = valid.copy()
    far[90:150, 50:130] = False
    assert (diff[far] > CHANGE_THRESHOLD).mean() < 0.01
