"""Rewriting in SmolLM2-135M-Instruct's own manner: the same first N soft samples of the lab's toy world
rewritten with the lab's rewrite settings (read from the lab recipe itself: vialign's default prompt, no
examples, claims review) and with variants of them. The claim reader is the ground truth. Per arm: raw
rewrites that keep every fact, answers replaced (kept rewrites that change the answer), kept rewrites with
a changed fact, facts preserved among kept rewrites, and the writing-manner gap (SmolLM2's NLL of the
rewritten − the teacher's answers, over samples with an answer replaced) with its paired-bootstrap 95%
interval.

    .venv/bin/python benchmarks/rewrite_quality.py [--samples 40] [--arms lab,best_of_4] [--out runs/rewrite_quality]
"""

from __future__ import annotations

import argparse
import os
import statistics
from importlib import resources
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import orjson

from vialign.evaluate.compare import paired_delta
from vialign.pipeline.recipe import Recipe, StageSpec, load_recipe, run_recipe
from vialign.records import read_jsonl

# each arm: changes to the lab's rewrite settings
ARMS: dict[str, dict] = {
    "lab": {},
    "lab_min_yes_0.5": {"review_min_yes": 0.5},
    "best_of_4": {"rewrite_params": {"n": 4, "temperature": 0.7, "top_p": 0.95}, "review_min_yes": 0.5},
    "best_of_4_min_yes_0.7": {
        "rewrite_params": {"n": 4, "temperature": 0.7, "top_p": 0.95},
        "review_min_yes": 0.7,
    },
}


def lab_stage(recipe: Recipe, name: str) -> StageSpec:
    return next(s for s in recipe.stages if s.name == name)


def merged(base: dict, changes: dict) -> dict:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def comparison_recipe(out: Path, samples: int, arms: list[str]) -> Recipe:
    lab = load_recipe(resources.files("vialign.pipeline").joinpath("recipes", "lab_smollm2.yaml"))
    stages = [lab_stage(lab, n) for n in ("world", "validate", "llm")]
    tuned = merged(lab_stage(lab, "rewrite").settings, {"runner": {"batch_size": 16, "limit": samples}})
    gap = lab_stage(lab, "gap_self").settings
    for arm in arms:
        stages += [
            StageSpec(name=f"rewrite_{arm}", uses="rewrite", settings=merged(tuned, ARMS[arm])),
            StageSpec(
                name=f"oracle_{arm}",
                uses="oracle_review",
                settings={"data": f"${{rewrite_{arm}}}/rewritten.jsonl"},
            ),
            StageSpec(
                name=f"gap_{arm}", uses="gap", settings={**gap, "vs": f"${{rewrite_{arm}}}/rewritten.jsonl"}
            ),
        ]
    return Recipe(out=out, vars=lab.vars, stages=stages)


def facts(folder: Path) -> dict:
    (path,) = folder.glob("*.facts.json")
    return orjson.loads(path.read_bytes())


def gap_with_interval(folder: Path) -> tuple[float | None, tuple[float, float] | None]:
    summary = orjson.loads((folder / "gap.json").read_bytes())
    if summary["delta_mean_nll"] is None:
        return None, None
    base, other = (
        [{"id": r["id"], "nll": r["nll"]} for r in read_jsonl(folder / f"{n}.nll.jsonl")]
        for n in ("input", "vs")
    )
    interval = paired_delta(base, other, lambda rs: {"nll": statistics.fmean(r["nll"] for r in rs)}, 1000, 0)[
        "nll"
    ]
    return summary["delta_mean_nll"], interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {list(ARMS)}")
    parser.add_argument("--out", type=Path, default=Path("runs/rewrite_quality"))
    args = parser.parse_args()
    arms = args.arms.split(",")
    folders = run_recipe(comparison_recipe(args.out, args.samples, arms), show_progress=False)
    print(f"rewrite quality, SmolLM2-135M-Instruct, first {args.samples} soft samples of the lab's toy world")
    print(
        "arm                     answers  raw keep facts  replaced  kept, fact changed  facts preserved  gap (95% interval)"
    )
    for arm in arms:
        f = facts(folders[f"oracle_{arm}"])
        llm, n = f["llm_review"], max(f["answers"], 1)
        kept = llm["kept_rewrite"]
        preserved = (kept - llm["accepted_with_changed_facts"]) / kept if kept else float("nan")
        gap, interval = gap_with_interval(folders[f"gap_{arm}"])
        shown = f"{gap:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]" if gap is not None else "–"
        print(
            f"{arm:23} {f['answers']:7d}  {f['raw_preserved'] / n:14.1%}  {kept / n:8.1%}  "
            f"{llm['accepted_with_changed_facts']:18d}  {preserved:15.1%}  {shown}"
        )


if __name__ == "__main__":
    main()
