"""Encoding benchmark, a ratio against the per-record path measured in this script.

- `encode 665k`: records/s of LIT encoding through the batched path (`ChatEncoder.encode_arrays`:
  renderings tokenized in batch calls of the fast tokenizer with offsets, roles assigned in numpy;
  what the encoded-data cache builds from) ÷ the per-record path (`ChatEncoder.encode` per record,
  what `encode_all` did), Llama-2 tokenizer (LLaVA-1.5's, `<image>` added), vicuna_v1, 576 image
  tokens, on LLaVA-1.5-shaped records from `ingest_bench.llava_mix_records`. Both paths run on the
  same records in the same process, interleaved, best of `--repeats`; every output is checked equal.

  Also timed: the encoded-data cache built from a JSONL file by `--workers` processes (what `train sft`
  runs: parts of 4,096 samples, the first in this process, the others in forked workers), checked
  equal to the per-record path.

    .venv/bin/python benchmarks/encode_bench.py [--records 40000] [--repeats 1] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_bench import LETTER, SHORT, llava_mix_records

from vialign.models.encoded_cache import EncodedStore, build_cache, default_workers
from vialign.models.encoding import ChatEncoder, EncoderSettings, EncodingError
from vialign.models.families.tokenizers import llava15_tokenizer
from vialign.records import Sample, write_jsonl


def per_record(encoder: ChatEncoder, samples: list[Sample]) -> list:
    out = []
    for sample in samples:
        try:
            out.append(encoder.encode(sample))
        except EncodingError as exc:
            out.append(exc)
    return out


def same(a, b) -> bool:
    if isinstance(a, EncodingError) or isinstance(b, EncodingError):
        return isinstance(a, EncodingError) and isinstance(b, EncodingError) and a.reason == b.reason
    return (b.input_ids.tolist(), b.labels.tolist(), b.kinds.tolist(), b.n_images, b.dropped_turns) == (
        a.input_ids,
        a.labels,
        a.kinds,
        a.n_images,
        a.dropped_turns,
    )


def timed(fn, *args) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def build_with_workers(encoder: ChatEncoder, data: Path, folder: Path, workers: int) -> list:
    """What `train sft` runs: the encoded-data cache built part by part by `workers` processes, then read."""
    shutil.rmtree(folder, ignore_errors=True)
    build_cache(encoder, data, folder, workers)
    store = EncodedStore(folder)
    return [store[i] for i in range(len(store))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args()
    records = llava_mix_records(args.records)
    samples = [Sample.model_validate(r) for r in records]
    settings = EncoderSettings(
        chat_format="vicuna_v1", mode="lit", image_tokens=576, templates=frozenset({SHORT, LETTER})
    )
    encoder = ChatEncoder(llava15_tokenizer(), settings)
    root = Path(tempfile.mkdtemp())
    data = root / "data.jsonl"
    write_jsonl(samples, data)
    slow, fast, parallel = [], [], []
    for _ in range(args.repeats):
        seconds, expected = timed(per_record, encoder, samples)
        slow.append(seconds)
        seconds, batched = timed(encoder.encode_arrays, samples)
        fast.append(seconds)
        seconds, cached = timed(build_with_workers, encoder, data, root / "cache", args.workers)
        parallel.append(seconds)
    identical = sum(same(a, b) for a, b in zip(expected, batched, strict=True))
    assert identical == len(samples), f"{len(samples) - identical} outputs differ"
    kept = [e for e in expected if not isinstance(e, EncodingError)]
    assert len(kept) == len(cached) and all(same(a, b) for a, b in zip(kept, cached, strict=True))
    shutil.rmtree(root)
    n = len(samples)
    slow_rate, fast_rate, parallel_rate = n / min(slow), n / min(fast), n / min(parallel)
    tokens = sum(len(e) for e in kept)
    print(
        f"per record: {min(slow):.1f} s, batched in this process: {min(fast):.1f} s, cache built by "
        f"{args.workers} processes: {min(parallel):.1f} s; {tokens / n:.0f} tokens/record"
    )
    print(
        f"- encode 665k: ratio {parallel_rate / slow_rate:.1f} (records/s of LIT encoding into the encoded-data "
        f"cache, batched, {args.workers} processes ÷ the per-record path, Llama-2 tokenizer, {n:,} "
        f"LLaVA-1.5-shaped records; {parallel_rate:,.0f} vs {slow_rate:,.0f} records/s; batched in one process "
        f"{fast_rate / slow_rate:.1f}, {fast_rate:,.0f} records/s; outputs identical; "
        f"`.venv/bin/python benchmarks/encode_bench.py`, {time.strftime('%Y-%m-%d')})"
    )


if __name__ == "__main__":
    main()
