"""Reward-model training on annotation groups: Bradley–Terry over every better/worse pair of a group,
plus corrupted copies ranked below their original, on the SFT trainer."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch.utils.data import Dataset

from vialign.config import Settings
from vialign.curate.annotations import AnnotationGroup, better_pairs, load_groups, split_groups
from vialign.curate.reward import (
    InputTooLong,
    PreprocessSettings,
    RewardCard,
    RewardInputs,
    RewardKind,
    RewardModel,
    answer_text,
    bradley_terry_loss,
    questions_text,
    save_reward_model,
)
from vialign.manifest import Manifest, fingerprint_file, fingerprint_settings, stage_manifest
from vialign.models.encoding import sentences
from vialign.models.loading import load_llava, model_fingerprint
from vialign.models.precision import ComputeDtype, autocast
from vialign.records import ImagePathError, JsonlWriter, existing_images
from vialign.stage import StageContext
from vialign.train.core import VialignTrainer, prepare_for_training, run_trainer
from vialign.train.settings import PartsSettings

Corruption = Literal["shuffle", "crop", "duplicate"]


class RewardModelTrainerSettings(PartsSettings):
    trainer: ClassVar[str] = "`curate train-rm`"
    not_used: ClassVar[dict[str, str]] = {
        **dict.fromkeys(
            ("chat_format", "max_length"), "reward-model inputs are laid out by its preprocess settings"
        ),
        **dict.fromkeys(
            ("mode", "templates", "template_min_frac"),
            "a reward model's loss is on its scores, not on tokens",
        ),
        **dict.fromkeys(
            ("packing", "pack_tokens", "group_by_length", "length_group_batches"),
            "candidate groups are padded per batch in random order",
        ),
    }


class RewardTrainSettings(Settings):
    preprocess: PreprocessSettings = Field(default_factory=PreprocessSettings)
    negative_prob: float = Field(0.25, ge=0.0, le=1.0, description="chance per candidate of a corrupted copy")
    corruptions: list[Corruption] = Field(default_factory=lambda: ["shuffle", "crop", "duplicate"])
    heldout: float = Field(0.1, ge=0.0, lt=1.0, description="share of groups held out for pairwise accuracy")
    eval_batch_size: int = Field(16, ge=1, description="groups per batch when scoring held-out groups")
    seed: int = 0
    train: RewardModelTrainerSettings = Field(
        default_factory=lambda: RewardModelTrainerSettings(
            stage="finetune", lr=1e-5, batch_size=4, epochs=1.0
        )
    )


def shuffle_words(text: str, rng: random.Random) -> str | None:
    words = text.split()
    rng.shuffle(words)
    shuffled = " ".join(words)
    return shuffled if shuffled != " ".join(text.split()) else None


def random_crop(text: str, rng: random.Random) -> str | None:
    words = text.split()
    if len(words) < 4:
        return None
    length = rng.randint(max(1, len(words) // 4), max(1, 3 * len(words) // 4))
    start = rng.randint(0, len(words) - length)
    return " ".join(words[start : start + length])


def duplicate_part(text: str, rng: random.Random) -> str | None:
    """Repeat one line (question sets) or one sentence (answers) right after itself."""
    separator = "\n" if "\n" in text else " "
    units = text.split("\n") if separator == "\n" else sentences(text)
    k = rng.randrange(len(units))
    return separator.join([*units[: k + 1], units[k], *units[k + 1 :]])


CORRUPTIONS = {"shuffle": shuffle_words, "crop": random_crop, "duplicate": duplicate_part}


def candidate_body(group: AnnotationGroup, k: int) -> str:
    candidate = group.candidates[k]
    return "\n".join(candidate.questions) if group.kind == "questions" else candidate.answer


def model_text(group: AnnotationGroup, body: str) -> str:
    n = len(group.images)
    if group.kind == "questions":
        return questions_text(body.split("\n"), n)
    return answer_text(group.question, body, n)


@dataclass
class RewardExample:
    """One group, tokenized: candidates (originals first, then corrupted copies) and its pairs."""

    group_id: str
    candidates: list[list[int]]
    images: list[Path]
    pairs: list[tuple[int, int]]
    originals: int
    scores: list[float] = field(default_factory=list)


def corrupted_copies(
    bodies: list[str], settings: RewardTrainSettings, rng: random.Random
) -> list[tuple[int, str]]:
    copies = []
    for k, body in enumerate(bodies):
        if settings.corruptions and rng.random() < settings.negative_prob:
            corrupted = CORRUPTIONS[rng.choice(settings.corruptions)](body, rng)
            if corrupted and corrupted != body:
                copies.append((k, corrupted))
    return copies


def build_examples(
    groups: Sequence[AnnotationGroup],
    inputs: RewardInputs,
    image_root: str | Path | None,
    settings: RewardTrainSettings,
    with_negatives: bool,
) -> tuple[list[RewardExample], dict[str, str]]:
    """Tokenize every group; a group that cannot be used is left out with its reason."""
    examples, dropped = [], {}
    for group in groups:
        rng = random.Random(f"{settings.seed}:{group.group_id}")
        try:
            images = existing_images(image_root, group.images)
            bodies = [candidate_body(group, k) for k in range(len(group.candidates))]
            copies = corrupted_copies(bodies, settings, rng) if with_negatives else []
            texts = [model_text(group, b) for b in bodies] + [model_text(group, b) for _, b in copies]
            candidates = [inputs.ids(t, images) for t in texts]
        except (ImagePathError, FileNotFoundError, InputTooLong) as exc:
            dropped[group.group_id] = str(exc)
            continue
        pairs = better_pairs(group.scores)
        pairs += [(k, len(bodies) + c) for c, (k, _) in enumerate(copies)]
        if not pairs:
            dropped[group.group_id] = "every candidate has the same score: no pair to learn from"
            continue
        examples.append(RewardExample(group.group_id, candidates, images, pairs, len(bodies), group.scores))
    return examples, dropped


class RewardDataset(Dataset):
    def __init__(self, examples: list[RewardExample]):
        self.examples = examples
        self.lengths = [sum(len(c) for c in e.candidates) for e in examples]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.examples[i]
        return {"candidates": e.candidates, "images": e.images, "pairs": e.pairs}


@dataclass
class RewardCollator:
    """Every candidate of every group in the batch as one padded row; a group's images are processed
    once and repeated for its candidates; pairs are re-indexed into the flat batch."""

    pad_token_id: int
    inputs: RewardInputs
    padding_side: Literal["right", "left"] = "right"

    def image_inputs(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Every candidate's images, in row order, through one image-processor call (a family's image
        inputs need not stack across calls: LLaVA-NeXT pads each call's tiles to its largest image)."""
        paths = [path for r in rows for _ in r["candidates"] for path in r["images"]]
        return self.inputs.image_inputs(paths) if paths else {}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        seqs = [ids for r in rows for ids in r["candidates"]]
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, ids in enumerate(seqs):
            span = slice(width - len(ids), width) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[k, span] = torch.tensor(ids)
            attention[k, span] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention, **self.image_inputs(rows)}
        model_inputs = self.inputs.family.model_inputs(self.inputs.processor)
        batch = model_inputs(batch, None) if model_inputs else batch
        pairs, offset = [], 0
        for r in rows:
            pairs += [(offset + i, offset + j) for i, j in r.get("pairs", [])]
            offset += len(r["candidates"])
        batch["pairs"] = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
        return batch


