"""The GPU figures as one prepared run on a GPU machine without internet (never in the test suite).

Prepare, from the repository root on a machine that reaches the package index (once):

    python3 benchmarks/gpu_check.py --prepare

downloads into `.whl/` (git-ignored, about 6 MiB) the wheels of vialign's dependencies that a bare
CUDA/PyTorch image lacks (pydantic, orjson, openai, fastapi, …; see WHEELS) and DeepSpeed's sdist.
Launch, from the repository root on the GPU machine with `.whl/` beside it (the whole run ≤ 8 min):

    python3 benchmarks/gpu_check.py --out DIR [--runs lora,full,dpo,zero2] [--batch 16] [--steps 10]

It installs the wheels offline into /tmp/site (DeepSpeed with DS_BUILD_OPS=0), re-runs itself with
them, builds a LLaVA-1.5-7B-shaped LLaVA with random weights (Vicuna-7B-shaped Llama with the real
Llama-2 tokenizer, CLIP ViT-L/14-336-shaped tower, two-layer GELU projector) and a toy world, and
trains it a few steps with the commands a user runs, `vialign train sft` / `train dpo`, bf16, SDPA,
every setting at its default unless the run names it:

- lora: LoRA r128 on the LLM (projector trained whole), packing, `gradient_checkpointing: auto`;
- full: the LLM and projector trained whole (float32 masters, fused AdamW), checkpointing auto;
- dpo: LoRA r128 DPO on toy-world pairs (best and worst rated answer), reference log-probs computed
  first and cached;
- zero2: the lora run under DeepSpeed ZeRO-2 through `accelerate launch` (one process).

It prints one line per figure, `gpu mfu RUN: ratio X (tokens/s, peak, settings)`, and writes
DIR/gpu_check.json and each run's log. MFU counts the language model's model FLOPs only, per token
after the first step, against the GPU's dense bf16 peak (H100/H200 SXM 989 TFLOP/s): LoRA 4N (2N
forward, 2N input gradients; the frozen base has no weight gradients), full 6N (plus 2N weight
gradients), DPO 4N per policy token (chosen and rejected tokens, one forward and backward each; the
cached reference costs nothing per step). N = the LLM's parameters; recomputation is not counted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / ".whl"
SITE = "/tmp/site"
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
# What vialign imports beyond a CUDA/PyTorch image with transformers, peft, accelerate, typer, rich,
# httpx, pillow, pyyaml and safetensors (the image's `pip list` in .library/device/KINDS.md).
WHEELS_NEEDED = [
    "pydantic==2.12.5",
    "pydantic-core==2.41.5",
    "annotated-types==0.7.0",
    "typing-inspection==0.4.2",
    "orjson==3.11.5",
    "openai==2.14.0",
    "jiter==0.12.0",
    "distro==1.9.0",
    "sniffio==1.3.1",
    "fastapi==0.128.0",
    "starlette==0.50.0",
    "uvicorn==0.40.0",
    "hjson==3.1.0",  # DeepSpeed's
]
DEEPSPEED = "deepspeed==0.18.3"
FLOPS_PER_TOKEN = {"lora": 4, "zero2": 4, "dpo": 4, "full": 6}

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


def prepare() -> None:
    """Download the wheels and DeepSpeed's sdist into .whl/ (run where the package index is reachable)."""
    platforms = [
        x
        for tag in ("manylinux_2_28", "manylinux_2_17", "manylinux2014", "manylinux_2_5", "manylinux1")
        for x in ("--platform", f"{tag}_x86_64")
    ]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(WHEELS)]
    subprocess.run(
        [
            *pip,
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            *WHEELS_NEEDED,
        ],
        check=True,
    )
    subprocess.run([*pip, "--no-binary=:all:", DEEPSPEED], check=True)
    size = sum(f.stat().st_size for f in WHEELS.iterdir()) / 2**20
    print(f"{len(list(WHEELS.iterdir()))} files, {size:.1f} MiB in {WHEELS}")


def install_offline() -> dict[str, str]:
    """Install the carried wheels and DeepSpeed into SITE; returns the environment that sees them."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir"]
    wheels = sorted(glob.glob(str(WHEELS / "*.whl")))
    if not wheels:
        raise SystemExit(f"no wheels in {WHEELS}: run `python3 benchmarks/gpu_check.py --prepare` first")
    subprocess.run([*pip, "--no-compile", "--upgrade", "--target", SITE, *wheels], check=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([SITE, str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    sdists = sorted(glob.glob(str(WHEELS / "deepspeed-*.tar.gz")))
    if sdists:
        subprocess.run(
            [*pip, "--no-build-isolation", "--target", SITE, sdists[-1]],
            check=True,
            env={**env, "DS_BUILD_OPS": "0"},
        )
    return env


def build_world(root: Path, samples: int, pairs: int) -> tuple[Path, Path, Path]:
    """(toy world, SFT data, DPO pairs: each annotated question's best and worst rated answer)."""
    from vialign.records import read_samples, write_jsonl
    from vialign.toyworld.annotations import best_and_worst_pairs
    from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld

    world = root / "world"
    generate_toyworld(
        world, ToyWorldSettings(seed=0, size=samples, annotation_images=pairs // 2, eval_scenes=1)
    )
    data = root / "train.jsonl"
    write_jsonl(list(read_samples(world / "corpus.jsonl"))[:samples], data)
    write_jsonl(best_and_worst_pairs(world, pairs), root / "pairs.jsonl")
    return world, data, root / "pairs.jsonl"


def build_model(out: Path) -> int:
    """Random weights made on the GPU in bf16 (a CPU float32 init of 7B would take minutes)."""
    import torch

    from vialign.models.families.tokenizers import family_tokenizer
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
    run: str, model: Path, world: Path, data: Path, pairs: Path, out: Path, steps: int, batch: int
) -> list[str]:
    sets: dict = {
        "dtype": "bfloat16",
        "max_steps": steps,
        "batch_size": batch,
        "lr": 2e-4,
        "warmup_ratio": 0.0,
        "logging_steps": 5,
        "max_length": 2048,
        "lora.enabled": "true",
        "lora.r": 128,
        "lora.alpha": 256,
        "lora.dropout": 0.0,
        "lora.merge_on_save": "false",
    }
    if run == "full":
        sets = {k: v for k, v in sets.items() if not k.startswith("lora.")} | {"lr": 2e-5}
    if run != "dpo":
        sets["templates"] = "none"
    command = ["train", "dpo" if run == "dpo" else "sft", "--model", str(model)]
    command += ["--data", str(pairs if run == "dpo" else data), "--image-root", str(world), "--out", str(out)]
    command += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    if run != "zero2":
        return [sys.executable, "-m", "vialign.cli", *command]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs/accelerate/deepspeed_zero2.yaml"),
        "--num_processes",
        "1",
        "-m",
        "vialign.cli",
        *command,
        "--set",
        f"deepspeed={REPO / 'configs/deepspeed/zero2.json'}",
    ]


