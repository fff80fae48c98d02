"""`vialign align own-answers`: the inner LLM's own answers to a corpus's soft-format questions, text only.

The control arm of the writing-manner claims: tuning on these answers takes the same steps as tuning on
the teacher's or on the rewrites, in the LLM's own manner throughout (their content is the LLM's guess,
since it does not see the image). A drift that appears after tuning on them too comes from tuning, not
from the teacher's manner. Each question is asked after the sample's earlier questions and the LLM's own
earlier answers; hard-format samples pass through untouched.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from pydantic import Field

from vialign.align.rewrite import InnerLLMSettings, keep_original_on_failure, open_rewriter
from vialign.generation.base import Backend, ChatRequest, GenerationParams
from vialign.generation.runner import Row
from vialign.records import GPT, IMAGE_TAG, Sample
from vialign.stage import StageContext


class OwnAnswerSettings(InnerLLMSettings):
    answer_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=256))


def question_text(value: str) -> str:
    """A user turn as the text-only LLM is asked it: without its image tags."""
    return " ".join(value.replace(IMAGE_TAG, " ").split())


class OwnAnswerer:
    """The stage function: a batch of samples in, one row per sample out (soft ones answered anew)."""

    def __init__(self, backend: Backend, settings: OwnAnswerSettings):
        self.backend, self.settings = backend, settings

    def __call__(self, batch: list[Sample]) -> list[Row]:
        soft = {s.id: s for s in self.settings.soft_samples(batch)}
        history: dict[str, list[dict[str, str]]] = {sid: [] for sid in soft}
        answers: dict[str, dict[int, str]] = {sid: {} for sid in soft}
        errors: dict[str, str] = {}
        rounds = max((len(s.conversations) for s in soft.values()), default=0)
        for k in range(rounds):  # turn k of every sample at once, after its own earlier answers
            asked = {
                sid: s.conversations[k].value
                for sid, s in soft.items()
                if sid not in errors and k < len(s.conversations) and s.conversations[k].role != GPT
            }
            for sid, question in asked.items():
                history[sid].append({"role": "user", "content": question_text(question)})
            requests = [
                ChatRequest(sid, list(history[sid]))
                for sid in asked
                if k + 1 < len(soft[sid].conversations) and soft[sid].conversations[k + 1].role == GPT
            ]
            for result in self.backend.generate(requests, self.settings.answer_params) if requests else []:
                if not result.texts:
                    errors[result.id] = f"turn {k + 1}: {result.error}"
                    continue
                answers[result.id][k + 1] = result.texts[0].strip()
                history[result.id].append({"role": "assistant", "content": result.texts[0].strip()})
        rows = []
        for sample in batch:
            if sample.id in errors:
                rows.append(Row(sample.id, error=errors[sample.id]))
            elif sample.id in soft:
                rows.append(Row(sample.id, self.answered(sample, answers[sample.id]).to_json()))
            else:
                rows.append(Row(sample.id, sample.to_json()))
        return rows

    def answered(self, sample: Sample, own: dict[int, str]) -> Sample:
        out = sample.model_copy(deep=True)
        turns = []
        for k, text in sorted(own.items()):
            turns.append({"turn": k, "original": out.conversations[k].value, "own": text})
            out.conversations[k].value = text
        out.meta.provenance.append({"stage": "align.own_answers", **self.backend.identity(), "turns": turns})
        return out


def make_answerer(target: str, settings: OwnAnswerSettings) -> OwnAnswerer:
    return OwnAnswerer(open_rewriter(target, settings), settings)


def own_answers_file(
    input: Path, llm: str, out: Path, settings: OwnAnswerSettings, show_progress: bool = True
):
    """Answer the soft samples of `input` (the first `runner.limit` of them, if set) resumably into
    OUT.answers.jsonl; write `out`, every record of `input` with those samples answered anew."""
    from vialign.generation.runner import run_resumable
    from vialign.manifest import fingerprint_file, stage_manifest
    from vialign.records import read_jsonl, read_samples, write_jsonl

    answered = out.with_name(f"{out.stem}.answers.jsonl")
    with stage_manifest(out.parent / f"{out.stem}.manifest", "align.own_answers") as manifest:
        corpus = list(read_samples(input))
        soft = settings.soft_samples(corpus)
        local = settings.runner.engine == "local"
        report = run_resumable(
            soft,
            lambda s: s.id,
            make_answerer(llm, settings) if local else None,
            answered,
            settings.runner,
            finish=partial(keep_original_on_failure, stage="align.own_answers"),
            ray_factory=partial(make_answerer, llm, settings),
            task="own answers",
            show_progress=show_progress,
        )
        done = {r["id"]: r for r in read_jsonl(answered)}
        write_jsonl([done.get(s.id, s.to_json()) for s in corpus], out)
        manifest.inputs = {str(input): fingerprint_file(input), "llm": llm}
        manifest.settings = settings.model_dump(mode="json")
        manifest.counts = {
            "records": len(corpus),
            "soft": len(soft),
            "answered": len(done),
            "reused": report.reused,
            "failed": len(report.failed),
        }
        manifest.outputs = {str(out): fingerprint_file(out)}
    return manifest


def run_stage(ctx: StageContext) -> None:
    manifest = own_answers_file(ctx.path("data"), ctx.take("llm"), ctx.out, ctx.settings, ctx.show_progress)
    c = manifest.counts
    ctx.say(f"{c['answered']} of {c['soft']} soft samples answered by the LLM itself → {ctx.out}")
