"""`vialign train`: Train: SFT with VIT/LIT label masks, DPO, inner-LLM pretraining."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vialign.choices import LabelMode, Stage
from vialign.cli.common import (
    ConfigOpt,
    ImageRootOpt,
    SetOpt,
    out_console,
    settings_or_exit,
)

app = typer.Typer(
    help="Train: SFT with VIT/LIT label masks, DPO, inner-LLM pretraining.", no_args_is_help=True
)


@app.command("sft")
def train_sft_command(
    model: Annotated[str, typer.Option("--model", help="LLaVA checkpoint folder to start from")],
    data: Annotated[Path, typer.Option("--data", help="validated JSONL", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="run folder: checkpoint, manifest, logs")],
    image_root: Annotated[
        Path | None, typer.Option("--image-root", help="folder image paths are relative to")
    ] = None,
    stage: Annotated[Stage | None, typer.Option(help="what trains (a preset)")] = None,
    mode: Annotated[LabelMode | None, typer.Option(help="which tokens are trained")] = None,
    templates: Annotated[
        str | None,
        typer.Option(
            help="template list from `vialign data templates`; default: detected over --data (lit); none: off"
        ),
    ] = None,
    resume: Annotated[str | None, typer.Option(help="checkpoint folder, or 'last'")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """LLaVA-style SFT (projector pretraining, finetuning or full) with exact VIT/LIT label masks."""
    from vialign.train.settings import SFTSettings
    from vialign.train.sft import train_sft

    options = {"stage": stage, "mode": mode, "templates": templates}
    settings = settings_or_exit(SFTSettings, config, "sft", options, set_)
    manifest = train_sft(
        model, data, out, settings, image_root=image_root, resume=True if resume == "last" else resume
    )
    if manifest is None:  # not the main process of a distributed run
        return
    c = manifest.counts
    out_console.print(
        f"trained {c['steps']} steps, loss {c['train_loss']:.4f}, {c['tokens_per_s']:.0f} tokens/s; "
        f"{c['encoded']} samples, {c['truncated']} truncated, {c['quarantined']} quarantined → {out}"
    )


@app.command("lm")
def train_lm_command(
    toyworld: Annotated[Path, typer.Option("--toyworld", help="toy world folder (text/corpus.jsonl)")],
    out: Annotated[Path, typer.Option("--out", help="language model folder to write")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Pretrain the tiny inner LLM on the toy world's own-manner text corpus."""
    from vialign.models.tiny import TinyModelSettings
    from vialign.train.lm import train_lm
    from vialign.train.settings import LMTrainSettings

    model_settings = settings_or_exit(
        TinyModelSettings, config, "model", {}, [o for o in set_ or [] if o.startswith("model.")]
    )
    settings = settings_or_exit(
        LMTrainSettings, config, "lm", {}, [o for o in set_ or [] if not o.startswith("model.")]
    )
    manifest = train_lm(toyworld, out, model_settings, settings)
    out_console.print(
        f"inner LLM in {out}: {manifest.counts['steps']} steps, loss {manifest.counts['train_loss']:.4f}"
    )


@app.command("dpo")
def train_dpo_command(
    model: Annotated[str, typer.Option("--model", help="the SFT checkpoint: start and frozen reference")],
    data: Annotated[
        Path,
        typer.Option("--data", help="pairs JSONL from `vialign prefer pairs`", exists=True, dir_okay=False),
    ],
    out: Annotated[Path, typer.Option("--out", help="run folder")],
    image_root: ImageRootOpt = None,
    resume: Annotated[str | None, typer.Option(help="checkpoint folder, or 'last'")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """DPO (sigmoid, IPO or hinge) with reference log-probs cached on disk."""
    from vialign.train.dpo import DPOSettings, train_dpo

    settings = settings_or_exit(DPOSettings, config, "dpo", {}, set_)
    manifest = train_dpo(
        model, data, out, settings, image_root=image_root, resume=True if resume == "last" else resume
    )
    if manifest is None:
        return
    c = manifest.counts
    out_console.print(
        f"DPO: {c['pairs']} pairs ({c['quarantined']} quarantined), reference log-probs "
        f"{c['reference_reused']} reused / {c['reference_computed']} computed; {c['steps']} steps, "
        f"loss {c['train_loss']:.4f} → {out}"
    )
