"""CLI options are checked against the settings models of the stages they run: every option of such a
command is a settings field or a stage input (or one of the few options every command has), and an
option that offers choices offers exactly the choices of its field."""

import typing

import pytest
import typer.main

from vialign.cli import app
from vialign.pipeline.stages import STAGES

# command → the recipe stage kind that runs the same library call with the same settings model
COMMAND_STAGE = {
    ("data", "validate"): "validate",
    ("data", "templates"): "templates",
    ("toyworld", "generate"): "toyworld",
    ("model", "tiny"): "tiny_model",
    ("model", "assemble"): "assemble",
    ("train", "sft"): "sft",
    ("train", "dpo"): "dpo",
    ("curate", "train-rm"): "train_rm",
    ("curate", "score"): "score",
    ("curate", "select"): "select",
    ("align", "rewrite"): "rewrite",
    ("align", "gap"): "gap",
    ("prefer", "sample"): "sample",
    ("prefer", "judge"): "judge",
    ("prefer", "pairs"): "pairs",
    ("eval", "run"): "eval",
}
EVERY_COMMAND = {"config", "set_", "quiet", "out", "resume", "input", "trl_out"}
SHORTCUTS = {"oracle": "judge"}  # a flag that sets one field to one of its values
# CLI names for inputs the recipe stage calls otherwise (the CLI reads one positional input file)
INPUT_ALIASES = {
    "model": ("target", "questions_rm", "answers_rm", "llm"),
    "data": ("input",),
    "llm": ("target",),
    "questions": ("questions_rm",),
    "answers": ("answers_rm",),
    "toyworld": ("toyworld",),
    "lm": ("lm",),
}
RUNNER = {"engine", "limit", "shard", "batch_size"}  # the runner section of every resumable stage


def commands():
    root = typer.main.get_command(app)
    for (group, name), kind in COMMAND_STAGE.items():
        yield pytest.param(root.commands[group].commands[name], STAGES[kind], id=f"{group} {name}")


def field_for(settings_cls, param):
    """The settings field an option sets: by its name (`judge_target` reaches `judge.target`), or by a
    shortcut; `--format` sets chat_format."""
    fields = settings_cls.model_fields
    if "runner" in fields and param.name in RUNNER:
        return fields["runner"].annotation.model_fields[param.name]
    name = SHORTCUTS.get(param.name, "chat_format" if param.name == "format" else param.name)
    if name in fields:
        return fields[name]
    section, _, rest = name.partition("_")
    nested = fields.get(section)
    if rest and nested is not None and hasattr(nested.annotation, "model_fields"):
        return nested.annotation.model_fields.get(rest)
    return None


def literal_choices(annotation) -> set[str] | None:
    """The closed set of values a field or option takes, or None where it is open (a path, a number, a
    list, which the CLI takes comma-separated and the model checks)."""
    if typing.get_origin(annotation) is list:
        return None
    if typing.get_origin(annotation) is typing.Literal:
        return {str(a) for a in typing.get_args(annotation)}
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and all(typing.get_origin(a) is typing.Literal for a in args):
        return {str(v) for a in args for v in typing.get_args(a)}
    return None


@pytest.mark.parametrize("command, kind", commands())
def test_every_option_is_a_setting_or_an_input_of_its_stage(command, kind):
    settings_cls = kind.settings_class()
    for param in command.params:
        if param.name in EVERY_COMMAND or param.name in kind.inputs:
            continue
        if (
            any(alias in kind.inputs for alias in INPUT_ALIASES.get(param.name, ()))
            or param.name == "image_root"
        ):
            continue
        field = field_for(settings_cls, param)
        assert field is not None, f"--{param.name} is neither a field of {settings_cls.__name__} nor an input"
        if param.name in SHORTCUTS:
            continue
        choices = literal_choices(field.annotation)
        offered = literal_choices(param.type_descriptor.annotation)
        assert offered == choices, f"--{param.name} offers {offered}; {settings_cls.__name__} takes {choices}"


def test_registries_name_exactly_the_choices_of_their_literal():
    from vialign.choices import BenchName, ChatFormatName, JudgeName
    from vialign.evaluate.benches import BENCHES
    from vialign.models.encoding import CHAT_FORMATS
    from vialign.prefer.judge import JUDGES

    assert set(BENCHES) == set(typing.get_args(BenchName))
    assert set(CHAT_FORMATS) == set(typing.get_args(ChatFormatName))
    assert set(JUDGES) == set(typing.get_args(JudgeName))
