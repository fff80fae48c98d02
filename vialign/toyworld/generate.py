"""`vialign toyworld generate`: the whole synthetic world, deterministic per seed.

Layout of the output folder (also the image root: every image path is relative to it):
    images/{train,ann,eval}/NNNNNN.png
    corpus.jsonl                      visual instructions (soft subsets in teacher manner + hard subsets)
    pretrain.jsonl                    one caption per training image, for projector pretraining (like LCS-558K)
    scenes.jsonl                      facts of every training scene
    text/corpus.jsonl                 own-manner text-only corpus for the inner LLM
    annotations/{questions,answers}.jsonl   reward-model annotations (Align2LLaVA shape)
    eval/pope/{random,popular,adversarial}.jsonl, eval/caption/references.json,
    eval/vqa/{questions.jsonl,annotations.json}, eval/mc/questions.jsonl, eval/text/tasks.jsonl, eval/judge/questions.jsonl
    manifest.json
"""

from __future__ import annotations

import math
import os
import random
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, model_validator

from vialign.config import Settings
from vialign.data.formats import classify_sample
from vialign.evaluate.ifeval import ifeval_prompts
from vialign.manifest import Manifest, fingerprint_file, stage_manifest
from vialign.records import IMAGE_TAG, JsonlWriter, Meta, Sample, Turn, write_jsonl
from vialign.stage import StageContext
from vialign.toyworld import evalsets
from vialign.toyworld.annotations import annotation_groups
from vialign.toyworld.instructions import ANSWER_CORRUPTIONS, CORRUPTIONS, SOFT_SUBSETS, SUBSET_MAKERS
from vialign.toyworld.language import neutral_caption
from vialign.toyworld.scene import Scene, sample_scene, scene_png, seeded_rng
from vialign.toyworld.textcorpus import CORPUS_SHARES, text_example

DEFAULT_MIX = {
    "conversation": 0.2,
    "detail": 0.1,
    "complex_reasoning": 0.1,
    "short_answer": 0.2,
    "yes_no": 0.15,
    "multiple_choice": 0.1,
    "counting": 0.15,
}


