"""The nightly runtime never imports torch or ultralytics (they live behind the train extra)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_path_does_not_import_torch_or_ultralytics(tmp_path):
    code = f"""
import sys, pkgutil, importlib
import detector
for m in pkgutil.walk_packages(detector.__path__, "detector."):
    if m.name != "detector.__main__":
        importlib.import_module(m.name)
from detector.cli import main
rc = main(["run", "--baseline", r"{ROOT / "sample_tiles" / "baseline.tif"}", "--current",
           r"{ROOT / "sample_tiles" / "current.tif"}", "--out", r"{tmp_path / "out"}", "--workers", "1",
           "--no-progress"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "ultralytics"))
print("HEAVY", heavy, "RC", rc)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "HEAVY [] RC 0" in proc.stdout, proc.stdout[-800:] + proc.stderr[-1500:]
