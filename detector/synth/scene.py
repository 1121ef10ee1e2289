"""Synthetic bi-temporal drone scenes of an urban village, with exact change truth.

A scene is planned once in metres (roads, dense buildings, gardens, trees, a graded block,
and the changes of every night), then rendered per epoch at any ground sample distance.
Changes (``truth``) are the four :data:`detector.types.CHANGE_CLASSES`; distractors that
are *not* changes are rendered too: illumination / season shift, a different sun (shadow
direction and length), moved cars, vegetation growth, global misregistration, sensor noise
and JPEG artefacts, and demolished buildings (listed in ``Scene.demolished``).

Coordinates
    Pixel polygons are ``(N, 2)`` float64 arrays of ``(x=column, y=row)``; ``(0, 0)`` is
    the top-left *corner* of pixel ``(0, 0)``. All polygons of all epochs are given in the
    **baseline (epoch 0) pixel frame**. Epoch ``e >= 1`` is rendered in that frame and then
    shifted by ``Scene.shifts[e] = (dx, dy)`` pixels (content at baseline pixel ``p``
    appears at ``p + (dx, dy)``), so the misregistration is a residual error an aligner must
    find, exactly as with two real orthomosaics sharing one georeference.

How a scene is made, one module per job:

- :mod:`detector.synth.layout` plans it in metres (roads, blocks, gardens, trees, every
  night's changes) into a :mod:`detector.synth.plan`, using :mod:`~detector.synth.occupancy`,
  :mod:`~detector.synth.roofs` and :mod:`~detector.synth.geometry`;
- :mod:`detector.synth.look` draws each epoch's sun, season, radiometry, noise and shift;
- :mod:`detector.synth.render` paints each epoch (the :mod:`~detector.synth.draw` painters on
  a :mod:`~detector.synth.canvas`);
- this module puts them together (:func:`generate_scene`) and reads the truth off the plan;
- :mod:`detector.synth.write` writes GeoTIFFs, GeoJSON truth / footprints and ``scene.json``.

Only numpy, cv2, shapely (GEOS, no GDAL) and the standard library are imported at module
level (the training machine has no GDAL); the GeoTIFF / GeoJSON writers import rasterio and
pyproj lazily.
Same seed => same bytes (every random draw comes from seeded ``numpy`` generators).
"""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from detector.synth.canvas import make_textures
from detector.synth.geometry import clip_to_square, polygon_area, rect_polygon
from detector.synth.layout import build_plan
from detector.synth.look import epoch_looks
from detector.synth.plan import Plan, present
from detector.synth.render import render_epoch
from detector.synth.types import ChangeTruth, Footprint, Scene
from detector.synth.write import (
    DEFAULT_CENTER_LONLAT,
    DEFAULT_CRS,
    EPOCH_TIME,
    scene_transform,
    write_scene,
)
from detector.types import CHANGE_CLASSES

__all__ = [
    "BASELINE_DATE",
    "CHANGE_CLASSES",
    "DEFAULT_CENTER_LONLAT",
    "DEFAULT_CRS",
    "EPOCH_TIME",
    "ChangeTruth",
    "Footprint",
    "Scene",
    "derive_seed",
    "generate",
    "generate_scene",
    "scene_transform",
    "write_scene",
]

BASELINE_DATE = date(2026, 5, 1)  # epoch e is dated BASELINE_DATE + e days