class RewardTrainer(VialignTrainer):
    labelled_logits = False

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Our loss is a mean per micro-batch; the Trainer must scale it for gradient accumulation.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pairs = inputs.pop("pairs")
        scores = model(**inputs)
        loss = bradley_terry_loss(scores, pairs)
        return (loss, scores) if return_outputs else loss


@torch.no_grad()
def score_examples(
    model: RewardModel,
    collator: RewardCollator,
    examples: Sequence[RewardExample],
    batch_size: int,
    compute: ComputeDtype = "float32",
) -> list[list[float]]:
    """Scores of every example's candidates, in order."""
    model.eval()
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collator([{"candidates": e.candidates, "images": e.images} for e in chunk])
        batch.pop("pairs")
        with autocast(compute, device):
            scores = model(**{k: v.to(device) for k, v in batch.items()}).float().cpu().tolist()
        for e in chunk:
            out.append(scores[: len(e.candidates)])
            scores = scores[len(e.candidates) :]
    return out


def pairwise_accuracy(
    human: Sequence[Sequence[float]], predicted: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """Share of within-group pairs with different human scores that the model orders the same way
    (a predicted tie counts half)."""
    correct, total = 0.0, 0
    for h, p in zip(human, predicted, strict=True):
        for i, j in better_pairs(list(h)):
            total += 1
            correct += 1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0
    return {
        "pairwise_accuracy": round(correct / total, 4) if total else None,
        "pairs": total,
        "groups": len(human),
    }


def evaluate_reward_model(
    model: RewardModel,
    inputs: RewardInputs,
    groups: Sequence[AnnotationGroup],
    image_root: str | Path | None,
    settings: RewardTrainSettings,
    padding_side: Literal["right", "left"] = "right",
) -> dict[str, Any]:
    examples, dropped = build_examples(groups, inputs, image_root, settings, with_negatives=False)
    collator = RewardCollator(inputs.tokenizer.pad_token_id, inputs, padding_side)
    predicted = score_examples(model, collator, examples, settings.eval_batch_size)
    return {**pairwise_accuracy([e.scores for e in examples], predicted), "dropped": len(dropped)}


def train_reward_model(
    model_path: str | Path,
    annotations: Sequence[Path],
    kind: RewardKind,
    out: str | Path,
    settings: RewardTrainSettings,
    image_root: str | Path | None = None,
    resume: str | bool | None = None,
) -> Manifest:
    out = Path(out)
    with stage_manifest(out, "curate.train_rm") as manifest:
        groups, rejected = load_groups(list(annotations), kind)
        train_groups, heldout = split_groups(groups, settings.heldout, settings.seed)
        llava, processor = load_llava(model_path)
        inputs = RewardInputs(processor, settings.preprocess)
        examples, dropped = build_examples(train_groups, inputs, image_root, settings, with_negatives=True)
        out.mkdir(parents=True, exist_ok=True)
        with JsonlWriter(out / "rejects.jsonl") as writer:
            for r in rejected:
                writer.write(r.to_json())
            for group_id, reason in dropped.items():
                writer.write({"group_id": group_id, "reason": reason})
        if not examples:
            raise ValueError(
                f"no usable {kind} group in {[str(a) for a in annotations]}; see {out / 'rejects.jsonl'}"
            )
        llava, trainable = prepare_for_training(llava, settings.train)
        torch.manual_seed(settings.train.seed)  # the fresh head: the same run gives the same model
        model = RewardModel(llava)
        collator = RewardCollator(processor.tokenizer.pad_token_id, inputs)
        result = run_trainer(
            model, RewardDataset(examples), collator, out, settings.train, resume, trainer_cls=RewardTrainer
        )
        metrics = {
            "heldout": evaluate_reward_model(model, inputs, heldout, image_root, settings)
            if heldout
            else None
        }
        card = RewardCard(
            kind=kind,
            preprocess=settings.preprocess,
            base_model=str(model_path),
            base_fingerprint=model_fingerprint(model_path) if Path(model_path).is_dir() else None,
            training={
                "settings_fingerprint": fingerprint_settings(settings),
                "heldout": settings.heldout,
                "seed": settings.seed,
                "steps": result.steps,
                "train_loss": result.train_loss,
                "groups": len(examples),
            },
            metrics=metrics,
        )
        save_reward_model(model, processor, card, out)
        manifest.inputs = {**{str(a): fingerprint_file(a) for a in annotations}, "model": str(model_path)}
        manifest.settings = {
            "kind": kind,
            **settings.model_dump(mode="json"),
            "compute_dtype": settings.train.compute_dtype(),
        }
        manifest.counts = {
            "groups": len(groups),
            "rejected": len(rejected),
            "train_groups": len(examples),
            "dropped": len(dropped),
            "heldout_groups": len(heldout),
            "pairs": sum(len(e.pairs) for e in examples),
            "negatives": sum(len(e.candidates) - e.originals for e in examples),
            "trainable_parameters": trainable,
            "truncated": inputs.truncated,
            **result.manifest_counts(),
            **metrics,
        }
    return manifest


def run_stage(ctx: StageContext) -> None:
    kind, annotations = ctx.take("kind"), ctx.take("annotations")
    paths = [Path(a) for a in ([annotations] if isinstance(annotations, str | Path) else annotations)]
    manifest = train_reward_model(
        ctx.take("model"),
        paths,
        kind,
        ctx.out,
        ctx.settings,
        ctx.take("image_root", None),
        ctx.take("resume", None),
    )
    c = manifest.counts
    heldout = c["heldout"] or {}
    ctx.say(
        f"{kind} reward model → {ctx.out}: {c['train_groups']} groups, {c['pairs']} pairs "
        f"({c['negatives']} corrupted negatives), {c['steps']} steps, loss {c['train_loss']:.4f}; "
        f"held-out pairwise accuracy {heldout.get('pairwise_accuracy')} over {heldout.get('pairs', 0)} pairs; "
        f"{c['rejected'] + c['dropped']} groups rejected (rejects.jsonl)"
    )
