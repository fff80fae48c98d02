"""`vialign eval run`: generate through the shared runtime (batched, resumable), score, and write one
results JSON with full provenance and every per-sample prediction."""

from __future__ import annotations

import importlib.metadata
import platform
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from vialign.choices import BenchName, PopeParser
from vialign.config import Settings
from vialign.evaluate.benches import BENCHES, EvalItem
from vialign.evaluate.judge import JudgeSettings, rate_answers
from vialign.generation.base import Backend, ChatRequest, GenerationParams, ModelSettings
from vialign.generation.cache import ResponseCache
from vialign.generation.runner import Row, RunnerSettings, run_resumable
from vialign.manifest import fingerprint_bytes, fingerprint_file, stage_manifest
from vialign.records import IMAGE_TAG, confined_image_path
from vialign.stage import StageContext

PARSERS = {
    "caption": "pycocoevalcap",
    "vqa": "vqav2_normalised",
    "mc": "option_letter",
    "text": "exact_and_normalised",
    "judge": "rating_in_double_brackets",
    "ifeval": "if_verifiable_ifeval_checkers",
    "drift": "teacher_forced_nll",
    "facts": "toyworld_claim_reader",
}
PACKAGES = ("vialign", "torch", "transformers", "tokenizers", "pycocoevalcap", "openai")


class BenchSettings(Settings):
    prompt: str | None = Field(None, description="template; {question} (and {options} for mc)")
    data: Path | None = Field(None, description="this benchmark's data folder instead of --data")
    max_new_tokens: int | None = Field(None, ge=1)
    limit: int | None = Field(None, ge=1, description="first N items only")


class EvalSettings(Settings):
    benches: list[BenchName] = Field(default_factory=lambda: ["pope", "caption", "vqa", "mc", "text"])
    pope_parser: PopeParser = Field(
        "first_sentence", description="exact: lmms-eval; first_sentence: LLaVA's eval_pope.py"
    )
    caption_spice: bool = Field(
        False, description="SPICE needs Java and downloads Stanford CoreNLP on first use"
    )
    caption_java: bool = Field(
        True,
        description="where Java is installed, the PTB tokenizer and METEOR run in it (seconds to start "
        "each time); false: the Python tokenizer and no METEOR, as on a machine without Java",
    )
    bench: dict[str, BenchSettings] = Field(default_factory=dict, description="per-benchmark overrides")
    limit: int | None = Field(None, ge=1, description="first N items of every benchmark")
    model: ModelSettings = Field(default_factory=ModelSettings)
    runner: RunnerSettings = Field(default_factory=lambda: RunnerSettings(batch_size=32))
    judge: JudgeSettings = Field(default_factory=JudgeSettings)

    def of(self, name: str) -> BenchSettings:
        return self.bench.get(name, BenchSettings())


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def chat_request(item: EvalItem, image_root: Path) -> ChatRequest:
    content = f"{IMAGE_TAG}\n" * len(item.images) + item.text
    return ChatRequest(
        item.id,
        [{"role": "user", "content": content}],
        [confined_image_path(image_root, p) for p in item.images],
    )


def generate_predictions(
    backend: Backend,
    items: list[EvalItem],
    params: GenerationParams,
    out: Path,
    runner: RunnerSettings,
    image_root: Path,
    identity: dict[str, Any],
    show_progress: bool,
    task: str,
) -> dict[str, dict[str, Any]]:
    def process(batch: list[EvalItem]) -> list[Row]:
        ready, rows = [], {}
        for item in batch:
            try:
                ready.append(chat_request(item, image_root))
            except ValueError as exc:
                rows[item.id] = Row(item.id, error=str(exc))
        for result in backend.generate(ready, params) if ready else []:
            rows[result.id] = (
                Row(result.id, result.texts[0]) if result.texts else Row(result.id, error=result.error)
            )
        return [rows[i.id] for i in batch]

    def finish(item: EvalItem, row: dict[str, Any]) -> dict[str, Any]:
        return {"id": item.id, "prediction": row["value"] if row["ok"] else "", "error": row["error"]}

    run_resumable(
        items,
        lambda i: i.id,
        process,
        out,
        runner.model_copy(update={"limit": None}),
        finish=finish,
        task=task,
        show_progress=show_progress,
        identity=identity,
    )
    return {r["id"]: r for r in (orjson.loads(line) for line in out.read_bytes().splitlines())}


