"""Score a corpus with the question and/or answer reward models, resumably and in batches.

Each sample gets `meta.curation`: `question_score` (its questions as one set), `answer_scores` (one per
question/answer turn) and `answer_score` (their mean). Preprocessing comes from each reward model's card;
asking for different preprocessing is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from vialign.config import Settings
from vialign.curate.reward import (
    InputTooLong,
    LoadedRewardModel,
    PreprocessSettings,
    RewardInputs,
    RewardKind,
    answer_text,
    load_reward_model,
    questions_text,
)
from vialign.curate.train import RewardCollator, RewardExample, score_examples
from vialign.generation.runner import Row, RunnerSettings
from vialign.models.precision import ComputeDtype, Dtype, default_device, resolve_dtype, weight_dtype
from vialign.records import ImagePathError, Sample, existing_images
from vialign.stage import StageContext


class ScoreSettings(Settings):
    runner: RunnerSettings = Field(default_factory=lambda: RunnerSettings(batch_size=32))
    forward_batch: int = Field(8, ge=1, description="samples per forward pass (all their turns together)")
    preprocess: PreprocessSettings | None = Field(
        None, description="if given, must equal what the reward models were trained with"
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:1 ...; default: cuda when available")
    dtype: Dtype = Field(
        "auto",
        description="compute dtype; auto: bfloat16 where the GPU or CPU does it natively, else float32",
    )


class PreprocessMismatch(ValueError):
    pass


def check_preprocess(loaded: LoadedRewardModel, wanted: PreprocessSettings | None) -> None:
    trained = loaded.card.preprocess
    if wanted is not None and wanted != trained:
        diff = {
            k: (v, getattr(wanted, k)) for k, v in trained.model_dump().items() if getattr(wanted, k) != v
        }
        raise PreprocessMismatch(
            f"{loaded.path} was trained with preprocessing {trained.model_dump()}; scoring asked for "
            + ", ".join(f"{k}={w!r} (trained: {t!r})" for k, (t, w) in diff.items())
            + ". Scores are only meaningful with the training preprocessing; drop the override."
        )


def model_inputs(sample: Sample, kind: RewardKind) -> list[str]:
    n = len(sample.images)
    if kind == "questions":
        return [questions_text(sample.questions, n)] if sample.questions else []
    return [answer_text(q, a, n) for q, a in zip(sample.questions, sample.answers, strict=False)]


class CurationScorer:
    """The runner's `process`: a batch of samples → one row of scores per sample."""

    def __init__(
        self,
        models: dict[RewardKind, LoadedRewardModel],
        image_root: str | Path | None,
        forward_batch: int,
        compute: ComputeDtype = "float32",
    ):
        self.models, self.image_root, self.forward_batch = models, image_root, forward_batch
        self.compute = compute
        self.inputs: dict[RewardKind, RewardInputs] = {k: m.inputs for k, m in models.items()}

    def __call__(self, batch: list[Sample]) -> list[Row]:
        values: dict[str, dict[str, Any]] = {s.id: {} for s in batch}
        errors: dict[str, str] = {}
        images = {}
        for sample in batch:
            try:
                images[sample.id] = existing_images(self.image_root, sample.images)
            except (ImagePathError, FileNotFoundError) as exc:
                errors[sample.id] = str(exc)
        for kind, loaded in self.models.items():
            examples = []
            for sample in batch:
                if sample.id in errors:
                    continue
                try:
                    texts = model_inputs(sample, kind)
                    candidates = [self.inputs[kind].ids(t, images[sample.id]) for t in texts]
                except InputTooLong as exc:
                    errors[sample.id] = f"{kind}: {exc}"
                    continue
                examples.append(RewardExample(sample.id, candidates, images[sample.id], [], len(candidates)))
            usable = [e for e in examples if e.candidates]
            collator = RewardCollator(self.inputs[kind].tokenizer.pad_token_id, self.inputs[kind])
            scores = dict(
                zip(
                    [e.group_id for e in usable],
                    score_examples(loaded.model, collator, usable, self.forward_batch, self.compute),
                    strict=True,
                )
            )
            for e in examples:
                values[e.group_id].update(scores_value(kind, scores.get(e.group_id, [])))
        return [Row(s.id, error=errors[s.id]) if s.id in errors else Row(s.id, values[s.id]) for s in batch]


