from pathlib import Path

import pytest

from detector.config import load_config
from detector.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_validates_and_resolves_paths_relative_to_the_file():
    cfg = load_config(ROOT / "configs" / "nightly.example.yaml")
    assert cfg.baseline.resolve() == (ROOT / "sample_tiles" / "baseline.tif").resolve()
    assert cfg.align.max_shift_m == 10.0 and cfg.workers == 2


def test_flags_override_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("workers: 3\ncases:\n  registry: reg/cases.gpkg\n")
    cfg = load_config(f, {"workers": 1, "model": None})
    assert cfg.workers == 1
    assert cfg.cases.registry == tmp_path / "reg" / "cases.gpkg"


@pytest.mark.parametrize(
    "text,needle",
    [
        ("unknown_key: 1\n", "unknown_key"),
        ("align:\n  max_shift_m: -1\n", "align.max_shift_m"),
        ("[1, 2]\n", "mapping"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_setting(tmp_path, text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config(f)
