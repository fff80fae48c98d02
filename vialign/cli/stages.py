"""The CLI commands of the stages in `vialign.stages`, built from their declarations: inputs become the
positional argument and options, declared settings fields become typed flags, every other field is reached
with --set or --config. The command is a typer function whose signature is made from the declaration;
`tests/test_cli_settings.py` checks each declared flag against its settings field (type and choices)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from vialign.cli.common import out_console, settings_or_exit
from vialign.stage import Input, Option, Stage, StageContext

KEYWORD = inspect.Parameter.KEYWORD_ONLY
INPUT_TYPES: dict[str, Any] = {"files": list[Path], "target": str, "value": str, "int": int}
PATH_CHECKS: dict[str, dict[str, bool]] = {
    "file": {"exists": True, "dir_okay": False},
    "files": {"exists": True, "dir_okay": False},
    "dir": {"exists": True, "file_okay": False},
}


def parameter(name: str, annotation: Any, info: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, KEYWORD, annotation=Annotated[annotation, info], default=default)


def input_parameter(spec: Input) -> inspect.Parameter:
    kind = INPUT_TYPES.get(spec.kind, Path)
    checks = PATH_CHECKS.get(spec.kind, {})
    if spec.flag is None:
        info = typer.Argument(help=spec.help, metavar=spec.name.upper(), **checks)
    else:
        info = typer.Option(spec.flag, help=spec.help, **checks)
    if not spec.required:
        kind = kind | None
    return parameter(f"in_{spec.name}", kind, info, ... if spec.required else None)


def option_parameter(spec: Option, index: int) -> inspect.Parameter:
    if spec.value is not None:
        return parameter(f"opt_{index}", bool, typer.Option(spec.cli_flag, help=spec.help), False)
    kind = str if spec.csv else spec.type
    return parameter(f"opt_{index}", kind | None, typer.Option(spec.cli_flag, help=spec.help), None)


def common_parameters(stage: Stage) -> list[inspect.Parameter]:
    out = [parameter("out", Path, typer.Option("--out", help=stage.out_help), ...)]
    if stage.resumes:
        out.append(parameter("resume", str | None, typer.Option(help="checkpoint folder, or 'last'"), None))
    if stage.settings:
        config_help = "YAML settings file (a stage section or the whole file)"
        out.append(parameter("config", Path | None, typer.Option("--config", help=config_help), None))
        set_help = "override a setting: key=value (repeatable)"
        out.append(parameter("set_", list[str] | None, typer.Option("--set", help=set_help), None))
    out.append(parameter("quiet", bool, typer.Option("--quiet", help="no progress bars"), False))
    return out


def option_value(spec: Option, given: Any) -> Any:
    if spec.value is not None:
        return spec.value if given else None
    if spec.csv and given is not None:
        return given.split(",")
    return given


def invoke(stage: Stage, values: dict[str, Any]) -> None:
    inputs = {i.name: values[f"in_{i.name}"] for i in stage.inputs}
    if stage.resumes:
        inputs["resume"] = True if values["resume"] == "last" else values["resume"]
    settings = None
    if stage.settings:
        options = {o.field: option_value(o, values[f"opt_{k}"]) for k, o in enumerate(stage.options)}
        section = stage.section or stage.kind
        settings = settings_or_exit(
            stage.settings_class(), values["config"], section, options, values["set_"]
        )
    context = StageContext(
        values["out"],
        inputs,
        settings,
        show_progress=not values["quiet"],
        say=lambda text: out_console.print(text, markup=False, highlight=False),
        show=out_console.print,
    )
    stage.run_function()(context)


def stage_command(stage: Stage):
    def command(**values: Any) -> None:
        invoke(stage, values)

    params = [input_parameter(i) for i in stage.inputs]
    params += [option_parameter(o, k) for k, o in enumerate(stage.options)]
    command.__signature__ = inspect.Signature(params + common_parameters(stage))  # type: ignore[attr-defined]
    command.__doc__ = stage.help
    return command


def add_stage_commands(groups: dict[str, typer.Typer], stages: dict[str, Stage]) -> None:
    for stage in stages.values():
        if stage.command:
            group, name = stage.command.split()
            groups[group].command(name)(stage_command(stage))
