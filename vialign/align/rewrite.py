"""`vialign align rewrite`: the inner LLM restates soft-format answers in its own manner, then the
same LLM reviews each rewrite for unchanged meaning (METHODS.md section 1).

Hard-format samples pass through untouched. A rewrite that the review does not accept, or whose
review cannot be parsed, leaves the original answer. Every soft sample records, per answer, the
original, the rewrite, the verdict, and which text was kept, with the backend's identity.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from vialign.align.prompts import DEFAULT_CLAIM_PROMPT, DEFAULT_REVIEW_PROMPT, DEFAULT_REWRITE_PROMPT
from vialign.choices import BackendName, ChatFormatName
from vialign.config import Settings
from vialign.data.formats import FormatSettings, classify_sample, is_soft
from vialign.generation.base import Backend, ChatRequest, GenerationParams, ModelSettings
from vialign.generation.runner import Row, RunnerSettings
from vialign.manifest import fingerprint_bytes
from vialign.models.precision import Dtype
from vialign.records import GPT, Sample
from vialign.stage import StageContext

Verdict = Literal["same", "different", "unparsable"]


class RewriteExample(Settings):
    text: str
    rewrite: str


class ReviewExample(Settings):
    original: str
    rewrite: str
    same: bool


class InnerLLMSettings(Settings):
    """How a stage asks the inner LLM (text only) about the soft-format samples of a corpus."""

    backend: BackendName | None = Field(None, description="default: from --llm")
    chat_format: ChatFormatName = "vicuna_v1"
    model_name: str | None = Field(None, description="model name for the openai backend")
    api_key_env: str = "OPENAI_API_KEY"
    dtype: Dtype = Field("auto", description="local checkpoints: compute dtype (auto: bfloat16 where native)")
    formats: FormatSettings = Field(default_factory=FormatSettings)
    runner: RunnerSettings = Field(default_factory=RunnerSettings)

    def soft_samples(self, samples: list[Sample]) -> list[Sample]:
        return [s for s in samples if is_soft(classify_sample(s, self.formats), self.formats)]


class RewriteSettings(InnerLLMSettings):
    rewrite_prompt: str = DEFAULT_REWRITE_PROMPT
    review_prompt: str = DEFAULT_REVIEW_PROMPT
    rewrite_examples: list[RewriteExample] = Field(
        default_factory=list,
        description="few-shot turns before each rewrite request: the prompt on `text`, then `rewrite`",
    )
    review_examples: list[ReviewExample] = Field(
        default_factory=list, description="few-shot turns before each review request, answered Yes or No"
    )
    max_length_ratio: float | None = Field(
        None, gt=0.0, description="cap a rewrite at this many times the original's tokens, plus 8"
    )
    rewrite_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=512))
    review_params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=8))
    review_min_yes: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="accept a rewrite only when P(Yes) / (P(Yes) + P(No)) for the review's first token reaches "
        "this; needs a backend that scores options (transformers)",
    )
    review: Literal["verdict", "claims"] = Field(
        "verdict",
        description="verdict: the LLM answers the review prompt; claims: every sentence or list item of "
        "each text is checked against the other (claim_prompt, scored by P(Yes)), the weakest decides "
        "(needs review_min_yes and a backend that scores options)",
    )
    claim_prompt: str = DEFAULT_CLAIM_PROMPT

    @field_validator("rewrite_prompt")
    @classmethod
    def _rewrite_slots(cls, value: str) -> str:
        if "{text}" not in value:
            raise ValueError("rewrite_prompt must contain {text}")
        return value

    @field_validator("review_prompt")
    @classmethod
    def _review_slots(cls, value: str) -> str:
        if "{original}" not in value or "{rewrite}" not in value:
            raise ValueError("review_prompt must contain {original} and {rewrite}")
        return value

    @field_validator("claim_prompt")
    @classmethod
    def _claim_slots(cls, value: str) -> str:
        if "{text}" not in value or "{claim}" not in value:
            raise ValueError("claim_prompt must contain {text} and {claim}")
        return value

    @model_validator(mode="after")
    def _candidates_need_a_score(self) -> RewriteSettings:
        if self.rewrite_params.n > 1 and self.review_min_yes is None:
            raise ValueError(
                "rewrite_params.n > 1 keeps the best-reviewed of n rewrites, ranked by P(Yes): set review_min_yes"
            )
        return self

    @model_validator(mode="after")
    def _claims_need_a_threshold(self) -> RewriteSettings:
        if self.review == "claims" and self.review_min_yes is None:
            raise ValueError(
                "review 'claims' accepts a rewrite when its weakest claim's P(Yes) reaches review_min_yes: set it"
            )
        return self


_CLAIM_SPLIT = re.compile(r"(?<=[.!?])\s+|;\s+|,\s+and\s+|:\s+")


def claim_units(text: str) -> list[str]:
    """A text's sentences and list items: what the claims review checks one at a time."""
    return [unit.strip() for unit in _CLAIM_SPLIT.split(text) if len(unit.strip()) > 3]


