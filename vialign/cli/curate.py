"""`vialign curate`: Human-preference curation: reward models, scoring, cascade selection."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vialign.cli.common import (
    ImageRootOpt,
    out_console,
)

app = typer.Typer(
    help="Human-preference curation: reward models, scoring, cascade selection.", no_args_is_help=True
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
