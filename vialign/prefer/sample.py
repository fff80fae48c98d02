"""`vialign prefer sample`: K answers per prompt from the SFT model, sampled, through the resumable runner.

A prompt is a sample's first question (with its image); the output group keeps the sample's id, image,
question and ground truth (if any), and the K responses with the sampler's identity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from vialign.config import Settings
from vialign.generation.base import Backend, ChatRequest, GenerationParams, ModelSettings
from vialign.generation.runner import Row, RunnerSettings
from vialign.records import Sample, confined_image_path
from vialign.stage import StageContext


class SampleSettings(Settings):
    k: int = Field(4, ge=2, description="responses per prompt")
    subsets: list[str] | None = Field(None, description="prompts only from these subsets (default all)")
    params: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_new_tokens=128, temperature=1.0, top_p=0.95)
    )
    model: ModelSettings = Field(default_factory=ModelSettings)
    runner: RunnerSettings = Field(default_factory=lambda: RunnerSettings(batch_size=16))


def prompt_group(sample: Sample) -> dict[str, Any]:
    if not sample.questions:
        raise ValueError(f"sample {sample.id!r} has no question")
    return {
        "id": sample.id,
        "image": sample.image,
        "question": sample.questions[0],
        "truth": sample.meta.truth,
    }


class ResponseSampler:
    def __init__(self, backend: Backend, settings: SampleSettings, image_root: str | None):
        self.backend, self.settings, self.image_root = backend, settings, image_root
        self.params = settings.params.model_copy(update={"n": settings.k})

    def __call__(self, batch: list[Sample]) -> list[Row]:
        requests = [
            ChatRequest(
                s.id,
                [{"role": "user", "content": s.questions[0]}],
                [confined_image_path(self.image_root or ".", p) for p in s.images],
            )
            for s in batch
        ]
        rows = []
        for sample, result in zip(batch, self.backend.generate(requests, self.params), strict=True):
            if result.texts is None:
                rows.append(Row(sample.id, error=result.error))
            else:
                rows.append(Row(sample.id, {"responses": result.texts}))
        return rows


def sampled_group(
    sample: Sample, row: dict[str, Any], identity: dict[str, Any], params: GenerationParams
) -> dict:
    group = prompt_group(sample)
    if row["ok"]:
        return {
            **group,
            "responses": row["value"]["responses"],
            "sampler": {**identity, "params": params.model_dump()},
        }
    return {**group, "responses": None, "error": row["error"]}


def sample_file(
    input: Path,
    model: str,
    out: Path,
    settings: SampleSettings,
    image_root: str | Path | None = None,
    show_progress: bool = True,
):
    """K responses for every sample's first question into `out` (resumable)."""
    from vialign.generation.runner import run_resumable
    from vialign.records import read_samples, require_meta_field

    samples = list(read_samples(input))
    if settings.subsets is not None:
        require_meta_field(samples, "subset", str(input), "sample's subsets")
        samples = [s for s in samples if s.meta.subset in settings.subsets]
    backend = settings.model.open(model)
    sampler = ResponseSampler(backend, settings, str(image_root) if image_root else None)
    identity = {**backend.identity(), "params": sampler.params.model_dump()}
    return run_resumable(
        samples,
        lambda s: s.id,
        sampler,
        out,
        settings.runner,
        finish=lambda s, row: sampled_group(s, row, backend.identity(), sampler.params),
        task="sample",
        show_progress=show_progress,
        identity=identity,
    )


def run_stage(ctx: StageContext) -> None:
    s = ctx.settings
    report = sample_file(
        ctx.path("data"), ctx.take("target"), ctx.out, s, ctx.take("image_root", None), ctx.show_progress
    )
    ctx.say(
        f"sampled {s.k} responses for {report.selected - len(report.failed)} prompts "
        f"({report.reused} reused, {len(report.failed)} failed) → {ctx.out}"
    )
