"""The lab: the seeds' claims about the inner LLM re-tested with SmolLM2-135M-Instruct inside a LLaVA
(`vialign/pipeline/recipes/lab_smollm2.yaml`), once per seed, then one report with the claims table.
`--quick` runs the same recipe on a tiny random LM with SmolLM2's tokenizer and tiny sizes."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from vialign.pipeline.seeds import run_seeds

QUICK = {
    "llm": "tiny:smollm2",
    "size": 120,
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
}


def run_lab(out: Path, *, quick: bool, seed: int, seeds: int, console: Console) -> Path:
    note = (
        "quick lab: a tiny random LM with SmolLM2's tokenizer, tiny sizes; a smoke run, not a result"
        if quick
        else "SmolLM2-135M-Instruct inside a LLaVA with a tiny vision tower, on 2 CPU cores"
    )
    return run_seeds(
        "lab_smollm2.yaml", out, QUICK if quick else {}, seed=seed, seeds=seeds, console=console, note=note
    )
