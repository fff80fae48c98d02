"""`vialign data`: Check and describe datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vialign.choices import ChatFormatName, LabelMode
from vialign.cli.common import (
    ConfigOpt,
    SetOpt,
    err_console,
    out_console,
    settings_or_exit,
)

app = typer.Typer(help="Check and describe datasets.", no_args_is_help=True)


@app.command("stats")
def data_stats(
    input: Annotated[Path, typer.Argument(help="a validated dataset", exists=True, dir_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="print the counts as one JSON object")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Counts per subset and format class (soft/hard), and length distributions."""
    import json

    from vialign.data.formats import FormatSettings
    from vialign.data.stats import dataset_stats
    from vialign.records import RecordError

    settings = settings_or_exit(FormatSettings, config, "formats", {}, set_)
    try:
        stats = dataset_stats(input, settings)
    except RecordError as exc:
        err_console.print(
            f"[red]error:[/red] {exc}\nRun `vialign data validate` first to separate bad records."
        )
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(stats.to_json(settings)))
        return
    for part in stats.tables(str(input), settings):
        out_console.print(part)


@app.command("preview-labels")
def data_preview_labels(
    input: Annotated[Path, typer.Argument(help="a validated dataset", exists=True, dir_okay=False)],
    model: Annotated[
        str, typer.Option("--model", help="checkpoint folder whose tokenizer and processor encode")
    ],
    mode: Annotated[LabelMode, typer.Option("--mode", help="which tokens are trained")] = "lit",
    n: Annotated[int, typer.Option("-n", help="samples to show")] = 5,
    templates: Annotated[
        str | None,
        typer.Option(
            help="template list from `vialign data templates`; default: detected over INPUT as "
            "training does (lit); none: off"
        ),
    ] = None,
    chat_format: Annotated[
        ChatFormatName | None,
        typer.Option(
            "--format",
            help="chat format (tokenizer: its own chat template); default: training's, the model family's "
            "(vicuna_v1 for LLaVA, the tokenizer's template for Qwen2-VL)",
        ),
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="longest encoded sample, as in training (default: train sft's)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per sample: every token, its role and label")
    ] = False,
    image_root: Annotated[
        Path | None,
        typer.Option(
            "--image-root",
            help="folder image paths are relative to, for families whose image tokens depend on the "
            "image's size (LLaVA-NeXT); default: INPUT's folder",
        ),
    ] = None,
) -> None:
    """Show decoded tokens with what is trained, so you see exactly what is learned."""
    import json
    from itertools import islice

    from vialign.models.encoding import EncodingError, label_rows, render_labels
    from vialign.records import read_samples
    from vialign.train.sft import preview_encoder

    processor, encoder, used = preview_encoder(
        model, input, mode, templates, chat_format, max_length, image_root or input.parent
    )
    if used and not as_json:
        err_console.print(f"templates excluded (min share {used['min_frac']}): {used['sentences']}")
    for sample in islice(read_samples(input), n):
        try:
            encoded = encoder.encode(sample)
        except EncodingError as exc:
            if as_json:
                print(
                    json.dumps({"id": sample.id, "quarantined": exc.reason, "tokens": []}, ensure_ascii=False)
                )
            else:
                out_console.print(f"[red]{exc}[/red]")
            continue
        if as_json:
            rows = label_rows(processor.tokenizer, encoded)
            print(json.dumps({"id": sample.id, "quarantined": None, "tokens": rows}, ensure_ascii=False))
            continue
        trained = sum(label != -100 for label in encoded.labels)
        out_console.rule(f"{sample.id} ({mode}): {trained} of {len(encoded)} tokens trained")
        out_console.print(render_labels(processor.tokenizer, encoded))
