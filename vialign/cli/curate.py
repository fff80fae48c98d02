"""`vialign curate`: Human-preference curation: reward models, scoring, cascade selection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vialign.choices import Engine, GroupKind
from vialign.cli.common import (
    ConfigOpt,
    ImageRootOpt,
    QuietOpt,
    SetOpt,
    err_console,
    out_console,
    runner_overrides,
    settings_or_exit,
)

app = typer.Typer(
    help="Human-preference curation: reward models, scoring, cascade selection.", no_args_is_help=True
)


@app.command("train-rm")
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
    kind: Annotated[GroupKind, typer.Option("--kind", help="what the reward model rates")],
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
    manifest = train_reward_model(
        model,
        annotations,
        kind,
        out,
        settings,
        image_root=image_root,
        resume=True if resume == "last" else resume,
    )
    c = manifest.counts
    heldout = c["heldout"] or {}
    out_console.print(
        f"{kind} reward model → {out}: {c['train_groups']} groups, {c['pairs']} pairs "
        f"({c['negatives']} corrupted negatives), {c['steps']} steps, loss {c['train_loss']:.4f}; "
        f"held-out pairwise accuracy {heldout.get('pairwise_accuracy')} over {heldout.get('pairs', 0)} pairs; "
        f"{c['rejected'] + c['dropped']} groups rejected (rejects.jsonl)"
    )


@app.command("eval-rm")
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
    out_console.print_json(
        data={
            "rm": str(rm),
            "groups": "all" if all_groups else "held out",
            "rejected": len(rejected),
            **result,
        }
    )


@app.command("score")
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
    engine: Annotated[Engine | None, typer.Option(help="where batches run")] = None,
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
    out_console.print(
        f"scored {report.selected} samples ({report.reused} reused, {report.processed} processed, "
        f"{len(report.failed)} failed) → {out}"
    )
    for sample_id, error in list(report.failed.items())[:5]:
        err_console.print(f"  failed {sample_id}: {error}")


@app.command("select")
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

    options = {
        "question_keep": question_keep,
        "answer_keep": answer_keep,
        "question_min": question_min,
        "answer_min": answer_min,
        "by": by,
        "subsets": subsets.split(",") if subsets else None,
    }
    settings = settings_or_exit(SelectSettings, config, "select", options, set_)
    decisions, summary = select_file(input, out, settings)
    view = Table(title=f"selection from {input}")
    for column in ("subset", "samples", "after questions", "kept", "question cutoff", "answer cutoff"):
        view.add_column(column, justify="left" if column == "subset" else "right")
    for subset, info in summary.items():
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        view.add_row(
            subset,
            str(info["samples"]),
            str(info.get("after_questions", "-")),
            str(info["kept"]),
            fmt(info.get("question_cutoff")),
            fmt(info.get("answer_cutoff")),
        )
    out_console.print(view)
    n_kept = sum(d == "kept" for d in decisions.values())
    out_console.print(f"kept {n_kept} of {len(decisions)} → {out / 'selected.jsonl'}")
