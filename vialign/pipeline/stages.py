"""Stage kinds for recipes, by exact name. Each reads its settings (paths already resolved), calls the
library function the matching CLI command calls, and writes into its own folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


@dataclass
class StageContext:
    out: Path
    settings: dict[str, Any]
    show_progress: bool
    log: Callable[[str], None]

    def take(self, key: str, default: Any = ...) -> Any:
        if key not in self.settings:
            if default is ...:
                raise ValueError(f"stage setting {key!r} is required")
            return default
        return self.settings.pop(key)


def build(cls: type, settings: dict[str, Any]) -> Any:
    """A stage's settings as its CLI command would read them (section defaults kept)."""
    from vialign.config import with_section_defaults

    return cls.model_validate(with_section_defaults(cls, settings))


def toyworld(ctx: StageContext) -> None:
    from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld

    generate_toyworld(ctx.out, build(ToyWorldSettings, ctx.settings))


def validate(ctx: StageContext) -> None:
    from vialign.data.validate import ValidateSettings, validate_file

    data = ctx.take("input")
    summary = validate_file(data, ctx.out, build(ValidateSettings, ctx.settings))
    ctx.log(f"  {summary.valid} valid, {summary.rejected} rejected")


def tiny_model(ctx: StageContext) -> None:
    from vialign.models.loading import build_tiny_model
    from vialign.models.tiny import TinyModelSettings

    build_tiny_model(ctx.take("toyworld", None), ctx.out, build(TinyModelSettings, ctx.settings))


def train_lm(ctx: StageContext) -> None:
    from vialign.models.tiny import TinyModelSettings
    from vialign.train.lm import train_lm as train
    from vialign.train.settings import LMTrainSettings

    train(
        ctx.take("toyworld"),
        ctx.out,
        build(TinyModelSettings, ctx.take("model", {})),
        build(LMTrainSettings, ctx.take("train", {})),
    )


def assemble(ctx: StageContext) -> None:
    from vialign.models.assemble import assemble_llava
    from vialign.models.tiny import TinyModelSettings

    vision = ctx.take("vision", "tiny-clip")
    tower = TinyModelSettings(vision="clip") if vision == "tiny-clip" else vision
    assemble_llava(ctx.take("lm"), tower, ctx.out, vision_feature_layer=ctx.take("vision_feature_layer", -1))


def templates(ctx: StageContext) -> None:
    from vialign.data.templates import find_templates, write_templates
    from vialign.records import read_samples

    write_templates(
        find_templates(read_samples(ctx.take("data")), ctx.take("min_frac", 0.1)), ctx.out / "templates.json"
    )


def sft(ctx: StageContext) -> None:
    from vialign.train.settings import SFTSettings
    from vialign.train.sft import train_sft

    model, data, image_root = ctx.take("model"), ctx.take("data"), ctx.take("image_root", None)
    train_sft(model, data, ctx.out, build(SFTSettings, ctx.settings), image_root=image_root)


def train_rm(ctx: StageContext) -> None:
    from vialign.curate.train import RewardTrainSettings, train_reward_model

    model, annotations, kind = ctx.take("model"), ctx.take("annotations"), ctx.take("kind")
    image_root = ctx.take("image_root", None)
    paths = [Path(a) for a in ([annotations] if isinstance(annotations, str) else annotations)]
    manifest = train_reward_model(
        model, paths, kind, ctx.out, build(RewardTrainSettings, ctx.settings), image_root=image_root
    )
    ctx.log(f"  held-out pairwise accuracy {(manifest.counts['heldout'] or {}).get('pairwise_accuracy')}")


def score(ctx: StageContext) -> None:
    from vialign.curate.score import ScoreSettings, score_file

    data, image_root = Path(ctx.take("data")), ctx.take("image_root", None)
    paths = {k: ctx.take(f"{k}_rm") for k in ("questions", "answers") if f"{k}_rm" in ctx.settings}
    score_file(
        data,
        ctx.out / "scored.jsonl",
        paths,
        build(ScoreSettings, ctx.settings),
        image_root,
        ctx.show_progress,
    )


def select(ctx: StageContext) -> None:
    from vialign.curate.select import SelectSettings, select_file

    data = Path(ctx.take("data"))
    decisions, _ = select_file(data, ctx.out, build(SelectSettings, ctx.settings))
    ctx.log(f"  kept {sum(d == 'kept' for d in decisions.values())} of {len(decisions)}")


