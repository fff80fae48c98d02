"""The manifest every stage writes next to its output: inputs, settings, fingerprints, counts, time.

Later stages (and `vialign run`) use the fingerprints to decide whether finished work can be reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, Field

from vialign import __version__

MANIFEST_NAME = "manifest.json"


class Manifest(BaseModel):
    stage: str
    status: str = "finished"
    vialign_version: str = __version__
    python: str = Field(default_factory=platform.python_version)
    inputs: dict[str, str] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)
    counts: dict[str, Any] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    # every dtype resolution the stage made: setting, device, dtype and why
    precision: list[dict[str, str]] = Field(default_factory=list)
    started_at: float = 0.0
    duration_s: float = 0.0


def fingerprint_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fingerprint_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def fingerprint_dir(path: str | Path, pattern: str = "**/*", skip: frozenset[str] = frozenset()) -> str:
    """Fingerprint of a folder's files (names and contents), independent of listing order; files named in
    `skip` are left out."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.glob(pattern) if p.is_file() and p.name not in skip):
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        digest.update(fingerprint_file(file).encode() + b"\0")
    return "sha256:" + digest.hexdigest()


def fingerprint_listing(path: str | Path) -> str:
    """A cheap fingerprint of a large folder (an image root): every file's name, size and modification
    time, without reading contents."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return "listing:" + digest.hexdigest()


def fingerprint_settings(settings: Any) -> str:
    if isinstance(settings, BaseModel):
        settings = settings.model_dump(mode="json")
    return fingerprint_bytes(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS))


_precisions: ContextVar[list[dict[str, str]] | None] = ContextVar("stage_precisions", default=None)


@contextlib.contextmanager
def recording_precisions() -> Iterator[list[dict[str, str]]]:
    """Collects the dtype resolutions made inside the block (`models.precision` reports each one)."""
    found: list[dict[str, str]] = []
    token = _precisions.set(found)
    try:
        yield found
    finally:
        _precisions.reset(token)


def record_precision(resolution: dict[str, str]) -> None:
    found = _precisions.get()
    if found is not None and resolution not in found:
        found.append(resolution)


@contextlib.contextmanager
def stage_manifest(
    out_dir: str | Path,
    stage: str,
    settings: Any = None,
    inputs: dict[str, str] | None = None,
    write: bool = True,
) -> Iterator[Manifest]:
    """The manifest of one stage run, timed from entry: the block fills in counts and outputs (and any
    input or setting known only later); it is written when the block ends without an error, so a
    manifest always means a finished run. `write=False` on the other ranks of a distributed run."""
    if isinstance(settings, BaseModel):
        settings = settings.model_dump(mode="json")
    manifest = Manifest(
        stage=stage, inputs=dict(inputs or {}), settings=dict(settings or {}), started_at=time.time()
    )
    t0 = time.perf_counter()
    with recording_precisions() as resolved:
        yield manifest
    manifest.precision = resolved
    manifest.duration_s = round(time.perf_counter() - t0, 3)
    if write:
        write_manifest(out_dir, manifest)


def write_manifest(out_dir: str | Path, manifest: Manifest) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
    return path


def write_atomically(path: Path, data: bytes) -> None:
    """A record that means "finished" (a manifest, a stage record, a probe): a kill mid-write leaves the old
    file or none, never half of one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
