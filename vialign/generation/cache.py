"""A response cache for judges and other paid-for answers: a JSONL log appended with fsync, keyed by a
hash of everything that determines the answer (the caller's choice), so a rerun pays for nothing twice
and a changed judge or prompt is never served stale."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vialign.generation.base import Backend, ChatRequest, GenerationParams

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


def ask_cached(
    backend: Backend,
    cache: ResponseCache,
    requests: Sequence[ChatRequest],
    params: GenerationParams,
    parse: Callable[[str, str], Any],
    batch_size: int,
    identity: dict[str, Any],
) -> None:
    """Ask `backend` every request whose id (its cache key) is not cached yet, and cache the outcome as
    `{key, value, reply, error, judge}`. A reply `parse(key, reply)` refuses with ValueError is asked once
    more, then cached with the reason; a transport error is not cached, so the next run asks again."""
    todo = [r for r in requests if r.id not in cache]
    for attempt in (1, 2):
        retry = []
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            entries = []
            for request, result in zip(chunk, backend.generate(list(chunk), params), strict=True):
                if result.texts is None:
                    continue
                reply = result.texts[0]
                try:
                    value, error = parse(request.id, reply), None
                except ValueError as exc:
                    if attempt == 1:
                        retry.append(request)
                        continue
                    value, error = None, str(exc)
                entries.append(
                    {"key": request.id, "value": value, "reply": reply, "error": error, "judge": identity}
                )
            cache.add(entries)
        todo = retry
