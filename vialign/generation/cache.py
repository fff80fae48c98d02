"""A response cache for judges and other paid-for answers: a JSONL log appended with fsync, keyed by a
hash of everything that determines the answer (the caller's choice), so a rerun pays for nothing twice
and a changed judge or prompt is never served stale."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS)).hexdigest()


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            data = self.path.read_bytes()
            for line in data[: data.rfind(b"\n") + 1].splitlines():  # a torn last line is ignored
                if line.strip():
                    entry = orjson.loads(line)
                    self.entries[entry["key"]] = entry

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def add(self, entries: list[dict[str, Any]]) -> None:
        """Each entry needs a `key`; written durably before it counts as cached."""
        if not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as f:
            f.write(b"".join(orjson.dumps(e) + b"\n" for e in entries))
            f.flush()
            os.fsync(f.fileno())
        self.entries.update({e["key"]: e for e in entries})