def profile(model: Path, data: Path, world: Path, out: Path, batch: int) -> None:
    """Steps 4-7 of the lora run under torch.profiler: where the time of a step goes."""
    import torch
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
        max_steps=9,
        batch_size=batch,
        lr=2e-4,
        templates="none",
        lora={"enabled": True, "dropout": 0.0, "merge_on_save": False},
    )
    train_sft(model, data, out, settings, image_root=world, callbacks=[Profile()])


def adapter_is_whole(out: Path) -> bool:
    from safetensors.torch import load_file

    tensors = load_file(out / "adapter" / "adapter_model.safetensors")
    return bool(tensors) and all(t.numel() > 0 for t in tensors.values())


def figure_line(run: str, entry: dict, batch: int) -> str:
    what = {
        "lora": "LoRA r128 SFT",
        "full": "full SFT (LLM + projector)",
        "dpo": "LoRA r128 DPO, cached reference",
        "zero2": "LoRA r128 SFT, ZeRO-2",
    }[run]
    if "mfu" not in entry:
        return f"gpu mfu {run}: failed (exit {entry['exit']}; see {run}.log)"
    checkpointing = entry.get("activation_checkpointing", {})
    return (
        f"gpu mfu {run}: ratio {entry['mfu']:.3f} ({what}, 7B LLaVA-1.5 shape, bf16, batch {batch}, "
        f"{entry['steady_tokens_per_s']:,.0f} tokens/s after the first step, peak {entry['peak_gpu_mb'] / 1024:.1f} GiB, "
        f"checkpointing {'on' if checkpointing.get('on') else 'off'} ({checkpointing.get('setting')}), "
        f"{FLOPS_PER_TOKEN[run]}N per token)"
    )


def measure(args: argparse.Namespace) -> None:
    import torch

    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
    print(f"{gpu}; torch {torch.__version__}; CUDA {torch.version.cuda}", flush=True)
    t0 = time.perf_counter()
    world, data, pairs = build_world(work, args.samples, args.pairs)
    model = work / "llava-1.5-7b-random"
    llm_params = build_model(model)
    print(
        f"world + 7B-shaped model ({llm_params / 1e9:.2f} B LLM parameters) in {time.perf_counter() - t0:.0f} s"
    )
    if args.profile:
        profile(model, data, world, work / "sft-profile", args.batch)
    report = {"gpu": gpu, "torch": torch.__version__, "llm_parameters": llm_params, "runs": {}}
    for run in args.runs.split(","):
        run_out = work / run
        t0 = time.perf_counter()
        proc = subprocess.run(
            train_command(run, model, world, data, pairs, run_out, args.steps, args.batch),
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        (out / f"{run}.log").write_text(proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-40000:])
        entry: dict = {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1)}
        if proc.returncode == 0:
            counts = json.loads((run_out / "manifest.json").read_text())["counts"]
            keep = ("steps", "train_loss", "tokens_per_s", "steady_tokens_per_s", "peak_gpu_mb")
            entry.update(
                {k: counts.get(k) for k in (*keep, "activation_checkpointing", "trainable_parameters")}
            )
            if run != "full":
                entry["adapter_whole"] = adapter_is_whole(run_out)
            if entry["steady_tokens_per_s"] and peak:
                entry["mfu"] = round(
                    entry["steady_tokens_per_s"] * FLOPS_PER_TOKEN[run] * llm_params / peak, 4
                )
        report["runs"][run] = entry
        print(json.dumps({run: entry}), flush=True)
        print(figure_line(run, entry, args.batch), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prepare", action="store_true", help="download the wheels into .whl/ and stop")
    parser.add_argument("--out")
    parser.add_argument("--work", default="/tmp/gpu_check")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--pairs", type=int, default=96)
    parser.add_argument("--runs", default="lora,full,dpo,zero2")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--installed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        return prepare()
    if not args.out:
        parser.error("--out DIR is required (or --prepare)")
    if not args.installed:
        env = install_offline()
        raise SystemExit(
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--installed"], env=env).returncode
        )
    measure(args)


if __name__ == "__main__":
    main()
