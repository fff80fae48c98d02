"""One `dtype` setting for every stage that runs a model: `auto` computes in bfloat16 where the hardware
does it natively and faster (CUDA with bf16; a CPU with AVX512-BF16 or AMX on which a bf16 matmul
measures faster than a float32 one) and in float32 elsewhere. Master weights stay float32 on CPU and
autocast does the mixed precision, so training keeps full-precision updates; on a GPU, inference may
hold the weights in the compute dtype itself (half the memory).

The CPU check is measured, not read off cpuinfo: on one 2-core VM with AVX512-BF16, oneDNN's bf16
matmul ran 1.6–2× slower than MKL's float32 one (and bf16 training 0.58× as fast), where on another
it ran 2–3× faster. The probe takes about 0.2 s and is cached per CPU model, thread count and torch, so a
machine resolves the same way every time. `VIALIGN_CPU_BF16=1` or `=0` sets the CPU's answer instead of the
probe (a test forces both kinds of CPU with it).

Every resolution says why; those made inside a stage go into its manifest (`Manifest.precision`)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from vialign.choices import ComputeDtype, Dtype
from vialign.manifest import record_precision, write_atomically


def default_device(device: str | None = None) -> str:
    """Where a model goes when no device is named: the GPU where there is one."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def device_type(device: str | torch.device | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def cpu_has_native_bf16() -> bool:
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


CPU_BF16_ENV = "VIALIGN_CPU_BF16"


@dataclass(frozen=True)
class Precision:
    """What a `dtype` setting resolved to on a device, and why."""

    setting: str
    device: str
    dtype: ComputeDtype
    reason: str


def training_device(use_cpu: bool) -> str:
    """Where a trainer runs: the CUDA GPU where there is one, unless `use_cpu` asks for the CPU."""
    return default_device("cpu" if use_cpu else None)


def forced_cpu_bf16() -> str | None:
    """`VIALIGN_CPU_BF16` as given ("1" or "0"), or None when unset."""
    forced = os.environ.get(CPU_BF16_ENV)
    if forced not in (None, "0", "1"):
        raise ValueError(f"{CPU_BF16_ENV}={forced!r}: use 1 (bf16 CPU) or 0 (float32 CPU), or unset it")
    return forced


def cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes in bf16 (natively and faster than float32), and why."""
    forced = forced_cpu_bf16()
    if forced is not None:
        return forced == "1", f"{CPU_BF16_ENV}={forced} sets the CPU's bf16 answer"
    if not cpu_has_native_bf16():
        return False, "this CPU has neither AVX512-BF16 nor AMX"
    probe = cpu_bf16_probe()
    times = f"bf16 matmul {probe['bfloat16_s'] * 1e3:.1f} ms vs float32 {probe['float32_s'] * 1e3:.1f} ms"
    if probe["bf16_faster"]:
        return True, f"CPU with AVX512-BF16/AMX, {times} (bf16 when under 0.8×)"
    return False, f"CPU with AVX512-BF16/AMX but bf16 is not faster here: {times}"


def native_bf16(kind: str) -> tuple[bool, str]:
    if kind == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, f"CUDA GPU with bf16 ({torch.cuda.get_device_name()})"
        return False, "CUDA GPU without bf16"
    if kind == "cpu":
        return cpu_bf16()
    return False, f"{kind} is not a device vialign computes bf16 on"


@functools.cache
def cpu_bf16_probe() -> dict[str, float | bool]:
    """Times a LLaVA-sized matmul in bf16 and float32 on this CPU (cached on disk per machine)."""
    from vialign.models.families.tokenizers import cache_dir

    path = cache_dir() / "precision" / f"{machine_key()}.json"
    if path.is_file():
        return json.loads(path.read_text())
    fp32, bf16 = matmul_seconds(torch.float32), matmul_seconds(torch.bfloat16)
    probe = {"bf16_faster": bf16 < 0.8 * fp32, "float32_s": fp32, "bfloat16_s": bf16}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(probe).encode())
    return probe


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


def resolve_precision(setting: Dtype, device: str | torch.device | None = None) -> Precision:
    """The dtype a model computes in on this device, and why; refuses what the device would only emulate."""
    kind = device_type(device)
    if setting == "auto":
        native, why = native_bf16(kind)
        precision = Precision(setting, kind, "bfloat16" if native else "float32", f"auto: {why}")
    elif setting == "bfloat16" and kind == "cpu" and not cpu_has_native_bf16() and forced_cpu_bf16() != "1":
        raise ValueError(
            "dtype bfloat16: this CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated "
            "and slower than float32; use dtype float32 (or auto)"
        )
    elif setting == "float16" and kind != "cuda":
        raise ValueError(f"dtype float16 is for CUDA GPUs; on {kind} use bfloat16, float32 or auto")
    else:
        precision = Precision(setting, kind, setting, "set explicitly")
    record_precision(asdict(precision))
    return precision


def resolve_dtype(setting: Dtype, device: str | torch.device | None = None) -> ComputeDtype:
    return resolve_precision(setting, device).dtype


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
