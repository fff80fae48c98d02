"""The one record type: a LLaVA conversation sample plus `meta`, and its JSON/JSONL io.

A sample on disk is LLaVA's shape (`id`, `image`, `conversations` of `{"from", "value"}` turns) with
an optional `meta` object that vialign fills in (subset, format class, provenance, ground truth).
Unknown top-level keys of real datasets are kept and written back unchanged.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

IMAGE_TAG = "<image>"
HUMAN = "human"
GPT = "gpt"
Role = Literal["human", "gpt"]


class Turn(BaseModel):
    """One turn. Extra keys some datasets carry per turn (e.g. a loss weight) are kept."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    role: Role = Field(alias="from")
    value: str

    def to_json(self) -> dict[str, Any]:
        return {"from": self.role, "value": self.value, **(self.model_extra or {})}


class Meta(BaseModel):
    """What vialign knows about a sample beyond LLaVA's fields. Extra keys are allowed and kept."""

    model_config = ConfigDict(extra="allow")

    subset: str | None = None
    original_id: str | None = None  # the input's id when it was not unique (LLaVA-Instruct's COCO ids)
    format_class: str | None = None
    truth: dict[str, Any] | None = None
    corruption: dict[str, Any] | None = None
    provenance: list[dict[str, Any]] = Field(default_factory=list)


def image_list(image: str | list[str] | None) -> list[str]:
    """A record's `image` field (absent, one path, or several) as a list of paths."""
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


