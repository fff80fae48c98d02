"""Multimodal DPO on the SFT trainer, with reference log-probs computed once and cached on disk.

Log-probs are summed over the response tokens of each sequence, read off logits over the *expanded*
sequence (image tokens already expanded by the encoder), so labels and logits align by construction for
any number and place of images (METHODS.md section 3: LLaVA-DPO's fixed 575-position slicing does not).

The reference is the frozen SFT model. Its log-probs live in `REF_CACHE/<key>.jsonl`, the key hashing the
pairs file, the reference checkpoint and the encoding (chat format, max length, templates, image tokens,
image processor); anything changed gives a new key, so a stale cache is never read. Computing the cache
goes through the resumable runner: a crash keeps what was done.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
import torch
import torch.nn.functional as F
from accelerate import PartialState
from pydantic import Field
from torch.utils.data import Dataset

from vialign.generation.runner import Row, RunnerSettings, run_resumable
from vialign.manifest import Manifest, fingerprint_file, fingerprint_settings, stage_manifest
from vialign.models.encoding import ENCODER_VERSION, IGNORE_INDEX, ChatEncoder, EncodingError
from vialign.models.families import family_of
from vialign.models.loading import load_llava, model_fingerprint, save_llava
from vialign.models.precision import ComputeDtype, autocast
from vialign.records import JsonlWriter, Sample, confined_image_path, read_samples
from vialign.stage import StageContext
from vialign.train.core import VialignTrainer, prepare_for_training, run_trainer, save_run, training_encoder
from vialign.train.data import SFTCollator
from vialign.train.dtypes import frozen_weights_in, lowers_frozen_weights
from vialign.train.settings import ChatTrainerSettings

PreferenceLoss = Literal["sigmoid", "ipo", "hinge"]


class DPOSettings(ChatTrainerSettings):
    trainer: ClassVar[str] = "`train dpo`"
    not_used: ClassVar[dict[str, str]] = {
        "mode": "DPO's loss is on the responses only (log-probs of chosen and rejected answers)",
        **dict.fromkeys(
            ("templates", "template_min_frac"),
            "DPO trains on responses only, so no template is ever in its loss",
        ),
        **dict.fromkeys(("packing", "pack_tokens"), "DPO pads each batch of pairs"),
        **dict.fromkeys(("group_by_length", "length_group_batches"), "DPO draws pairs in random order"),
    }

    beta: float = Field(0.1, gt=0)
    loss: PreferenceLoss = "sigmoid"
    sft_weight: float = Field(0.0, ge=0, description="weight of an added NLL term on the chosen responses")
    ref_cache_dir: Path | None = Field(None, description="default: OUT/ref_cache")
    ref_batch_size: int = Field(8, ge=1, description="pairs per reference forward")
    lr: float = Field(5e-5, gt=0)
    allow_no_pairs: bool = Field(
        False,
        description="when no pair can be trained on, save the SFT model unchanged (said in the log and the "
        "manifest) instead of stopping; for pipelines whose judge may find no clear preference",
    )


# ---------------------------------------------------------------- log-probs and loss


def sequence_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    trained_positions: torch.Tensor,
    **image_inputs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the labelled tokens of each row, and how many there are; logits are computed
    at the batch's `trained_positions` only (the responses)."""
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_to_keep=trained_positions,
        **image_inputs,
    ).logits.float()
    targets = labels[:, 1:].index_select(1, trained_positions)
    mask = targets != IGNORE_INDEX
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    token_logps = (picked - torch.logsumexp(logits, dim=-1)) * mask
    return token_logps.sum(-1), mask.sum(-1)


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss: PreferenceLoss = "sigmoid",
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair loss. sigmoid: −log σ(β·Δ); hinge: max(0, 1 − β·Δ); ipo: (Δ̄ − 1/(2β))², with Δ̄ the
    log-ratio difference per response token (as TRL normalises it)."""
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if loss == "sigmoid":
        return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    if loss == "hinge":
        return torch.relu(1 - beta * (chosen_ratio - rejected_ratio))
    if chosen_tokens is None or rejected_tokens is None:
        raise ValueError("the ipo loss needs the response token counts")
    delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
    return (delta - 1 / (2 * beta)) ** 2


# ---------------------------------------------------------------- data


@dataclass
class EncodedPair:
    id: str
    chosen: tuple[list[int], list[int]]
    rejected: tuple[list[int], list[int]]
    images: list[str]


def encode_pair(encoder: ChatEncoder, record: Sample) -> EncodedPair:
    extra = record.model_extra or {}
    if not isinstance(extra.get("chosen"), str) or not isinstance(extra.get("rejected"), str):
        raise EncodingError(record.id, "a preference record needs 'chosen' and 'rejected' texts")
    if len(record.conversations) != 1 or record.conversations[0].role != "human":
        raise EncodingError(
            record.id, "a preference record's conversation is the one question being answered"
        )
    sides = {}
    for side in ("chosen", "rejected"):
        sample = Sample(
            id=record.id,
            image=record.image,
            conversations=[record.conversations[0].to_json(), {"from": "gpt", "value": extra[side]}],
        )
        encoded = encoder.encode(sample)
        if encoded.dropped_turns or all(label == IGNORE_INDEX for label in encoded.labels):
            raise EncodingError(record.id, f"the {side} response does not fit in max_length")
        sides[side] = (encoded.input_ids, encoded.labels)
    return EncodedPair(record.id, sides["chosen"], sides["rejected"], record.images)


def encode_pairs(encoder: ChatEncoder, path: Path) -> tuple[list[EncodedPair], dict[str, str]]:
    pairs, quarantined = [], {}
    for record in read_samples(path):
        try:
            pairs.append(encode_pair(encoder, record))
        except EncodingError as exc:
            quarantined[record.id] = exc.reason
    return pairs, quarantined


class PairDataset(Dataset):
    def __init__(
        self, pairs: list[EncodedPair], image_root: str | Path | None, ref: dict[str, dict] | None = None
    ):
        self.pairs, self.image_root, self.ref = pairs, image_root, ref
        self.lengths = [len(p.chosen[0]) + len(p.rejected[0]) for p in pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = self.pairs[i]
        item = {
            "chosen": p.chosen,
            "rejected": p.rejected,
            "images": [confined_image_path(self.image_root or ".", x) for x in p.images],
        }
        if self.ref is not None:
            item["ref_chosen"], item["ref_rejected"] = self.ref[p.id]["chosen"], self.ref[p.id]["rejected"]
        return item


@dataclass
class PairCollator:
    """Chosen rows, then rejected rows, right-padded into one batch; each side gets its pair's images."""

    pad_token_id: int
    image_processor: Any = None
    image_inputs: tuple[str, ...] = ("pixel_values",)
    model_inputs: Any = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        flat = [
            {"input_ids": r[side][0], "labels": r[side][1], "images": r["images"]}
            for side in ("chosen", "rejected")
            for r in rows
        ]
        batch = SFTCollator(self.pad_token_id, self.image_processor, self.image_inputs, self.model_inputs)(
            flat
        )
        if "ref_chosen" in rows[0]:
            batch["ref_chosen"] = torch.tensor([r["ref_chosen"] for r in rows], dtype=torch.float32)
            batch["ref_rejected"] = torch.tensor([r["ref_rejected"] for r in rows], dtype=torch.float32)
        return batch


