"""Encoding benchmark, a ratio against the per-record path measured in this script.

- `encode 665k`: records/s of LIT encoding through the batched path (`ChatEncoder.encode_arrays`:
  renderings tokenized in batch calls of the fast tokenizer with offsets, roles assigned in numpy;
  what the encoded-data cache builds from) ÷ the per-record path (`ChatEncoder.encode` per record,
  what `encode_all` did), Llama-2 tokenizer (LLaVA-1.5's, `<image>` added), vicuna_v1, 576 image
  tokens, on LLaVA-1.5-shaped records from `ingest_bench.llava_mix_records`. Both paths run on the
  same records in the same process, interleaved, best of `--repeats`; every output is checked equal.

    .venv/bin/python benchmarks/encode_bench.py [--records 20000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_bench import LETTER, SHORT, llava_mix_records

from vialign.models.encoding import ChatEncoder, EncoderSettings, EncodingError
from vialign.models.families import llava15_tokenizer
from vialign.records import Sample


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    samples = [Sample.model_validate(r) for r in llava_mix_records(args.records)]
    settings = EncoderSettings(
        chat_format="vicuna_v1", mode="lit", image_tokens=576, templates=frozenset({SHORT, LETTER})
    )
    encoder = ChatEncoder(llava15_tokenizer(), settings)
    slow, fast = [], []
    for _ in range(args.repeats):
        seconds, expected = timed(per_record, encoder, samples)
        slow.append(seconds)
        seconds, batched = timed(encoder.encode_arrays, samples)
        fast.append(seconds)
    identical = sum(same(a, b) for a, b in zip(expected, batched, strict=True))
    assert identical == len(samples), f"{len(samples) - identical} outputs differ"
    slow_rate, fast_rate = len(samples) / min(slow), len(samples) / min(fast)
    tokens = sum(len(e) for e in batched if not isinstance(e, EncodingError))
    print(
        f"per record: {min(slow):.1f} s, batched: {min(fast):.1f} s; {tokens / len(samples):.0f} tokens/record"
    )
    print(
        f"- encode 665k: ratio {fast_rate / slow_rate:.1f} (records/s of batched LIT encoding ÷ the per-record "
        f"path, Llama-2 tokenizer, {len(samples):,} LLaVA-1.5-shaped records; {fast_rate:,.0f} vs "
        f"{slow_rate:,.0f} records/s, outputs identical; `.venv/bin/python benchmarks/encode_bench.py`, "
        f"{time.strftime('%Y-%m-%d')})"
    )


if __name__ == "__main__":
    main()
