"""A stage, defined once: typed inputs, a settings model, a `run(ctx)` that writes its outputs and its own
manifest, and one exact name. `vialign <group> <command>` and `uses: <kind>` in a recipe validate the same
settings with the same section defaults and call the same `run` (the registry is `vialign/stages.py`; the
commands are built from it in `vialign/cli/stages.py`).

Declarations stay light (module paths, no imports of torch): `vialign --help` lists every command at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vialign.choices import Engine
from vialign.config import Settings

InputKind = Literal["file", "dir", "path", "files", "target", "value", "int"]


@dataclass(frozen=True)
class Input:
    """Something a stage reads that is not a setting: a file, a folder, a checkpoint or URL (`target`)."""

    name: str
    help: str
    flag: str | None = None  # the CLI option; None: the command's positional argument
    kind: InputKind = "file"
    required: bool = True
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Option:
    """A settings field offered as a CLI flag; every other field is reached with --set or --config."""

    field: str  # dotted for nested sections: "runner.engine"
    type: Any  # the field's type (choices from vialign.choices); checked against the settings model
    help: str
    flag: str | None = None  # default: "--" + the last part, "_" as "-"
    value: Any = None  # a switch that sets the field to this value (--oracle)
    csv: bool = False  # a list field given comma-separated

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.field.rsplit(".", 1)[-1].replace("_", "-")


RUNNER_OPTIONS = (
    Option("runner.engine", Engine, "where batches run"),
    Option("runner.limit", int, "first N records only"),
    Option("runner.shard", str, "i/N: every N-th record from the i-th"),
    Option("runner.batch_size", int, "records per batch"),
)


class StageFailed(ValueError):
    """The stage ran and reports failure (e.g. `--strict` validation with rejects): exit code `code`."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class StageContext:
    out: Path  # the stage's folder, or its output file for a stage with `out_file`
    inputs: dict[str, Any]
    settings: Any
    show_progress: bool = False
    say: Callable[[str], None] = lambda text: None
    show: Callable[[Any], None] = lambda renderable: None  # tables: printed by the CLI, not logged

    def take(self, key: str, default: Any = ...) -> Any:
        if self.inputs.get(key) is None:
            if default is ...:
                raise ValueError(f"stage input {key!r} is required")
            return default
        return self.inputs[key]

    def path(self, key: str, default: Any = ...) -> Any:
        value = self.take(key, default)
        return Path(value) if isinstance(value, str) else value

    @property
    def folder(self) -> Path:
        """Where the stage writes what goes beside its output."""
        return self.out if self.out.suffix == "" else self.out.parent


@dataclass(frozen=True)
class Stage:
    kind: str  # the name recipes use
    run: str  # "module:function", the function taking a StageContext
    help: str
    settings: str | None = None  # "module:Class"
    section: str | None = None  # the YAML section `--config` reads (default: the kind)
    command: str | None = None  # "group name" on the CLI; None: recipes only
    inputs: tuple[Input, ...] = ()
    options: tuple[Option, ...] = ()
    out_help: str = "folder to write"
    out_file: str | None = None  # the stage's one output file: `--out` names it; recipes: FOLDER/out_file
    resumes: bool = False  # a training run: --resume

    def settings_class(self) -> type[Settings] | None:
        return load(self.settings) if self.settings else None

    def run_function(self) -> Callable[[StageContext], None]:
        return load(self.run)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs) + (("resume",) if self.resumes else ())

    def prepare(self, given: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        """(inputs, validated settings) from a recipe stage's `with:` mapping."""
        from vialign.config import with_section_defaults

        names = self.input_names
        inputs = {k: v for k, v in given.items() if k in names}
        missing = [i.name for i in self.inputs if i.required and inputs.get(i.name) is None]
        if missing:
            raise ValueError(f"missing inputs {missing}")
        rest = {k: v for k, v in given.items() if k not in names}
        cls = self.settings_class()
        if cls is None:
            if rest:
                raise ValueError(f"unknown settings {sorted(rest)}; this stage reads {list(names)}")
            return inputs, None
        return inputs, cls.model_validate(with_section_defaults(cls, rest))

    def output_in(self, folder: Path) -> Path:
        return folder / self.out_file if self.out_file else folder


def load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)
