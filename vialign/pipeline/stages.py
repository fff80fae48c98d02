"""Stage kinds for recipes, by exact name. Each declares its settings model (validated with the same
section defaults as its CLI command; the validated dump is part of the stage's cache key) and the
inputs it reads itself (paths, upstream folders); it calls the library function its CLI command calls
and writes into its own folder."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vialign.config import Settings


@dataclass
class StageContext:
    out: Path
    inputs: dict[str, Any]
    settings: Any
    show_progress: bool
    log: Callable[[str], None]

    def take(self, key: str, default: Any = ...) -> Any:
        if key not in self.inputs:
            if default is ...:
                raise ValueError(f"stage input {key!r} is required")
            return default
        return self.inputs[key]


@dataclass(frozen=True)
class StageKind:
    run: Callable[[StageContext], None]
    settings: str | None  # "module:Class", imported when the stage is prepared (keeps `vialign --help` light)
    inputs: tuple[str, ...] = ()

    def settings_class(self) -> type[Settings] | None:
        if self.settings is None:
            return None
        module, name = self.settings.split(":")
        return getattr(importlib.import_module(module), name)

    def prepare(self, given: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """(inputs, validated settings) from a stage's `with:` mapping."""
        from vialign.config import with_section_defaults

        inputs = {k: v for k, v in given.items() if k in self.inputs}
        rest = {k: v for k, v in given.items() if k not in self.inputs}
        cls = self.settings_class()
        if cls is None:
            if rest:
                raise ValueError(f"unknown settings {sorted(rest)}; this stage reads {list(self.inputs)}")
            return inputs, None
        return inputs, cls.model_validate(with_section_defaults(cls, rest))


STAGES: dict[str, StageKind] = {}


def stage(kind: str, settings: str | None = None, inputs: tuple[str, ...] = ()) -> Callable:
    def register(run: Callable[[StageContext], None]) -> Callable[[StageContext], None]:
        STAGES[kind] = StageKind(run, settings, inputs)
        return run

    return register


@stage("toyworld", "vialign.toyworld.generate:ToyWorldSettings", ())
def toyworld(ctx: StageContext) -> None:
    from vialign.toyworld.generate import generate_toyworld

    generate_toyworld(ctx.out, ctx.settings)


@stage("validate", "vialign.data.validate:ValidateSettings", ("input",))
def validate(ctx: StageContext) -> None:
    from vialign.data.validate import validate_file

    data = ctx.take("input")
    summary = validate_file(data, ctx.out, ctx.settings)
    ctx.log(f"  {summary.valid} valid, {summary.rejected} rejected")


@stage("tiny_model", "vialign.models.tiny:TinyModelSettings", ("toyworld",))
def tiny_model(ctx: StageContext) -> None:
    from vialign.models.loading import build_tiny_model

    build_tiny_model(ctx.take("toyworld", None), ctx.out, ctx.settings)


@stage("train_lm", "vialign.train.lm:LMStageSettings", ("toyworld",))
def train_lm(ctx: StageContext) -> None:
    from vialign.train.lm import train_lm as train

    train(ctx.take("toyworld"), ctx.out, ctx.settings.model, ctx.settings.train)


@stage("assemble", "vialign.models.assemble:AssembleSettings", ("lm",))
def assemble(ctx: StageContext) -> None:
    from vialign.models.assemble import assemble_llava
    from vialign.models.tiny import TinyModelSettings

    lm, settings = ctx.take("lm"), ctx.settings
    vision = settings.vision
    tower = TinyModelSettings(vision=vision.removeprefix("tiny-")) if vision.startswith("tiny-") else vision
    assemble_llava(lm, tower, ctx.out, vision_feature_layer=settings.vision_feature_layer, seed=settings.seed)


@stage("templates", "vialign.data.templates:TemplateSettings", ("data",))
def templates(ctx: StageContext) -> None:
    from vialign.data.templates import find_templates, write_templates
    from vialign.records import read_samples

    data, settings = ctx.take("data"), ctx.settings
    write_templates(find_templates(read_samples(data), settings.min_frac), ctx.out / "templates.json")


@stage("sft", "vialign.train.settings:SFTSettings", ("model", "data", "image_root"))
def sft(ctx: StageContext) -> None:
    from vialign.train.sft import train_sft

    model, data, image_root = ctx.take("model"), ctx.take("data"), ctx.take("image_root", None)
    train_sft(model, data, ctx.out, ctx.settings, image_root=image_root)


@stage("train_rm", "vialign.curate.train:RewardTrainSettings", ("model", "annotations", "kind", "image_root"))
def train_rm(ctx: StageContext) -> None:
    from vialign.curate.train import train_reward_model

    model, annotations, kind = ctx.take("model"), ctx.take("annotations"), ctx.take("kind")
    image_root = ctx.take("image_root", None)
    paths = [Path(a) for a in ([annotations] if isinstance(annotations, str) else annotations)]
    manifest = train_reward_model(model, paths, kind, ctx.out, ctx.settings, image_root=image_root)
    ctx.log(f"  held-out pairwise accuracy {(manifest.counts['heldout'] or {}).get('pairwise_accuracy')}")


@stage("score", "vialign.curate.score:ScoreSettings", ("data", "image_root", "questions_rm", "answers_rm"))
def score(ctx: StageContext) -> None:
    from vialign.curate.score import score_file

    data, image_root = Path(ctx.take("data")), ctx.take("image_root", None)
    paths = {k: ctx.take(f"{k}_rm") for k in ("questions", "answers") if f"{k}_rm" in ctx.inputs}
    score_file(
        data,
        ctx.out / "scored.jsonl",
        paths,
        ctx.settings,
        image_root,
        ctx.show_progress,
    )


