"""SQLite storage for annotation: items to rate, and every annotator's ratings, one row per
(item, candidate, annotator, criterion). WAL mode, a connection per request, one transaction per
submission, and writes of one process taken in turn (a lock), so readers never wait and no writer ever
meets `database is locked`: annotators working at once lose nothing."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, position INTEGER NOT NULL, kind TEXT NOT NULL, image TEXT,
    question TEXT, candidates TEXT NOT NULL, source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ratings (
    item_id TEXT NOT NULL REFERENCES items(item_id), candidate INTEGER NOT NULL, annotator TEXT NOT NULL,
    criterion TEXT NOT NULL, score REAL NOT NULL CHECK (score >= 0 AND score <= 1), updated_at REAL NOT NULL,
    PRIMARY KEY (item_id, candidate, annotator, criterion)
);
CREATE TABLE IF NOT EXISTS skips (
    item_id TEXT NOT NULL REFERENCES items(item_id), annotator TEXT NOT NULL, skipped_at REAL NOT NULL,
    PRIMARY KEY (item_id, annotator)
);
"""


class AnnotationStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._writing = threading.Lock()
        self._images: frozenset[str] | None = None
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=30000")
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        with self._writing, self.connect() as db:
            yield db

    def image_paths(self) -> frozenset[str]:
        """The images items name: the only ones the app serves."""
        if self._images is None:
            with self.connect() as db:
                rows = db.execute("SELECT DISTINCT image FROM items WHERE image IS NOT NULL").fetchall()
            self._images = frozenset(r[0] for r in rows)
        return self._images

    def add_items(self, groups: Iterable[dict[str, Any]], source: str) -> int:
        """Insert groups not yet stored (by group id); returns how many were new."""
        self._images = None
        with self.writing() as db:
            db.execute("BEGIN IMMEDIATE")
            start = db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM items").fetchone()[0]
            added = 0
            for g in groups:
                texts = [
                    c.get("questions") if g["kind"] == "questions" else c.get("answer")
                    for c in g["candidates"]
                ]
                cur = db.execute(
                    "INSERT OR IGNORE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        g["group_id"],
                        start + added,
                        g["kind"],
                        g.get("image"),
                        g.get("question"),
                        orjson.dumps(texts).decode(),
                        source,
                    ),
                )
                added += cur.rowcount
            db.execute("COMMIT")
        return added

    def item(self, item_id: str) -> dict[str, Any] | None:
        with self.connect() as db:
            row = db.execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()
        return item_json(row) if row else None

    def ratings_of(self, item_id: str, annotator: str) -> dict[int, dict[str, float]]:
        with self.connect() as db:
            rows = db.execute(
                "SELECT candidate, criterion, score FROM ratings WHERE item_id = ? AND annotator = ?",
                (item_id, annotator),
            ).fetchall()
        out: dict[int, dict[str, float]] = {}
        for r in rows:
            out.setdefault(r["candidate"], {})[r["criterion"]] = r["score"]
        return out

    def submit(self, item_id: str, annotator: str, ratings: dict[int, dict[str, float]]) -> None:
        """Store one annotator's full rating of an item, replacing an earlier one, atomically."""
        now = time.time()
        with self.writing() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM ratings WHERE item_id = ? AND annotator = ?", (item_id, annotator))
            db.executemany(
                "INSERT INTO ratings VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (item_id, c, annotator, k, v, now)
                    for c, scores in ratings.items()
                    for k, v in scores.items()
                ],
            )
            db.execute("DELETE FROM skips WHERE item_id = ? AND annotator = ?", (item_id, annotator))
            db.execute("COMMIT")

    def skip(self, item_id: str, annotator: str) -> None:
        with self.writing() as db:
            db.execute("INSERT OR REPLACE INTO skips VALUES (?, ?, ?)", (item_id, annotator, time.time()))

    def statuses(self, annotator: str) -> list[dict[str, Any]]:
        """Every item in order with this annotator's status: rated, skipped or open."""
        with self.connect() as db:
            rows = db.execute(
                """SELECT i.item_id, i.kind,
                          EXISTS(SELECT 1 FROM ratings r WHERE r.item_id = i.item_id AND r.annotator = ?) AS rated,
                          EXISTS(SELECT 1 FROM skips s WHERE s.item_id = i.item_id AND s.annotator = ?) AS skipped
                   FROM items i ORDER BY i.position""",
                (annotator, annotator),
            ).fetchall()
        return [
            {
                "item_id": r["item_id"],
                "kind": r["kind"],
                "status": "rated" if r["rated"] else "skipped" if r["skipped"] else "open",
            }
            for r in rows
        ]

    def next_item(self, annotator: str, after: str | None = None) -> str | None:
        """The first open item (after `after`, wrapping), else the first skipped one."""
        statuses = self.statuses(annotator)
        ids = [s["item_id"] for s in statuses]
        start = ids.index(after) + 1 if after in ids else 0
        ordered = statuses[start:] + statuses[:start]
        for wanted in ("open", "skipped"):
            for s in ordered:
                if s["status"] == wanted and s["item_id"] != after:
                    return s["item_id"]
        return None

    def progress(self) -> dict[str, Any]:
        with self.connect() as db:
            total = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            rated = db.execute(
                "SELECT annotator, COUNT(DISTINCT item_id) AS n FROM ratings GROUP BY annotator"
            ).fetchall()
            skipped = db.execute("SELECT annotator, COUNT(*) AS n FROM skips GROUP BY annotator").fetchall()
        per = {r["annotator"]: {"rated": r["n"], "skipped": 0} for r in rated}
        for r in skipped:
            per.setdefault(r["annotator"], {"rated": 0, "skipped": 0})["skipped"] = r["n"]
        return {"items": total, "annotators": per}

    def all_ratings(self) -> list[sqlite3.Row]:
        with self.connect() as db:
            return db.execute(
                "SELECT * FROM ratings ORDER BY item_id, candidate, annotator, criterion"
            ).fetchall()

    def all_items(self) -> list[dict[str, Any]]:
        with self.connect() as db:
            return [item_json(r) for r in db.execute("SELECT * FROM items ORDER BY position").fetchall()]


def item_json(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "item_id": row["item_id"],
        "kind": row["kind"],
        "image": row["image"],
        "question": row["question"],
        "candidates": orjson.loads(row["candidates"]),
        "position": row["position"],
    }


def read_items(path: str | Path, criteria: dict[str, list[str]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Groups to rate from JSONL; a line that cannot be served is left out with its line and reason."""
    groups, problems = [], []
    with Path(path).open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                g = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                problems.append(f"line {line_no}: not JSON ({exc})")
                continue
            reason = item_problem(g, criteria)
            if reason:
                problems.append(
                    f"line {line_no} group {g.get('group_id') if isinstance(g, dict) else None!r}: {reason}"
                )
            else:
                groups.append(g)
    return groups, problems


def item_problem(g: Any, criteria: dict[str, list[str]]) -> str | None:
    if not isinstance(g, dict) or not isinstance(g.get("group_id"), str) or not g["group_id"]:
        return "needs a 'group_id' string"
    if g.get("kind") not in criteria:
        return f"kind must be one of {sorted(criteria)}"
    candidates = g.get("candidates")
    if not isinstance(candidates, list) or len(candidates) < 2:
        return "needs at least 2 candidates"
    field = "questions" if g["kind"] == "questions" else "answer"
    if any(not isinstance(c, dict) or not c.get(field) for c in candidates):
        return f"every candidate needs {field!r}"
    if g["kind"] == "answers" and not g.get("question"):
        return "an answers group needs its 'question'"
    return None
