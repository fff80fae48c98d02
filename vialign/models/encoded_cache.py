"""An encoded dataset on disk, memory-mapped on reuse: what `encode_all` returns for a data file,
built once per data file, tokenizer, chat template, encoder settings and encoder version.

A cache folder (`$VIALIGN_CACHE/encoded/<key>`, or a folder the caller names) holds flat numpy
arrays over every encoded sample laid end to end (`input_ids.npy` and `labels.npy` int32,
`kinds.npy` uint8), `offsets.npy` (where each sample starts, one more entry than samples),
`n_images.npy`, `dropped_turns.npy`, `index.npy` (each sample's position in the data file) and
`report.json` (the quarantined ids with their reasons). A build writes parts of `PART_SIZE`
samples into `<key>.partial/`, each published by a rename, so an interrupted build resumes at its
first missing part; the finished folder appears by one rename, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from vialign.manifest import fingerprint_file
from vialign.models.encoding import (
    ENCODER_VERSION,
    ChatEncoder,
    EncodedArrays,
    EncodeReport,
    EncodingError,
    batched,
)
from vialign.models.families.tokenizers import cache_dir
from vialign.records import RawRecord, Sample, iter_raw_records, read_samples, valid_sample

CACHE_LAYOUT = "encoded-cache-1"
PART_SIZE = 4096
ARRAYS = ("input_ids", "labels", "kinds")
PER_SAMPLE = ("n_images", "dropped_turns", "index")


def encoded_cache_root() -> Path:
    return cache_dir() / "encoded"


def tokenizer_fingerprint(tokenizer) -> str:
    """The tokenizer's whole definition: its Rust tokenizer (vocabulary, merges, normalizer), added
    tokens, special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    added = {i: str(token) for i, token in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items()}
    parts = [
        definition,
        json.dumps(added, sort_keys=True),
        json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
        tokenizer.chat_template or "",
        type(tokenizer).__name__,
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def cache_key(encoder: ChatEncoder, data: str | Path) -> str:
    settings = asdict(encoder.settings)
    settings["templates"] = sorted(settings["templates"])
    identity = {
        "layout": CACHE_LAYOUT,
        "encoder": ENCODER_VERSION,
        "data": fingerprint_file(data),
        "tokenizer": tokenizer_fingerprint(encoder.tokenizer),
        "settings": settings,
        **({"image_spans": encoder.image_spans.key()} if encoder.image_spans else {}),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


class EncodedStore:
    """The memory-mapped arrays of one finished cache folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        for name in (*ARRAYS, "offsets", *PER_SAMPLE):
            setattr(self, name, np.load(folder / f"{name}.npy", mmap_mode="r"))
        report = json.loads((folder / "report.json").read_text())
        self.quarantined: dict[str, str] = report["quarantined"]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> CachedEncoded:
        return CachedEncoded(self, i)


class CachedEncoded:
    """One sample of a store, read like `Encoded` (`input_ids`, `labels`, `kinds`, `n_images`,
    `dropped_turns`, `len`), its token arrays sliced from the memory map when asked for."""

    __slots__ = ("_i", "_store")

    def __init__(self, store: EncodedStore, i: int):
        self._store, self._i = store, i

    def _slice(self, name: str) -> np.ndarray:
        start, stop = self._store.offsets[self._i], self._store.offsets[self._i + 1]
        return getattr(self._store, name)[start:stop]

    @property
    def input_ids(self) -> np.ndarray:
        return self._slice("input_ids")

    @property
    def labels(self) -> np.ndarray:
        return self._slice("labels")

    @property
    def kinds(self) -> np.ndarray:
        return self._slice("kinds")

    @property
    def n_images(self) -> int:
        return int(self._store.n_images[self._i])

    @property
    def dropped_turns(self) -> int:
        return int(self._store.dropped_turns[self._i])

    def __len__(self) -> int:
        return int(self._store.offsets[self._i + 1] - self._store.offsets[self._i])


def encode_dataset(
    encoder: ChatEncoder, data: str | Path, cache_root: str | Path | None = None, workers: int | None = None
) -> tuple[list[tuple[Sample, CachedEncoded]], EncodeReport]:
    """`encode_all(encoder, read_samples(data))`, served from the encoded-data cache (built first
    when missing, by `workers` processes): the same samples in the same order with the same ids,
    labels and report."""
    folder = Path(cache_root or encoded_cache_root()) / cache_key(encoder, data)
    if not (folder / "report.json").is_file():
        build_cache(encoder, data, folder, workers)
    store = EncodedStore(folder)
    wanted = iter(store.index.tolist())
    items, next_index = [], next(wanted, -1)
    for position, sample in enumerate(read_samples(data)):
        if position == next_index:
            items.append((sample, store[len(items)]))
            next_index = next(wanted, -1)
    truncated = int(np.count_nonzero(store.dropped_turns))
    return items, EncodeReport(len(items), truncated, dict(store.quarantined))


def build_cache(encoder: ChatEncoder, data: str | Path, folder: Path, workers: int | None = None) -> None:
    """Encode `data` part by part into `<key>.partial`, merge the parts into a folder of this process
    and publish it by one rename. Several processes (training ranks) may build the same key at once:
    parts are published by renames of identical content, and the first finished folder wins."""
    partial = folder.with_name(folder.name + ".partial")
    merged = folder.with_name(f"{folder.name}.merge-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    try:
        n_parts = encode_parts(encoder, data, partial, workers)
        merged.mkdir()
        merge_parts(partial, merged, n_parts)
        os.replace(merged, folder)
    except OSError:
        if not (folder / "report.json").is_file():
            raise
    finally:
        shutil.rmtree(merged, ignore_errors=True)
    shutil.rmtree(partial, ignore_errors=True)


def default_workers() -> int:
    return max(
        1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )


def encode_parts(encoder: ChatEncoder, data: str | Path, partial: Path, workers: int | None = None) -> int:
    """Each missing part of `PART_SIZE` samples encoded and written; returns how many parts there are.
    With several workers, parts after the first go to forked processes (rendering and role assignment
    are Python, so one process tops out near one core), at most two parts per worker in flight; a
    worker gets the records as decoded JSON, which pickles far faster than validated samples."""
    workers = default_workers() if workers is None else workers
    pool, pending, n_parts, first = None, deque(), 0, None
    try:
        for k, chunk in enumerate(batched(iter_raw_records(data), PART_SIZE)):
            n_parts = k + 1
            if (partial / f"part-{k:06d}.npz").is_file():
                continue
            if workers <= 1:
                encode_part(encoder, partial, k, str(data), chunk)
                continue
            if first is None and pool is None:  # data of one part is encoded here, without a pool
                first = (k, chunk)
                continue
            pool = pool or worker_pool(encoder, workers)
            if first is not None:
                pending.append(pool.submit(encode_part_in_worker, partial, first[0], str(data), first[1]))
                first = None
            pending.append(pool.submit(encode_part_in_worker, partial, k, str(data), chunk))
            while len(pending) > 2 * workers:
                pending.popleft().result()
        if first is not None:
            encode_part(encoder, partial, first[0], str(data), first[1])
        for future in pending:
            future.result()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return n_parts


def encode_part(encoder: ChatEncoder, partial: Path, k: int, source: str, chunk: list[RawRecord]) -> None:
    samples = [valid_sample(raw, source) for raw in chunk]
    write_part(partial, k, k * PART_SIZE, samples, encoder.encode_arrays(samples))


_WORKER_ENCODER: ChatEncoder | None = None


def worker_pool(encoder: ChatEncoder, workers: int) -> ProcessPoolExecutor:
    # fork: a worker starts in milliseconds with the encoder in place, where spawn would import
    # transformers again; the tokenizers library turns its own threads off in a forked child.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return ProcessPoolExecutor(
        workers, mp_context=context, initializer=set_worker_encoder, initargs=(encoder,)
    )


def set_worker_encoder(encoder: ChatEncoder) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder


def encode_part_in_worker(partial: Path, k: int, source: str, chunk: list[RawRecord]) -> None:
    assert _WORKER_ENCODER is not None
    encode_part(_WORKER_ENCODER, partial, k, source, chunk)


def write_part(
    partial: Path, k: int, first: int, chunk: list[Sample], results: list[EncodedArrays | EncodingError]
) -> None:
    done = [(first + j, r) for j, r in enumerate(results) if not isinstance(r, EncodingError)]
    quarantined = {
        s.id: r.reason for s, r in zip(chunk, results, strict=True) if isinstance(r, EncodingError)
    }
    arrays = {
        name: concatenated([getattr(r, name) for _, r in done], np.int32 if name != "kinds" else np.uint8)
        for name in ARRAYS
    }
    arrays["lengths"] = np.array([len(r) for _, r in done], dtype=np.int64)
    arrays["n_images"] = np.array([r.n_images for _, r in done], dtype=np.int32)
    arrays["dropped_turns"] = np.array([r.dropped_turns for _, r in done], dtype=np.int32)
    arrays["index"] = np.array([i for i, _ in done], dtype=np.int64)
    arrays["quarantined"] = np.array(json.dumps(quarantined))
    tmp = partial / f"part-{k:06d}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, partial / f"part-{k:06d}.npz")


def concatenated(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype=dtype)


def merge_parts(partial: Path, merged: Path, n_parts: int) -> None:
    """The parts' arrays written end to end into the flat files, a part at a time (never all in memory)."""
    names = [f"part-{k:06d}.npz" for k in range(n_parts)]
    lengths = np.concatenate([np.zeros(0, np.int64), *parts(partial, names, "lengths")])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    np.save(merged / "offsets.npy", offsets)
    for name in ARRAYS:
        flat = np.lib.format.open_memmap(
            merged / f"{name}.npy",
            mode="w+",
            dtype=np.uint8 if name == "kinds" else np.int32,
            shape=(int(offsets[-1]),),
        )
        start = 0
        for part in parts(partial, names, name):
            flat[start : start + len(part)] = part
            start += len(part)
        flat.flush()
        del flat
    for name in PER_SAMPLE:
        np.save(merged / f"{name}.npy", np.concatenate([np.zeros(0, np.int64), *parts(partial, names, name)]))
    quarantined: dict[str, str] = {}
    for text in parts(partial, names, "quarantined"):
        quarantined.update(json.loads(str(text)))
    (merged / "report.json").write_text(json.dumps({"quarantined": quarantined}))


def parts(partial: Path, names: Iterable[str], field: str) -> Iterator[np.ndarray]:
    for name in names:
        with np.load(partial / name) as part:
            yield part[field]