# ---------------------------------------------------------------- the reference cache


def frozen_storage(settings: DPOSettings) -> str:
    """How the reference pass stores the frozen weights (as the policy does; vialign/train/dtypes.py):
    its log-probs depend on it as well as on the model."""
    if not lowers_frozen_weights(settings):
        return "as loaded"
    trained = [p for p in ("vision", "projector", "llm") if settings.resolved(f"train_{p}")]
    return f"compute dtype, but for {'+'.join(trained)}" + (
        " (LoRA on the llm)" if settings.lora.enabled else ""
    )


def reference_key(
    pairs_path: Path,
    ref_model: str | Path,
    encoder: ChatEncoder,
    processor: Any,
    compute: ComputeDtype,
    frozen: str = "as loaded",
) -> str:
    s = encoder.settings
    parts = {
        "compute_dtype": compute,
        "frozen_weights": frozen,
        "pairs": fingerprint_file(pairs_path),
        "reference": model_fingerprint(ref_model),
        "encoding": {
            "chat_format": s.chat_format,
            "max_length": s.max_length,
            "image_tokens": s.image_tokens,
            "templates": sorted(s.templates),
            "add_bos": s.add_bos,
            "eos_after_answer": s.eos_after_answer,
            "image_first": s.image_first,
            "images": [s.image_token, s.image_text, s.image_separator],
            "encoder": ENCODER_VERSION,
            "chat_template": getattr(encoder.tokenizer, "chat_template", None),
        },
        "image_processor": processor.image_processor.to_dict(),
    }
    return fingerprint_settings(parts).removeprefix("sha256:")[:32]


