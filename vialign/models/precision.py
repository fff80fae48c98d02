"""One `dtype` setting for every stage that runs a model: `auto` computes in bfloat16 where the hardware
does it natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX) and in float32 elsewhere. Master
weights stay float32 on CPU and autocast does the mixed precision, so training keeps full-precision
updates; on a GPU, inference may hold the weights in the compute dtype itself (half the memory)."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Dtype = Literal["auto", "bfloat16", "float16", "float32"]
ComputeDtype = Literal["bfloat16", "float16", "float32"]


def device_type(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def cpu_has_native_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def native_bf16(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return kind == "cpu" and cpu_has_native_bf16()


def resolve_dtype(setting: Dtype, device: str | torch.device | None = None) -> ComputeDtype:
    """The dtype a model computes in on this device; refuses what the device would only emulate."""
    kind = device_type(device)
    if setting == "auto":
        return "bfloat16" if native_bf16(kind) else "float32"
    if setting == "bfloat16" and kind == "cpu" and not cpu_has_native_bf16():
        raise ValueError("dtype bfloat16: this CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated "
                         "and slower than float32; use dtype float32 (or auto)")  # fmt: skip
    if setting == "float16" and kind != "cuda":
        raise ValueError(f"dtype float16 is for CUDA GPUs; on {kind} use bfloat16, float32 or auto")
    return setting


def autocast(compute: ComputeDtype, device: str | torch.device | None = None) -> contextlib.AbstractContextManager:
    """Mixed precision around a forward pass (weights untouched); nothing for float32."""
    if compute == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=getattr(torch, compute))


def weight_dtype(compute: ComputeDtype, device: str | torch.device | None = None) -> torch.dtype:
    """Inference weights: the compute dtype on a GPU; float32 on CPU, where autocast casts per operation
    and keeps reductions (softmax, norms, losses) in float32."""
    return getattr(torch, compute) if device_type(device) == "cuda" else torch.float32
