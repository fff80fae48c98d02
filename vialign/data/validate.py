"""`vialign data validate`: split a LLaVA file into valid records and rejects, each reject with its reason.

Every record is checked on its own, so a bad neighbour never costs a valid record. A reject row keeps
the raw text, the line (JSONL) or index (JSON array), the id when there is one, the first problem's
field, code and reason, and the full list of problems.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from pydantic import Field, ValidationError, field_validator, model_validator

from vialign.choices import ImageCheck, OnDuplicate
from vialign.config import Settings
from vialign.records import (
    GPT,
    HUMAN,
    IMAGE_TAG,
    ImagePathError,
    JsonlWriter,
    RawRecord,
    Sample,
    confined_image_path,
    iter_raw_records,
)
from vialign.stage import StageContext, StageFailed


class SubsetRule(Settings):
    """`subset` for a record whose id, first question or first answer matches (first rule wins)."""

    subset: str
    id_regex: str | None = None
    question_regex: str | None = None
    answer_regex: str | None = None

    @field_validator("id_regex", "question_regex", "answer_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc}): {pattern!r}") from None
        return pattern

    @model_validator(mode="after")
    def _names_something(self) -> SubsetRule:
        if not (self.id_regex or self.question_regex or self.answer_regex):
            raise ValueError(f"subset rule {self.subset!r} gives no id_regex, question_regex or answer_regex")
        return self

    def matches(self, sample: Sample) -> bool:
        # The input id: a renamed duplicate (`ID#2`) matches what its id rule was written for.
        record_id = sample.meta.original_id or sample.id
        fields = (
            (self.id_regex, record_id),
            (self.question_regex, (sample.questions or [""])[0]),
            (self.answer_regex, (sample.answers or [""])[0]),
        )
        given = [(pattern, text) for pattern, text in fields if pattern]
        return bool(given) and all(re.search(pattern, text) for pattern, text in given)


class ValidateSettings(Settings):
    image_root: Path | None = Field(None, description="folder that every image path is relative to")
    max_text_chars: int = Field(32_768, gt=0, description="longest total text of one record's turns")
    image_check: ImageCheck = Field(
        "verify", description="exists: file only; verify: header and checksums; decode: full pixel decode"
    )
    strict: bool = False
    workers: int = Field(4, ge=1, description="threads that check image files")
    on_duplicate: OnDuplicate = Field(
        "rename",
        description="a repeated id (LLaVA-Instruct's COCO ids): rename to ID#2, ID#3… (the original "
        "kept in meta.original_id), or reject later records (keep-first says the first was kept)",
    )
    subset: str | None = Field(
        None, description="tag every record with this meta.subset (one file per subset)"
    )
    subset_rules: list[SubsetRule] = Field(
        default_factory=list, description="infer meta.subset where neither the record nor --subset gives one"
    )


@dataclass(frozen=True)
class Problem:
    field: str
    code: str
    reason: str


@dataclass
class Outcome:
    raw: RawRecord
    record_id: str | None
    problems: list[Problem] = field(default_factory=list)
    sample: Sample | None = None
    renamed: bool = False

    def reject_row(self) -> dict[str, Any]:
        first = self.problems[0]
        return {
            "line": self.raw.line,
            "index": self.raw.index,
            "id": self.record_id,
            "field": first.field,
            "code": first.code,
            "reason": first.reason,
            "problems": [p.__dict__ for p in self.problems],
            "raw": self.raw.text,
        }


def check_structure(data: Any, max_text_chars: int) -> list[Problem]:
    """Everything about one record that needs no other record and no file system."""
    if not isinstance(data, dict):
        return [Problem("(record)", "not_object", f"top level is {type(data).__name__}, not an object")]
    problems = check_id(data)
    problems += check_conversations(data.get("conversations"), "conversations" in data)
    if problems:
        return problems
    problems += check_image_tags(data)
    total = sum(len(t["value"]) for t in data["conversations"])
    if total > max_text_chars:
        problems.append(
            Problem(
                "conversations",
                "text_too_long",
                f"{total} characters of text, over the limit {max_text_chars}",
            )
        )
    return problems


def check_id(data: dict[str, Any]) -> list[Problem]:
    if "id" not in data:
        return [Problem("id", "missing_id", "no 'id' field")]
    if not isinstance(data["id"], str) or not data["id"].strip():
        return [Problem("id", "bad_id", f"id must be a non-empty string, got {data['id']!r}")]
    return []


def check_conversations(turns: Any, present: bool) -> list[Problem]:
    if not present:
        return [Problem("conversations", "missing_conversations", "no 'conversations' field")]
    if not isinstance(turns, list):
        return [Problem("conversations", "bad_conversations", "conversations must be a list of turns")]
    if not turns:
        return [Problem("conversations", "empty_conversations", "conversations is empty")]
    problems: list[Problem] = []
    for i, turn in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            problems.append(
                Problem(where, "turn_not_object", f"turn is {type(turn).__name__}, not an object")
            )
            continue
        role, value = turn.get("from"), turn.get("value")
        if role not in (HUMAN, GPT):
            problems.append(
                Problem(f"{where}.from", "unknown_role", f"role {role!r} is not 'human' or 'gpt'")
            )
        elif role != (HUMAN if i % 2 == 0 else GPT):
            code = "first_not_human" if i == 0 else "roles_not_alternating"
            expected = HUMAN if i % 2 == 0 else GPT
            problems.append(
                Problem(f"{where}.from", code, f"expected {expected!r} at turn {i}, got {role!r}")
            )
        if not isinstance(value, str):
            problems.append(Problem(f"{where}.value", "value_not_string", f"value is {type(value).__name__}"))
        elif not value.strip():
            problems.append(Problem(f"{where}.value", "empty_value", "value is empty"))
    return problems


def check_image_tags(data: dict[str, Any]) -> list[Problem]:
    image = data.get("image")
    if image is not None and not (
        isinstance(image, str) or (isinstance(image, list) and all(isinstance(p, str) for p in image))
    ):
        return [Problem("image", "bad_image_field", "image must be a path string or a list of paths")]
    n_images = 0 if image is None else (1 if isinstance(image, str) else len(image))
    tags = [(i, t["value"].count(IMAGE_TAG)) for i, t in enumerate(data["conversations"])]
    n_tags = sum(n for _, n in tags)
    in_gpt = [i for i, n in tags if n and data["conversations"][i]["from"] == GPT]
    if in_gpt:
        return [Problem(f"conversations[{in_gpt[0]}].value", "image_tag_in_answer", "<image> in a gpt turn")]
    if n_images and not n_tags:
        return [Problem("conversations", "image_tag_missing", f"{n_images} image(s) but no <image> tag")]
    if n_tags and not n_images:
        return [Problem("image", "image_tag_without_image", f"{n_tags} <image> tag(s) but no image field")]
    if n_tags != n_images:
        return [Problem("conversations", "image_tag_count", f"{n_tags} <image> tags for {n_images} image(s)")]
    return []


def check_image_file(rel: str, root: Path, mode: ImageCheck) -> Problem | None:
    """Path confinement to the image root first (security), then the file itself."""
    try:
        path = confined_image_path(root, rel)
    except ImagePathError as exc:
        return Problem("image", exc.code, exc.reason)
    if mode == "none":
        return None
    if not path.exists():
        return Problem("image", "image_missing", f"{rel!r} does not exist under {root}")
    if not path.is_file():
        return Problem("image", "image_unreadable", f"{rel!r} is not a regular file")
    if path.stat().st_size == 0:
        return Problem("image", "image_empty", f"{rel!r} is an empty file")
    if mode == "exists":
        return None
    try:
        with Image.open(path) as im:
            im.verify() if mode == "verify" else im.load()
    except UnidentifiedImageError:
        return Problem("image", "image_not_image", f"{rel!r} is not an image PIL can identify")
    except PermissionError as exc:
        return Problem("image", "image_unreadable", f"{rel!r} cannot be read: {exc}")
    except (OSError, SyntaxError, ValueError) as exc:
        return Problem("image", "image_corrupt", f"{rel!r} is a damaged image: {exc}")
    return None


class ImageChecker:
    """Checks each distinct image file once (datasets reuse images across records), in threads.
    A finished check keeps only its result: a future per image of a 665k-record file would hold
    hundreds of megabytes."""

    def __init__(self, root: Path | None, mode: ImageCheck, workers: int):
        self.root, self.mode = root, mode
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._running: dict[str, Any] = {}
        self._done: dict[str, Problem | None] = {}

    def submit(self, rel: str) -> None:
        if rel in self._running or rel in self._done:
            return
        if self.root is None:
            raise ValueError("records name images but no image root was given (--image-root)")
        if self.mode != "none":
            self._running[rel] = self._pool.submit(check_image_file, rel, self.root, self.mode)

    def result(self, rel: str) -> Problem | None:
        if self.mode == "none":  # the path check alone: cheaper to repeat than to remember
            return check_image_file(rel, self.root, self.mode)
        if rel in self._running:
            self._done[rel] = self._running.pop(rel).result()
        return self._done[rel]

    def close(self) -> None:
        self._pool.shutdown()


def image_paths(data: dict[str, Any]) -> list[str]:
    image = data.get("image")
    return [] if image is None else [image] if isinstance(image, str) else list(image)


def validate_records(path: Path, settings: ValidateSettings, window: int = 512) -> Iterator[Outcome]:
    """Yield one outcome per record in input order. Image checks run ahead in a window of records."""
    checker = ImageChecker(settings.image_root, settings.image_check, settings.workers)
    seen_ids: set[str] = set()
    pending: deque[Outcome] = deque()
    try:
        for raw in iter_raw_records(path):
            outcome = structural_outcome(raw, settings)
            if not outcome.problems:
                for rel in image_paths(raw.data):
                    checker.submit(rel)
            pending.append(outcome)
            if len(pending) >= window:
                yield finish_outcome(pending.popleft(), checker, seen_ids, settings)
        for outcome in pending:
            yield finish_outcome(outcome, checker, seen_ids, settings)
    finally:
        checker.close()


def structural_outcome(raw: RawRecord, settings: ValidateSettings) -> Outcome:
    if raw.error:
        return Outcome(
            raw, None, [Problem(raw.error_field or "line", raw.error_code or "unreadable", raw.error)]
        )
    record_id = raw.data.get("id") if isinstance(raw.data, dict) else None
    record_id = record_id if isinstance(record_id, str) else None
    outcome = Outcome(raw, record_id, check_structure(raw.data, settings.max_text_chars))
    if not outcome.problems:
        try:
            outcome.sample = Sample.model_validate(raw.data)
        except ValidationError as exc:
            outcome.problems += [
                Problem(".".join(map(str, e["loc"])) or "(record)", "bad_field", e["msg"])
                for e in exc.errors()
            ]
    return outcome


def finish_outcome(
    outcome: Outcome, checker: ImageChecker, seen_ids: set[str], settings: ValidateSettings
) -> Outcome:
    if outcome.problems:
        return outcome
    for rel in image_paths(outcome.raw.data):
        problem = checker.result(rel)
        if problem:
            outcome.problems.append(problem)
    # Only accepted records claim their id, so a valid record is never rejected for an invalid twin.
    if not outcome.problems and outcome.record_id in seen_ids:
        if settings.on_duplicate == "rename":
            rename_duplicate(outcome, seen_ids)
        else:
            kept = " (the first record with it was kept)" if settings.on_duplicate == "keep-first" else ""
            outcome.problems.append(
                Problem("id", "duplicate_id", f"id {outcome.record_id!r} was already accepted{kept}")
            )
    if not outcome.problems and outcome.sample is not None:
        seen_ids.add(outcome.sample.id)
        tag_subset(outcome.sample, settings)
    return outcome


def rename_duplicate(outcome: Outcome, seen_ids: set[str]) -> None:
    """`ID#2`, `ID#3`, … by input order, skipping any that is itself taken; the input id goes to meta."""
    assert outcome.sample is not None and outcome.record_id is not None
    k = 2
    while f"{outcome.record_id}#{k}" in seen_ids:
        k += 1
    outcome.sample.meta.original_id = outcome.record_id
    outcome.sample.id = f"{outcome.record_id}#{k}"
    outcome.renamed = True


def tag_subset(sample: Sample, settings: ValidateSettings) -> None:
    if settings.subset:
        sample.meta.subset = settings.subset
    elif sample.meta.subset is None:
        sample.meta.subset = next((r.subset for r in settings.subset_rules if r.matches(sample)), None)


@dataclass
class ValidationSummary:
    valid: int = 0
    rejected: int = 0
    renamed: int = 0
    by_code: Counter[str] = field(default_factory=Counter)
    by_subset: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.valid + self.rejected


def validate_file(
    path: str | Path, out_dir: str | Path, settings: ValidateSettings, progress: Any = None
) -> ValidationSummary:
    """Write `valid.jsonl`, `rejects.jsonl` and `manifest.json` under out_dir and return the counts."""
    from vialign.manifest import fingerprint_file, stage_manifest

    path, out = Path(path), Path(out_dir)
    summary = ValidationSummary()
    with stage_manifest(out, "data.validate", settings, {str(path): fingerprint_file(path)}) as manifest:
        with JsonlWriter(out / "valid.jsonl") as valid, JsonlWriter(out / "rejects.jsonl") as rejects:
            for outcome in validate_records(path, settings):
                if outcome.problems:
                    rejects.write(outcome.reject_row())
                    summary.rejected += 1
                    summary.by_code[outcome.problems[0].code] += 1
                else:
                    valid.write(outcome.sample)
                    summary.valid += 1
                    summary.renamed += outcome.renamed
                    summary.by_subset[outcome.sample.meta.subset or "(none)"] += 1
                if progress is not None:
                    progress()
        manifest.counts = {
            "valid": summary.valid,
            "rejected": summary.rejected,
            "renamed": summary.renamed,
            "subsets": dict(summary.by_subset),
            **dict(summary.by_code),
        }
        manifest.outputs = {"valid.jsonl": fingerprint_file(out / "valid.jsonl")}
    return summary


def count_records_hint(path: str | Path) -> int | None:
    """Non-blank lines of a JSONL file, for the progress bar's ETA; None for a JSON array."""
    from vialign.records import detect_format

    if detect_format(Path(path)) != "jsonl":
        return None
    with Path(path).open("rb") as f:
        return sum(1 for line in f if line.strip())


def run_stage(ctx: StageContext) -> None:
    from rich.table import Table

    from vialign.progress import progress_reporter

    data = ctx.path("input")
    total = count_records_hint(data)
    with progress_reporter(ctx.show_progress) as report:
        summary = validate_file(
            data, ctx.out, ctx.settings, progress=lambda: report("validate records", 1, total)
        )
    table = Table(title=f"validate {data}")
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_row("[green]valid[/green]", str(summary.valid))
    if summary.renamed:
        table.add_row("  of which renamed duplicate ids", str(summary.renamed))
    for name, n in sorted(summary.by_subset.items()):
        table.add_row(f"  subset {name}", str(n))
    for code, n in summary.by_code.most_common():
        table.add_row(f"[red]{code}[/red]", str(n))
    table.add_row("total", str(summary.total))
    ctx.show(table)
    ctx.say(
        f"{summary.valid} valid, {summary.rejected} rejected: {ctx.out / 'valid.jsonl'}, {ctx.out / 'rejects.jsonl'}"
    )
    if ctx.settings.strict and summary.rejected:
        raise StageFailed(f"{summary.rejected} records rejected (--strict); see {ctx.out / 'rejects.jsonl'}")
