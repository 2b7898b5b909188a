"""Results of every step cached by a hash of what went into it (input hashes + config), inside the run folder.

A second identical run finds every key and redoes nothing; changing one stage's config changes its key and,
through the artifact hashes, the keys of everything after it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgepack.artifacts import Artifact, sha256_file, write_text_atomic


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

    def load_artifacts(self, kind: str, key: str) -> list[Artifact] | None:
        """Cached artifacts, only if every file is still there with the same content."""
        entry = self.load(kind, key)
        if entry is None:
            return None
        artifacts = [Artifact.model_validate(a) for a in entry["artifacts"]]
        return artifacts if all(self._intact(a) for a in artifacts) else None

    def save_artifacts(self, kind: str, key: str, artifacts: list[Artifact]) -> None:
        self.save(kind, key, {"artifacts": [a.model_dump(mode="json") for a in artifacts]})

    def _intact(self, artifact: Artifact) -> bool:
        if not artifact.path:
            return True
        path = self.run_dir / artifact.path
        return path.is_file() and sha256_file(path) == artifact.sha256
