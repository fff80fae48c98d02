"""Every defect kind that `vialign data validate` must catch, each its own case, plus the file-level
promises: valid neighbours are kept, rejects carry line/id/field/reason, --strict fails the run."""

import json
import os
from pathlib import Path

import orjson
import pytest
from PIL import Image
from typer.testing import CliRunner

from vialign.cli import app
from vialign.data.validate import ValidateSettings, validate_file
from vialign.records import read_jsonl


def good(i=0, **changes):
    record = {
        "id": f"r{i}",
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"},
            {"from": "gpt", "value": "A red circle."},
        ],
    }
    record.update(changes)
    return record


def turns(*pairs):
    return [{"from": r, "value": v} for r, v in pairs]


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.effect_noise((64, 64), 40).convert("RGB").save(root / "a.png")
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_bytes(b"this is not an image at all")
    png = (root / "a.png").read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "folder.png").mkdir()
    (tmp_path / "outside.png").write_bytes(png)
    return root


def run(tmp_path, root, lines, **settings):
    src = tmp_path / "in.jsonl"
    src.write_bytes(
        b"\n".join(line if isinstance(line, bytes) else orjson.dumps(line) for line in lines) + b"\n"
    )
    out = tmp_path / "out"
    summary = validate_file(src, out, ValidateSettings(image_root=root, **settings))
    return summary, list(read_jsonl(out / "valid.jsonl")), list(read_jsonl(out / "rejects.jsonl"))


