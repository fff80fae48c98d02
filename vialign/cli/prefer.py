"""`vialign prefer`: AI-feedback preference data: sample, judge, pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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

app = typer.Typer(help="AI-feedback preference data: sample, judge, pairs.", no_args_is_help=True)


@app.command("sample")
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
    out_console.print(
        f"sampled {settings.k} responses for {report.selected - len(report.failed)} prompts "
        f"({report.reused} reused, {len(report.failed)} failed) → {out}"
    )


@app.command("judge")
def prefer_judge(
    input: Annotated[
        Path, typer.Argument(help="groups from `vialign prefer sample`", exists=True, dir_okay=False)
    ],
    out: Annotated[Path, typer.Option("--out", help="rated groups JSONL (resumable)")],
    target: Annotated[
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

    options = {"target": target, "judge": "toyworld-oracle" if oracle else None}
    settings = settings_or_exit(PreferenceJudgeSettings, config, "judge", options, set_)
    try:
        total, rated = judge_file(input, out, settings, image_root, not quiet)
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out_console.print(
        f"rated {rated} of {total} groups; {total - rated} excluded "
        f"(malformed or unreachable judge, recorded with the reason) → {out}"
    )


@app.command("pairs")
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
    out_console.print(
        f"{counts['pairs']} pairs from {counts['groups']} groups ({counts['small_gap']} below the gap, "
        f"{counts['unrated']} unrated) → {out}"
    )
