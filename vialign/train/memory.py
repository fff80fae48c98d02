"""`gradient_checkpointing: auto`: recompute activations only when the largest batch would not fit.

The estimate, for the device training runs on:
- training state: every parameter not yet on the device, in the dtype it is stored in while training
  (on the CPU the model is already resident, so only what training adds counts), plus 12 bytes per
  trainable parameter (a float32 gradient and AdamW's two moments);
- activations per token and decoder layer, without checkpointing: 40·h + 9·i bytes with the residual
  stream in bf16 (frozen embeddings: LoRA), 52·h + 9·i in float32 (embeddings trained), h the hidden
  and i the MLP size. Measured: 36.2 KB per token and layer on a SmolLM2-135M LLaVA with LoRA (the
  formula: 36.9 KB), and about 248 KB for the 7B LLaVA-1.5 shape on an H200 (peak 110.6 GB, batch 16;
  the formula: 263 KB). With checkpointing a layer keeps only its input (h per token) and one layer's
  activations live at a time;
- logits: 6 bytes per vocabulary entry per token (bf16 logits, float32 log-softmax), every token
  counted though the loss keeps only trained positions (an upper bound);
- tokens per step: the `batch_size` longest samples side by side when packed, else that many rows as
  wide as the longest (the largest batch any order can draw, pads included).

Checkpointing goes on when state + activations exceed 90% of the free device memory (CUDA: free memory
before training; CPU: MemAvailable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vialign.train.dtypes import first_pretrained

HEADROOM = 0.9
OPTIMIZER_BYTES_PER_TRAINED = 12


@dataclass(frozen=True)
class CheckpointingDecision:
    setting: str
    on: bool
    reason: str
    free_bytes: int | None = None


def language_config(model: torch.nn.Module) -> Any:
    config = model.config
    return getattr(config, "text_config", None) or config


def residual_bytes(model: torch.nn.Module) -> int:
    """Bytes per element of the residual stream: the dtype the language model's input embeddings are
    stored in (not the vision tower's position embeddings, which come first in a LLaVA)."""
    return first_pretrained(model).get_input_embeddings().weight.element_size()


def state_bytes(model: torch.nn.Module, device: str) -> int:
    """Parameters not yet on the device (a CPU run's model is already resident; DPO's is on the GPU for
    its reference pass), and a float32 gradient and AdamW's moments per trainable one."""
    arriving = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != device)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return arriving + OPTIMIZER_BYTES_PER_TRAINED * trained


def activation_bytes(model: torch.nn.Module, tokens: int, checkpointing: bool) -> int:
    text = language_config(model)
    h, i, layers, vocab = text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.vocab_size
    per_layer = (40 * h if residual_bytes(model) == 2 else 52 * h) + 9 * i
    kept = residual_bytes(model) * h * layers + per_layer if checkpointing else per_layer * layers
    return tokens * (kept + 6 * vocab)


def largest_batch_tokens(lengths: list[int], batch_size: int, packed: bool) -> int:
    """Token positions of the largest batch: the `batch_size` longest samples side by side when packed,
    else that many rows as wide as the longest (pads take activation memory too)."""
    longest = sorted(lengths, reverse=True)[:batch_size]
    return sum(longest) if packed else len(longest) * (longest[0] if longest else 0)


def free_bytes(device: str) -> int | None:
    if device == "cuda":
        torch.cuda.empty_cache()  # blocks the allocator caches (a reference pass's) are free to training
        return torch.cuda.mem_get_info()[0]
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    line = next(x for x in meminfo.read_text().splitlines() if x.startswith("MemAvailable:"))
    return int(line.split()[1]) * 1024


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def decide_checkpointing(
    setting: bool | str,
    model: torch.nn.Module,
    lengths: list[int],
    batch_size: int,
    device: str,
    packed: bool = False,
) -> CheckpointingDecision:
    if setting != "auto":
        return CheckpointingDecision(str(setting).lower(), bool(setting), "set explicitly")
    free = free_bytes(device)
    if free is None:
        return CheckpointingDecision("auto", False, "auto: off, free memory unknown on this system")
    tokens = largest_batch_tokens(lengths, batch_size, packed)
    need = state_bytes(model, device) + activation_bytes(model, tokens, checkpointing=False)
    on = need > HEADROOM * free
    verdict = f"on, over {HEADROOM:.0%} of the free memory" if on else "off, it fits"
    why = (
        f"auto: {verdict}: the largest batch ({tokens} tokens) needs about {gib(need)} on {device} without it"
    )
    return CheckpointingDecision("auto", on, why, free)
