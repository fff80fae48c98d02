"""`vialign model`: Build and inspect models."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from vialign.cli.common import (
    out_console,
)

app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)


@app.command("info")
def model_info(
    path: Annotated[str, typer.Argument(help="checkpoint folder (tiny or a real HF LLaVA)")],
) -> None:
    """Load a checkpoint through the common loader and describe it."""
    from vialign.models.families import family_of
    from vialign.models.loading import load_llava, processor_image_tokens

    model, processor = load_llava(path)
    family = family_of(model)
    table = Table(title=f"{path}: {type(model).__name__}")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for name, module in model.model.named_children():
        table.add_row(name, f"{sum(p.numel() for p in module.parameters()):,}")
    table.add_row("lm_head", f"{sum(p.numel() for p in model.lm_head.parameters()):,}")
    out_console.print(table)
    tokens = processor_image_tokens(processor) if family.fixed_image_tokens else "by the image's size"
    out_console.print(
        f"family {family.name}; image tokens per image: {tokens}; "
        f"vocabulary {len(processor.tokenizer)}; dtype {model.dtype}"
    )
