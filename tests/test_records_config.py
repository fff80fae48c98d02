"""Record io round trips and settings precedence."""

import json

import orjson
import pytest
from pydantic import Field

from vialign.config import Settings, SettingsError, load_settings
from vialign.records import RecordError, Sample, read_samples, write_jsonl, write_llava_json

RECORD = {
    "id": "a1",
    "image": "coco/1.jpg",
    "conversations": [
        {"from": "human", "value": "<image>\nHi"},
        {"from": "gpt", "value": "Hello.", "weight": 0.5},
    ],
    "model": "gpt-4",
    "meta": {"subset": "conversation", "provenance": [{"stage": "x"}], "custom": 1},
}


def test_jsonl_round_trip_keeps_unknown_fields(tmp_path):
    write_jsonl([Sample.model_validate(RECORD)], tmp_path / "a.jsonl")
    (back,) = read_samples(tmp_path / "a.jsonl")
    assert back.to_json() == RECORD
    assert back.meta.custom == 1 and back.questions == ["<image>\nHi"] and back.answers == ["Hello."]


def test_llava_json_export_drops_meta_and_reads_back(tmp_path):
    write_llava_json([Sample.model_validate(RECORD)], tmp_path / "a.json")
    data = json.loads((tmp_path / "a.json").read_text())
    assert data == [{k: v for k, v in RECORD.items() if k != "meta"}]
    (back,) = read_samples(tmp_path / "a.json")
    assert back.id == "a1" and back.meta.subset is None


def test_reading_a_bad_record_names_line_id_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    bad = dict(RECORD, conversations=[{"from": "robot", "value": "x"}])
    path.write_bytes(orjson.dumps(RECORD) + b"\n" + orjson.dumps(bad) + b"\n")
    with pytest.raises(RecordError) as err:
        list(read_samples(path))
    assert (err.value.where, err.value.record_id, err.value.field) == ("line 2", "a1", "conversations.0.from")


def test_jsonl_is_streamed(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_bytes(orjson.dumps(RECORD) + b"\n" + b"{broken\n")
    reader = read_samples(path)
    assert next(reader).id == "a1"
    with pytest.raises(RecordError, match="line 2"):
        next(reader)


class Inner(Settings):
    lr: float = 1e-3


class Demo(Settings):
    seed: int = 0
    name: str = "x"
    inner: Inner = Field(default_factory=Inner)


def test_settings_precedence_defaults_yaml_options_overrides(tmp_path):
    config = tmp_path / "r.yaml"
    config.write_text("demo:\n  seed: 1\n  name: yaml\n  inner: {lr: 0.1}\n")
    s = load_settings(
        Demo,
        yaml_path=config,
        section="demo",
        options={"name": "cli", "seed": None},
        overrides=["inner.lr=0.5", "demo.seed=9"],
    )
    assert (s.seed, s.name, s.inner.lr) == (9, "cli", 0.5)
    assert load_settings(Demo) == Demo()


@pytest.mark.parametrize("override", ["seed=notanint", "nokey", "inner.missing=1"])
def test_bad_overrides_are_refused_with_a_reason(override):
    with pytest.raises(SettingsError):
        load_settings(Demo, overrides=[override])


def test_override_values_with_colons_stay_strings_and_braces_make_mappings():
    class Prompted(Settings):
        prompt: str = ""
        extra: dict = Field(default_factory=dict)

    s = load_settings(Prompted, overrides=["prompt=Rewrite this: {text}", "extra={a: 1}"])
    assert s.prompt == "Rewrite this: {text}" and s.extra == {"a": 1}


def test_a_partly_overridden_section_keeps_the_stage_defaults_of_its_other_keys():
    from vialign.curate.train import RewardTrainSettings
    from vialign.prefer.sample import SampleSettings

    sample = load_settings(SampleSettings, overrides=["params.max_new_tokens=24"])
    assert (sample.params.max_new_tokens, sample.params.temperature, sample.params.top_p) == (24, 1.0, 0.95)
    rm = load_settings(RewardTrainSettings, overrides=["train.max_steps=3", "train.lora.r=8"])
    assert (rm.train.max_steps, rm.train.lr, rm.train.batch_size, rm.train.lora.r, rm.train.lora.alpha) == (
        3,
        1e-5,
        4,
        8,
        256,
    )


def test_bad_settings_files_are_named_with_the_problem(tmp_path):
    from vialign.config import SettingsError, load_settings
    from vialign.toyworld.generate import ToyWorldSettings

    cases = {
        "syntax.yaml": ("toyworld:\n  seed: [1, 2\n", r"syntax.yaml: YAML syntax error at line \d+"),
        "list.yaml": ("- 1\n- 2\n", "syntax|top level must be a mapping, not list"),
        "section.yaml": ("toyworld: 3\n", "section 'toyworld' must be a mapping"),
        "utf16.yaml": (None, "not UTF-8"),
    }
    (tmp_path / "utf16.yaml").write_bytes("toyworld:\n  seed: 3\n".encode("utf-16"))
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(SettingsError, match=message):
            load_settings(ToyWorldSettings, yaml_path=tmp_path / name, section="toyworld")
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(ToyWorldSettings, yaml_path=tmp_path / "missing.yaml", section="toyworld")
    (tmp_path / "empty.yaml").write_text("toyworld:\n")
    assert (
        load_settings(ToyWorldSettings, yaml_path=tmp_path / "empty.yaml", section="toyworld")
        == ToyWorldSettings()
    )


def test_a_stage_manifest_is_written_only_when_the_stage_finishes(tmp_path):
    import json

    from vialign.manifest import stage_manifest

    with stage_manifest(tmp_path / "ok", "demo.stage", {"k": 1}, {"in": "sha256:x"}) as manifest:
        manifest.counts = {"n": 3}
    written = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert (
        written["stage"] == "demo.stage" and written["counts"] == {"n": 3} and written["settings"] == {"k": 1}
    )
    assert (
        written["inputs"] == {"in": "sha256:x"} and written["duration_s"] >= 0 and written["started_at"] > 0
    )
    with pytest.raises(RuntimeError), stage_manifest(tmp_path / "failed", "demo.stage"):
        raise RuntimeError("the stage broke")
    assert not (tmp_path / "failed" / "manifest.json").exists(), "a manifest means a finished run"
    with stage_manifest(tmp_path / "rank1", "demo.stage", write=False):
        pass
    assert not (tmp_path / "rank1").exists()


def test_a_relative_image_root_is_resolved_in_the_current_folder(tmp_path, monkeypatch):
    from vialign.records import confined_image_path

    for name in ("a", "b"):
        (tmp_path / name / "world").mkdir(parents=True)
        monkeypatch.chdir(tmp_path / name)
        assert confined_image_path("world", "img.png") == tmp_path / name / "world" / "img.png"
