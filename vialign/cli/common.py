"""What every command module shares: the consoles, the --config/--set/--quiet/--image-root options and
settings loading. Heavy imports (torch, transformers) happen inside the commands that need them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from vialign.config import Settings, SettingsError, load_settings

S = TypeVar("S", bound=Settings)

out_console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="YAML settings file (a stage section or the whole file)")
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a setting: key=value (repeatable)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="no progress bars")]
ImageRootOpt = Annotated[Path | None, typer.Option("--image-root", help="folder image paths are relative to")]


def settings_or_exit(
    cls: type[S], config: Path | None, section: str, options: dict, overrides: list[str] | None
) -> S:
    try:
        return load_settings(cls, yaml_path=config, section=section, options=options, overrides=overrides)
    except SettingsError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
