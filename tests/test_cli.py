"""The `vialign` command: help everywhere, settings from YAML and --set, and the quick demo."""

import json

import pytest
import typer
from typer.testing import CliRunner

from vialign.cli import app

runner = CliRunner()


def command_paths(group: typer.Typer, prefix=()):
    for info in group.registered_commands:
        yield (*prefix, info.name or info.callback.__name__)
    for sub in group.registered_groups:
        yield (*prefix, sub.name)
        yield from command_paths(sub.typer_instance, (*prefix, sub.name))


@pytest.mark.parametrize("path", sorted(command_paths(app)), ids=" ".join)
def test_every_command_has_help(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_toyworld_generate_with_yaml_and_overrides_then_stats(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("toyworld:\n  size: 50\n  seed: 5\n  annotation_images: 3\n  eval_scenes: 4\n")
    out = tmp_path / "w"
    result = runner.invoke(
        app,
        [
            "toyworld",
            "generate",
            "--out",
            str(out),
            "--config",
            str(config),
            "--set",
            "toyworld.size=60",
            "--set",
            "eval_text_per_task=2",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["size"] == 60 and manifest["settings"]["seed"] == 5
    assert manifest["counts"]["eval.text"] == 8
    stats = runner.invoke(app, ["data", "stats", str(out / "corpus.jsonl")])
    assert stats.exit_code == 0, stats.output
    assert "open_ended" in stats.output and "words per answer" in stats.output


def test_bad_setting_exits_2_with_the_reason(tmp_path):
    result = runner.invoke(app, ["toyworld", "generate", "--out", str(tmp_path), "--set", "sizee=3"])
    assert result.exit_code == 2
    assert "sizee" in result.output


def test_stats_count_records_per_subset_and_none_for_untagged(tmp_path):
    rows = [
        {
            "id": f"r{i}",
            "conversations": [{"from": "human", "value": "Why?"}, {"from": "gpt", "value": "So."}],
            **({"meta": {"subset": subset}} if subset else {}),
        }
        for i, subset in enumerate(["detail_23k", "detail_23k", "conversation_58k", None])
    ]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["data", "stats", str(data), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["subsets"] == {"(none)": 1, "conversation_58k": 1, "detail_23k": 2}
    table = runner.invoke(app, ["data", "stats", str(data)])
    assert "subsets: (none) 1, conversation_58k 1, detail_23k 2" in table.output


def test_stats_on_invalid_file_points_to_validate(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    result = runner.invoke(app, ["data", "stats", str(bad)])
    assert result.exit_code == 2 and "vialign data validate" in result.output


def test_model_tiny_and_info(tmp_path, toyworld):
    out = tmp_path / "m"
    result = runner.invoke(
        app,
        [
            "model",
            "tiny",
            "--toyworld",
            str(toyworld),
            "--out",
            str(out),
            "--vision",
            "siglip",
            "--set",
            "text_layers=1",
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert config["text_config"]["num_hidden_layers"] == 1
    info = runner.invoke(app, ["model", "info", str(out)])
    assert info.exit_code == 0, info.output
    assert "language_model" in info.output and "vision_tower" in info.output


def test_templates_and_label_preview(tmp_path, toyworld, tiny_model_dir):
    out = tmp_path / "templates.json"
    result = runner.invoke(
        app, ["data", "templates", str(toyworld / "corpus.jsonl"), "--out", str(out), "--min-frac", "0.1"]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["min_frac"] == 0.1 and saved["samples"] == 800
    assert saved["templates"][0]["sentence"] == "Answer the question using a single word or phrase."
    assert all(row["frac"] >= 0.1 for row in saved["templates"])
    preview = runner.invoke(
        app,
        [
            "data",
            "preview-labels",
            str(toyworld / "corpus.jsonl"),
            "--model",
            str(tiny_model_dir),
            "--templates",
            str(out),
            "-n",
            "2",
            "--mode",
            "response",
        ],
    )
    assert preview.exit_code == 0, preview.output
    assert preview.output.count("tokens trained") == 2 and "‹image×9›" in preview.output


def worst_inputs(tmp, model):
    """Each command on an empty file, a file of the wrong type and a missing path."""
    empty, wrong, missing, out = (
        tmp / "empty.jsonl",
        tmp / "wrong.jsonl",
        str(tmp / "missing.jsonl"),
        str(tmp / "o"),
    )
    empty.write_bytes(b"")
    wrong.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    m = str(model)
    cases = []
    for data in (str(empty), str(wrong), missing):
        cases += [
            ["data", "validate", data, "--out", out],
            ["data", "stats", data],
            ["data", "templates", data, "--out", out + ".json"],
            ["data", "preview-labels", data, "--model", m],
            ["toyworld", "facts", data],
            ["train", "sft", "--model", m, "--data", data, "--out", out],
            ["train", "dpo", "--model", m, "--data", data, "--out", out],
            ["align", "rewrite", data, "--llm", m, "--out", out + ".jsonl"],
            ["align", "gap", data, "--llm", m, "--out", out],
            ["curate", "train-rm", "--model", m, "--annotations", data, "--kind", "answers", "--out", out],
            ["curate", "score", data, "--out", out + ".jsonl"],
            ["curate", "select", data, "--out", out],
            ["prefer", "sample", data, "--model", m, "--out", out + ".jsonl"],
            ["prefer", "judge", data, "--oracle", "--out", out + ".jsonl"],
            ["prefer", "pairs", data, "--out", out + ".jsonl"],
            ["eval", "compare", data, data],
            ["run", data],
            ["data", "validate", str(tmp), "--out", out, "--config", data],
        ]
    cases += [
        ["model", "info", missing],
        ["model", "info", str(empty)],
        ["model", "tiny", "--out", out, "--family", "nope"],
        ["model", "tiny", "--out", out],
        ["model", "import", missing, "--out", out],
        ["model", "assemble", "--lm", missing, "--out", out],
        ["train", "lm", "--toyworld", missing, "--out", out],
        ["train", "sft", "--model", missing, "--data", str(empty), "--out", out],
        ["eval", "run", "--model", m, "--data", str(tmp / "nodir"), "--out", out],
        ["annotate", "export", "--db", str(empty), "--out", out + ".jsonl"],
    ]
    return cases


def test_every_command_on_its_worst_input_ends_without_a_traceback(tmp_path, tiny_model_dir):
    runner = CliRunner()
    for args in worst_inputs(tmp_path, tiny_model_dir):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, SystemExit | type(None)), (args, repr(result.exception))
        assert "Traceback" not in result.output, args
        if result.exit_code == 2 and "Usage:" not in result.output:
            assert "error:" in result.output, (args, result.output)
