"""Generation benchmarks, each a ratio against a baseline measured in this script.

- `batched generation`: requests/s of batched transformers generation (batch 32) ÷ one request at
  a time, tiny inner LLM, same 64 prompts, greedy, 32 new tokens.
- `openai concurrency`: openai-backend throughput at concurrency c ÷ (c × throughput at concurrency 1),
  against a loopback server with a fixed 100 ms latency, for c up to 32 (1.0 is perfect scaling).

    .venv/bin/python benchmarks/generation_bench.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import LlamaForCausalLM

from vialign.generation.base import ChatRequest, GenerationParams
from vialign.generation.local import TransformersBackend
from vialign.generation.openai_backend import OpenAIBackend
from vialign.models.tiny import TinyModelSettings, text_config
from vialign.models.tokenizer import texts_of, train_tokenizer
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld


def batched_generation(root: Path) -> None:
    generate_toyworld(root / "world", ToyWorldSettings(size=500, annotation_images=0, eval_scenes=1))
    tokenizer = train_tokenizer(texts_of([root / "world" / "text" / "corpus.jsonl"]))
    torch.manual_seed(0)
    LlamaForCausalLM(text_config(tokenizer, TinyModelSettings())).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    backend = TransformersBackend.load(root / "lm")
    requests = [
        ChatRequest(str(i), [{"role": "user", "content": f"What is {i} plus {i % 7}?"}]) for i in range(64)
    ]
    params = GenerationParams(max_new_tokens=32)
    t0 = time.perf_counter()
    single = [backend.generate([r], params)[0].text for r in requests]
    one_at_a_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = [r.text for k in range(0, 64, 32) for r in backend.generate(requests[k : k + 32], params)]
    batch_time = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(single, batched, strict=True))
    print(
        f"batched generation: ratio {one_at_a_time / batch_time:.1f} (batch 32 vs one at a time, 64 prompts, "
        f"{one_at_a_time:.2f} s vs {batch_time:.2f} s; {same}/64 identical outputs)"
    )


def start_server_process(latency: float) -> tuple[subprocess.Popen, str]:
    """The loopback server in its own process, so client and server do not share one GIL."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from tests.fault_server import FaultServer; "
        "s = FaultServer(latency=float(sys.argv[2])); print(s.url, flush=True); time.sleep(600)"
    )
    repo = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", code, repo, str(latency)], stdout=subprocess.PIPE, text=True
    )
    return proc, proc.stdout.readline().strip()


def openai_concurrency() -> None:
    proc, url = start_server_process(0.1)
    try:
        base = None
        for c in (1, 4, 8, 16, 32):
            backend = OpenAIBackend(url, "m", concurrency=c, api_key_env="VIALIGN_BENCH_KEY")
            requests = [
                ChatRequest(f"{c}-{i}", [{"role": "user", "content": f"q {c} {i}"}])
                for i in range(max(16, 8 * c))
            ]
            t0 = time.perf_counter()
            results = backend.generate(requests, GenerationParams(max_new_tokens=8))
            rate = len(results) / (time.perf_counter() - t0)
            backend.close()
            assert all(r.texts for r in results)
            base = base or rate
            print(f"openai concurrency {c:2d}: {rate:6.1f} requests/s, ratio {rate / (c * base):.2f}")
    finally:
        proc.kill()


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    if "--openai-only" not in sys.argv:
        batched_generation(Path(tempfile.mkdtemp(prefix="vialign-genbench-")))
    openai_concurrency()
