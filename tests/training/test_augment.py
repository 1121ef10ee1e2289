"""Pair batch augmentation (training/augment.py), the parallel dataset build and the v2 config."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.augment import (  # noqa: E402 - after the importorskip check
    PairAugParams,
    augment_pair_batch,
    degrade_resolution,
)


def _scene_batch(b=4, size=96, seed=0):
    """Structured test images: green 'vegetation', grey roofs, brown ground, sharp edges."""
    rng = np.random.default_rng(seed)
    img = np.zeros((b, size, size, 3), np.float32)
    img[:] = [0.25, 0.5, 0.2]  # vegetation
    img[:, : size // 2, : size // 2] = [0.55, 0.42, 0.3]  # brown ground
    for _ in range(6):
        x, y = rng.integers(0, size - 16, 2)
        img[:, y : y + 12, x : x + 14] = [0.7, 0.7, 0.72]  # roofs
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    pair = np.concatenate([img, img], axis=3).clip(0, 1)
    return torch.from_numpy(pair).permute(0, 3, 1, 2).contiguous()


def _detail(x):
    """Mean absolute horizontal gradient (high-frequency content)."""
    return (x[..., 1:] - x[..., :-1]).abs().mean().item()


def test_batch_keeps_shape_range_and_input():
    x = _scene_batch()
    before = x.clone()
    y = augment_pair_batch(x, PairAugParams(resolution_prob=1, season_prob=1, haze_prob=1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(x, before)  # not modified in place
    three = torch.rand(2, 3, 32, 32)
    assert augment_pair_batch(three) is three  # single-epoch batches pass through


def test_resolution_loss_is_the_same_for_both_epochs():
    torch.manual_seed(0)
    x = _scene_batch()  # both epochs identical
    y = augment_pair_batch(
        x, PairAugParams(resolution_prob=1, scale=(2.0, 2.5), blur_prob=1, season_prob=0)
    )
    assert torch.allclose(y[:, :3], y[:, 3:])  # no fake change between epochs
    assert _detail(y) < 0.7 * _detail(x)
    same = degrade_resolution(x[0], 1.0)
    assert torch.allclose(same, x[0])  # factor 1, no blur: unchanged


def test_season_changes_each_epoch_on_its_own():
    torch.manual_seed(1)
    x = _scene_batch(b=16)
    y = augment_pair_batch(x, PairAugParams(resolution_prob=0, season_prob=1, haze_prob=0.5))
    diff = (y[:, :3] - y[:, 3:]).abs().mean(dim=(1, 2, 3))
    assert (diff > 0.01).float().mean() > 0.8  # the two epochs now look different

    # some draws turn vegetation (lower right) away from green, some turn brown ground (upper left) greener
    def g_minus_r(t):
        return (t[:, 1] - t[:, 0])[..., 60:90, 60:90].mean(dim=(1, 2))

    assert bool((g_minus_r(y[:, :3]) < g_minus_r(x[:, :3]) - 0.1).any())

    def ground(t):
        return (t[:, 1] - t[:, 0])[..., :30, :30].mean(dim=(1, 2))

    assert bool((ground(y[:, :3]) > ground(x[:, :3]) + 0.03).any())


def test_parallel_build_writes_the_same_synthetic_chips(tmp_path):
    from training.build import build_dataset
    from training.config import load_train_config

    counts = []
    for flag in (False, True):
        cfg = load_train_config(
            None,
            {
                "name": "t",
                "channels": 6,
                "imgsz": 128,
                "data.root": str(tmp_path / str(flag)),
                "data.synthetic_train_seeds": [0, 2],
                "data.synthetic_val_seeds": [9000, 9001],
                "data.synthetic_size": 256,
                "data.workers": 2,
                "data.parallel_real": flag,
            },
        )
        summary = build_dataset(cfg, progress=False)
        files = sorted(p.name for p in (tmp_path / str(flag) / "images" / "train").iterdir())
        assert len(files) == summary.counts["train"]["images"] == 8
        counts.append((summary.counts, summary.class_counts, files))
    assert counts[0] == counts[1]
    a, b = (
        tmp_path / str(f) / "labels" / "train" / counts[0][2][0].replace(".tif", ".txt")
        for f in (False, True)
    )
    assert a.read_text() == b.read_text()


def test_pair_v2_config_fine_tunes_with_pair_aug():
    from pathlib import Path

    from training.config import load_train_config
    from training.train import train_args

    root = Path(__file__).resolve().parents[2]
    cfg = load_train_config(root / "configs" / "train" / "pair-v2.yaml", {"train.weights": "x.pt"})
    assert cfg.train.pair_aug is not None and cfg.train.pair_aug.scale == (1.0, 2.5)
    assert cfg.data.parallel_real and cfg.data.synthetic_train_seeds == (0, 160)
    assert str(cfg.train.weights) == "x.pt"
    args = train_args(cfg, root / "configs" / "train" / "pair-v2.yaml")
    assert args["optimizer"] == "AdamW" and args["hsv_s"] == 0.0


def test_pair_cpu_config_is_a_timed_recipe_exported_for_512_tiles():
    from pathlib import Path

    from training.config import load_train_config
    from training.train import train_args

    root = Path(__file__).resolve().parents[2]
    cfg = load_train_config(root / "configs" / "train" / "pair-cpu.yaml")
    args = train_args(cfg, root / "configs" / "train" / "pair-cpu.yaml")
    assert (args["imgsz"], cfg.export.imgsz, cfg.gsd_m) == (320, 512, 0.25)
    assert args["time"] == 1.25 and args["cache"] == "ram" and args["epochs"] > 10
    assert cfg.train.weights is None  # from the YAML: the whole recipe runs on CPU
    no_limit = train_args(
        load_train_config(root / "configs" / "train" / "pair-cpu.yaml", {"train.time_hours": 0}),
        root / "configs" / "train" / "pair-cpu.yaml",
    )
    assert "time" not in no_limit


def test_export_size_must_fit_the_network_stride():
    import pytest

    from detector.errors import BuildwatchError
    from training.config import load_train_config

    with pytest.raises(BuildwatchError, match="export.imgsz.*multiple of 32"):
        load_train_config(None, {"name": "t", "export.imgsz": 500})
