"""The model registry: a folder of model versions, one of them promoted (numpy-free, torch-free).

Layout of a registry folder (e.g. ``district/models``)::

    registry.json            {"promoted": "v0002", "history": [{"at", "action", "version", "reason"}, ...]}
    v0001/model.onnx         the exported model (+ model.onnx.sha256)
    v0001/model.pt           its ultralytics training checkpoint: fine-tuning starts here
    v0001/version.json       version, sha256, parent, created, data manifest, metrics, gate, note
    v0002/...

A version folder is written completely under a temporary name and renamed into place, and
``registry.json`` is rewritten atomically, so a killed ``retrain`` leaves the registry as it
was. ``buildwatch run --models DIR`` uses the promoted version (or ``--model-version``);
``buildwatch models list | promote | rollback`` manage it; ``buildwatch retrain`` adds versions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from detector.clock import utc_now
from detector.errors import ConfigError, InputError
from detector.fileio import atomic_write_text, file_sha256

INDEX = "registry.json"
MODEL_FILE = "model.onnx"
CHECKPOINT_FILE = "model.pt"
VERSION_FILE = "version.json"
_VERSION_RE = re.compile(r"^v\d{4,}$")


@dataclass
class ModelVersion:
    """One registered model version (the content of its ``version.json``)."""

    version: str
    folder: Path
    sha256: str
    parent: str | None = None
    created: str = ""
    model_name: str = ""
    checkpoint_sha256: str | None = None
    data_manifest: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    gate: dict = field(default_factory=dict)
    note: str = ""

    @property
    def model(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def checkpoint(self) -> Path | None:
        path = self.folder / CHECKPOINT_FILE
        return path if path.exists() else None

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "parent": self.parent,
            "created": self.created,
            "model_name": self.model_name,
            "checkpoint_sha256": self.checkpoint_sha256,
            "data_manifest": self.data_manifest,
            "metrics": self.metrics,
            "gate": self.gate,
            "note": self.note,
        }


class ModelRegistry:
    """A registry folder (see the module docstring). Reading never writes; the folder is created
    by the first :meth:`add`."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: model registry must be a folder")

    # -- reading ----------------------------------------------------------------------------
    def _index(self) -> dict:
        path = self.root / INDEX
        if not path.exists():
            return {"promoted": None, "history": []}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{path}: not a readable model registry index ({exc}); restore it from a backup"
            ) from None
        if not isinstance(data, dict) or "history" not in data:
            raise InputError(f"{path}: not a buildwatch model registry index (no 'history')")
        return data

    def versions(self) -> list[ModelVersion]:
        """All versions, oldest first."""
        if not self.root.is_dir():
            return []
        return [
            self.get(p.name)
            for p in sorted(self.root.iterdir())
            if p.is_dir() and _VERSION_RE.match(p.name)
        ]

    def get(self, version: str) -> ModelVersion:
        folder = self.root / version
        meta = folder / VERSION_FILE
        if not _VERSION_RE.match(version) or not meta.exists():
            known = ", ".join(v.name for v in sorted(self.root.glob("v*")) if v.is_dir()) or "none"
            raise InputError(f"{self.root}: no model version '{version}' (versions: {known})")
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{meta}: unreadable version record ({exc})") from None
        return ModelVersion(folder=folder, **{k: v for k, v in data.items() if k != "folder"})

    @property
    def promoted(self) -> ModelVersion | None:
        name = self._index().get("promoted")
        return self.get(name) if name else None

    @property
    def history(self) -> list[dict]:
        return list(self._index().get("history", []))

    def resolve(self, version: str | None = None) -> ModelVersion:
        """The version to run: ``version`` if given, else the promoted one (checked against its sha256)."""
        chosen = self.get(version) if version else self.promoted
        if chosen is None:
            raise ConfigError(
                f"{self.root}: model registry has no promoted version; run 'buildwatch models promote "
                f"VERSION --models {self.root}' or drop --models to use the shipped model"
            )
        if not chosen.model.exists():
            raise InputError(f"{chosen.model}: model file of version {chosen.version} is missing")
        sha = file_sha256(chosen.model)
        if sha != chosen.sha256:
            raise InputError(
                f"{chosen.model}: sha256 {sha[:12]}… differs from the registry's {chosen.sha256[:12]}…; "
                f"the file was changed: restore it or promote another version"
            )
        return chosen

    # -- writing ----------------------------------------------------------------------------
    def _write_index(self, data: dict) -> None:
        atomic_write_text(self.root / INDEX, json.dumps(data, indent=1) + "\n")

    def _next_version(self) -> str:
        numbers = [
            int(p.name[1:])
            for p in self.root.glob("v*")
            if p.is_dir() and _VERSION_RE.match(p.name)
        ]
        return f"v{max(numbers, default=0) + 1:04d}"

    def add(
        self,
        model: Path,
        checkpoint: Path | None = None,
        parent: str | None = None,
        data_manifest: dict | None = None,
        metrics: dict | None = None,
        gate: dict | None = None,
        note: str = "",
        model_name: str = "",
    ) -> ModelVersion:
        """Copy ``model`` (and its training ``checkpoint``) into a new version folder; not promoted.

        Returns
        -------
        ModelVersion
        """
        model = Path(model)
        if not model.exists():
            raise InputError(f"{model}: model file not found")
        if parent is not None:
            self.get(parent)
        self.root.mkdir(parents=True, exist_ok=True)
        version = self._next_version()
        # a whole folder appears at once: staged here, renamed below (fileio's atomic helpers
        # stage single files only)
        staging = Path(tempfile.mkdtemp(prefix=f".part-{version}-", dir=self.root))
        try:
            shutil.copyfile(model, staging / MODEL_FILE)
            sha = file_sha256(staging / MODEL_FILE)
            (staging / (MODEL_FILE + ".sha256")).write_text(f"{sha}  {MODEL_FILE}\n")
            ck_sha = None
            if checkpoint is not None:
                shutil.copyfile(checkpoint, staging / CHECKPOINT_FILE)
                ck_sha = file_sha256(staging / CHECKPOINT_FILE)
            record = ModelVersion(
                version=version,
                folder=self.root / version,
                sha256=sha,
                parent=parent,
                created=utc_now(),
                model_name=model_name,
                checkpoint_sha256=ck_sha,
                data_manifest=data_manifest or {},
                metrics=metrics or {},
                gate=gate or {},
                note=note,
            )
            (staging / VERSION_FILE).write_text(json.dumps(record.to_json(), indent=1) + "\n")
            os.chmod(staging, 0o755)
            os.replace(staging, self.root / version)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        index = self._index()
        index["history"].append(
            {"at": utc_now(), "action": "add", "version": version, "reason": note}
        )
        self._write_index(index)
        return record

    def promote(self, version: str, reason: str = "") -> ModelVersion:
        """Make ``version`` the one ``run`` uses; the change is recorded in the history."""
        chosen = self.get(version)
        index = self._index()
        index["history"].append(
            {
                "at": utc_now(),
                "action": "promote",
                "version": version,
                "previous": index.get("promoted"),
                "reason": reason,
            }
        )
        index["promoted"] = version
        self._write_index(index)
        return chosen

    def rollback(self, reason: str = "") -> ModelVersion:
        """Promote again the version that was promoted before the current one."""
        index = self._index()
        current = index.get("promoted")
        if current is None:
            raise ConfigError(f"{self.root}: nothing is promoted, nothing to roll back")
        previous = None
        for entry in reversed(
            index["history"]
        ):  # what was promoted before ``current`` was promoted
            if entry["action"] == "promote" and entry["version"] == current:
                previous = entry.get("previous")
                break
        if previous is None:
            raise ConfigError(
                f"{self.root}: {current} was the first promoted version; there is nothing to roll back to"
            )
        chosen = self.get(previous)
        index["history"].append(
            {
                "at": utc_now(),
                "action": "rollback",
                "version": previous,
                "previous": current,
                "reason": reason,
            }
        )
        index["promoted"] = previous
        self._write_index(index)
        return chosen