class ToyWorldSettings(Settings):
    seed: int = 0
    size: int = Field(2000, ge=1, description="visual instruction samples in corpus.jsonl")
    image_size: int = Field(48, ge=24, le=512, description="square image side in pixels")
    samples_per_image: int = Field(2, ge=1)
    subset_mix: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_MIX))
    corrupt_share: float = Field(0.1, ge=0.0, le=1.0, description="share of soft samples corrupted")
    corruptions: list[str] = Field(default_factory=lambda: list(CORRUPTIONS))
    image_last_share: float = Field(
        0.3, ge=0.0, le=1.0, description="share of samples with <image> after the question"
    )
    text_size: int | None = Field(None, description="own-manner text examples; default max(1000, size // 2)")
    pretrain_images: int | None = Field(
        None,
        ge=1,
        description="caption samples in pretrain.jsonl (LLaVA's stage 1); default one per corpus image",
    )
    annotation_images: int = Field(300, ge=0)
    eval_scenes: int = Field(200, ge=1)
    eval_text_per_task: int = Field(50, ge=1)
    eval_ifeval: int = Field(120, ge=1, description="verifiable-instruction prompts (IFEval's format)")
    workers: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))

    @model_validator(mode="after")
    def _known_names(self) -> ToyWorldSettings:
        unknown = set(self.subset_mix) - set(SUBSET_MAKERS)
        if unknown:
            raise ValueError(f"unknown subsets {sorted(unknown)}; known: {sorted(SUBSET_MAKERS)}")
        if sum(self.subset_mix.values()) <= 0:
            raise ValueError("subset_mix weights must add up to more than 0")
        bad = set(self.corruptions) - set(CORRUPTIONS)
        if bad:
            raise ValueError(f"unknown corruptions {sorted(bad)}; known: {list(CORRUPTIONS)}")
        return self

    def n_pretrain(self, n_scenes: int) -> int:
        return self.pretrain_images if self.pretrain_images is not None else n_scenes

    @property
    def n_text(self) -> int:
        return self.text_size if self.text_size is not None else max(1000, self.size // 2)


def image_path(stream: str, index: int) -> str:
    return f"images/{stream}/{index:06d}.png"


def place_image_tag(question: str, rng: random.Random, last_share: float) -> str:
    return f"{question}\n{IMAGE_TAG}" if rng.random() < last_share else f"{IMAGE_TAG}\n{question}"


def swap_partner(
    scene_index: int, n_scenes: int, settings: ToyWorldSettings, rng: random.Random
) -> int | None:
    """Another training scene sharing no (colour, shape) with this one, so the swap is detectable."""
    own = sample_scene(settings.seed, "train", scene_index).pairs
    for _ in range(64):
        j = rng.randrange(n_scenes)
        if j != scene_index and not (sample_scene(settings.seed, "train", j).pairs & own):
            return j
    return None


def corrupt(turns: list[list[str]], scene: Scene, kinds: list[str], rng: random.Random) -> dict | None:
    """Corrupt one answer in place with the first kind that applies to some answer (longest first)."""
    order = sorted(range(len(turns)), key=lambda k: -len(turns[k][1]))
    for kind in kinds:
        for k in order:
            result = ANSWER_CORRUPTIONS[kind](turns[k][1], scene, rng)
            if result is not None:
                turns[k][1] = result[0]
                return {"kind": kind, "turn": 2 * k + 1, **result[1]}
    return None


def subset_of(i: int, settings: ToyWorldSettings) -> str:
    subsets, weights = zip(*settings.subset_mix.items(), strict=True)
    return seeded_rng(settings.seed, "subset", i).choices(subsets, weights)[0]


def corruption_plan(settings: ToyWorldSettings) -> dict[int, str]:
    """Exactly round(share × soft samples) corrupted soft samples, at seeded places, kinds balanced."""
    soft = [i for i in range(settings.size) if subset_of(i, settings) in SOFT_SUBSETS]
    if not settings.corruptions:
        return {}
    rng = seeded_rng(settings.seed, "corruption-plan", 0)
    chosen = sorted(rng.sample(soft, round(settings.corrupt_share * len(soft))))
    kinds = [settings.corruptions[k % len(settings.corruptions)] for k in range(len(chosen))]
    rng.shuffle(kinds)
    return dict(zip(chosen, kinds, strict=True))


def apply_corruption(
    kind: str,
    turns: list[list[str]],
    scene: Scene,
    scene_index: int,
    n_scenes: int,
    settings: ToyWorldSettings,
    rng: random.Random,
) -> tuple[dict, str | None]:
    """(corruption record, replacement image or None). A swap with no partner falls back to text corruptions."""
    if kind == "swapped_image":
        partner = swap_partner(scene_index, n_scenes, settings, rng)
        if partner is not None:
            return {"kind": kind, "image_scene": f"train-{partner:06d}"}, image_path("train", partner)
    fallbacks = [
        k for k in (*settings.corruptions, *ANSWER_CORRUPTIONS) if k in ANSWER_CORRUPTIONS and k != kind
    ]
    kinds = list(dict.fromkeys([kind, *fallbacks] if kind in ANSWER_CORRUPTIONS else fallbacks))
    corruption = corrupt(turns, scene, kinds, rng)
    if corruption is None:
        raise RuntimeError(f"no corruption applies to sample of scene {scene.scene_id}")
    return corruption, None


def make_sample(
    i: int, settings: ToyWorldSettings, n_scenes: int, corruption_kind: str | None = None
) -> Sample:
    rng = seeded_rng(settings.seed, "sample", i)
    scene_index = i // settings.samples_per_image
    scene = sample_scene(settings.seed, "train", scene_index)
    subset = subset_of(i, settings)
    turns = [list(qa) for qa in SUBSET_MAKERS[subset](scene, rng)]
    image = image_path("train", scene_index)
    corruption = None
    if corruption_kind is not None:
        corruption, swapped = apply_corruption(
            corruption_kind, turns, scene, scene_index, n_scenes, settings, rng
        )
        image = swapped or image
    tag_rng = seeded_rng(settings.seed, "image-tag", i)
    turns[0][0] = place_image_tag(turns[0][0], tag_rng, settings.image_last_share)
    conversations = [Turn(role=r, value=v) for q, a in turns for r, v in (("human", q), ("gpt", a))]
    manner = "teacher" if subset in SOFT_SUBSETS else "template"
    sample = Sample(
        id=f"toy-{i:07d}",
        image=image,
        conversations=conversations,
        meta=Meta(
            subset=subset,
            truth={"scene": scene.to_json()},
            corruption=corruption,
            provenance=[{"stage": "toyworld", "seed": settings.seed, "manner": manner}],
        ),
    )
    sample.meta.format_class = classify_sample(sample)
    return sample


CAPTION_PROMPTS = (
    "Give a brief description of the image.",
    "Summarize the visual content of the image.",
    "Write a short caption for the image.",
)


def caption_sample(j: int, settings: ToyWorldSettings) -> Sample:
    rng = seeded_rng(settings.seed, "caption", j)
    scene = sample_scene(settings.seed, "train", j)
    prompt = place_image_tag(rng.choice(CAPTION_PROMPTS), rng, settings.image_last_share)
    return Sample(
        id=f"toycap-{j:07d}",
        image=image_path("train", j),
        conversations=[
            Turn(role="human", value=prompt),
            Turn(role="gpt", value=neutral_caption(scene, rng.randrange(3))),
        ],
        meta=Meta(
            subset="caption",
            format_class="short_caption",
            truth={"scene": scene.to_json()},
            provenance=[{"stage": "toyworld", "seed": settings.seed, "manner": "neutral"}],
        ),
    )


def text_sample(i: int, settings: ToyWorldSettings, subsets: list[str], weights: list[float]) -> Sample:
    subset = seeded_rng(settings.seed, "text-subset", i).choices(subsets, weights)[0]
    prompt, answer, scene = text_example(settings.seed, "text", i, subset)
    truth: dict[str, Any] = {"answer": answer} | ({"scene": scene.to_json()} if scene else {})
    return Sample(
        id=f"toytext-{i:07d}",
        conversations=[Turn(role="human", value=prompt), Turn(role="gpt", value=answer)],
        meta=Meta(
            subset=subset,
            format_class="text_only",
            truth=truth,
            provenance=[{"stage": "toyworld", "seed": settings.seed, "manner": "own"}],
        ),
    )


def _render_chunk(args: tuple[str, int, str, list[int], int]) -> int:
    out, seed, stream, indices, size_px = args
    folder = Path(out) / "images" / stream
    for index in indices:
        (folder / f"{index:06d}.png").write_bytes(scene_png(sample_scene(seed, stream, index), size_px))
    return len(indices)


def render_images(
    out: Path, settings: ToyWorldSettings, stream: str, count: int, progress: Callable | None
) -> None:
    (out / "images" / stream).mkdir(parents=True, exist_ok=True)
    chunk = 500
    jobs = [
        (str(out), settings.seed, stream, list(range(s, min(s + chunk, count))), settings.image_size)
        for s in range(0, count, chunk)
    ]
    if settings.workers == 1:
        done = map(_render_chunk, jobs)
    else:
        pool = ProcessPoolExecutor(settings.workers)
        done = pool.map(_render_chunk, jobs)
    for n in done:
        if progress:
            progress(n)
    if settings.workers != 1:
        pool.shutdown()


def write_eval_sets(out: Path, settings: ToyWorldSettings) -> dict[str, int]:
    scenes = [
        (sample_scene(settings.seed, "eval", k), image_path("eval", k)) for k in range(settings.eval_scenes)
    ]
    counts = {}
    for category in evalsets.POPE_CATEGORIES:
        counts[f"pope_{category}"] = write_jsonl(
            evalsets.pope_rows(scenes, category, settings.seed), out / "eval" / "pope" / f"{category}.jsonl"
        )
    captions = evalsets.caption_references(scenes, settings.seed)
    _write_json(out / "eval" / "caption" / "references.json", captions)
    counts["caption_images"] = len(captions["images"])
    questions, annotations = evalsets.vqa_sets(scenes, settings.seed)
    counts["vqa"] = write_jsonl(questions, out / "eval" / "vqa" / "questions.jsonl")
    _write_json(out / "eval" / "vqa" / "annotations.json", annotations)
    counts["mc"] = write_jsonl(
        evalsets.mc_rows(scenes, settings.seed), out / "eval" / "mc" / "questions.jsonl"
    )
    counts["text"] = write_jsonl(
        evalsets.text_rows(settings.eval_text_per_task, settings.seed), out / "eval" / "text" / "tasks.jsonl"
    )
    counts["judge"] = write_jsonl(
        evalsets.judge_rows(scenes, settings.seed), out / "eval" / "judge" / "questions.jsonl"
    )
    counts["facts"] = write_jsonl(
        evalsets.facts_rows(scenes, settings.seed), out / "eval" / "facts" / "questions.jsonl"
    )
    counts["ifeval"] = write_jsonl(
        ifeval_prompts(settings.eval_ifeval, settings.seed), out / "eval" / "ifeval" / "prompts.jsonl"
    )
    return counts


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def generate_toyworld(
    out: str | Path, settings: ToyWorldSettings, progress: Callable[[str, int, int], None] | None = None
) -> Manifest:
    """Write the toy world under `out`; `progress(task, advance, total)` is called as work is done."""
    out = Path(out)
    with stage_manifest(out, "toyworld") as manifest:
        n_scenes = math.ceil(settings.size / settings.samples_per_image)

        def step(task: str, total: int) -> Callable[[int], None] | None:
            return (lambda n=1: progress(task, n, total)) if progress else None

        # the corpus's images first; more training scenes when stage 1 has more captions than that
        n_images = max(n_scenes, settings.n_pretrain(n_scenes))
        render_images(out, settings, "train", n_images, step("render training images", n_images))
        counts: Counter[str] = Counter()
        tick = step("write corpus", settings.size)
        plan = corruption_plan(settings)
        with JsonlWriter(out / "corpus.jsonl") as corpus:
            for i in range(settings.size):
                sample = make_sample(i, settings, n_scenes, plan.get(i))
                corpus.write(sample)
                counts[f"subset.{sample.meta.subset}"] += 1
                counts[f"class.{sample.meta.format_class}"] += 1
                if sample.meta.corruption:
                    counts[f"corruption.{sample.meta.corruption['kind']}"] += 1
                if tick:
                    tick(1)
        write_jsonl(
            (sample_scene(settings.seed, "train", j).to_json() for j in range(n_images)), out / "scenes.jsonl"
        )
        counts["pretrain"] = write_jsonl(
            (caption_sample(j, settings) for j in range(settings.n_pretrain(n_scenes))),
            out / "pretrain.jsonl",
        )

        subsets, weights = list(CORPUS_SHARES), list(CORPUS_SHARES.values())
        counts["text"] = write_jsonl(
            (text_sample(i, settings, subsets, weights) for i in range(settings.n_text)),
            out / "text" / "corpus.jsonl",
        )

        render_images(
            out,
            settings,
            "ann",
            settings.annotation_images,
            step("render annotation images", settings.annotation_images),
        )
        with (
            JsonlWriter(out / "annotations" / "questions.jsonl") as qs,
            JsonlWriter(out / "annotations" / "answers.jsonl") as ans,
        ):
            for k in range(settings.annotation_images):
                scene = sample_scene(settings.seed, "ann", k)
                other = sample_scene(settings.seed, "ann", (k + 1) % settings.annotation_images)
                question_group, answer_groups = annotation_groups(
                    scene, image_path("ann", k), seeded_rng(settings.seed, "ann-groups", k), other
                )
                qs.write(question_group)
                for group in answer_groups:
                    ans.write(group)
            counts["annotation_question_groups"], counts["annotation_answer_groups"] = qs.count, ans.count

        render_images(
            out,
            settings,
            "eval",
            settings.eval_scenes,
            step("render evaluation images", settings.eval_scenes),
        )
        counts.update({f"eval.{k}": v for k, v in write_eval_sets(out, settings).items()})

        counts["images"] = n_images + settings.annotation_images + settings.eval_scenes
        counts["samples"] = settings.size
        manifest.settings = settings.model_dump(mode="json", exclude={"workers"})
        manifest.counts = dict(sorted(counts.items()))
        manifest.outputs = {
            name: fingerprint_file(out / name) for name in ("corpus.jsonl", "text/corpus.jsonl")
        }
    return manifest


def run_stage(ctx: StageContext) -> None:
    from vialign.progress import progress_reporter

    with progress_reporter(ctx.show_progress) as report:
        manifest = generate_toyworld(ctx.out, ctx.settings, progress=report)
    c = manifest.counts
    ctx.say(
        f"toy world in {ctx.out}: {c['samples']} samples, {c['images']} images, {manifest.duration_s:.1f} s"
    )
