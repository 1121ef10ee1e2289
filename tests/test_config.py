import os
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


# --------------------------------------------------------------------------- settings together


@pytest.mark.parametrize(
    "text,needle",
    [
        (
            "detect:\n  conf: 0.9\ndetect:\n  iou: 0.5\n",
            "line 3: key 'detect' is given twice (first on line 1)",
        ),
        ("a: {b: 1, b: 2}\n", "line 1: key 'b' is given twice"),
        (
            "change:\n  min_area_m2: 10\n  max_area_m2: 9.5\n",
            "setting 'change.min_area_m2': 10 m² is above max_area_m2 (9.5 m²)",
        ),
        (
            "baseline_date: 2026-05-02\ncurrent_date: 2026-05-01\n",
            "setting 'current_date': the current date 2026-05-01 is before",
        ),
        (
            "cases:\n  boundaries: b.geojson\n",
            "setting 'cases.boundaries': is set but cases.registry is not",
        ),
        ("cases:\n  district_prefix: ../x\n", "setting 'cases.district_prefix'"),
        ("cases:\n  district_prefix: 'L G'\n", "(not ' ')"),
        ('cases:\n  district_prefix: "LG\\n"\n', "(not '\\n')"),
        ("cases:\n  district_prefix: 'C:'\n", "(not ':')"),
        ("model_version: v0001/../../x\n", "setting 'model_version'"),
        ("out: o\ncases:\n  registry: o/report.csv\n", "is the run's own output report.csv"),
        (
            "out: o\ncases:\n  registry: o/./work/../work/c.gpkg\n",
            "is inside the run's work folder",
        ),
        ("current: a.tif\nbaseline: ./x/../a.tif\n", "setting 'current':"),
        ("detect:\n  conf: .nan\n", "setting 'detect.conf'"),
        ("height:\n  baseline_units: foot\n", "setting 'height.baseline_units': is foot but"),
        ("current_dsm: d.tif\ncurrent: ./d.tif\n", "setting 'current_dsm': "),
        (
            "height:\n  min_gain_m: .inf\n",
            "setting 'height.min_gain_m': Input should be a finite number",
        ),
    ],
)
def test_settings_checked_together_name_the_key(tmp_path, text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(f)
    assert needle in str(err.value)
    assert str(err.value).startswith(f"{f}: ")


@pytest.mark.parametrize(
    "text",
    [
        "baseline_date: 2026-05-01\ncurrent_date: 2026-05-01\n",  # same day: two flights
        "change:\n  min_area_m2: 10\n  max_area_m2: 10\n",
        "cases:\n  registry: out/cases.gpkg\n  district_prefix: 龙岗-LG_2\nout: out\n",  # documented
    ],
)
def test_settings_in_order_are_accepted(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    load_config(f)


def test_same_file_sees_hard_links_and_dots(tmp_path):
    from detector.fileio import is_inside, same_file

    a = tmp_path / "a.tif"
    a.write_bytes(b"x")
    os.link(a, tmp_path / "b.tif")
    assert same_file(a, tmp_path / "b.tif")
    assert same_file(a, tmp_path / "d" / ".." / "a.tif")
    assert not same_file(a, tmp_path / "missing.tif")
    assert is_inside(tmp_path / "w" / "x" / ".." / "y", tmp_path / "w")
    assert not is_inside(tmp_path / "w" / ".." / "y", tmp_path / "w")


def test_duplicate_keys_refused_in_every_settings_file(tmp_path):
    """The one YAML reader: ortho and training configs refuse a repeated key too."""
    from detector.flight.config import load_ortho_config

    f = tmp_path / "ortho.yaml"
    f.write_text("gsd_m: 0.1\ngsd_m: 0.2\n")
    with pytest.raises(ConfigError, match="line 2: key 'gsd_m' is given twice"):
        load_ortho_config(f)


def test_merge_keys_may_repeat_a_key(tmp_path):
    """YAML merge keys (``<<``) override on purpose: not a duplicate."""
    from detector.fileio import read_yaml_mapping

    f = tmp_path / "m.yaml"
    f.write_text("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n")
    assert read_yaml_mapping(f)["d"] == {"b": 3, "c": 2}