def rewrite(ctx: StageContext) -> None:
    """Rewrite the soft samples (the first `limit` of them, if set). Writes `rewrites.jsonl` (those
    samples, rewritten), `original.jsonl` (the same samples as they were) and `rewritten.jsonl` (the whole
    corpus with them replaced: the training data)."""
    from vialign.align.rewrite import RewriteSettings, rewrite_file
    from vialign.data.formats import classify_sample, is_soft
    from vialign.records import read_jsonl, read_samples, write_jsonl

    data, llm, limit = Path(ctx.take("data")), ctx.take("llm"), ctx.take("limit", None)
    settings = build(RewriteSettings, ctx.settings)
    corpus = list(read_samples(data))
    chosen = [s for s in corpus if is_soft(classify_sample(s, settings.formats), settings.formats)][:limit]
    write_jsonl(chosen, ctx.out / "original.jsonl")
    rewrite_file(ctx.out / "original.jsonl", llm, ctx.out / "rewrites.jsonl", settings, ctx.show_progress)
    done = {r["id"]: r for r in read_jsonl(ctx.out / "rewrites.jsonl")}
    write_jsonl([done.get(s.id, s.to_json()) for s in corpus], ctx.out / "rewritten.jsonl")
    ctx.log(f"  rewrote {len(done)} soft samples of {len(corpus)}")


def gap(ctx: StageContext) -> None:
    from vialign.align.gap import gap_files

    llm, subsets, chat_format = (
        ctx.take("llm"),
        ctx.take("subsets", None),
        ctx.take("chat_format", "vicuna_v1"),
    )
    datasets = {
        "input": Path(ctx.take("data")),
        **({"vs": Path(ctx.take("vs"))} if "vs" in ctx.settings else {}),
    }
    gap_files(llm, datasets, ctx.out, subsets=subsets, chat_format=chat_format)


def sample(ctx: StageContext) -> None:
    from vialign.prefer.sample import SampleSettings, sample_file
    from vialign.records import read_samples, require_meta_field, write_jsonl

    data, model, image_root = Path(ctx.take("data")), ctx.take("target"), ctx.take("image_root", None)
    subsets, limit = ctx.take("subsets", None), ctx.take("limit", None)
    samples = list(read_samples(data))
    if subsets is not None:
        require_meta_field(samples, "subset", str(data), "the sample stage's subsets")
    prompts = [s for s in samples if subsets is None or s.meta.subset in subsets][:limit]
    write_jsonl(prompts, ctx.out / "prompts.jsonl")
    sample_file(ctx.out / "prompts.jsonl", model, ctx.out / "groups.jsonl", build(SampleSettings, ctx.settings), image_root,
                ctx.show_progress)  # fmt: skip


def judge(ctx: StageContext) -> None:
    from vialign.prefer.judge import PreferenceJudgeSettings, judge_file

    data, image_root = Path(ctx.take("data")), ctx.take("image_root", None)
    total, rated = judge_file(data, ctx.out / "rated.jsonl", build(PreferenceJudgeSettings, ctx.settings), image_root,
                              ctx.show_progress)  # fmt: skip
    ctx.log(f"  rated {rated} of {total} groups")


def pairs(ctx: StageContext) -> None:
    from vialign.prefer.pairs import PairSettings, build_pairs, trl_record
    from vialign.records import read_jsonl, write_jsonl

    made, counts = build_pairs(list(read_jsonl(ctx.take("data"))), build(PairSettings, ctx.settings))
    write_jsonl(made, ctx.out / "pairs.jsonl")
    write_jsonl([trl_record(p) for p in made], ctx.out / "pairs.trl.jsonl")
    (ctx.out / "counts.json").write_bytes(orjson.dumps(counts))
    ctx.log(f"  {counts['pairs']} pairs from {counts['groups']} groups")


def dpo(ctx: StageContext) -> None:
    from vialign.train.dpo import DPOSettings, train_dpo

    model, data, image_root = ctx.take("model"), ctx.take("data"), ctx.take("image_root", None)
    train_dpo(
        model,
        data,
        ctx.out,
        build(DPOSettings, ctx.settings),
        image_root=image_root,
        show_progress=ctx.show_progress,
    )


def evaluate(ctx: StageContext) -> None:
    from vialign.evaluate.run import EvalSettings, run_eval

    model, data, image_root = ctx.take("target"), Path(ctx.take("data")), ctx.take("image_root", None)
    run_eval(model, data, ctx.out, build(EvalSettings, ctx.settings), Path(image_root) if image_root else None,
             ctx.show_progress)  # fmt: skip


def report(ctx: StageContext) -> None:
    from vialign.report.html import ReportSettings, write_report

    write_report(ctx.out, build(ReportSettings, ctx.settings))


STAGES: dict[str, Callable[[StageContext], None]] = {
    "toyworld": toyworld,
    "validate": validate,
    "tiny_model": tiny_model,
    "train_lm": train_lm,
    "assemble": assemble,
    "templates": templates,
    "sft": sft,
    "train_rm": train_rm,
    "score": score,
    "select": select,
    "rewrite": rewrite,
    "gap": gap,
    "sample": sample,
    "judge": judge,
    "pairs": pairs,
    "dpo": dpo,
    "eval": evaluate,
    "report": report,
}
