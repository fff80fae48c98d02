"""Ingest benchmark, ratios against `json.load` of the same file.

- `ingest 665k`: peak RSS and wall time of `vialign data validate FILE --image-check none` ÷ those of
  `json.load(FILE)`, on a synthetic JSON array shaped like LLaVA-1.5's `llava_v1_5_mix665k.json`
  (665,298 records, ~1 GB): short-answer VQA with several turns and the image first, multiple choice,
  region boxes, captions, LLaVA-Instruct conversation/detail/complex with the image last, long answers
  and a COCO id shared by three records, and text-only ShareGPT conversations with long answers.
  Each side runs in its own process, so each peak RSS is its own.

    .venv/bin/python benchmarks/ingest_bench.py [--records 665298] [--file PATH] [--keep]

`llava_mix_records` is also the record source of `encode_bench.py`.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

LLAVA_MIX_RECORDS = 665_298
SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
CAPTION = "Provide a one-sentence caption for the provided image."
WORDS = [
    "the",
    "a",
    "man",
    "woman",
    "dog",
    "cat",
    "bus",
    "street",
    "table",
    "red",
    "blue",
    "white",
    "green",
    "small",
    "large",
    "two",
    "three",
    "people",
    "sitting",
    "standing",
    "holding",
    "near",
    "on",
    "in",
    "of",
    "with",
    "and",
    "is",
    "are",
    "wearing",
    "shirt",
    "car",
    "building",
    "sign",
    "tree",
    "sky",
    "water",
    "room",
    "kitchen",
    "food",
    "plate",
    "bowl",
    "window",
    "door",
    "left",
    "right",
    "front",
    "behind",
    "image",
    "picture",
    "scene",
    "appears",
    "shows",
    "there",
    "this",
    "that",
    "which",
    "while",
    "also",
    "several",
    "many",
    "one",
    "could",
    "would",
    "may",
    "likely",
    "because",
    "however",
    "overall",
    "suggests",
    "environment",
    "atmosphere",
    "activity",
    "moment",
    "surrounded",
    "background",
    "foreground",
    "colorful",
    "bright",
    "wooden",
    "parked",
    "open",
    "city",
    "road",
    "field",
    "grass",
    "ball",
    "game",
    "player",
    "train",
    "station",
    "bench",
    "umbrella",
    "horse",
    "bike",
    "phone",
]


def sentence(rng: random.Random, low: int, high: int, end: str = ".") -> str:
    words = rng.choices(WORDS, k=rng.randint(low, high))
    return " ".join(words).capitalize() + end


def paragraph(rng: random.Random, n_sentences: int) -> str:
    return " ".join(sentence(rng, 8, 22) for _ in range(n_sentences))


def box(rng: random.Random) -> str:
    x, y = sorted(round(rng.random(), 2) for _ in range(2)), sorted(round(rng.random(), 2) for _ in range(2))
    return f"[{x[0]}, {y[0]}, {x[1]}, {y[1]}]"


def turns(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [turn for q, a in pairs for turn in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]


def short_vqa(rng: random.Random, k: int) -> dict:
    folder = rng.choice(["coco/train2017", "gqa/images", "ocr_vqa/images", "textvqa/train_images"])
    pairs = [
        (f"{sentence(rng, 4, 10, '?')}\n{SHORT}", sentence(rng, 1, 3, "")) for _ in range(rng.randint(1, 9))
    ]
    pairs[0] = ("<image>\n" + pairs[0][0], pairs[0][1])
    return {"id": f"vqa-{k}", "image": f"{folder}/{k:012d}.jpg", "conversations": turns(pairs)}


def multiple_choice(rng: random.Random, k: int) -> dict:
    options = "\n".join(f"{letter}. {sentence(rng, 1, 4, '')}" for letter in "ABCD")
    question = f"<image>\n{sentence(rng, 5, 12, '?')}\n{options}\n{LETTER}"
    return {
        "id": f"aokvqa-{k}",
        "image": f"coco/train2017/{k:012d}.jpg",
        "conversations": turns([(question, rng.choice("ABCD"))]),
    }


def region(rng: random.Random, k: int) -> dict:
    pairs = []
    for _ in range(rng.randint(2, 10)):
        if rng.random() < 0.5:
            pairs.append(
                (f"Please provide a short description for this region: {box(rng)}.", sentence(rng, 2, 6))
            )
        else:
            pairs.append(
                (
                    f"Please provide the bounding box coordinate of the region this sentence describes: "
                    f"{sentence(rng, 2, 6, '')}.",
                    box(rng),
                )
            )
    pairs[0] = ("<image>\n" + pairs[0][0], pairs[0][1])
    return {"id": f"vg-{k}", "image": f"vg/VG_100K/{k}.jpg", "conversations": turns(pairs)}


def caption(rng: random.Random, k: int) -> dict:
    return {
        "id": f"textcaps-{k}",
        "image": f"textvqa/train_images/{k:016x}.jpg",
        "conversations": turns([(f"<image>\n{CAPTION}", sentence(rng, 8, 16))]),
    }


def llava_instruct(rng: random.Random, k: int, kind: str) -> dict:
    """Conversation, detail and complex reasoning share the COCO id of their image."""
    coco = f"{k // 3:012d}"
    if kind == "conversation":
        pairs = [
            (sentence(rng, 6, 14, "?"), paragraph(rng, rng.randint(2, 7))) for _ in range(rng.randint(1, 5))
        ]
    elif kind == "detail":
        pairs = [("Describe the following image in detail.", paragraph(rng, rng.randint(6, 12)))]
    else:
        pairs = [(sentence(rng, 8, 20, "?"), paragraph(rng, rng.randint(5, 11)))]
    pairs[0] = (pairs[0][0] + "\n<image>", pairs[0][1])
    return {"id": coco, "image": f"coco/train2017/{coco}.jpg", "conversations": turns(pairs)}


def sharegpt(rng: random.Random, k: int) -> dict:
    pairs = [
        (paragraph(rng, rng.randint(1, 4)), "\n\n".join(paragraph(rng, rng.randint(3, 9)) for _ in range(3)))
        for _ in range(rng.randint(1, 5))
    ]
    return {"id": f"sharegpt-{k}", "conversations": turns(pairs)}


# (share of the mix, maker) after LLaVA-1.5's own mix: VQA-style 36%, multiple choice 10%, regions 20%,
# captions 3%, LLaVA-Instruct 24% (in id-sharing triples), ShareGPT 6%.
MIX: list[tuple[float, Callable[[random.Random, int], dict]]] = [
    (0.36, short_vqa),
    (0.10, multiple_choice),
    (0.20, region),
    (0.03, caption),
    (0.24, lambda rng, k: llava_instruct(rng, k, ("conversation", "detail", "complex")[k % 3])),
    (0.06, sharegpt),
]


def llava_mix_records(n: int, seed: int = 0) -> Iterator[dict]:
    """`n` records shaped like LLaVA-1.5's mix, in a shuffled order (the real file interleaves its
    sources), deterministic for a seed."""
    rng = random.Random(seed)
    weights = [share for share, _ in MIX]
    for k in range(n):
        _, make = rng.choices(MIX, weights)[0]
        yield make(rng, k)


def write_llava_array(path: Path, n: int, seed: int = 0) -> int:
    """Write the records as one indented JSON array (as LLaVA ships it), streaming; returns bytes."""
    with path.open("wb") as f:
        f.write(b"[\n")
        for k, record in enumerate(llava_mix_records(n, seed)):
            f.write((b",\n" if k else b"") + orjson.dumps(record, option=orjson.OPT_INDENT_2))
        f.write(b"\n]\n")
    return path.stat().st_size


def measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{command} exited with {proc.returncode}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=LLAVA_MIX_RECORDS)
    parser.add_argument("--file", type=Path, help="where to write the array (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="reuse --file when it exists, and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.file or Path(tmp) / "llava_mix.json"
        if not (args.keep and data.exists()):
            t0 = time.perf_counter()
            write_llava_array(data, args.records)
            print(f"wrote {args.records:,} records to {data} in {time.perf_counter() - t0:.1f} s")
        size_gb = data.stat().st_size / 1e9
        load = [sys.executable, "-c", "import json, sys; json.load(open(sys.argv[1], 'rb'))", str(data)]
        validate = [
            sys.executable,
            "-m",
            "vialign.cli",
            "data",
            "validate",
            str(data),
            "--out",
            f"{tmp}/out",
            "--image-root",
            tmp,
            "--image-check",
            "none",
            "--quiet",
        ]
        load_s, load_mb = measured(load)
        validate_s, validate_mb = measured(validate)
        if not args.file or not args.keep:
            data.unlink()
    print(f"json.load:      {load_s:7.1f} s  {load_mb:8.0f} MB peak RSS")
    print(f"data validate:  {validate_s:7.1f} s  {validate_mb:8.0f} MB peak RSS")
    print(
        f"- ingest {args.records / 1000:.0f}k: ratio {validate_mb / load_mb:.2f} (peak RSS of data validate "
        f"--image-check none ÷ json.load of the same {args.records:,}-record array ({size_gb:.2f} GB); "
        f"wall {validate_s:.1f} s vs {load_s:.1f} s; RSS {validate_mb:.0f} MB vs {load_mb:.0f} MB; "
        f"`.venv/bin/python benchmarks/ingest_bench.py`, {time.strftime('%Y-%m-%d')})"
    )
    print(f"time ratio (validate ÷ json.load): {validate_s / load_s:.1f}")


if __name__ == "__main__":
    main()
