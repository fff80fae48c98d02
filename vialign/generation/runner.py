"""Resumable row-level runner shared by every generation and scoring stage.

Results go to `OUT.partial.jsonl` as they finish, one batch per write, fsynced. A restart truncates a
torn last line, skips ids already done, and retries ids that failed; a record that fails is kept with
its error and the run goes on. When every selected record is done, `OUT` is written in input order,
with no duplicates, atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from vialign.generation.work import Row, RunnerSettings
from vialign.progress import progress_reporter

__all__ = ["Row", "RunReport", "RunnerSettings", "run_resumable"]


@dataclass
class RunReport:
    selected: int = 0
    reused: int = 0
    processed: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failed


def select(items: Sequence[Any], settings: RunnerSettings) -> list[Any]:
    chosen = list(items)
    if settings.shard:
        i, n = (int(x) for x in settings.shard.split("/"))
        chosen = chosen[i::n]
    return chosen[: settings.limit] if settings.limit else chosen


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def load_partial(path: Path) -> dict[str, dict[str, Any]]:
    """Rows written so far, the last row per id winning; a torn last line is cut off the file."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    rows = {}
    for line in data[:end].splitlines():
        if line.strip():
            row = orjson.loads(line)
            rows[row["id"]] = row
    return rows


def append_rows(path: Path, rows: list[Row]) -> None:
    with path.open("ab") as f:
        f.write(b"".join(orjson.dumps(r.to_json()) + b"\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def check_identity(partial: Path, identity: dict[str, Any]) -> None:
    path = partial.with_name(partial.name.removesuffix(".partial.jsonl") + ".identity.json")
    wanted = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
    if partial.exists() and path.exists() and path.read_bytes() != wanted:
        raise ValueError(
            f"{partial} holds results made with other models or settings (see {path}); "
            "delete both files to start over, or write to another output"
        )
    path.write_bytes(wanted)


def batches_of(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_resumable(
    items: Sequence[Any],
    item_id: Callable[[Any], str],
    process: Callable[[list[Any]], list[Row]],
    out: str | Path,
    settings: RunnerSettings,
    *,
    finish: Callable[[Any, dict[str, Any]], Any] | None = None,
    ray_factory: Callable[[], Callable[[list[Any]], list[Row]]] | None = None,
    task: str = "records",
    show_progress: bool = True,
    identity: dict[str, Any] | None = None,
) -> RunReport:
    """Process every selected item once, resumably; write the outputs in input order to `out`.

    `finish(item, row)` turns a finished row (ok or failed) into the output record; by default an ok
    row's value. With `engine="ray"`, `ray_factory()` builds `process` once inside each Ray actor.
    `identity` (model fingerprints, settings) is stored beside the partial file; resuming partial
    results made with a different identity is refused rather than mixing two runs in one output.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chosen = select(items, settings)
    ids = [item_id(x) for x in chosen]
    if len(set(ids)) != len(ids):
        raise ValueError("record ids must be unique for a resumable run; run `vialign data validate` first")
    partial = partial_path(out)
    if identity is not None:
        check_identity(partial, identity)
    done = {i: row for i, row in load_partial(partial).items() if row["ok"]}
    pending = [x for x, i in zip(chosen, ids, strict=True) if i not in done]
    report = RunReport(selected=len(chosen), reused=len(chosen) - len(pending))
    with progress_reporter(show_progress) as progress:
        progress(task, report.reused, len(chosen))
        for rows in dispatch(pending, process, settings, ray_factory):
            append_rows(partial, rows)
            report.processed += len(rows)
            progress(task, len(rows), len(chosen))
    final = load_partial(partial)
    report.failed = {i: final[i]["error"] for i in ids if not final[i]["ok"]}
    finish = finish or (lambda item, row: row["value"])
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as f:
        for item, i in zip(chosen, ids, strict=True):
            f.write(orjson.dumps(finish(item, final[i])) + b"\n")
    tmp.replace(out)
    return report


def dispatch(
    pending: list[Any], process: Callable, settings: RunnerSettings, ray_factory: Callable | None
) -> Iterator[list[Row]]:
    if settings.engine == "local" or not pending:
        for batch in batches_of(pending, settings.batch_size):
            yield process(batch)
        return
    if ray_factory is None:
        raise ValueError("this stage cannot run on Ray: it has no model factory")
    from vialign.generation.ray_engine import ray_rows

    yield from ray_rows(pending, ray_factory, settings)