def parse_verdict(text: str) -> Verdict:
    words = re.findall(r"[a-z]+", text.lower())
    if not words:
        return "unparsable"
    return {"yes": "same", "no": "different"}.get(words[0], "unparsable")


def open_rewriter(target: str, settings: InnerLLMSettings) -> Backend:
    return ModelSettings(
        backend=settings.backend,
        chat_format=settings.chat_format,
        model_name=settings.model_name,
        api_key_env=settings.api_key_env,
        dtype=settings.dtype,
    ).open(target)


def conversation(shots: list[tuple[str, str]], prompt: str) -> list[dict[str, str]]:
    """Few-shot turns (each a user prompt and the answer shown), then the prompt itself."""
    turns = [
        m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})
    ]
    return [*turns, {"role": "user", "content": prompt}]


def ask(
    backend: Backend,
    prompts: dict[str, str],
    params: GenerationParams,
    shots: list[tuple[str, str]] = (),
    limits: dict[str, int] | None = None,
) -> dict[str, Any]:
    """{key: its `params.n` texts, or an Exception} for one batch of prompts (after the same few-shot
    turns)."""
    requests = [
        ChatRequest(key, conversation(list(shots), prompt), max_new_tokens=(limits or {}).get(key))
        for key, prompt in prompts.items()
    ]
    return {r.id: (r.texts if r.texts else RuntimeError(r.error)) for r in backend.generate(requests, params)}


def first_texts(answers: dict[str, Any]) -> dict[str, Any]:
    return {key: texts[0] if isinstance(texts, list) else texts for key, texts in answers.items()}


def changed(original: str, rewrite: str) -> bool:
    return rewrite.strip() not in ("", original.strip())


def token_count(backend: Backend, text: str) -> int:
    tokenizer = getattr(backend, "tokenizer", None)
    # an API model's tokenizer is unknown here; about 3 characters a token is a safe overestimate
    return (
        len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if tokenizer is not None
        else len(text) // 3 + 1
    )


