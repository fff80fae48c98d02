"""The lab: the seeds' claims about the inner LLM re-tested with SmolLM2-135M-Instruct inside a LLaVA
(`vialign/pipeline/recipes/lab_smollm2.yaml`), once per seed, then one report with the claims table.
`--quick` runs the same recipe on a tiny random LM with SmolLM2's tokenizer and tiny sizes."""

from __future__ import annotations

from vialign.pipeline.seeds import SeededRun

QUICK = {
    "llm": "tiny:smollm2",
    "size": 120,
    "pretrain_images": 60,
    "vision_steps": 10,
    "annotation_images": 24,
    "eval_scenes": 6,
    "ifeval_prompts": 8,
    "stage1_steps": 4,
    "sft_steps": 4,
    "rm_lm_steps": 10,
    "rm_stage1_steps": 6,
    "rm_steps": 6,
    "prompts": 6,
    "dpo_steps": 2,
    "eval_limit": 8,
    "lora_r": 4,
    "rewrite_limit": 12,
    "resamples": 100,
    "ifeval_tokens": 24,
    "rewrite_tokens": 24,
    "caption_java": False,  # each Java start (PTB tokenizer, METEOR) costs seconds per evaluation
}


LAB = SeededRun(
    "lab_smollm2.yaml",
    QUICK,
    note="SmolLM2-135M-Instruct inside a LLaVA with a tiny vision tower, on 2 CPU cores",
    quick_note="quick lab: a tiny random LM with SmolLM2's tokenizer, tiny sizes; a smoke run, not a result",
)