def run_eval(
    model: str,
    data: Path,
    out: Path,
    settings: EvalSettings,
    image_root: Path | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` on every benchmark in `settings.benches`; write and return `OUT/results.json`."""
    with stage_manifest(out, "eval.run", settings, {"model": model, "data": str(data)}) as manifest:
        results = evaluate_benches(model, data, out, settings, image_root, show_progress, manifest.started_at)
        manifest.counts = {name: entry["n"] for name, entry in results["benchmarks"].items()}
        manifest.outputs = {"results.json": fingerprint_file(out / "results.json")}
    return results


def evaluate_benches(
    model: str,
    data: Path,
    out: Path,
    settings: EvalSettings,
    image_root: Path | None = None,
    show_progress: bool = True,
    started_at: float = 0.0,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    image_root = image_root or data
    folder = {name: settings.of(name).data or data for name in settings.benches}
    missing = [
        str(f) for name in settings.benches for f in BENCHES[name].files(folder[name]) if not f.is_file()
    ]
    if missing:
        raise FileNotFoundError(f"benchmark files not found: {', '.join(missing)}")
    if "judge" in settings.benches and not settings.judge.target:
        raise ValueError("the judge benchmark needs a judge: --judge PATH_OR_URL (or judge.target)")
    backend = settings.model.open(model)
    identity = backend.identity()
    results: dict[str, Any] = {
        "model": {"target": model, **identity},
        "versions": versions(),
        "settings": settings.model_dump(mode="json"),
        "benchmarks": {},
    }
    run_info: dict[str, Any] = {"started_at": started_at}
    for name in settings.benches:
        bench, overrides = BENCHES[name], settings.of(name)
        prompt = overrides.prompt or bench.default_prompt
        items = bench.items(folder[name], prompt)[: overrides.limit or settings.limit]
        params = GenerationParams(max_new_tokens=overrides.max_new_tokens or bench.max_new_tokens)
        gen_identity = {"model": identity, "prompt": prompt, "generation": params.model_dump()}
        predictions = (
            generate_predictions(
                backend,
                items,
                params,
                out / "predictions" / f"{name}.jsonl",
                settings.runner,
                image_root,
                gen_identity,
                show_progress,
                name,
            )
            if getattr(bench, "generates", True)
            else {i.id: {"id": i.id, "prediction": "", "error": None} for i in items}
        )
        texts = {i: p["prediction"] for i, p in predictions.items()}
        entry: dict[str, Any] = {
            "prompt": prompt,
            "image_tags": "one '<image>\\n' per image before the prompt",
            "parser": settings.pope_parser if name == "pope" else PARSERS[name],
            "generation": params.model_dump(),
            "chat_format": settings.model.chat_format,
            "data": {str(f): fingerprint_file(f) for f in bench.files(folder[name])},
            "n": len(items),
            "generation_errors": sum(p["error"] is not None for p in predictions.values()),
        }
        if name == "judge":
            records, extra = judge_records(bench, items, texts, settings, out, image_root, run_info)
            entry["judge"] = extra
        elif name == "drift":
            records, extra = drift_records(backend, items, settings), {}
        else:
            records, extra = bench.score(items, texts, settings)
            entry.update({k: v for k, v in extra.items() if k != "metrics"})
        entry["metrics"] = {**bench.aggregate(records), **extra.get("metrics", {})}
        prompts = {i.id: i.text for i in items}
        for record in records:
            record["error"] = predictions[record["id"]]["error"]
            record["prompt"] = prompts[record["id"]]
        entry["samples"] = records
        results["benchmarks"][name] = entry
    run_info["duration_s"] = round(time.perf_counter() - t0, 3)
    results["run"] = run_info
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return results


def drift_records(backend: Backend, items: list[EvalItem], settings: EvalSettings) -> list[dict]:
    from vialign.generation.likelihood import answer_nll_rows
    from vialign.records import Sample

    if not hasattr(backend, "model"):
        raise ValueError("the drift benchmark scores likelihoods: it needs a local checkpoint (transformers)")
    samples = [
        Sample.model_validate(
            {
                "id": i.id,
                "conversations": [
                    {"from": "human", "value": i.text},
                    {"from": "gpt", "value": i.truth["answer"]},
                ],
            }
        )
        for i in items
    ]
    rows = {r["id"]: r for r in answer_nll_rows(backend, samples, chat_format=settings.model.chat_format)}
    return [
        {"id": i.id, "nll": rows.get(i.id, {}).get("nll"), "tokens": rows.get(i.id, {}).get("tokens")}
        for i in items
    ]


def judge_records(
    bench: Any,
    items: list[EvalItem],
    texts: dict[str, str],
    settings: EvalSettings,
    out: Path,
    image_root: Path,
    run_info: dict[str, Any],
) -> tuple[list[dict], dict]:
    judge_settings = settings.judge
    judge = judge_settings.model.open(judge_settings.target)
    cache = ResponseCache(judge_settings.cache or out / "judge_cache.jsonl")
    asked = [
        {
            "id": i.id,
            "question": i.truth["question"],
            "reference": i.truth.get("reference"),
            "images": i.images,
            "answer": texts[i.id],
        }
        for i in items
    ]
    rated = rate_answers(judge, judge_settings, cache, asked, image_root)
    run_info["judge_cache_hits"] = sum(r.pop("cached") for r in rated)
    records = [{**r, "prediction": texts[r["id"]]} for r in rated]
    return records, {
        "identity": judge.identity(),
        "prompt_sha256": fingerprint_bytes(judge_settings.prompt.encode()),
        "prompt": judge_settings.prompt,
        "params": judge_settings.params.model_dump(),
    }


def run_stage(ctx: StageContext) -> None:
    from rich.table import Table

    target, data, image_root = ctx.take("target"), ctx.path("data"), ctx.path("image_root", None)
    results = run_eval(target, data, ctx.out, ctx.settings, image_root, ctx.show_progress)
    view = Table(title=f"{target} on {data}")
    for column in ("benchmark", "metric", "value"):
        view.add_column(column, justify="right" if column == "value" else "left")
    for name, entry in results["benchmarks"].items():
        for metric, value in entry["metrics"].items():
            if "/" not in metric:
                view.add_row(name, metric, f"{value:.4f}")
        for note in entry.get("notes", []):
            ctx.say(f"note {name}: {note}")
    ctx.show(view)
    ctx.say(f"results → {ctx.out / 'results.json'}")