class Rewriter:
    """The stage function: a batch of samples in, one row per sample out."""

    def __init__(self, backend: Backend, settings: RewriteSettings):
        if (settings.review_min_yes is not None or settings.review == "claims") and not hasattr(
            backend, "option_probs"
        ):
            raise ValueError(f"review_min_yes needs a backend that scores options; {backend.name} cannot")
        self.backend, self.settings = backend, settings
        self.rewrite_shots = [
            (settings.rewrite_prompt.format(text=e.text), e.rewrite) for e in settings.rewrite_examples
        ]
        self.review_shots = [
            (settings.review_prompt.format(original=e.original, rewrite=e.rewrite), "Yes" if e.same else "No")
            for e in settings.review_examples
        ]
        shown = [
            settings.rewrite_prompt,
            settings.review_prompt,
            repr(self.rewrite_shots),
            repr(self.review_shots),
        ]
        self.identity = {
            **backend.identity(),
            "rewrite_prompt": fingerprint_bytes(shown[0].encode()),
            "review_prompt": fingerprint_bytes(shown[1].encode()),
            **(
                {"examples": fingerprint_bytes("\0".join(shown[2:]).encode())}
                if settings.rewrite_examples or settings.review_examples
                else {}
            ),
            **(
                {"review": "claims", "claim_prompt": fingerprint_bytes(settings.claim_prompt.encode())}
                if settings.review == "claims"
                else {}
            ),
        }

    def __call__(self, batch: list[Sample]) -> list[Row]:
        soft = self.settings.soft_samples(batch)
        answers = {
            f"{s.id}#{k}": t.value for s in soft for k, t in enumerate(s.conversations) if t.role == GPT
        }
        ratio = self.settings.max_length_ratio
        limits = (
            {k: int(ratio * token_count(self.backend, t)) + 8 for k, t in answers.items()} if ratio else None
        )
        generated = ask(
            self.backend,
            {key: self.settings.rewrite_prompt.format(text=text) for key, text in answers.items()},
            self.settings.rewrite_params,
            self.rewrite_shots,
            limits,
        )
        failed = {key: texts for key, texts in generated.items() if not isinstance(texts, list)}
        candidates = {
            f"{key}~{c}": (answers[key], text)
            for key, texts in generated.items()
            if key not in failed
            for c, text in enumerate(texts)
        }
        reviews, scores = self.review(candidates)
        chosen = {
            key: self.best_candidate(key, len(texts), candidates, scores)
            for key, texts in generated.items()
            if key not in failed
        }
        rows = []
        for sample in batch:
            if sample not in soft:
                rows.append(Row(sample.id, sample.to_json()))
                continue
            errors = [
                f"{k.split('~')[0]}: {v}"
                for k, v in {**failed, **reviews}.items()
                if k.startswith(f"{sample.id}#") and not isinstance(v, str)
            ]
            if errors:
                rows.append(Row(sample.id, error="; ".join(errors)))
                continue
            rows.append(Row(sample.id, self.rewritten(sample, chosen, candidates, reviews, scores).to_json()))
        return rows

    def review(self, candidates: dict[str, tuple[str, str]]) -> tuple[dict[str, Any], dict[str, float]]:
        """Each (original, rewrite) pair's review text and, where the review scores, its P(Yes)."""
        if self.settings.review == "claims":
            scores = self.weakest_claims(candidates)
            return {key: f"weakest claim P(Yes) {p:.3f}" for key, p in scores.items()}, scores
        prompts = {
            key: self.settings.review_prompt.format(original=original, rewrite=text)
            for key, (original, text) in candidates.items()
        }
        reviews = first_texts(ask(self.backend, prompts, self.settings.review_params, self.review_shots))
        return reviews, self.yes_probabilities(prompts) if self.settings.review_min_yes is not None else {}

    @staticmethod
    def best_candidate(
        key: str, n: int, candidates: dict[str, tuple[str, str]], scores: dict[str, float]
    ) -> int:
        """Of an answer's n rewrites, the best-reviewed one that changes it (the first when none does)."""
        changing = [c for c in range(n) if changed(*candidates[f"{key}~{c}"])]
        return max(changing, key=lambda c: scores.get(f"{key}~{c}", 0.0), default=0)

    def yes_probabilities(self, prompts: dict[str, str], shots: bool = True) -> dict[str, float]:
        requests = [
            ChatRequest(key, conversation(self.review_shots if shots else [], p))
            for key, p in prompts.items()
        ]
        probs = []
        for start in range(0, len(requests), self.settings.runner.batch_size):  # one forward per batch
            probs += self.backend.option_probs(
                requests[start : start + self.settings.runner.batch_size], ["Yes", "No"]
            )
        return {r.id: p["Yes"] / max(p["Yes"] + p["No"], 1e-12) for r, p in zip(requests, probs, strict=True)}

    def weakest_claims(self, pairs: dict[str, tuple[str, str]]) -> dict[str, float]:
        """Per answer, the least P(Yes) over every claim of the original checked in the rewrite and every
        claim of the rewrite checked in the original (nothing dropped, nothing added)."""
        # an unchanged answer keeps its meaning by definition: nothing to ask
        weakest = {
            key: 1.0 for key, (original, rewrite) in pairs.items() if original.strip() == rewrite.strip()
        }
        checks = [
            (key, self.settings.claim_prompt.format(text=other, claim=claim))
            for key, (original, rewrite) in pairs.items()
            if key not in weakest
            for text, other in ((original, rewrite), (rewrite, original))
            for claim in claim_units(text) or [text]
        ]
        scores = self.yes_probabilities(
            {f"{k}@{n}": prompt for n, (k, prompt) in enumerate(checks)}, shots=False
        )
        for n, (key, _) in enumerate(checks):
            weakest[key] = min(weakest.get(key, 1.0), scores[f"{key}@{n}"])
        return weakest

    def verdict(self, review: str, p_yes: float | None) -> Verdict:
        if p_yes is None:
            return parse_verdict(review)
        return "same" if p_yes >= self.settings.review_min_yes else "different"

    def rewritten(
        self,
        sample: Sample,
        chosen: dict[str, int],
        candidates: dict[str, tuple[str, str]],
        reviews: dict[str, str],
        scores: dict[str, float],
    ) -> Sample:
        """The sample with each answer replaced by its chosen rewrite when the review accepts it and it
        changes the answer (an unchanged "rewrite" keeps the original: nothing was replaced)."""
        out = sample.model_copy(deep=True)
        n = self.settings.rewrite_params.n
        turns = []
        for k, turn in enumerate(out.conversations):
            if turn.role != GPT:
                continue
            key = f"{sample.id}#{k}"
            best = f"{key}~{chosen[key]}"
            rewrite = candidates[best][1]
            verdict = self.verdict(reviews[best], scores.get(best))
            keep_rewrite = verdict == "same" and changed(turn.value, rewrite)
            turns.append(
                {
                    "turn": k,
                    "original": turn.value,
                    "rewrite": rewrite,
                    "review": reviews[best],
                    "verdict": verdict,
                    "kept": "rewrite" if keep_rewrite else "original",
                    **({"p_yes": round(scores[best], 4)} if best in scores else {}),
                    **(
                        {
                            "candidates": [candidates[f"{key}~{c}"][1] for c in range(n)],
                            "candidate_p_yes": [round(scores[f"{key}~{c}"], 4) for c in range(n)],
                        }
                        if n > 1
                        else {}
                    ),
                }
            )
            if keep_rewrite:
                turn.value = rewrite.strip()
        out.meta.format_class = classify_sample(sample, self.settings.formats)
        out.meta.provenance.append({"stage": "align.rewrite", **self.identity, "turns": turns})
        return out


