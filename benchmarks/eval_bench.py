"""Evaluation benchmark, a ratio against a baseline measured in this script.

- `eval throughput`: samples/s of `vialign eval run` (POPE + VQA + MC, greedy) with batches of BATCH
  through the shared runtime ÷ the same run one sample at a time; a tiny LLaVA on the toy world's
  evaluation sets; predictions are checked to agree.

    .venv/bin/python benchmarks/eval_bench.py [--limit 96] [--batch 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vialign.evaluate.run import EvalSettings, run_eval
from vialign.generation.runner import RunnerSettings
from vialign.models.loading import build_tiny_model
from vialign.models.tiny import TinyModelSettings
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld

BENCHES = ["pope", "vqa", "mc"]


def timed_run(root: Path, name: str, limit: int, batch: int) -> tuple[float, dict]:
    settings = EvalSettings(benches=BENCHES, limit=limit, runner=RunnerSettings(batch_size=batch))
    t0 = time.perf_counter()
    result = run_eval(
        str(root / "tiny"), root / "world" / "eval", root / name, settings, root / "world", False
    )
    return time.perf_counter() - t0, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--limit", type=int, default=96, help="items per benchmark")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_toyworld(root / "world", ToyWorldSettings(size=400, annotation_images=0, eval_scenes=100))
        build_tiny_model(root / "world", root / "tiny", TinyModelSettings())
        timed_run(root, "warm", 4, 4)
        single_s, single = timed_run(root, "single", args.limit, 1)
        batch_s, batched = timed_run(root, "batched", args.limit, args.batch)
    n = sum(len(single["benchmarks"][b]["samples"]) for b in BENCHES)
    same = sum(
        x["prediction"] == y["prediction"]
        for b in BENCHES
        for x, y in zip(single["benchmarks"][b]["samples"], batched["benchmarks"][b]["samples"], strict=True)
    )
    print(
        f"eval throughput: ratio {single_s / batch_s:.1f} (samples/s of `eval run` with batch {args.batch} ÷ one "
        f"sample at a time; tiny LLaVA, {'+'.join(BENCHES)}, {n} samples; {n / batch_s:.1f} vs {n / single_s:.1f} "
        f"samples/s; {same}/{n} predictions identical)"
    )


if __name__ == "__main__":
    main()
