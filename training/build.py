"""Build a YOLO OBB dataset from synthetic scenes and real imagery (``buildwatch build-dataset``).

numpy + OpenCV only at import (and for packs), so a GPU machine without GDAL can run it.

- channels 6: synthetic pairs (``detector.synth.scene``, all four change classes, labels in the
  baseline frame) + copy-paste pairs from real chips (``new_building``).
- channels 3: synthetic epochs with their footprints (building, extension, temporary
  structure -> ``building``; construction sites are not buildings) + real chips with footprints.

Synthetic train seeds and val seeds come from disjoint ranges; real sources carry a
geography split (see :mod:`training.sources`).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.fileio import atomic_write_text
from training.config import TrainConfig
from training.copypaste import synthesize_pair
from training.datasets import (
    ChipSample,
    DatasetWriter,
    OrientedBox,
    chip_samples,
    iter_windows,
    polygon_to_obb,
)
from training.sources import ATTRIBUTIONS, SourceImage

SINGLE_KINDS = ("building", "extension", "temporary_structure")


@dataclass
class BuildSummary:
    root: Path
    data_yaml: Path
    counts: dict
    class_counts: dict
    seconds: float
    sources: list[str]


def _scene_samples(
    seed: int, channels: int, size: int, gsd: float, imgsz: int, names: tuple[str, ...]
) -> list[ChipSample]:
    from detector.synth.scene import generate_scene

    scene = generate_scene(seed, size=size, gsd=gsd)
    if channels == 6:
        boxes = [
            OrientedBox(names.index(c.cls), polygon_to_obb(c.polygon)) for c in scene.changes[0]
        ]
        pair = np.concatenate([scene.epochs[0], scene.epochs[1]], axis=2)
        return chip_samples(pair, boxes, imgsz, imgsz, f"syn{seed}")
    out = []
    for epoch in (0, 1):
        dx, dy = scene.shifts[epoch] if scene.shifts else (0.0, 0.0)
        boxes = [
            OrientedBox(0, polygon_to_obb(f.polygon + [dx, dy]))
            for f in scene.footprints[epoch]
            if f.kind in SINGLE_KINDS
        ]
        out.extend(chip_samples(scene.epochs[epoch], boxes, imgsz, imgsz, f"syn{seed}e{epoch}"))
    return out


def _polygons_in_window(polygons, x0, y0, size):
    out = []
    for p in polygons:
        q = np.asarray(p, np.float64) - [x0, y0]
        if (
            q[:, 0].max() > 0
            and q[:, 1].max() > 0
            and q[:, 0].min() < size
            and q[:, 1].min() < size
        ):
            out.append(q)
    return out


def real_samples(
    src: SourceImage,
    cfg: TrainConfig,
    rng: np.random.Generator,
    chips: tuple[int, int] | None = None,
) -> list[ChipSample]:
    """Chips of one real source: copy-paste pairs (channels 6) or footprint-labelled singles (channels 3).

    ``chips`` = (start, stop) limits the work to those chips of the source (window order).
    """
    size = cfg.imgsz
    boxes = [OrientedBox(0, polygon_to_obb(p)) for p in src.polygons]
    singles = chip_samples(src.rgb, boxes, size, cfg.data.chip_stride, src.name)
    if chips is not None:
        singles = singles[chips[0] : chips[1]]
    if cfg.channels == 3:
        return singles
    out = []
    for chip in singles:
        x0, y0 = (int(v[1:]) for v in chip.stem.split("_")[-2:])
        local = _polygons_in_window(src.polygons, x0, y0, size)
        for k in range(cfg.data.pairs_per_chip):
            example = synthesize_pair(chip.image, local, rng)
            pair = np.concatenate([example.baseline, example.current], axis=2)
            change_boxes = [OrientedBox(0, polygon_to_obb(p)) for p in example.changes]
            sample = chip_samples(pair, change_boxes, size, size, f"{chip.stem}_p{k}")[0]
            out.append(sample)
    return out


def _load_real(cfg: TrainConfig) -> list[SourceImage]:
    if cfg.data.pack is not None:
        from training.sources import load_pack

        return [s for s in load_pack(cfg.data.pack) if s.dataset in cfg.data.real_sets]
    if cfg.data.data_root is not None:
        from training.sources import load_sources

        return load_sources(cfg.data.data_root, cfg.data.real_sets, cfg.gsd_m)
    return []


_FORKED_SOURCES: list[SourceImage] = []  # set before the pool forks (parallel_real)
REAL_CHUNK = 12  # chips per worker job


def _write_job(cfg_json: str, kind: str, args: tuple) -> tuple[dict, dict]:
    """Worker (parallel_real): make one job's chips and write them; return the counts written."""
    cfg = TrainConfig.model_validate_json(cfg_json)
    writer = DatasetWriter(cfg.data.root, cfg.channels, cfg.names)
    if kind == "real":
        index, start, stop = args
        src = _FORKED_SOURCES[index]
        rng = np.random.default_rng([cfg.data.seed, index, start])
        for sample in real_samples(src, cfg, rng, (start, stop)):
            writer.add(src.split, sample)
    else:
        split, seed = args
        for sample in _scene_samples(
            seed, cfg.channels, cfg.data.synthetic_size, cfg.gsd_m, cfg.imgsz, cfg.names
        ):
            writer.add(split, sample)
    return writer.counts, writer.class_counts


