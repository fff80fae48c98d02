"""The drift set: a model's own answers (usually the base LLM's, from an `eval run`), written as the
drift benchmark's `drift/answers.jsonl`, so every tuned model can be asked how likely it finds them."""

from __future__ import annotations

import orjson
from pydantic import Field

from vialign.choices import BenchName
from vialign.config import Settings
from vialign.manifest import fingerprint_file, stage_manifest
from vialign.records import write_jsonl
from vialign.stage import StageContext


class DriftSetSettings(Settings):
    benches: list[BenchName] = Field(default_factory=lambda: ["ifeval", "text"], description="whose answers")


def drift_rows(results: dict, benches: list[str]) -> list[dict]:
    """One row per non-empty answer of the named benchmarks: the prompt it answered, and the answer."""
    rows = []
    for bench in benches:
        entry = results["benchmarks"].get(bench)
        if entry is None:
            raise ValueError(f"the results hold no {bench!r} benchmark; run it first or leave it out")
        for sample in entry["samples"]:
            if sample.get("prediction", "").strip():
                row = {
                    "question_id": f"{bench}/{sample['id']}",
                    "text": sample["prompt"],
                    "answer": sample["prediction"],
                }
                rows.append(row)
    return rows


def run_stage(ctx: StageContext) -> None:
    folder = ctx.path("results")
    with stage_manifest(ctx.out, "eval.drift_set", ctx.settings) as manifest:
        results = orjson.loads((folder / "results.json").read_bytes())
        rows = drift_rows(results, ctx.settings.benches)
        if not rows:
            raise ValueError(f"{folder}: no non-empty answer in {ctx.settings.benches}")
        path = ctx.out / "drift" / "answers.jsonl"
        write_jsonl(rows, path)
        manifest.inputs = {str(folder / "results.json"): fingerprint_file(folder / "results.json")}
        manifest.counts = {"answers": len(rows)}
    ctx.say(f"{len(rows)} answers of {folder} → {path}")
