"""`vialign data`: Check and describe datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vialign.choices import ChatFormatName, ImageCheck, LabelMode, OnDuplicate
from vialign.cli.common import (
    ConfigOpt,
    QuietOpt,
    SetOpt,
    err_console,
    out_console,
    settings_or_exit,
)

app = typer.Typer(help="Check and describe datasets.", no_args_is_help=True)


@app.command("validate")
def data_validate(
    input: Annotated[
        Path, typer.Argument(help="LLaVA JSON array or JSONL file", exists=True, dir_okay=False)
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for valid.jsonl, rejects.jsonl, manifest.json")],
    image_root: Annotated[
        Path | None, typer.Option("--image-root", help="folder image paths are relative to")
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="exit with code 1 if any record is rejected")
    ] = False,
    max_text_chars: Annotated[int | None, typer.Option(help="longest total text of one record")] = None,
    image_check: Annotated[ImageCheck | None, typer.Option(help="how closely images are checked")] = None,
    subset: Annotated[
        str | None, typer.Option(help="tag every record with this subset (e.g. conversation, detail)")
    ] = None,
    on_duplicate: Annotated[
        OnDuplicate | None, typer.Option(help="rename (ID#2, original id in meta), reject or keep-first")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Split a dataset into valid records and rejects (with line, id, field and reason)."""
    from vialign.data.validate import ValidateSettings, count_records_hint, validate_file
    from vialign.progress import progress_reporter

    options = {
        "image_root": image_root,
        "strict": strict or None,
        "max_text_chars": max_text_chars,
        "image_check": image_check,
        "subset": subset,
        "on_duplicate": on_duplicate,
    }
    settings = settings_or_exit(ValidateSettings, config, "validate", options, set_)
    total = count_records_hint(input)
    with progress_reporter(not quiet) as report:
        summary = validate_file(input, out, settings, progress=lambda: report("validate records", 1, total))
    table = Table(title=f"validate {input}")
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_row("[green]valid[/green]", str(summary.valid))
    if summary.renamed:
        table.add_row("  of which renamed duplicate ids", str(summary.renamed))
    for name, n in sorted(summary.by_subset.items()):
        table.add_row(f"  subset {name}", str(n))
    for code, n in summary.by_code.most_common():
        table.add_row(f"[red]{code}[/red]", str(n))
    table.add_row("total", str(summary.total))
    out_console.print(table)
    out_console.print(f"wrote {out / 'valid.jsonl'} and {out / 'rejects.jsonl'}")
    if settings.strict and summary.rejected:
        raise typer.Exit(1)


@app.command("stats")
def data_stats(
    input: Annotated[Path, typer.Argument(help="a validated dataset", exists=True, dir_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="print the counts as one JSON object")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Counts per subset and format class (soft/hard), and length distributions."""
    import json

    from vialign.data.formats import FormatSettings, is_soft
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
    table = Table(title=f"{input}: {stats.samples} samples")
    for column in ("subset", "format class", "soft/hard", "samples", "share"):
        table.add_column(column, justify="right" if column in ("samples", "share") else "left")
    for (subset, cls), n in sorted(stats.by_subset_class.items()):
        table.add_row(
            subset, cls, "soft" if is_soft(cls, settings) else "hard", str(n), f"{n / stats.samples:.1%}"
        )
    out_console.print(table)
    lengths = Table(title="lengths")
    for column in ("measure", "n", "min", "median", "mean", "p90", "max"):
        lengths.add_column(column, justify="left" if column == "measure" else "right")
    for name, s in stats.length_summary().items():
        lengths.add_row(name, *(str(s[k]) for k in ("n", "min", "median", "mean", "p90", "max")))
    out_console.print(lengths)
    soft_hard = stats.soft_hard(settings)
    out_console.print("subsets: " + ", ".join(f"{name} {n}" for name, n in sorted(stats.subsets.items())))
    out_console.print(f"soft {soft_hard['soft']}  hard {soft_hard['hard']}")


@app.command("templates")
def data_templates(
    input: Annotated[Path, typer.Argument(help="a validated dataset", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="JSON file for the template list")],
    min_frac: Annotated[
        float | None,
        typer.Option("--min-frac", help="a sentence in at least this share of samples is a template"),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Find frequent template sentences in user turns (excluded from LIT loss)."""
    from vialign.data.templates import TemplateSettings, find_templates, write_templates
    from vialign.records import read_samples

    min_frac = settings_or_exit(TemplateSettings, config, "templates", {"min_frac": min_frac}, set_).min_frac
    result = find_templates(read_samples(input), min_frac)
    write_templates(result, out)
    table = Table(title=f"templates in {result['samples']} samples (min share {min_frac})")
    for column in ("sentence", "samples", "share"):
        table.add_column(column, justify="left" if column == "sentence" else "right")
    for row in result["templates"]:
        table.add_row(row["sentence"], str(row["count"]), f"{row['frac']:.1%}")
    out_console.print(table)
    out_console.print(f"wrote {len(result['templates'])} templates to {out}")


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
        ChatFormatName, typer.Option("--format", help="chat format (tokenizer: its own chat template)")
    ] = "vicuna_v1",
    max_length: Annotated[
        int | None, typer.Option(help="longest encoded sample, as in training (default: train sft's)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object per sample: every token, its role and label")
    ] = False,
) -> None:
    """Show decoded tokens with what is trained, so you see exactly what is learned."""
    import json
    from itertools import islice

    from transformers import AutoProcessor

    from vialign.models.encoding import ChatEncoder, EncoderSettings, EncodingError, label_rows, render_labels
    from vialign.models.loading import processor_image_tokens
    from vialign.records import read_samples
    from vialign.train.settings import SFTSettings
    from vialign.train.sft import training_templates

    processor = AutoProcessor.from_pretrained(model)
    training = SFTSettings(templates=templates, **({"max_length": max_length} if max_length else {}))
    template_list = training_templates(training, mode, input)
    if template_list and not as_json:
        err_console.print(
            f"templates excluded (min share {template_list['min_frac']}): {template_list['sentences']}"
        )
    settings = EncoderSettings(
        chat_format=chat_format,
        mode=mode,
        image_tokens=processor_image_tokens(processor),
        max_length=training.max_length,
        templates=frozenset(template_list["sentences"] if template_list else ()),
    )
    try:
        encoder = ChatEncoder(processor.tokenizer, settings)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
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
