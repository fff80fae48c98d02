"""`vialign annotate`: Collect human ratings for reward models: web UI and export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vialign.cli.common import (
    ConfigOpt,
    ImageRootOpt,
    SetOpt,
    err_console,
    out_console,
    settings_or_exit,
)

app = typer.Typer(help="Collect human ratings for reward models: web UI and export.", no_args_is_help=True)


@app.command("serve")
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
        err_console.print(
            f"[red]error:[/red] binding {host} exposes the UI beyond this machine; give --token "
            "(or VIALIGN_ANNOTATE_TOKEN), or bind 127.0.0.1"
        )
        raise typer.Exit(2)
    groups, problems = read_items(data, settings.criteria)
    for problem in problems[:10]:
        err_console.print(f"[yellow]skipped[/yellow] {data} {problem}")
    store = AnnotationStore(db)
    added = store.add_items(groups, str(data))
    out_console.print(
        f"{added} new items ({len(groups)} in {data}, {len(problems)} skipped) in {db}; "
        f"serving http://{host}:{port}/" + (" (token required)" if token else "")
    )
    uvicorn.run(
        create_app(store, image_root or data.parent, settings, token),
        host=host,
        port=port,
        log_level="warning",
    )


@app.command("export")
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
        view.add_row(
            " / ".join(p["annotators"]),
            str(p["items"]),
            str(p["pearson"]),
            str(p["mean_abs_diff"]),
            str(p["pair_order_agreement"]),
        )
    out_console.print(view)
