"""A stage's CLI command is built from its one declaration: every flag it offers for a setting names a field
of the stage's settings model with the same type (a choice offers exactly the field's choices), every
input is a parameter of the command, and the command and a recipe stage validate the same settings."""

import types
import typing
from pathlib import Path

import pytest
import typer.main

from vialign.cli import app
from vialign.stage import Stage
from vialign.stages import STAGES

COMMANDS = [s for s in STAGES.values() if s.command]


def bare(annotation):
    """The annotation without None, as a set of choices where it is a closed set."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is typing.Literal:
        return frozenset(typing.get_args(annotation))
    return annotation


def field_of(cls, dotted):
    *sections, name = dotted.split(".")
    for section in sections:
        cls = cls.model_fields[section].annotation
    return cls.model_fields[name]


@pytest.mark.parametrize("stage", COMMANDS, ids=[s.kind for s in COMMANDS])
def test_every_declared_flag_is_a_field_of_the_settings_model_with_its_type(stage: Stage):
    cls = stage.settings_class()
    for option in stage.options:
        field = field_of(cls, option.field)
        if option.value is not None:  # a switch setting one value
            actual = bare(field.annotation)
            assert (
                option.value in actual if isinstance(actual, frozenset) else isinstance(option.value, actual)
            )
            continue
        declared, actual = bare(option.type), bare(field.annotation)
        if isinstance(actual, frozenset) or isinstance(declared, frozenset):
            assert declared == actual, (
                f"{stage.command} {option.cli_flag} offers {declared}; the field takes {actual}"
            )
        elif typing.get_origin(actual) is list:
            assert option.csv and typing.get_origin(declared) is list
        elif declared is str and typing.get_args(actual):  # text the model parses: a path or a word
            assert all(
                a in (str, Path, type(None)) or typing.get_origin(a) is typing.Literal
                for a in typing.get_args(actual)
            )
        else:
            assert declared == actual, f"{stage.command} {option.cli_flag}: {declared} vs {field.annotation}"


def test_each_stage_command_has_its_inputs_and_declared_flags():
    root = typer.main.get_command(app)
    for stage in COMMANDS:
        group, name = stage.command.split()
        command = root.commands[group].commands[name]
        flags = {o for p in command.params for o in getattr(p, "opts", [])}
        names = {p.name for p in command.params}
        assert {f"in_{i.name}" for i in stage.inputs} <= names, stage.kind
        assert {o.cli_flag for o in stage.options} | {"--out"} <= flags, stage.kind
        assert ("--resume" in flags) == stage.resumes


def test_a_stage_refuses_an_unknown_setting_and_a_missing_input_naming_them(tmp_path):
    with pytest.raises(ValueError, match="sizee"):
        STAGES["toyworld"].prepare({"sizee": 3})
    with pytest.raises(ValueError, match=r"missing inputs \['llm'\]"):
        STAGES["rewrite"].prepare({"data": str(tmp_path / "x.jsonl")})


def test_registries_name_exactly_the_choices_of_their_literal():
    from vialign.choices import BenchName, ChatFormatName, JudgeName
    from vialign.evaluate.benches import BENCHES
    from vialign.models.encoding import CHAT_FORMATS
    from vialign.prefer.judge import JUDGES

    assert set(BENCHES) == set(typing.get_args(BenchName))
    assert set(CHAT_FORMATS) == set(typing.get_args(ChatFormatName))
    assert set(JUDGES) == set(typing.get_args(JudgeName))


def test_stage_declarations_import_no_model_code():
    import subprocess
    import sys

    probe = "import sys, vialign.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=Path.cwd()
    )
    assert out.stdout.split() == ["False", "False"]