def keep_original_on_failure(
    sample: Sample, row: dict[str, Any], stage: str = "align.rewrite"
) -> dict[str, Any]:
    """Finish step: a sample the stage failed on stays as it was, with the error recorded."""
    if row["ok"]:
        return row["value"]
    out = sample.model_copy(deep=True)
    out.meta.provenance.append({"stage": stage, "error": row["error"], "turns": []})
    return out.to_json()


def make_rewriter(target: str, settings: RewriteSettings) -> Rewriter:
    return Rewriter(open_rewriter(target, settings), settings)


def rewriter_factory(target: str, settings: RewriteSettings):
    return partial(make_rewriter, target, settings)


def rewrite_runs(sample: Sample) -> list[dict[str, Any]]:
    return [p for p in sample.meta.provenance if p.get("stage") == "align.rewrite"]


def replaced_some_answer(sample: Sample) -> bool:
    """Whether the latest `align rewrite` run put a rewrite in place of at least one answer."""
    runs = rewrite_runs(sample)
    return bool(runs) and any(t["kept"] == "rewrite" for t in runs[-1].get("turns", []))


def summarize(samples: list[dict[str, Any]], formats: FormatSettings) -> dict[str, Counter]:
    """Per subset: rewritten (some answer replaced), kept (every rewrite refused), failed, hard (untouched)."""
    table: dict[str, Counter] = {}
    for data in samples:
        sample = Sample.model_validate(data)
        counts = table.setdefault(sample.meta.subset or "(none)", Counter())
        runs = rewrite_runs(sample)
        if not runs:
            counts["hard"] += 1
        elif "error" in runs[-1]:
            counts["failed"] += 1
        elif replaced_some_answer(sample):
            counts["rewritten"] += 1
        else:
            counts["kept"] += 1
        for t in runs[-1]["turns"] if runs else []:
            counts[f"verdict.{t['verdict']}"] += 1
    return table