@torch.no_grad()
def reference_logps(
    ref_model: torch.nn.Module,
    dataset: PairDataset,
    collator: PairCollator,
    out: Path,
    batch_size: int,
    show_progress: bool = True,
    compute: ComputeDtype = "float32",
) -> tuple[dict[str, dict[str, float]], int]:
    """Summed reference log-probs per pair id, from the cache file or computed (resumably) into it.
    Returns them and how many pairs were computed now."""
    ref_model.eval()
    device = next(ref_model.parameters()).device
    index = {p.id: k for k, p in enumerate(dataset.pairs)}

    def process(batch: list[EncodedPair]) -> list[Row]:
        inputs = collator([dataset[index[p.id]] for p in batch])
        with autocast(compute, device):
            logps, _ = sequence_logps(ref_model, **{k: v.to(device) for k, v in inputs.items()})
        chosen, rejected = (
            logps.double().cpu().tolist()[: len(batch)],
            logps.double().cpu().tolist()[len(batch) :],
        )
        return [
            Row(p.id, {"chosen": c, "rejected": r}) for p, c, r in zip(batch, chosen, rejected, strict=True)
        ]

    report = run_resumable(
        dataset.pairs,
        lambda p: p.id,
        process,
        out,
        RunnerSettings(batch_size=batch_size),
        finish=lambda p, row: {"id": p.id, **row["value"]},
        task="reference log-probs",
        show_progress=show_progress,
    )
    if report.failed:
        raise RuntimeError(
            f"reference log-probs failed for {len(report.failed)} pairs, e.g. {next(iter(report.failed.items()))}"
        )
    rows = (orjson.loads(line) for line in out.read_bytes().splitlines())
    return {r["id"]: {"chosen": r["chosen"], "rejected": r["rejected"]} for r in rows}, report.processed


# ---------------------------------------------------------------- the trainer


class PreferenceTrainer(VialignTrainer):
    """DPO over cached reference log-probs: one policy forward per step, no reference model in memory."""

    labelled_logits = False

    def __init__(self, *args: Any, dpo: DPOSettings, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.dpo = dpo
        self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean
        self._stats: dict[str, list[torch.Tensor]] = {}  # read (a device sync) only when logged

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ref_chosen, ref_rejected = inputs.pop("ref_chosen"), inputs.pop("ref_rejected")
        logps, tokens = sequence_logps(model, **inputs)
        chosen, rejected = logps.chunk(2)
        chosen_tokens, rejected_tokens = tokens.chunk(2)
        losses = preference_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            self.dpo.beta,
            self.dpo.loss,
            chosen_tokens,
            rejected_tokens,
        )
        loss = losses.mean()
        if self.dpo.sft_weight:
            loss = loss + self.dpo.sft_weight * (-chosen.sum() / chosen_tokens.sum().clamp(min=1))
        with torch.no_grad():
            margin = self.dpo.beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
            self._stats.setdefault("rewards/margin", []).append(margin.mean())
            self._stats.setdefault("rewards/accuracy", []).append((margin > 0).float().mean())
        return (loss, logps) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._stats:
            logs.update({k: round(torch.stack(v).mean().item(), 4) for k, v in self._stats.items()})
            self._stats = {}
        super().log(logs, start_time)


def dpo_encoder(processor: Any, settings: DPOSettings, image_root: str | Path | None = None) -> ChatEncoder:
    return training_encoder(processor, settings, "response", image_root=image_root)


def dpo_manifest_settings(settings: DPOSettings) -> dict:
    return {
        **settings.model_dump(mode="json"),
        "compute_dtype": settings.compute_dtype(),
        "fingerprint": fingerprint_settings(settings),
    }


def unchanged_model(
    model, processor, out, manifest, pairs_path, model_path, reason, main_process
) -> Manifest | None:
    """`allow_no_pairs`: the SFT model is the result; the manifest says why nothing was trained."""
    if main_process:
        save_llava(model, processor, out)
    manifest.inputs = {str(pairs_path): fingerprint_file(pairs_path), "model": str(model_path)}
    manifest.counts = {
        "pairs": 0,
        "steps": 0,
        "untrained": f"no pair to train on ({reason}); the SFT model is saved unchanged",
    }
    return manifest if main_process else None