def _build_parallel(
    cfg: TrainConfig, writer: DatasetWriter, sources: list[SourceImage], jobs: list
) -> None:
    import multiprocessing as mp

    global _FORKED_SOURCES
    _FORKED_SOURCES = sources
    work = []
    for index, src in enumerate(sources):
        h, w = src.rgb.shape[:2]
        n = len(list(iter_windows(h, w, cfg.imgsz, cfg.data.chip_stride)))
        work += [
            ("real", (index, start, min(n, start + REAL_CHUNK)))
            for start in range(0, n, REAL_CHUNK)
        ]
    work.sort(key=lambda job: -(job[1][2] - job[1][1]))  # big real chunks first, then scenes
    work += [("syn", job) for job in jobs]
    cfg_json = cfg.model_dump_json()
    try:
        with ProcessPoolExecutor(
            max_workers=cfg.data.workers, mp_context=mp.get_context("fork")
        ) as pool:
            for fut in [pool.submit(_write_job, cfg_json, kind, args) for kind, args in work]:
                counts, class_counts = fut.result()
                for split in counts:
                    writer.counts[split]["images"] += counts[split]["images"]
                    writer.counts[split]["boxes"] += counts[split]["boxes"]
                    writer.class_counts[split] = [
                        a + b for a, b in zip(writer.class_counts[split], class_counts[split])
                    ]
    finally:
        _FORKED_SOURCES = []


def build_dataset(cfg: TrainConfig, progress: bool = True) -> BuildSummary:
    """Write the YOLO OBB dataset described by ``cfg.data`` and return what was written.

    Parameters
    ----------
    cfg : the training configuration (channels, imgsz, GSD, data section).
    progress : print one line per stage.

    Returns
    -------
    BuildSummary
        Dataset folder, ``data.yaml``, image/box counts per split and class, wall time.
    """
    start = time.time()
    writer = DatasetWriter(cfg.data.root, cfg.channels, cfg.names)
    rng = np.random.default_rng(cfg.data.seed)
    sources = _load_real(cfg)
    jobs = [("train", s) for s in range(*cfg.data.synthetic_train_seeds)] + [
        ("val", s) for s in range(*cfg.data.synthetic_val_seeds)
    ]
    if cfg.data.parallel_real:
        _build_parallel(cfg, writer, sources, jobs)
        jobs = []
    else:
        for src in sources:
            for sample in real_samples(src, cfg, rng):
                writer.add(src.split, sample)
        if progress:
            print(f"real: {len(sources)} sources -> {writer.counts}", flush=True)
    args = (cfg.channels, cfg.data.synthetic_size, cfg.gsd_m, cfg.imgsz, cfg.names)
    if jobs:
        with ProcessPoolExecutor(max_workers=cfg.data.workers) as pool:
            futures = [(split, pool.submit(_scene_samples, seed, *args)) for split, seed in jobs]
            for split, fut in futures:
                for sample in fut.result():
                    writer.add(split, sample)
    data_yaml = writer.write_yaml()
    summary = BuildSummary(
        Path(cfg.data.root),
        data_yaml,
        writer.counts,
        {s: dict(zip(cfg.names, c)) for s, c in writer.class_counts.items()},
        round(time.time() - start, 1),
        sorted({s.dataset for s in sources}),
    )
    manifest = {
        "config": json.loads(cfg.model_dump_json()),
        "counts": summary.counts,
        "class_counts": summary.class_counts,
        "seconds": summary.seconds,
        "real_sources": [
            {"name": s.name, "dataset": s.dataset, "split": s.split, "buildings": len(s.polygons)}
            for s in sources
        ],
        "attributions": {k: ATTRIBUTIONS[k] for k in summary.sources},
        "synthetic": {
            "generator": "detector.synth.scene.generate_scene",
            "train_seeds": list(cfg.data.synthetic_train_seeds),
            "val_seeds": list(cfg.data.synthetic_val_seeds),
            "size": cfg.data.synthetic_size,
        },
    }
    atomic_write_text(Path(cfg.data.root) / "manifest.json", json.dumps(manifest, indent=1))
    if progress:
        print(f"dataset {cfg.data.root}: {summary.counts} in {summary.seconds} s", flush=True)
    return summary