def rewrites_path(out: Path) -> Path:
    """Beside the rewritten corpus: the soft samples the run processed, each with its rewrite record."""
    return out.with_name(f"{out.stem}.rewrites.jsonl")


def rewrite_file(input: Path, llm: str, out: Path, settings: RewriteSettings, show_progress: bool = True):
    """Rewrite and review the soft samples of `input` (the first `runner.limit` of them, if set),
    resumably into `rewrites_path(out)`; write `out`, every record of `input` with those samples
    replaced, and the manifest beside it; return the per-subset table."""
    from vialign.generation.runner import run_resumable
    from vialign.manifest import fingerprint_file, stage_manifest
    from vialign.records import read_jsonl, read_samples, write_jsonl

    with stage_manifest(out.parent / f"{out.stem}.manifest", "align.rewrite") as manifest:
        runner = settings.runner
        corpus = list(read_samples(input))
        soft = settings.soft_samples(corpus)
        local = runner.engine == "local"
        report = run_resumable(
            soft,
            lambda s: s.id,
            make_rewriter(llm, settings) if local else None,
            rewrites_path(out),
            runner,
            finish=keep_original_on_failure,
            ray_factory=rewriter_factory(llm, settings),
            task="rewrite",
            show_progress=show_progress,
        )
        done = {r["id"]: r for r in read_jsonl(rewrites_path(out))}
        write_jsonl([done.get(s.id, s.to_json()) for s in corpus], out)
        table = summarize(list(done.values()), settings.formats)
        table.setdefault("(hard)", Counter())["hard"] = len(corpus) - len(soft)
        manifest.inputs = {str(input): fingerprint_file(input), "llm": llm}
        manifest.settings = settings.model_dump(mode="json")
        manifest.counts = {
            "records": len(corpus),
            "soft": len(soft),
            "selected": report.selected,
            "reused": report.reused,
            "processed": report.processed,
            "failed": len(report.failed),
            **{f"{s}.{k}": v for s, c in table.items() for k, v in c.items()},
        }
        manifest.outputs = {
            str(out): fingerprint_file(out),
            str(rewrites_path(out)): fingerprint_file(rewrites_path(out)),
        }
    return table


def run_stage(ctx: StageContext) -> None:
    from rich.table import Table

    data = ctx.path("data")
    table = rewrite_file(data, ctx.take("llm"), ctx.out, ctx.settings, ctx.show_progress)
    view = Table(title=f"rewrite {data}")
    columns = (
        "rewritten",
        "kept",
        "failed",
        "hard",
        "verdict.same",
        "verdict.different",
        "verdict.unparsable",
    )
    view.add_column("subset")
    for column in columns:
        view.add_column(column, justify="right")
    for subset, counts in sorted(table.items()):
        view.add_row(subset, *(str(counts[c]) for c in columns))
    ctx.show(view)
    rewritten = sum(c["rewritten"] for c in table.values())
    processed = rewritten + sum(c["kept"] + c["failed"] for c in table.values())
    ctx.say(
        f"{rewritten} of {processed} soft samples rewritten (some answer replaced) → {ctx.out} "
        f"(rewrites and reviews: {rewrites_path(ctx.out)})"
    )
