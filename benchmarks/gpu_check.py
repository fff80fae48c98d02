"""The GPU path, checked on a GPU machine (never in the test suite): a LLaVA-1.5-7B-shaped LLaVA with
random weights (Vicuna-7B-shaped Llama with the real Llama-2 tokenizer, CLIP ViT-L/14-336-shaped tower,
two-layer GELU projector) trained for a few steps by `vialign train sft` in bf16 with SDPA, padding-free
packing and gradient checkpointing: alone, and under DeepSpeed ZeRO-2 and ZeRO-3 through
`accelerate launch` with the configs vialign ships. Prints steady tokens/s (after the first step), peak
GPU memory and MFU, and checks that the saved LoRA adapter is whole (ZeRO-3 shards it while training).

MFU counts model FLOPs of the language model only: LoRA leaves the base frozen, so a token costs 2N
forward + 2N backward (input gradients; no weight gradients for frozen weights), N its parameters;
gradient checkpointing's recomputation is not counted (it is hardware work, not model work). Peak: the
dense bf16 figure of the GPU (H100 SXM 989 TFLOP/s).

    python benchmarks/gpu_check.py --out DIR [--steps 12] [--batch 8] [--runs plain,zero2,zero3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}

LLAVA15_7B = dict(
    family="llava-1.5",
    vision="clip",
    image_size=336,
    patch_size=14,
    vision_hidden=1024,
    vision_layers=24,
    vision_heads=16,
    vision_intermediate=4096,
    text_hidden=4096,
    text_layers=32,
    text_heads=32,
    text_intermediate=11008,
    max_positions=4096,
)


def build_world(root: Path, samples: int) -> tuple[Path, Path]:
    from vialign.records import read_samples, write_jsonl
    from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld

    world = root / "world"
    generate_toyworld(world, ToyWorldSettings(seed=0, size=samples, annotation_images=0, eval_scenes=1))
    data = root / "train.jsonl"
    write_jsonl(list(read_samples(world / "corpus.jsonl"))[:samples], data)
    return world, data


def build_model(out: Path) -> int:
    """Random weights made on the GPU in bf16 (a CPU float32 init of 7B would take minutes)."""
    from vialign.models.families import family_tokenizer
    from vialign.models.loading import save_llava
    from vialign.models.tiny import TinyModelSettings, build_tiny_llava

    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model, processor = build_tiny_llava(family_tokenizer("llava-1.5"), TinyModelSettings(**LLAVA15_7B))
    torch.set_default_dtype(torch.float32)
    llm = sum(p.numel() for p in model.model.language_model.parameters())
    save_llava(model, processor, out)
    del model
    torch.cuda.empty_cache()
    return llm


def train_command(
    run: str, model: Path, data: Path, world: Path, out: Path, steps: int, batch: int
) -> list[str]:
    if run == "sample":
        return [
            sys.executable,
            "-m",
            "vialign.cli",
            "prefer",
            "sample",
            str(data),
            "--model",
            str(model),
            "--image-root",
            str(world),
            "--out",
            str(out / "groups.jsonl"),
            "--limit",
            "32",
            "--set",
            "params.max_new_tokens=64",
            "--batch-size",
            "32",
        ]
    sets = {
        "dtype": "bfloat16",
        "gradient_checkpointing": "true",
        "max_steps": steps,
        "batch_size": batch,
        "lr": 2e-4,
        "warmup_ratio": 0.0,
        "logging_steps": 1,
        "lora.enabled": "true",
        "lora.merge_on_save": "false",
        "templates": "none",
        "max_length": 2048,
    }
    if run == "fast":
        sets.update({"gradient_checkpointing": "false", "dataloader_workers": 4})
    elif run.startswith("zero"):
        sets["deepspeed"] = f"configs/deepspeed/{run}.json"
    args = [
        "train",
        "sft",
        "--model",
        str(model),
        "--data",
        str(data),
        "--image-root",
        str(world),
        "--out",
        str(out),
    ] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    if not run.startswith("zero"):
        return [sys.executable, "-m", "vialign.cli", *args]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        f"configs/accelerate/deepspeed_{run}.yaml",
        "--num_processes",
        "1",
        "-m",
        "vialign.cli",
        *args,
    ]


def profile(model: Path, data: Path, world: Path, out: Path, batch: int) -> None:
    """Steps 4-7 of the plain run under torch.profiler: where the time of a step goes."""
    from transformers import TrainerCallback

    from vialign.train.settings import SFTSettings
    from vialign.train.sft import train_sft

    class Profile(TrainerCallback):
        def __init__(self) -> None:
            acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            self.prof = torch.profiler.profile(activities=acts)

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 4:
                self.prof.__enter__()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 8:
                torch.cuda.synchronize()
                self.prof.__exit__(None, None, None)
                for key in ("self_cuda_time_total", "self_cpu_time_total"):
                    print(self.prof.key_averages().table(sort_by=key, row_limit=22), flush=True)

    settings = SFTSettings(
        dtype="bfloat16",
        gradient_checkpointing=True,
        max_steps=9,
        batch_size=batch,
        lr=2e-4,
        templates="none",
        lora={"enabled": True, "merge_on_save": False},
    )
    train_sft(model, data, out, settings, image_root=world, callbacks=[Profile()])


def adapter_is_whole(out: Path) -> bool:
    from safetensors.torch import load_file

    tensors = load_file(out / "adapter" / "adapter_model.safetensors")
    return bool(tensors) and all(t.numel() > 0 for t in tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/gpu_check")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--runs", default="plain,zero2,zero3")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    out, work = Path(args.out), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    print(f"{gpu}; torch {torch.__version__}; CUDA {torch.version.cuda}", flush=True)
    t0 = time.perf_counter()
    world, data = build_world(work, args.samples)
    model = work / "llava-1.5-7b-random"
    llm_params = build_model(model)
    print(
        f"world + 7B-shaped model ({llm_params / 1e9:.2f} B LLM parameters) in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    if args.profile:
        profile(model, data, world, work / "sft-profile", args.batch)
    report = {"gpu": gpu, "torch": torch.__version__, "llm_parameters": llm_params, "runs": {}}
    for run in args.runs.split(","):
        run_out = work / f"sft-{run}"
        t0 = time.perf_counter()
        proc = subprocess.run(
            train_command(run, model, data, world, run_out, args.steps, args.batch),
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        (out / f"{run}.log").write_text(proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-40000:])
        entry: dict = {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1)}
        if proc.returncode == 0 and run == "sample":
            entry["groups"] = sum(1 for _ in (run_out / "groups.jsonl").open())
        elif proc.returncode == 0:
            counts = json.loads((run_out / "manifest.json").read_text())["counts"]
            steady = counts.get("steady_tokens_per_s")
            entry.update(
                {
                    k: counts.get(k)
                    for k in (
                        "steps",
                        "train_loss",
                        "tokens_per_s",
                        "steady_tokens_per_s",
                        "peak_gpu_mb",
                        "world_size",
                    )
                }
            )
            entry["adapter_whole"] = adapter_is_whole(run_out)
            if steady and peak:
                entry["mfu"] = round(steady * 4 * llm_params / peak, 4)
        report["runs"][run] = entry
        print(run, json.dumps(entry), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
