"""`vialign prefer judge`: a judge rates each of a group's K responses 0–4 on five aspects, reasoning first.

Two judges, chosen by exact name:
- `model`: any backend (a checkpoint or an OpenAI-compatible URL) with a configurable prompt. The reply
  must end with a JSON object `{"ratings": [{aspect: 0..4, ...}, ...]}`, one entry per response, every
  aspect an integer; anything else is malformed, asked once more, then recorded with the group excluded.
  Ratings are cached by judge identity, prompt, image, question and responses.
- `model-yesno`: a local model too small to write a rating JSON (the SFT model itself, say) is asked
  one yes/no question per aspect for each response, image shown; the rating is 4 × P(Yes) (a float)
  for helpfulness, correctness and coherence, the aspects pairs are built from; complexity and
  verbosity are not asked (null).
- `toyworld-oracle`: the same five ratings computed from the scene facts the toy world stores with each
  sample, so the pipeline runs without a large judge.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from vialign.choices import JudgeName
from vialign.generation.base import ChatRequest, GenerationParams, JudgeModelSettings, fill_prompt
from vialign.generation.cache import ResponseCache, ask_cached, cache_key
from vialign.manifest import fingerprint_bytes
from vialign.prefer.pairs import SCORED_ASPECTS
from vialign.records import IMAGE_TAG, confined_image_path, image_list
from vialign.stage import StageContext

ASPECTS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
DEFAULT_PREFERENCE_PROMPT = (
    "You are an expert judge of answers about images. Look at the image and the question, then at each "
    "of the {k} responses. First reason briefly about each response. Then rate every response from 0 to 4 "
    "on helpfulness, correctness (is everything it says true of the image?), coherence, complexity and "
    "verbosity. End your reply with one JSON object and nothing after it:\n"
    '{{"ratings": [{{"helpfulness": h, "correctness": c, "coherence": o, "complexity": x, "verbosity": v}}, ...]}}\n'
    "with one entry per response, in order.\n\n[Question]\n{question}\n\n{responses}"
)


DEFAULT_YESNO_QUESTIONS = {
    "helpfulness": "Question: {question}\nAnswer: {response}\n\nDoes the answer help with the question? "
    "Answer yes or no.",
    "correctness": "Question: {question}\nAnswer: {response}\n\nIs everything the answer says true of the "
    "image? Answer yes or no.",
    "coherence": "Answer: {response}\n\nIs this answer clear, complete and free of repetition? Answer yes or no.",
}


class PreferenceJudgeSettings(JudgeModelSettings):
    judge: JudgeName = "model"
    prompt: str = DEFAULT_PREFERENCE_PROMPT
    yesno_questions: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_YESNO_QUESTIONS),
        description="model-yesno: one question per aspect, with {question} and {response}",
    )
    params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=512))
    batch_size: int = Field(8, ge=1)

    @field_validator("prompt")
    @classmethod
    def _slots(cls, value: str) -> str:
        missing = [s for s in ("{question}", "{responses}") if s not in value]
        if missing:
            raise ValueError(f"the judge prompt needs the placeholders {missing}")
        return value

    @field_validator("judge")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in JUDGES:
            raise ValueError(f"unknown judge {value!r}; known: {sorted(JUDGES)}")
        return value


class MalformedRatings(ValueError):
    pass


def parse_ratings(reply: str, k: int) -> list[dict[str, int]]:
    """The ratings from the last JSON object of the reply; strict about shape, count, names and range."""
    start = (reply or "").rfind('{"ratings"')
    if start < 0:
        start = (reply or "").rfind("{")
        while start > 0 and '"ratings"' not in reply[start:]:
            start = reply.rfind("{", 0, start)
    if start < 0:
        raise MalformedRatings("no JSON object with 'ratings' in the reply")
    try:
        data, end = json.JSONDecoder().raw_decode(reply[start:])
    except json.JSONDecodeError as exc:
        raise MalformedRatings(f"the ratings object is not valid JSON: {exc}") from exc
    if reply[start + end :].strip():
        raise MalformedRatings("text after the ratings object")
    ratings = data.get("ratings") if isinstance(data, dict) else None
    if not isinstance(ratings, list) or len(ratings) != k:
        raise MalformedRatings(f"expected a list of {k} ratings, got {ratings!r:.80}")
    out = []
    for n, r in enumerate(ratings):
        if not isinstance(r, dict) or set(r) != set(ASPECTS):
            raise MalformedRatings(f"rating {n} must have exactly the aspects {list(ASPECTS)}")
        if not all(isinstance(r[a], int) and not isinstance(r[a], bool) and 0 <= r[a] <= 4 for a in ASPECTS):
            raise MalformedRatings(f"rating {n}: every aspect must be an integer from 0 to 4, got {r}")
        out.append({a: r[a] for a in ASPECTS})
    return out


def render_prompt(template: str, question: str, responses: Sequence[str]) -> str:
    listed = "\n\n".join(f"[Response {n}]\n{text}" for n, text in enumerate(responses, start=1))
    clean = question.replace(IMAGE_TAG, "").strip()
    return fill_prompt(template, k=str(len(responses)), question=clean, responses=listed)


class ModelJudge:
    """Asks a judge model; every outcome for a group is cached, transport errors excepted."""

    def __init__(
        self, settings: PreferenceJudgeSettings, cache: ResponseCache, image_root: str | Path | None
    ):
        if not settings.target:
            raise ValueError("the model judge needs a target: --judge PATH_OR_URL")
        self.settings, self.cache, self.image_root = settings, cache, image_root
        self.backend = settings.model.open(settings.target)
        self.identity = {
            **self.backend.identity(),
            "prompt_sha256": fingerprint_bytes(settings.prompt.encode()),
        }

    def key(self, group: dict[str, Any]) -> str:
        return cache_key(
            self.identity, self.settings.prompt, group.get("image"), group["question"], group["responses"]
        )

    def request(self, group: dict[str, Any], key: str) -> ChatRequest:
        images = image_list(group.get("image"))
        content = f"{IMAGE_TAG}\n" * len(images) + render_prompt(
            self.settings.prompt, group["question"], group["responses"]
        )
        return ChatRequest(
            key,
            [{"role": "user", "content": content}],
            [confined_image_path(self.image_root or ".", p) for p in images],
        )

    def rate(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        keys = [self.key(g) for g in groups]
        k = {key: len(g["responses"]) for g, key in zip(groups, keys, strict=True)}
        ask_cached(
            self.backend,
            self.cache,
            [self.request(g, key) for g, key in zip(groups, keys, strict=True)],
            self.settings.params,
            lambda key, reply: parse_ratings(reply, k[key]),
            self.settings.batch_size,
            self.identity,
        )
        out = []
        for key in keys:
            entry = self.cache.get(key)
            if entry is None:
                out.append({"ratings": None, "error": "the judge could not be reached; rerun to retry"})
            else:
                out.append({"ratings": entry["value"], "reply": entry["reply"], "error": entry.get("error")})
        return out


class YesNoJudge:
    """Each response rated by P(Yes) to one question per aspect, from one forward pass each."""

    def __init__(
        self, settings: PreferenceJudgeSettings, cache: ResponseCache, image_root: str | Path | None
    ):
        if not settings.target:
            raise ValueError("the model-yesno judge needs a target: --judge PATH (a local checkpoint)")
        unknown = set(settings.yesno_questions) - set(ASPECTS)
        if unknown:
            raise ValueError(
                f"yesno_questions names unknown aspects {sorted(unknown)}; aspects: {list(ASPECTS)}"
            )
        unasked = [a for a in SCORED_ASPECTS if a not in settings.yesno_questions]
        if unasked:
            raise ValueError(
                f"yesno_questions must ask {unasked}: pairs are scored by {list(SCORED_ASPECTS)}"
            )
        self.settings, self.image_root = settings, image_root
        self.backend = settings.model.open(settings.target)
        if not hasattr(self.backend, "option_probs"):
            raise ValueError(f"the model-yesno judge scores options; the {self.backend.name} backend cannot")
        questions = "\0".join(f"{k}={v}" for k, v in sorted(settings.yesno_questions.items()))
        self.identity = {
            "judge": "model-yesno",
            **self.backend.identity(),
            "questions_sha256": fingerprint_bytes(questions.encode()),
        }

    def rate(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        asked = [
            (g_index, r_index, aspect)
            for g_index, g in enumerate(groups)
            for r_index in range(len(g["responses"]))
            for aspect in self.settings.yesno_questions
        ]
        requests = []
        for g_index, r_index, aspect in asked:
            group = groups[g_index]
            images = image_list(group.get("image"))
            question = group["question"].replace(IMAGE_TAG, "").strip()
            text = self.settings.yesno_questions[aspect].format(
                question=question, response=group["responses"][r_index]
            )
            requests.append(
                ChatRequest(
                    f"{g_index}/{r_index}/{aspect}",
                    [{"role": "user", "content": f"{IMAGE_TAG}\n" * len(images) + text}],
                    [confined_image_path(self.image_root or ".", p) for p in images],
                )
            )
        yes: dict[str, float] = {}
        step = self.settings.batch_size
        for start in range(0, len(requests), step):
            chunk = requests[start : start + step]
            for request, p in zip(chunk, self.backend.option_probs(chunk, ["Yes", "No"]), strict=True):
                yes[request.id] = p["Yes"] / max(p["Yes"] + p["No"], 1e-12)
        out = []
        for g_index, group in enumerate(groups):
            ratings = [
                {
                    a: round(4 * yes[f"{g_index}/{r}/{a}"], 4) if a in self.settings.yesno_questions else None
                    for a in ASPECTS
                }
                for r in range(len(group["responses"]))
            ]
            out.append({"ratings": ratings, "error": None})
        return out


class ToyWorldOracle:
    """Ratings from scene facts: true and false claims, truncation, repetition and length."""

    def __init__(
        self, settings: PreferenceJudgeSettings, cache: ResponseCache, image_root: str | Path | None
    ):
        self.identity = {"judge": "toyworld-oracle", "version": 1}

    def rate(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from vialign.toyworld.oracle import oracle_ratings

        out = []
        for group in groups:
            truth = group.get("truth") or {}
            if "scene" not in truth:
                out.append({"ratings": None, "error": "no toy-world scene in the group's truth"})
                continue
            out.append(
                {"ratings": [oracle_ratings(r, truth["scene"]) for r in group["responses"]], "error": None}
            )
        return out


JUDGES = {"model": ModelJudge, "model-yesno": YesNoJudge, "toyworld-oracle": ToyWorldOracle}


def open_judge(settings: PreferenceJudgeSettings, cache: ResponseCache, image_root: str | Path | None):
    return JUDGES[settings.judge](settings, cache, image_root)


def judged_group(group: dict[str, Any], rating: dict[str, Any], identity: dict[str, Any]) -> dict[str, Any]:
    return {
        **group,
        "ratings": rating["ratings"],
        "judge": identity,
        "judge_reply": rating.get("reply"),
        "error": rating.get("error"),
    }


def judge_file(
    input: Path,
    out: Path,
    settings: PreferenceJudgeSettings,
    image_root: str | Path | None = None,
    show_progress: bool = True,
) -> tuple[int, int]:
    """Rate every sampled group of `input` into `out` (resumable); returns (groups, rated)."""
    from vialign.generation.runner import Row, RunnerSettings, run_resumable
    from vialign.records import read_jsonl

    rater = open_judge(
        settings, ResponseCache(settings.cache or out.with_name(out.name + ".cache.jsonl")), image_root
    )
    groups = [g for g in read_jsonl(input) if g.get("responses")]

    def process(batch: list[dict[str, Any]]) -> list[Row]:
        return [Row(g["id"], r) for g, r in zip(batch, rater.rate(batch), strict=True)]

    run_resumable(
        groups,
        lambda g: g["id"],
        process,
        out,
        RunnerSettings(batch_size=settings.batch_size),
        finish=lambda g, row: judged_group(g, row["value"], rater.identity),
        task="judge",
        show_progress=show_progress,
        identity=rater.identity,
    )
    return len(groups), sum(1 for g in read_jsonl(out) if g.get("ratings"))


def run_stage(ctx: StageContext) -> None:
    total, rated = judge_file(
        ctx.path("data"), ctx.out, ctx.settings, ctx.take("image_root", None), ctx.show_progress
    )
    ctx.say(
        f"rated {rated} of {total} groups; {total - rated} excluded "
        f"(malformed or unreachable judge, recorded with the reason) → {ctx.out}"
    )
