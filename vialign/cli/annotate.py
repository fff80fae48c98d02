"""`vialign annotate`: Collect human ratings for reward models: web UI and export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
