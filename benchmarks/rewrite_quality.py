"""Rewriting with SmolLM2-135M-Instruct, before and after the small-LLM features: the same first N soft
samples of the lab's toy world rewritten (1) with vialign's default rewrite prompt and yes/no verdict
review, zero-shot, and (2) with the lab's settings (few-shot examples in SmolLM2's manner, length cap,
repetition penalty, claims review at the lab's threshold, read from the lab recipe itself). The claim
reader is the ground truth: the share of raw rewrites that keep every fact, and the review's precision
and recall at keeping correct rewrites.

    .venv/bin/python benchmarks/rewrite_quality.py [--samples 40] [--out runs/rewrite_quality]
"""

from __future__ import annotations

import argparse
import os
from importlib import resources
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import orjson

from vialign.pipeline.recipe import Recipe, StageSpec, load_recipe, run_recipe


def lab_stage(recipe: Recipe, name: str) -> StageSpec:
    return next(s for s in recipe.stages if s.name == name)


def comparison_recipe(out: Path, samples: int) -> Recipe:
    lab = load_recipe(resources.files("vialign.pipeline").joinpath("recipes", "lab_smollm2.yaml"))
    shared = [lab_stage(lab, n) for n in ("world", "validate", "llm")]
    tuned = lab_stage(lab, "rewrite").settings
    limit = {"runner": {"batch_size": 16, "limit": samples}}
    arms = {
        "before": {k: tuned[k] for k in ("data", "llm", "chat_format")} | limit,
        "after": tuned | limit,
    }
    stages = list(shared)
    for arm, settings in arms.items():
        stages.append(StageSpec(name=f"rewrite_{arm}", uses="rewrite", settings=settings))
        stages.append(
            StageSpec(
                name=f"oracle_{arm}",
                uses="oracle_review",
                settings={"data": f"${{rewrite_{arm}}}/rewritten.jsonl"},
            )
        )
    return Recipe(out=out, vars=lab.vars, stages=stages)


def facts(folder: Path) -> dict:
    (path,) = folder.glob("*.facts.json")
    return orjson.loads(path.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("runs/rewrite_quality"))
    args = parser.parse_args()
    folders = run_recipe(comparison_recipe(args.out, args.samples), show_progress=False)
    print(f"rewrite quality, SmolLM2-135M-Instruct, first {args.samples} soft samples of the lab's toy world")
    print("arm     answers  raw keep facts  review kept  precision  recall  facts after review")
    for arm in ("before", "after"):
        f = facts(folders[f"oracle_{arm}"])
        llm, n = f["llm_review"], max(f["answers"], 1)
        print(
            f"{arm:7} {f['answers']:7d}  {f['raw_preserved'] / n:14.1%}  {llm['kept_rewrite']:11d}  "
            f"{llm.get('review_precision')!s:>9}  {llm.get('review_recall')!s:>6}  {llm['final_preserved'] / n:18.1%}"
        )


if __name__ == "__main__":
    main()
