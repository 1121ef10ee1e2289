"""The triage dock's screenshot for the README and docs/review.md, generated (never hand-made).

Builds the synthetic three-night registry of scripts/review_screenshots.py (two communities,
an operator's reviews, a demolition alert, a drawn case), writes the plugin zip with
``buildwatch qgis-plugin`` and unpacks it as QGIS's "Install from ZIP" does, then opens
``cases.qgs`` in the system QGIS (``/usr/bin/python3`` with python3-qgis, offscreen) with the
plugin loaded through tests/qgis_triage.py (the harness the plugin tests use: a QGIS main window
with its map canvas and layer tree), confirms the first case of the queue with key ``1`` as an
operator would (on to the drawn case), goes one case on with ``N``, and saves the window:
``docs/img/review-triage.png``.

Usage::

    python scripts/triage_screenshot.py [--work /tmp/buildwatch-triage-demo] [--out docs/img]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

from review_screenshots import build

from detector.review.triage_plugin import write_plugin_zip

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "qgis_triage.py"


def render(project: Path, plugin_dir: Path, image: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    plan = {
        "project": str(project),
        "plugin_dir": str(plugin_dir),
        "size": [1280, 760],
        "steps": [
            {"note": "no permit; team 2 informed", "key": "1"},
            {"key": "N"},
            {"image": str(image)},
        ],
    }
    proc = subprocess.run(
        ["/usr/bin/python3", str(DRIVER), json.dumps(plan)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if len(results) != 3 or not results[2].get("saved"):
        raise SystemExit(f"rendering failed:\n{proc.stdout}\n{proc.stderr[-2000:]}")
    return results[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/buildwatch-triage-demo"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    project, _ = build(args.work)
    with zipfile.ZipFile(write_plugin_zip(args.work / "buildwatch_triage.zip")) as archive:
        archive.extractall(args.work / "plugins")
    args.out.mkdir(parents=True, exist_ok=True)
    image = args.out / "review-triage.png"
    state = render(project, args.work / "plugins", image)
    print(f"wrote {image}: queue {state['queue']}, {state['progress']}, at {state['current']}")


if __name__ == "__main__":
    main()