DEFECTS = {
    "not_json": (b'{"id": "x", "conversations": [', "line"),
    "not_object": ([1, 2, 3], "(record)"),
    "bad_utf8": (b'{"id": "x\xff\xfe", "conversations": []}', "line"),
    "missing_id": ({k: v for k, v in good().items() if k != "id"}, "id"),
    "bad_id": (good(id=17), "id"),
    "missing_conversations": ({"id": "x", "image": "a.png"}, "conversations"),
    "empty_conversations": (good(conversations=[]), "conversations"),
    "turn_not_object": (
        good(conversations=["<image>\nhi", {"from": "gpt", "value": "x"}]),
        "conversations[0]",
    ),
    "unknown_role": (
        good(conversations=turns(("human", "<image>\nq"), ("assistant", "a"))),
        "conversations[1].from",
    ),
    "first_not_human": (
        good(conversations=turns(("gpt", "<image>\nq"), ("human", "a"))),
        "conversations[0].from",
    ),
    "roles_not_alternating": (
        good(conversations=turns(("human", "<image>\nq"), ("gpt", "a"), ("gpt", "b"))),
        "conversations[2].from",
    ),
    "empty_value": (
        good(conversations=turns(("human", "<image>\nq"), ("gpt", "  "))),
        "conversations[1].value",
    ),
    "value_not_string": (
        good(conversations=[{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": 3}]),
        "conversations[1].value",
    ),
    "image_tag_missing": (
        good(conversations=turns(("human", "What is this?"), ("gpt", "x"))),
        "conversations",
    ),
    "image_tag_without_image": ({k: v for k, v in good().items() if k != "image"}, "image"),
    "image_tag_count": (
        good(conversations=turns(("human", "<image>\n<image>\nq"), ("gpt", "x"))),
        "conversations",
    ),
    "image_tag_in_answer": (
        good(conversations=turns(("human", "<image>\nq"), ("gpt", "<image> x"))),
        "conversations[1].value",
    ),
    "image_path_absolute": (good(image="/etc/passwd"), "image"),
    "image_path_escapes_root": (good(image="../outside.png"), "image"),
    "image_missing": (good(image="nope.png"), "image"),
    "image_empty": (good(image="empty.png"), "image"),
    "image_not_image": (good(image="text.png"), "image"),
    "image_corrupt": (good(image="truncated.png"), "image"),
    "image_unreadable": (good(image="folder.png"), "image"),
    "text_too_long": (
        good(conversations=turns(("human", "<image>\n" + "w" * 200), ("gpt", "x"))),
        "conversations",
    ),
    "bad_field": (good(meta={"provenance": "not a list"}), "meta.provenance"),
}


@pytest.mark.parametrize("code", sorted(DEFECTS))
def test_each_defect_is_rejected_with_its_code_and_field(tmp_path, root, code):
    bad, field = DEFECTS[code]
    summary, valid, rejects = run(tmp_path, root, [good(1), bad, good(2)], max_text_chars=100)
    assert [r["id"] for r in valid] == ["r1", "r2"], "a bad record cost a valid neighbour"
    assert len(rejects) == 1
    reject = rejects[0]
    assert (reject["code"], reject["field"], reject["line"]) == (code, field, 2)
    assert reject["reason"]
    assert summary.by_code == {code: 1}


def test_duplicate_id_is_rejected_when_asked(tmp_path, root):
    _, valid, rejects = run(tmp_path, root, [good(1), good(1), good(2)], on_duplicate="reject")
    assert [r["id"] for r in valid] == ["r1", "r2"]
    assert [(r["code"], r["line"], r["id"]) for r in rejects] == [("duplicate_id", 2, "r1")]
    _, _, rejects = run(tmp_path, root, [good(1), good(1)], on_duplicate="keep-first")
    assert "first record with it was kept" in rejects[0]["reason"]


def test_repeated_ids_of_real_llava_data_keep_every_record_with_unique_ids(tmp_path, root):
    """LLaVA-Instruct's ids are COCO image ids shared by an image's conversation, detail and reasoning
    samples; every record is kept, renamed in input order, the input id kept in meta."""
    coco = [
        good(0, id="000000215677"),
        good(0, id="000000215677"),
        good(0, id="000000215677#2"),
        good(0, id="000000215677"),
        good(0, id="000000033471"),
    ]
    summary, valid, rejects = run(tmp_path, root, coco)
    assert rejects == [] and summary.renamed == 3
    assert [r["id"] for r in valid] == [
        "000000215677",
        "000000215677#2",
        "000000215677#2#2",
        "000000215677#3",
        "000000033471",
    ]
    assert [r.get("meta", {}).get("original_id") for r in valid] == [
        None,
        "000000215677",
        "000000215677#2",
        "000000215677",
        None,
    ]
    from vialign.records import read_samples, write_llava_json

    samples = list(read_samples(tmp_path / "out" / "valid.jsonl"))
    write_llava_json(samples, tmp_path / "export.json", original_ids=True)
    assert [r["id"] for r in json.loads((tmp_path / "export.json").read_text())] == [r["id"] for r in coco]


def test_subset_tags_every_record_and_rules_infer_it(tmp_path, root):
    summary, valid, _ = run(tmp_path, root, [good(1), good(2)], subset="detail_23k")
    assert [r["meta"]["subset"] for r in valid] == ["detail_23k"] * 2 and summary.by_subset == {
        "detail_23k": 2
    }
    rules = [
        {"subset": "short", "question_regex": "single word"},
        {"subset": "conversation", "id_regex": "^r"},
    ]
    short = good(
        3,
        conversations=turns(
            ("human", "<image>\nColour? Answer the question using a single word or phrase."), ("gpt", "Red")
        ),
    )
    summary, valid, _ = run(tmp_path, root, [good(1), short, good(4, id="x")], subset_rules=rules)
    assert [r.get("meta", {}).get("subset") for r in valid] == ["conversation", "short", None]
    assert summary.by_subset == {"conversation": 1, "short": 1, "(none)": 1}


def test_subset_id_rules_match_the_input_id_of_a_renamed_duplicate(tmp_path, root):
    rules = [{"subset": "coco", "id_regex": r"^\d+$"}]
    _, valid, _ = run(tmp_path, root, [good(0, id="215677"), good(0, id="215677")], subset_rules=rules)
    assert [(r["id"], r["meta"]["subset"]) for r in valid] == [("215677", "coco"), ("215677#2", "coco")]


@pytest.mark.parametrize(
    ("rule", "named"),
    [({"subset": "a", "id_regex": "("}, "id_regex"), ({"subset": "a"}, "gives no id_regex")],
)
def test_a_subset_rule_that_cannot_match_is_refused(rule, named):
    with pytest.raises(ValueError, match=named):
        ValidateSettings(subset_rules=[rule])


def test_json_array_with_a_trailing_comma_or_a_broken_record_keeps_the_valid_ones(tmp_path, root):
    src = tmp_path / "in.json"
    records = [json.dumps(good(k)) for k in range(4)]
    src.write_text("[" + records[0] + ", " + records[1] + ",\n]")
    assert validate_file(src, tmp_path / "a", ValidateSettings(image_root=root)).valid == 2
    src.write_text(
        "[" + records[0] + ', {"id": "broken", "conversations": [}, ' + records[2] + ", " + records[3][:-9]
    )
    summary = validate_file(src, tmp_path / "b", ValidateSettings(image_root=root))
    assert [r["id"] for r in read_jsonl(tmp_path / "b" / "valid.jsonl")] == ["r0", "r2"]
    rejects = list(read_jsonl(tmp_path / "b" / "rejects.jsonl"))
    assert [r["code"] for r in rejects] == ["not_json", "not_json"] and summary.rejected == 2
    assert "ends inside this record" in rejects[-1]["reason"] and rejects[-1]["index"] == 4


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_files_are_named_not_rejected_line_by_line(tmp_path, encoding):
    src = tmp_path / "in.jsonl"
    src.write_bytes((json.dumps(good(1)) + "\n").encode(encoding))
    result = CliRunner().invoke(app, ["data", "validate", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "UTF-" in result.output and "encoded" in result.output
    assert "Traceback" not in result.output


def test_empty_file_is_a_clear_error(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"")
    result = CliRunner().invoke(app, ["data", "validate", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "empty" in result.output


def test_invalid_first_twin_does_not_block_a_valid_second(tmp_path, root):
    _, valid, rejects = run(tmp_path, root, [good(1, image="nope.png"), good(1)])
    assert [r["id"] for r in valid] == ["r1"]
    assert [r["code"] for r in rejects] == ["image_missing"]


def test_several_problems_of_one_record_are_all_listed(tmp_path, root):
    bad = good(conversations=[{"from": "robot", "value": ""}, {"from": "gpt", "value": 5}])
    _, _, (reject,) = run(tmp_path, root, [bad])
    assert {p["code"] for p in reject["problems"]} == {"unknown_role", "empty_value", "value_not_string"}


def test_reject_keeps_raw_text_so_nothing_is_lost(tmp_path, root):
    _, _, (reject,) = run(tmp_path, root, [b'{"id": "x", "conversations": ['])
    assert reject["raw"] == '{"id": "x", "conversations": ['


def test_blank_lines_are_skipped_but_line_numbers_stay_true(tmp_path, root):
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(good(1)) + b"\n\n" + b"oops\n")
    validate_file(src, tmp_path / "out", ValidateSettings(image_root=root))
    (reject,) = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert reject["line"] == 3


def test_valid_output_preserves_unknown_fields_and_meta(tmp_path, root):
    record = good(1, source="coco", meta={"subset": "detail", "custom": [1, 2]})
    _, (valid,), _ = run(tmp_path, root, [record])
    assert valid == record


def test_multi_image_records_need_one_tag_per_image(tmp_path, root):
    two = good(
        1,
        image=["a.png", "a.png"],
        conversations=turns(("human", "<image>\n<image>\ncompare"), ("gpt", "same")),
    )
    one_tag = good(2, image=["a.png", "a.png"])
    _, valid, rejects = run(tmp_path, root, [two, one_tag])
    assert [r["id"] for r in valid] == ["r1"]
    assert [r["code"] for r in rejects] == ["image_tag_count"]


def test_text_only_record_needs_no_image(tmp_path, root):
    text = {"id": "t", "conversations": turns(("human", "What is 2 plus 2?"), ("gpt", "4"))}
    _, valid, rejects = run(tmp_path, root, [text])
    assert len(valid) == 1 and not rejects


def test_symlink_out_of_the_root_is_refused(tmp_path, root):
    os.symlink(tmp_path / "outside.png", root / "link.png")
    _, _, (reject,) = run(tmp_path, root, [good(1, image="link.png")])
    assert reject["code"] == "image_path_escapes_root"


def test_json_array_input_reports_record_index(tmp_path, root):
    src = tmp_path / "in.json"
    src.write_text(json.dumps([good(1), good(2, image="nope.png"), good(3)]))
    summary = validate_file(src, tmp_path / "out", ValidateSettings(image_root=root))
    (reject,) = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert (summary.valid, reject["index"], reject["line"], reject["id"]) == (2, 2, None, "r2")


def test_cli_validate_mixed_file_and_strict_exit_code(tmp_path, root):
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(
        b"\n".join([orjson.dumps(good(1)), b"not json", orjson.dumps(good(2, image="nope.png"))]) + b"\n"
    )
    runner = CliRunner()
    args = ["data", "validate", str(src), "--image-root", str(root), "--out", str(tmp_path / "o"), "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "not_json" in result.output and "image_missing" in result.output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["counts"] == {
        "valid": 1,
        "rejected": 2,
        "not_json": 1,
        "image_missing": 1,
        "renamed": 0,
        "subsets": {"(none)": 1},
    }
    strict = runner.invoke(app, [*args, "--strict"])
    assert strict.exit_code == 1
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(orjson.dumps(good(1)) + b"\n")
    assert (
        runner.invoke(
            app,
            [
                "data",
                "validate",
                str(clean),
                "--image-root",
                str(root),
                "--out",
                str(tmp_path / "c"),
                "--strict",
                "--quiet",
            ],
        ).exit_code
        == 0
    )


def test_images_without_root_is_a_clear_error(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(orjson.dumps(good(1)) + b"\n")
    with pytest.raises(ValueError, match="--image-root"):
        validate_file(src, tmp_path / "out", ValidateSettings())


def test_each_image_is_checked_once(tmp_path, root, monkeypatch):
    import vialign.data.validate as v

    calls = []
    real = v.check_image_file
    monkeypatch.setattr(v, "check_image_file", lambda *a: calls.append(a[0]) or real(*a))
    run(tmp_path, root, [good(i) for i in range(20)])
    assert calls == ["a.png"]


def test_output_is_in_input_order_beyond_the_lookahead_window(tmp_path, root):
    lines = [good(i) if i % 7 else good(i, image="nope.png") for i in range(1500)]
    summary, valid, rejects = run(tmp_path, root, lines)
    assert [r["id"] for r in valid] == [f"r{i}" for i in range(1500) if i % 7]
    assert [r["line"] for r in rejects] == [i + 1 for i in range(1500) if not i % 7]
    assert Path(tmp_path / "out" / "valid.jsonl").exists() and summary.total == 1500


def test_json_array_streams_past_bad_records_in_the_middle(tmp_path, root, monkeypatch):
    """Read in 64-byte chunks, so records, strings with escaped quotes and brackets cross chunk edges."""
    from functools import partial

    import vialign.records as records

    monkeypatch.setattr(records, "scan_json_array", partial(records.scan_json_array, chunk=64))
    bad = {
        40: b'{"id": "broken", "conversations": [}',
        41: b"17",
        90: orjson.dumps({"id": "r90", "image": "a.png"}),
        91: b'{"id": "r91", "conversations": [{"from": "human", "value": "a \\" ] } [ { quote"}]]',
    }
    quoted = good(0, conversations=turns(("human", '<image>\nSay "]}," please'), ("gpt", 'It says "]},"')))
    elements = [bad.get(i, orjson.dumps(good(i) if i else quoted)) for i in range(150)]
    src = tmp_path / "in.json"
    src.write_bytes(b"[\n  " + b",\n  ".join(elements) + b"\n]\n")
    summary = validate_file(src, tmp_path / "out", ValidateSettings(image_root=root))
    valid = list(read_jsonl(tmp_path / "out" / "valid.jsonl"))
    rejects = list(read_jsonl(tmp_path / "out" / "rejects.jsonl"))
    assert [r["id"] for r in valid] == [f"r{i}" for i in range(150) if i not in bad]
    assert valid[0]["conversations"] == quoted["conversations"]
    assert [(r["index"], r["code"]) for r in rejects] == [
        (41, "not_json"),
        (42, "not_object"),
        (91, "missing_conversations"),
        (92, "not_json"),
    ]
    assert summary.valid == 146 and rejects[2]["id"] == "r90"