class Sample(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    image: str | list[str] | None = None
    conversations: list[Turn]
    meta: Meta = Field(default_factory=Meta)

    @property
    def images(self) -> list[str]:
        return image_list(self.image)

    @property
    def questions(self) -> list[str]:
        return [t.value for t in self.conversations if t.role == HUMAN]

    @property
    def answers(self) -> list[str]:
        return [t.value for t in self.conversations if t.role == GPT]

    def to_json(self, *, with_meta: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id}
        if self.image is not None:
            out["image"] = self.image
        out["conversations"] = [t.to_json() for t in self.conversations]
        out.update(self.model_extra or {})
        meta = self.meta.model_dump(exclude_defaults=True)
        if with_meta and meta:
            out["meta"] = meta
        return out


class ImagePathError(ValueError):
    def __init__(self, code: str, reason: str):
        self.code, self.reason = code, reason
        super().__init__(reason)


@functools.lru_cache(maxsize=16)
def resolved_root(root: str, cwd: str) -> Path:
    """An image root resolved once per run, not once per record (a relative root once per working folder)."""
    return (Path(cwd) / root).resolve()


def confined_image_path(root: str | Path, rel: str) -> Path:
    """The file an image field names, refusing absolute paths and anything outside the image root."""
    if Path(rel).is_absolute():
        raise ImagePathError(
            "image_path_absolute", f"{rel!r} is absolute; paths must be relative to the image root"
        )
    path = (Path(root) / rel).resolve()
    if not path.is_relative_to(resolved_root(str(root), os.getcwd())):
        raise ImagePathError("image_path_escapes_root", f"{rel!r} points outside the image root")
    return path


def existing_images(root: str | Path | None, rels: list[str]) -> list[Path]:
    """The files a record's image paths name, confined to `root`; FileNotFoundError names a missing one."""
    images = [confined_image_path(root or ".", rel) for rel in rels]
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image not found: {missing[0]}")
    return images


class RecordError(ValueError):
    """A record that cannot be used; names where it is so the user can fix it."""

    def __init__(self, source: str, where: str, field: str, reason: str, record_id: str | None = None):
        self.source, self.where, self.field, self.reason, self.record_id = (
            source,
            where,
            field,
            reason,
            record_id,
        )
        id_part = f" id={record_id!r}" if record_id is not None else ""
        super().__init__(f"{source} {where}{id_part} field {field!r}: {reason}")


@dataclass(frozen=True)
class RawRecord:
    """One record as read from disk, before validation. `line` is set for JSONL, `index` always."""

    index: int
    line: int | None
    text: str
    data: Any = None
    error_field: str | None = None
    error_code: str | None = None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else f"record {self.index}"


UTF8_BOM = b"\xef\xbb\xbf"
WIDE_ENCODINGS = (  # byte-order marks, longest first; then the NUL pattern of BOM-less text
    (b"\xff\xfe\x00\x00", "UTF-32 LE"),
    (b"\x00\x00\xfe\xff", "UTF-32 BE"),
    (b"\xff\xfe", "UTF-16 LE"),
    (b"\xfe\xff", "UTF-16 BE"),
)


def wide_encoding(head: bytes) -> str | None:
    """The name of a UTF-16/32 encoding the first bytes show, or None."""
    for bom, name in WIDE_ENCODINGS:
        if head.startswith(bom):
            return name
    if len(head) >= 4 and head[1:4] == b"\x00\x00\x00":
        return "UTF-32 LE"
    if len(head) >= 2 and head[0] and not head[1] and head[2:3] != b"\x00":
        return "UTF-16 LE"
    if len(head) >= 2 and not head[0] and head[1]:
        return "UTF-16 BE"
    return None


def check_readable_text(path: Path) -> None:
    """Refuse, naming the problem, a file no record can come from: empty, or UTF-16/32 encoded."""
    with path.open("rb") as f:
        head = f.read(4096)
    if not head.strip():
        raise RecordError(str(path), "file", "(file)", "the file is empty: there is nothing to read")
    encoding = wide_encoding(head)
    if encoding:
        raise RecordError(
            str(path),
            "file",
            "(file)",
            f"the file is {encoding} encoded; records must be UTF-8 "
            f"(convert it, e.g. `iconv -f {encoding.split()[0]} -t UTF-8`)",
        )


def detect_format(path: Path) -> Literal["jsonl", "json"]:
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".json":
        return "json"
    with path.open("rb") as f:
        head = f.read(4096).removeprefix(UTF8_BOM).lstrip()
    return "json" if head.startswith(b"[") else "jsonl"


def iter_raw_records(path: str | Path) -> Iterator[RawRecord]:
    """Yield every record of a LLaVA JSON array or a JSONL file, decoding errors included.

    Both are streamed record by record with flat memory, so a bad record never hides its neighbours:
    JSONL line by line, a JSON array by the scanner below.
    """
    path = Path(path)
    check_readable_text(path)
    if detect_format(path) == "json":
        yield from _iter_json_array(path)
    else:
        yield from _iter_jsonl(path)


def _iter_jsonl(path: Path) -> Iterator[RawRecord]:
    index = 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            index += 1
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                yield RawRecord(
                    index,
                    line_no,
                    text,
                    None,
                    "line",
                    "bad_utf8",
                    f"not valid UTF-8 ({exc.reason} at byte {exc.start})",
                )
                continue
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                yield RawRecord(index, line_no, text, None, "line", "not_json", f"not JSON: {exc}")
                continue
            yield RawRecord(index, line_no, text, data)


def _iter_json_array(path: Path) -> Iterator[RawRecord]:
    for index, (raw, problem) in enumerate(scan_json_array(path), start=1):
        text = raw.decode("utf-8", errors="replace")
        if problem:
            yield RawRecord(index, None, text, None, "(record)", "not_json", problem)
            continue
        try:
            yield RawRecord(index, None, text, orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            code = "bad_utf8" if "UTF-8" in str(exc) else "not_json"
            yield RawRecord(index, None, text, None, "(record)", code, f"not JSON: {exc}")


_STRUCTURE = re.compile(rb'[\[\]{}",]')
_STRING_END = re.compile(rb'["\\]')


def scan_json_array(path: Path, chunk: int = 1 << 20) -> Iterator[tuple[bytes, str | None]]:
    """The raw bytes of each element of a JSON array, read in chunks (memory independent of the file's
    size), with a problem when the file ends inside one. Elements are split at top-level commas
    (brackets counted outside strings) and parsed one by one, so a broken record, a trailing comma
    or a file cut short costs only itself. Written here because streaming parsers (ijson) stop at the
    first syntax error and lose every later record."""
    buf, pos, start, in_string, opened = b"", 0, 0, False, False
    open_brackets: list[bytes] = []  # inside the current element
    with path.open("rb") as f:
        while True:
            match = (_STRING_END if in_string else _STRUCTURE).search(buf, pos)
            if match is None or (match.group() == b"\\" and match.end() >= len(buf)):
                data = f.read(chunk)
                if not data:
                    break
                shift = start if opened else 0
                buf, pos, start = buf[shift:] + data, pos - shift, start - shift
                continue
            char, pos = match.group(), match.end()
            if in_string:
                if char == b"\\":
                    pos += 1  # the escaped character, whatever it is
                else:
                    in_string = False
            elif not opened:
                if char != b"[" or buf[: match.start()].removeprefix(UTF8_BOM).strip():
                    break
                opened, start = True, pos
            elif not open_brackets and char in b",]":
                element = buf[start : match.start()].strip()
                if element:
                    yield element, None
                if char == b"]":
                    return
                start = pos
            elif char == b'"':
                in_string = True
            elif char in b"[{":
                open_brackets.append(b"]" if char == b"[" else b"}")
            elif char in b"]}" and open_brackets:
                # A closer that skips an unclosed bracket (`[1, 2, }`) closes it too, so one broken
                # record does not swallow the ones after it.
                while open_brackets and open_brackets.pop() != char:
                    pass
    if not opened:
        raise RecordError(str(path), "file", "(file)", "a LLaVA JSON file must hold an array of records")
    tail = buf[start:].strip()
    if tail:
        yield tail, None if _parses(tail) else "the file ends inside this record (cut short?)"


def _parses(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return True


def read_samples(path: str | Path) -> Iterator[Sample]:
    """Read already-valid samples (the output of `vialign data validate`); fail loudly on the first bad one."""
    for raw in iter_raw_records(path):
        yield valid_sample(raw, str(path))


def valid_sample(raw: RawRecord, source: str) -> Sample:
    """The sample of a record read from `source`, or a RecordError naming where it is and what is wrong."""
    from pydantic import ValidationError

    if raw.error:
        raise RecordError(source, raw.where, raw.error_field or "line", raw.error)
    record_id = raw.data.get("id") if isinstance(raw.data, dict) else None
    try:
        return Sample.model_validate(raw.data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(record)"
        raise RecordError(source, raw.where, field, first["msg"], record_id) from exc


class JsonlWriter:
    """Append JSON lines; `durable=True` fsyncs after every write so a crash loses no finished line."""

    def __init__(self, path: str | Path, *, append: bool = False, durable: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab" if append else "wb")
        self._durable = durable
        self.count = 0

    def write(self, obj: Any) -> None:
        if isinstance(obj, Sample):
            obj = obj.to_json()
        self._file.write(orjson.dumps(obj) + b"\n")
        self.count += 1
        if self._durable:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_jsonl(items: Iterable[Any], path: str | Path) -> int:
    with JsonlWriter(path) as writer:
        for item in items:
            writer.write(item)
        return writer.count


def write_llava_json(
    samples: Iterable[Sample], path: str | Path, *, with_meta: bool = False, original_ids: bool = False
) -> int:
    """Write a LLaVA-style JSON array (what LLaVA's own training scripts read); `original_ids` writes
    back the ids that validation made unique (`000000215677#2` → `000000215677`)."""
    rows = []
    for sample in samples:
        rows.append(sample.to_json(with_meta=with_meta))
        if original_ids and sample.meta.original_id:
            rows[-1]["id"] = sample.meta.original_id
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(orjson.dumps(rows, option=orjson.OPT_INDENT_2))
    return len(rows)


def read_jsonl(path: str | Path) -> Iterator[Any]:
    """Plain JSONL rows (for non-sample files: annotations, eval sets, rejects)."""
    with Path(path).open("rb") as f:
        for line in f:
            if line.strip():
                yield orjson.loads(line)


def chat_messages(sample: Sample) -> list[dict[str, Any]]:
    """The sample as transformers/TRL chat messages, `<image>` as a typed image part."""
    messages: list[dict[str, Any]] = []
    for turn in sample.conversations:
        if turn.role == HUMAN and IMAGE_TAG in turn.value:
            text = turn.value.replace(IMAGE_TAG, "").strip()
            messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
        else:
            messages.append({"role": "user" if turn.role == HUMAN else "assistant", "content": turn.value})
    return messages


def meta_value(sample: Sample, field: str) -> Any:
    """A `meta` field by name, typed or extra."""
    value = getattr(sample.meta, field, None)
    return value if value is not None else (sample.meta.model_extra or {}).get(field)


def require_meta_field(samples: Iterable[Sample], field: str, source: str, purpose: str) -> None:
    """Stop, naming the field, when a filter on `meta.FIELD` would meet no record that has it (real
    LLaVA data carries no subset: filtering would silently keep all or nothing)."""
    if not any(meta_value(s, field) is not None for s in samples):
        hint = (
            " (tag the records: `vialign data validate … --subset NAME`, one file per subset)"
            if field == "subset"
            else ""
        )
        raise ValueError(f"{source}: no record has meta.{field}, which {purpose} filters on{hint}")