def train_dpo(
    model_path: str | Path,
    pairs_path: str | Path,
    out: str | Path,
    settings: DPOSettings,
    image_root: str | Path | None = None,
    resume: str | bool | None = None,
    show_progress: bool = True,
    callbacks: list | None = None,
) -> Manifest | None:
    """DPO from the SFT checkpoint `model_path` (also the frozen reference); returns the manifest on the
    main process."""
    out, pairs_path = Path(out), Path(pairs_path)
    main_process = PartialState().is_main_process
    with stage_manifest(out, "train.dpo", write=main_process) as manifest:
        model, processor = load_llava(model_path)
        encoder = dpo_encoder(processor, settings, image_root)
        pairs, quarantined = encode_pairs(encoder, pairs_path) if pairs_path.stat().st_size else ([], {})
        if not pairs:
            reason = next(iter(quarantined.values()), "the file holds no pair")
            if not settings.allow_no_pairs:
                raise ValueError(f"no pair of {pairs_path} could be encoded: {reason}")
            manifest.settings = dpo_manifest_settings(settings)
            return unchanged_model(
                model, processor, out, manifest, pairs_path, model_path, reason, main_process
            )
        out.mkdir(parents=True, exist_ok=True)
        if main_process:
            with JsonlWriter(out / "quarantine.jsonl") as writer:
                for pair_id, reason in quarantined.items():
                    writer.write({"id": pair_id, "reason": reason})
        family = family_of(processor)
        collator = PairCollator(
            processor.tokenizer.pad_token_id,
            processor.image_processor,
            family.image_inputs,
            family.model_inputs(processor),
        )
        compute = settings.compute_dtype()
        key = reference_key(pairs_path, model_path, encoder, processor, compute, frozen_storage(settings))
        cache_file = (settings.ref_cache_dir or out / "ref_cache") / f"{key}.jsonl"
        # The policy starts as the reference: its log-probs before any update are the reference's, from
        # the same model (LoRA adds exactly zero before its first step) with weights in the same dtypes.
        model, trainable = prepare_for_training(model, settings)
        model.to("cpu" if settings.device() == "cpu" else PartialState().device)
        with frozen_weights_in(model, settings):
            with PartialState().main_process_first():
                ref, computed = reference_logps(
                    model,
                    PairDataset(pairs, image_root),
                    collator,
                    cache_file,
                    settings.ref_batch_size,
                    show_progress,
                    compute,
                )
            model.train()
            result = run_trainer(
                model,
                PairDataset(pairs, image_root, ref),
                collator,
                out,
                settings,
                resume,
                callbacks,
                trainer_cls=functools.partial(PreferenceTrainer, dpo=settings),
            )
        save_run(model, processor, out, settings, result)
        if not main_process:
            return None
        manifest.inputs = {str(pairs_path): fingerprint_file(pairs_path), "model": str(model_path)}
        manifest.settings = dpo_manifest_settings(settings)
        manifest.counts = {
            "pairs": len(pairs),
            "quarantined": len(quarantined),
            "reference_cache": str(cache_file),
            "reference_computed": computed,
            "reference_reused": len(pairs) - computed,
            "trainable_parameters": trainable,
            # tokens/s: chosen and rejected tokens of every pair, each one policy forward and backward
            **result.manifest_counts(),
        }
    return manifest


def run_stage(ctx: StageContext) -> None:
    manifest = train_dpo(
        ctx.take("model"),
        ctx.take("data"),
        ctx.out,
        ctx.settings,
        ctx.take("image_root", None),
        ctx.take("resume", None),
        ctx.show_progress,
    )
    if manifest is None:
        return
    c = manifest.counts
    if "untrained" in c:
        ctx.say(f"DPO: {c['untrained']} → {ctx.out}")
        return
    ctx.say(
        f"DPO: {c['pairs']} pairs ({c['quarantined']} quarantined), reference log-probs "
        f"{c['reference_reused']} reused / {c['reference_computed']} computed; {c['steps']} steps, "
        f"loss {c['train_loss']:.4f} → {ctx.out}"
    )
