"""The built-in demo: the toy-world recipe (`vialign/pipeline/recipes/toy_demo.yaml`) end to end, once per
seed, then one report over every seed. Seed-independent stages (the world, the inner LLM, stage 1, the
reward models, curation, rewriting) run once and are reused by the other seeds through the recipe cache.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from vialign.pipeline.seeds import run_seeds

QUICK = {
    "size": 600,
    "text_size": 800,
    "annotation_images": 60,
    "eval_scenes": 30,
    "lm_steps": 60,
    "stage1_steps": 40,
    "sft_steps": 30,
    "rm_steps": 20,
    "prompts": 24,
    "dpo_steps": 8,
    "eval_limit": 24,
    "rewrite_limit": 40,
}


def run_demo(out: Path, *, quick: bool, seed: int, console: Console, seeds: int = 1) -> Path:
    note = (
        "quick demo: tiny sizes, numbers are a smoke check, not a result"
        if quick
        else "full demo: tiny models on 2 CPU cores; differences within the intervals are noise"
    )
    return run_seeds(
        "toy_demo.yaml", out, QUICK if quick else {}, seed=seed, seeds=seeds, console=console, note=note
    )
