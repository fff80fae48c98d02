"""Every dtype a training step holds, decided here:

- what trains (LoRA adapters, the projector, unfrozen parts) keeps float32 master weights: a bf16/fp16
  checkpoint (llava-hf ships float16) would otherwise take AdamW steps in half precision, where an
  lr-2e-5 update is below one ulp;
- what is frozen is stored in the compute dtype while training, as a bf16 checkpoint on a GPU is:
  autocast no longer casts the frozen weights at every forward, and the residual stream (the frozen
  embeddings' output) is in the compute dtype too, so activations stop crossing between float32 and
  bf16 around every layer. Those casts were 16% of a bf16 CPU step, mostly activations, not weights:
  storing only the weights autocast casts (linear and convolution layers) left the residual stream in
  float32 and removed 5% of the copy time. The price is bf16 rounding of the residual stream: on the
  SmolLM2-135M LLaVA, one batch's gradients differ from float32 compute by 7.8% (relative norm) where
  bf16 autocast over float32 storage differed by 4.5%; the loss by 0.06%. When training ends the frozen
  weights are read back from their checkpoint in its own dtype, so the model the caller holds, the
  saved model and a merged LoRA contain exactly the weights they were given;
- LoRA adapters take the compute-dtype activations as they come (autocast runs their matmuls in the
  compute dtype): PEFT's cast of each adapter's input to float32 would copy every activation twice.

Under DeepSpeed or FSDP none of this applies: they hold the module in their own dtype, sharded, and keep
float32 masters in their optimizer."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from vialign.choices import ComputeDtype

log = logging.getLogger(__name__)

# What PEFT adds to a parameter's name: its wrapper's prefix, a LoRA layer's wrapped original, and the
# frozen original of a module it also trains whole (modules_to_save).
PEFT_NAME_PARTS = re.compile(r"^base_model\.model\.|\.base_layer(?=\.)|\.original_module(?=\.)")


def checkpoint_name(name: str) -> str:
    """A parameter's name in its checkpoint, without what PEFT added to it."""
    return PEFT_NAME_PARTS.sub("", name)


def keep_float32_masters(model: torch.nn.Module, compute: ComputeDtype) -> None:
    """Float32 for what trains; without autocast (float32 compute) for everything, so no layer meets an
    input of another dtype."""
    for param in model.parameters():
        if (param.requires_grad or compute == "float32") and param.dtype != torch.float32:
            param.data = param.data.float()


def first_pretrained(model: torch.nn.Module) -> PreTrainedModel:
    """The transformers model inside what trains (the LLaVA inside a PEFT or reward-model wrapper)."""
    return next(m for m in model.modules() if isinstance(m, PreTrainedModel))


def pretrained_source(model: torch.nn.Module) -> PreTrainedModel | None:
    """That model when it was loaded from a checkpoint folder; None when it was built in memory (nothing
    to read its weights back from)."""
    inner = first_pretrained(model)
    return inner if inner.name_or_path and Path(inner.name_or_path).is_dir() else None


def lower_frozen_weights(model: torch.nn.Module, compute: ComputeDtype) -> dict[str, torch.dtype]:
    """Store every frozen floating-point weight of the checkpoint-loaded model in the compute dtype;
    returns the checkpoint names and original dtypes of those it changed."""
    source = pretrained_source(model)
    if compute == "float32" or source is None:
        return {}
    target = getattr(torch, compute)
    lowered = {}
    for name, param in source.named_parameters():
        if not param.requires_grad and param.is_floating_point() and param.dtype != target:
            lowered[checkpoint_name(name)] = param.dtype
            param.data = param.data.to(target)
    return lowered


def restore_frozen_weights(model: torch.nn.Module, lowered: dict[str, torch.dtype]) -> None:
    """Put back the exact checkpoint values (and dtypes) of the weights `lower_frozen_weights` lowered.
    On the main process only: the other ranks of a distributed run save nothing and would each hold a
    second copy of the model in memory to do it."""
    from accelerate import PartialState

    if not lowered or not PartialState().is_main_process:
        return
    source = pretrained_source(model)
    assert source is not None, "frozen weights were lowered on a model with a checkpoint"
    original, loading = type(source).from_pretrained(
        source.name_or_path, dtype="auto", use_safetensors=True, output_loading_info=True
    )
    missing = set(loading["missing_keys"]) & set(lowered)
    if missing:
        raise ValueError(
            f"{source.name_or_path} lacks {len(missing)} frozen weights to restore, e.g. {min(missing)}"
        )
    state = original.state_dict()
    restored = 0
    for name, param in source.named_parameters():
        key = checkpoint_name(name)
        if key in lowered:
            param.data = state[key].to(param.device, lowered[key])
            restored += 1
    if restored != len(lowered):
        raise ValueError(f"{len(lowered) - restored} lowered frozen weights were not found to restore")
    log.debug("restored %d frozen weights from %s", restored, source.name_or_path)


def holds_its_own_dtypes(settings: Any) -> bool:
    """DeepSpeed and FSDP keep the module in their own dtype and shard it: vialign does not lower it."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    fsdp = PartialState().distributed_type == DistributedType.FSDP or bool(settings.training_args.get("fsdp"))
    return settings.deepspeed is not None or fsdp


def lowers_frozen_weights(settings: Any) -> bool:
    """Whether training stores frozen weights in the compute dtype: not in float32, nor where DeepSpeed or
    FSDP keeps its own dtypes."""
    return settings.compute_dtype() != "float32" and not holds_its_own_dtypes(settings)


@contextlib.contextmanager
def frozen_weights_in(model: torch.nn.Module, settings: Any) -> Iterator[None]:
    """Inside the block: frozen weights in the compute dtype and LoRA adapters taking its activations
    as they come; when it ends without an error, the checkpoint's weights and PEFT's casts back (a
    forward outside autocast needs them). Inside an enclosing block, nothing more happens."""
    active = lowers_frozen_weights(settings)
    lowered = lower_frozen_weights(model, settings.compute_dtype()) if active else {}
    casting = adapter_input_casting(model, enabled=not active) if active else {}
    yield
    restore_frozen_weights(model, lowered)
    for module, was in casting.items():
        module.cast_input_dtype_enabled = was


def adapter_input_casting(model: torch.nn.Module, enabled: bool) -> dict[Any, bool]:
    """Turn PEFT's cast of each LoRA layer's input to its weights' dtype on or off; returns what each
    layer had. Under autocast the cast only adds two copies of every activation per adapter."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    before = {}
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            before[module] = getattr(module, "cast_input_dtype_enabled", True)
            module.cast_input_dtype_enabled = enabled
    return before