def derive_seed(seed: int, index: int) -> int:
    """The seed of scene ``index`` in a run started with ``seed`` (stable across processes).

    Parameters
    ----------
    seed : int
        The run's seed.
    index : int
        Scene number, 0-based.

    Returns
    -------
    int
    """
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def generate_scene(
    seed: int, size: int = 1024, gsd: float = 0.1, nights: int = 1, **options
) -> Scene:
    """Plan and render one synthetic scene of ``nights + 1`` epochs.

    Parameters
    ----------
    seed : int
        Random seed; the same seed (and arguments) gives the same pixels and polygons.
    size : int
        Image side in pixels (square).
    gsd : float
        Ground sample distance in metres per pixel; object sizes are defined in metres.
    nights : int
        Number of transitions T; the scene has T + 1 epochs.
    **options
        ``max_shift_px`` (float, default 3.0): largest misregistration of epochs >= 1;
        ``block_development`` (bool, default True): allow graded land -> houses + lane;
        ``dsm`` (bool, default False): also render a DSM per epoch (:mod:`detector.synth.dsm`)
        into ``Scene.dsms``; the images and truth are the same with or without it.

    Returns
    -------
    Scene
        Images, per-epoch footprints, per-transition changes and demolitions, all polygons
        in the baseline pixel frame (see the module docstring).
    """
    if size < 64 or gsd <= 0 or nights < 1:
        raise ValueError(
            f"generate_scene: need size >= 64, gsd > 0, nights >= 1 (got {size}, {gsd}, {nights})"
        )
    unknown = set(options) - {"max_shift_px", "block_development", "dsm"}
    if unknown:
        raise ValueError(f"generate_scene: unknown options {sorted(unknown)}")
    rng = np.random.default_rng([int(seed), 1])
    side_m = size * gsd
    plan = build_plan(rng, side_m, nights, options)
    looks = epoch_looks(
        np.random.default_rng([int(seed), 2]), nights + 1, float(options.get("max_shift_px", 3.0))
    )
    tex = make_textures(np.random.default_rng([int(seed), 3]), size, gsd)
    epochs = [render_epoch(plan, e, looks[e], tex, size, gsd, int(seed)) for e in range(nights + 1)]
    footprints = [_footprints(plan, e, size, gsd) for e in range(nights + 1)]
    changes, demolished = [], []
    for night in range(1, nights + 1):
        changes.append(
            [
                ChangeTruth(st.truth_class, rect_polygon(*st.rect) / gsd, st.sid)
                for st in plan.structures
                if st.born == night and st.truth_class
            ]
        )
        demolished.append(
            [
                Footprint(st.sid, st.kind, rect_polygon(*st.rect) / gsd)
                for st in plan.structures
                if st.died == night
            ]
        )
    dsms = []
    if options.get("dsm"):
        from detector.synth.dsm import render_dsm

        dsms = [render_dsm(plan, e, looks[e], size, gsd, int(seed)) for e in range(nights + 1)]
    return Scene(
        seed=int(seed),
        size=size,
        gsd=gsd,
        epochs=epochs,
        footprints=footprints,
        changes=changes,
        demolished=demolished,
        shifts=[lk.shift for lk in looks],
        sun=[(math.degrees(lk.sun_azimuth) % 360, math.degrees(lk.sun_elevation)) for lk in looks],
        dates=[BASELINE_DATE + timedelta(days=e) for e in range(nights + 1)],
        dsms=dsms,
    )


def _footprints(plan: Plan, epoch: int, size: int, gsd: float) -> list[Footprint]:
    """Structures standing in an epoch, clipped to the image, dropping slivers under 1 m²."""
    out = []
    for st in plan.structures:
        if not present(st, epoch):
            continue
        poly = clip_to_square(rect_polygon(*st.rect) / gsd, float(size))
        if len(poly) >= 3 and polygon_area(poly) * gsd * gsd >= 1.0:
            out.append(Footprint(st.sid, st.kind, poly))
    return out


def generate(
    outdir,
    seed: int,
    scenes: int = 1,
    size: int = 1024,
    gsd: float = 0.1,
    crs: str = DEFAULT_CRS,
    nights: int = 1,
    dsm: bool = False,
) -> list[Path]:
    """Generate and write ``scenes`` scenes into ``outdir/scene_000`` ... (what the CLI calls).

    Scene ``k`` uses ``derive_seed(seed, k)``, so adding scenes never changes earlier ones.

    Parameters
    ----------
    outdir : str or Path
        Parent folder of the scene folders.
    seed : int
        Run seed.
    scenes : int
        Number of scenes.
    size, gsd, nights
        As for :func:`generate_scene`.
    crs : str
        As for :func:`write_scene`.
    dsm : bool
        Also write a DSM per epoch (``dsm_baseline.tif``, ``dsm_current.tif``, ...).

    Returns
    -------
    list of Path
        The scene folders, in order.
    """
    outdir = Path(outdir)
    folders = []
    for k in range(scenes):
        scene = generate_scene(derive_seed(seed, k), size=size, gsd=gsd, nights=nights, dsm=dsm)
        folder = outdir / f"scene_{k:03d}"
        write_scene(scene, folder, crs=crs)
        folders.append(folder)
    return folders