@stage("select", "vialign.curate.select:SelectSettings", ("data",))
def select(ctx: StageContext) -> None:
    from vialign.curate.select import select_file

    data = Path(ctx.take("data"))
    decisions, _ = select_file(data, ctx.out, ctx.settings)
    ctx.log(f"  kept {sum(d == 'kept' for d in decisions.values())} of {len(decisions)}")


@stage("rewrite", "vialign.align.rewrite:RewriteSettings", ("data", "llm", "limit"))
def rewrite(ctx: StageContext) -> None:
    """Rewrite the soft samples (the first `limit` of them, if set). Writes `rewrites.jsonl` (those
    samples, rewritten), `original.jsonl` (the same samples as they were) and `rewritten.jsonl` (the whole
    corpus with them replaced: the training data)."""
    from vialign.align.rewrite import rewrite_file
    from vialign.data.formats import classify_sample, is_soft
    from vialign.records import read_jsonl, read_samples, write_jsonl

    data, llm, limit = Path(ctx.take("data")), ctx.take("llm"), ctx.take("limit", None)
    settings = ctx.settings
    corpus = list(read_samples(data))
    chosen = [s for s in corpus if is_soft(classify_sample(s, settings.formats), settings.formats)][:limit]
    write_jsonl(chosen, ctx.out / "original.jsonl")
    rewrite_file(ctx.out / "original.jsonl", llm, ctx.out / "rewrites.jsonl", settings, ctx.show_progress)
    done = {r["id"]: r for r in read_jsonl(ctx.out / "rewrites.jsonl")}
    write_jsonl([done.get(s.id, s.to_json()) for s in corpus], ctx.out / "rewritten.jsonl")
    ctx.log(f"  rewrote {len(done)} soft samples of {len(corpus)}")


@stage("gap", "vialign.align.gap:GapSettings", ("data", "vs", "llm"))
def gap(ctx: StageContext) -> None:
    from vialign.align.gap import gap_files

    datasets = {
        "input": Path(ctx.take("data")),
        **({"vs": Path(ctx.take("vs"))} if "vs" in ctx.inputs else {}),
    }
    gap_files(
        ctx.take("llm"), datasets, ctx.out, subsets=ctx.settings.subsets, chat_format=ctx.settings.chat_format
    )


@stage("sample", "vialign.prefer.sample:SampleSettings", ("data", "target", "image_root", "subsets", "limit"))
def sample(ctx: StageContext) -> None:
    from vialign.prefer.sample import sample_file
    from vialign.records import read_samples, require_meta_field, write_jsonl

    data, model, image_root = Path(ctx.take("data")), ctx.take("target"), ctx.take("image_root", None)
    subsets, limit = ctx.take("subsets", None), ctx.take("limit", None)
    samples = list(read_samples(data))
    if subsets is not None:
        require_meta_field(samples, "subset", str(data), "the sample stage's subsets")
    prompts = [s for s in samples if subsets is None or s.meta.subset in subsets][:limit]
    write_jsonl(prompts, ctx.out / "prompts.jsonl")
    sample_file(
        ctx.out / "prompts.jsonl",
        model,
        ctx.out / "groups.jsonl",
        ctx.settings,
        image_root,
        ctx.show_progress,
    )


@stage("judge", "vialign.prefer.judge:PreferenceJudgeSettings", ("data", "image_root"))
def judge(ctx: StageContext) -> None:
    from vialign.prefer.judge import judge_file

    data, image_root = Path(ctx.take("data")), ctx.take("image_root", None)
    total, rated = judge_file(data, ctx.out / "rated.jsonl", ctx.settings, image_root, ctx.show_progress)
    ctx.log(f"  rated {rated} of {total} groups")


@stage("pairs", "vialign.prefer.pairs:PairSettings", ("data",))
def pairs(ctx: StageContext) -> None:
    from vialign.prefer.pairs import pairs_file

    counts = pairs_file(
        Path(ctx.take("data")), ctx.out / "pairs.jsonl", ctx.settings, ctx.out / "pairs.trl.jsonl"
    )
    ctx.log(f"  {counts['pairs']} pairs from {counts['groups']} groups")


@stage("dpo", "vialign.train.dpo:DPOSettings", ("model", "data", "image_root"))
def dpo(ctx: StageContext) -> None:
    from vialign.train.dpo import train_dpo

    model, data, image_root = ctx.take("model"), ctx.take("data"), ctx.take("image_root", None)
    train_dpo(
        model,
        data,
        ctx.out,
        ctx.settings,
        image_root=image_root,
        show_progress=ctx.show_progress,
    )


@stage("eval", "vialign.evaluate.run:EvalSettings", ("target", "data", "image_root"))
def evaluate(ctx: StageContext) -> None:
    from vialign.evaluate.run import run_eval

    model, data, image_root = ctx.take("target"), Path(ctx.take("data")), ctx.take("image_root", None)
    run_eval(model, data, ctx.out, ctx.settings, Path(image_root) if image_root else None, ctx.show_progress)


@stage("report", "vialign.report.html:ReportSettings", ())
def report(ctx: StageContext) -> None:
    from vialign.report.html import write_report

    write_report(ctx.out, ctx.settings)
