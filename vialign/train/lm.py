"""`vialign train lm`: pretrain the tiny inner LLM on the toy world's own-manner text corpus, with the
same encoder and Trainer as SFT (text-only samples, no images)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from vialign.manifest import Manifest, fingerprint_file, stage_manifest
from vialign.models.encoding import ChatEncoder, EncoderSettings, encode_all
from vialign.models.tiny import TinyModelSettings, text_config
from vialign.models.tokenizer import texts_of, train_tokenizer
from vialign.records import read_samples
from vialign.stage import StageContext
from vialign.train.core import run_trainer, write_quarantine
from vialign.train.data import SFTCollator, SFTDataset
from vialign.train.settings import LMTrainSettings


def train_lm(
    toyworld: str | Path, out: str | Path, model_settings: TinyModelSettings, settings: LMTrainSettings
) -> Manifest:
    toyworld, out = Path(toyworld), Path(out)
    with stage_manifest(out, "train.lm") as manifest:
        corpus = toyworld / "text" / "corpus.jsonl"
        tokenizer = train_tokenizer(
            texts_of([toyworld / "corpus.jsonl", corpus]), vocab_size=model_settings.vocab_size
        )
        torch.manual_seed(model_settings.seed)
        model = LlamaForCausalLM(text_config(tokenizer, model_settings))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        # Response-only unless asked: the prompts quote teacher-manner text (rewrite and review tasks),
        # and an inner LLM that learned to produce that text would blur the writing-manner gap.
        encoder = ChatEncoder(
            tokenizer,
            EncoderSettings(
                chat_format="vicuna_v1",
                mode=settings.mode,
                image_tokens=model_settings.image_tokens,
                max_length=settings.max_length,
            ),
        )
        items, report = encode_all(encoder, read_samples(corpus))
        out.mkdir(parents=True, exist_ok=True)
        write_quarantine(out, report)
        result = run_trainer(
            model, SFTDataset(items, None), SFTCollator(tokenizer.pad_token_id), out, settings
        )
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        manifest.inputs = {str(corpus): fingerprint_file(corpus)}
        manifest.settings = {
            "model": model_settings.model_dump(mode="json"),
            "train": {**settings.model_dump(mode="json"), "compute_dtype": settings.compute_dtype()},
        }
        manifest.counts = {
            "encoded": report.encoded,
            "quarantined": len(report.quarantined),
            "steps": result.steps,
            "train_loss": result.train_loss,
            "tokens_per_s": round(result.tokens_per_s, 1),
        }
    return manifest


def run_stage(ctx: StageContext) -> None:
    manifest = train_lm(ctx.take("toyworld"), ctx.out, ctx.settings.model, ctx.settings)
    c = manifest.counts
    ctx.say(f"inner LLM in {ctx.out}: {c['steps']} steps, loss {c['train_loss']:.4f}")
