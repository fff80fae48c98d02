"""The built-in demo: the toy-world recipe (`vialign/pipeline/recipes/toy_demo.yaml`) end to end, once per
seed, then one report over every seed. Seed-independent stages (the world, the inner LLM, stage 1, the
reward models, curation, rewriting) run once and are reused by the other seeds through the recipe cache.
"""

from __future__ import annotations

from vialign.pipeline.seeds import SeededRun

QUICK = {
    "size": 600,
    "text_size": 800,
    "annotation_images": 60,
    "eval_scenes": 30,
    "lm_steps": 16,
    "vision_steps": 10,
    "stage1_steps": 20,
    "sft_steps": 10,
    "rm_steps": 10,
    "prompts": 8,
    "dpo_steps": 4,
    "eval_limit": 12,
    "rewrite_limit": 20,
    "caption_java": False,  # each Java start (PTB tokenizer, METEOR) costs seconds per evaluation
}


DEMO = SeededRun(
    "toy_demo.yaml",
    QUICK,
    note="full demo: tiny models on 2 CPU cores; differences within the intervals are noise",
    quick_note="quick demo: tiny sizes, numbers are a smoke check, not a result",
)