def scores_value(kind: RewardKind, scores: list[float]) -> dict[str, Any]:
    if kind == "questions":
        return {"question_score": scores[0] if scores else None}
    return {"answer_scores": scores, "answer_score": sum(scores) / len(scores) if scores else None}


def load_scorers(
    paths: dict[RewardKind, str | Path], settings: ScoreSettings
) -> dict[RewardKind, LoadedRewardModel]:
    if not paths:
        raise ValueError("give at least one reward model (--questions-rm and/or --answers-rm)")
    models = {}
    for kind, path in paths.items():
        device = default_device(settings.device)
        loaded = load_reward_model(
            path, device=device, dtype=weight_dtype(resolve_dtype(settings.dtype, device), device)
        )
        if loaded.card.kind != kind:
            raise ValueError(f"{path} is a {loaded.card.kind!r} reward model, given as the {kind!r} one")
        check_preprocess(loaded, settings.preprocess)
        models[kind] = loaded
    return models


def scorer_factory(
    paths: dict[RewardKind, str | Path], settings: ScoreSettings, image_root: str | Path | None
):
    """Builds the scorer inside a Ray actor (one copy of the models per actor)."""
    compute = resolve_dtype(settings.dtype, default_device(settings.device))
    return lambda: CurationScorer(load_scorers(paths, settings), image_root, settings.forward_batch, compute)


def scored_record(sample: Sample, row: dict[str, Any]) -> dict[str, Any]:
    record = sample.to_json()
    curation = row["value"] if row["ok"] else {"error": row["error"]}
    record.setdefault("meta", {})["curation"] = curation
    return record


def score_file(
    input: Path,
    out: Path,
    paths: dict[RewardKind, str | Path],
    settings: ScoreSettings,
    image_root: str | Path | None = None,
    show_progress: bool = True,
):
    """Score every sample of `input` into `out` (resumable); writes OUT's manifest beside it."""
    from vialign.generation.runner import run_resumable
    from vialign.manifest import fingerprint_file, stage_manifest
    from vialign.records import read_samples

    with stage_manifest(out.parent / f"{out.stem}.manifest", "curate.score") as manifest:
        models = load_scorers(paths, settings)
        identity = {
            k: {
                "path": str(m.path),
                "fingerprint": m.fingerprint,
                "preprocess": m.card.preprocess.model_dump(),
            }
            for k, m in models.items()
        }
        runner = settings.runner
        scorer = (
            CurationScorer(models, image_root, settings.forward_batch) if runner.engine == "local" else None
        )
        report = run_resumable(
            list(read_samples(input)),
            lambda s: s.id,
            scorer,
            out,
            runner,
            finish=scored_record,
            ray_factory=scorer_factory(paths, settings, image_root),
            task="score",
            show_progress=show_progress,
            identity=identity,
        )
        manifest.inputs = {
            str(input): fingerprint_file(input),
            **{f"{k}_rm": v["fingerprint"] for k, v in identity.items()},
        }
        manifest.settings = {**settings.model_dump(mode="json"), "reward_models": identity}
        manifest.counts = {
            "selected": report.selected,
            "reused": report.reused,
            "processed": report.processed,
            "failed": len(report.failed),
        }
        manifest.outputs = {str(out): fingerprint_file(out)}
    return report


def run_stage(ctx: StageContext) -> None:
    paths = {k: ctx.take(f"{k}_rm") for k in ("questions", "answers") if ctx.take(f"{k}_rm", None)}
    report = score_file(
        ctx.path("data"), ctx.out, paths, ctx.settings, ctx.take("image_root", None), ctx.show_progress
    )
    ctx.say(
        f"scored {report.selected} samples ({report.reused} reused, {report.processed} processed, "
        f"{len(report.failed)} failed) → {ctx.out}"
    )
    for sample_id, error in list(report.failed.items())[:5]:
        ctx.say(f"  failed {sample_id}: {error}")
