"""Results of every step cached by a hash of what went into it (input hashes + config), inside the run folder.

A second identical run finds every key and redoes nothing; changing one stage's config changes its key and,
through the artifact hashes, the keys of everything after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from edgepack.core.artifacts import Artifact, atomic_path, sha256_file, write_text_atomic
from edgepack.stages.base import StageOutput
from edgepack.stages.handoffs import HANDOFF_KINDS


def cache_key(*parts: object) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class StepCache:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / ".cache"

    def load(self, kind: str, key: str) -> dict | None:
        path = self.folder / f"{kind}-{key}.json"
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None  # a damaged entry is a miss, never an error

    def save(self, kind: str, key: str, value: dict) -> None:
        write_text_atomic(self.folder / f"{kind}-{key}.json", json.dumps(value, indent=1, default=str))

    def load_stage_output(self, kind: str, key: str) -> StageOutput | None:
        """A cached stage output, only if every file is there with the same content (or can be restored from its
        blob)."""
        entry = self.load(kind, key)
        if entry is None:
            return None
        artifacts = [Artifact.model_validate(a) for a in entry["artifacts"]]
        if not all(self._intact_or_restored(a) for a in artifacts):
            return None
        handoffs = {name: HANDOFF_KINDS[record["kind"]].model_validate(record["record"])
                    for name, record in entry.get("handoffs", {}).items()}  # fmt: skip
        return StageOutput(artifacts, handoffs)

    def save_stage_output(self, kind: str, key: str, output: StageOutput) -> None:
        for artifact in output.artifacts:
            self._keep_blob(artifact)
        handoffs = {name: {"kind": type(record).__name__, "record": record.model_dump(mode="json")}
                    for name, record in output.handoffs.items()}  # fmt: skip
        self.save(kind, key, {"artifacts": [a.model_dump(mode="json") for a in output.artifacts], "handoffs": handoffs})

    def _keep_blob(self, artifact: Artifact) -> None:
        """A hard link under the content hash: a later run with another config may overwrite the file name, and
        switching back must find the old content. Links cost no space; artifacts are only ever replaced, never
        edited in place, so the link keeps the old content."""
        blob = self.folder / "blobs" / artifact.sha256
        if not artifact.path or blob.exists():
            return
        blob.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.run_dir / artifact.path, blob)
        except OSError:  # a file system without hard links: copy
            shutil.copyfile(self.run_dir / artifact.path, blob)

    def _intact_or_restored(self, artifact: Artifact) -> bool:
        if not artifact.path:
            return True
        path, blob = self.run_dir / artifact.path, self.folder / "blobs" / artifact.sha256
        if path.is_file() and sha256_file(path) == artifact.sha256:
            return True
        if not (blob.is_file() and sha256_file(blob) == artifact.sha256):
            return False
        with atomic_path(path) as tmp:
            shutil.copyfile(blob, tmp)
        return True
