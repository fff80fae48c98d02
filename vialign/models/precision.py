"""One `dtype` setting for every stage that runs a model: `auto` computes in bfloat16 where the hardware
does it natively and faster (CUDA with bf16; a CPU with AVX512-BF16 or AMX on which a bf16 matmul
measures faster than a float32 one) and in float32 elsewhere. Master weights stay float32 on CPU and
autocast does the mixed precision, so training keeps full-precision updates; on a GPU, inference may
hold the weights in the compute dtype itself (half the memory).

The CPU check is measured, not read off cpuinfo: on one 2-core VM with AVX512-BF16, oneDNN's bf16
matmul ran 1.6–2× slower than MKL's float32 one (and bf16 training 0.58× as fast), where on another
it ran 2–3× faster. The probe takes about 0.2 s and is cached per CPU model, thread count and torch."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import platform
import time
from pathlib import Path

import torch

from vialign.choices import ComputeDtype, Dtype


def default_device(device: str | None = None) -> str:
    """Where a model goes when no device is named: the GPU where there is one."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def device_type(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def cpu_has_native_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def native_bf16(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return kind == "cpu" and cpu_has_native_bf16() and cpu_bf16_is_faster()


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether a LLaVA-sized bf16 matmul beats float32 on this CPU (cached on disk per machine)."""
    from vialign.models.families import cache_dir

    path = cache_dir() / "precision" / f"{machine_key()}.json"
    if path.is_file():
        return bool(json.loads(path.read_text())["bf16_faster"])
    fp32, bf16 = matmul_seconds(torch.float32), matmul_seconds(torch.bfloat16)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bf16_faster": bf16 < 0.8 * fp32, "float32_s": fp32, "bfloat16_s": bf16}))
    return bf16 < 0.8 * fp32


def machine_key() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    text = f"{cpu}|{torch.get_num_threads()}|{torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def matmul_seconds(dtype: torch.dtype, repeats: int = 5) -> float:
    """Best time of a (1024×1024)·(1024×1536) matmul, about one transformer projection of a batch."""
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1536, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def resolve_dtype(setting: Dtype, device: str | torch.device | None = None) -> ComputeDtype:
    """The dtype a model computes in on this device; refuses what the device would only emulate."""
    kind = device_type(device)
    if setting == "auto":
        return "bfloat16" if native_bf16(kind) else "float32"
    if setting == "bfloat16" and kind == "cpu" and not cpu_has_native_bf16():
        raise ValueError(
            "dtype bfloat16: this CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated "
            "and slower than float32; use dtype float32 (or auto)"
        )
    if setting == "float16" and kind != "cuda":
        raise ValueError(f"dtype float16 is for CUDA GPUs; on {kind} use bfloat16, float32 or auto")
    return setting


def autocast(
    compute: ComputeDtype, device: str | torch.device | None = None
) -> contextlib.AbstractContextManager:
    """Mixed precision around a forward pass (weights untouched); nothing for float32."""
    if compute == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=getattr(torch, compute))


def weight_dtype(compute: ComputeDtype, device: str | torch.device | None = None) -> torch.dtype:
    """Inference weights: the compute dtype on a GPU; float32 on CPU, where autocast casts per operation
    and keeps reductions (softmax, norms, losses) in float32."""
    return getattr(torch, compute) if device_type(device) == "cuda" else torch.float32
