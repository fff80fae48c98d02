"""Soft/hard format classes on prompts shaped like the LLaVA-1.5 665k mix."""

import pytest

from vialign.config import SettingsError, load_settings
from vialign.data.formats import FormatRule, FormatSettings, classify_sample
from vialign.records import Sample

SA = "\nAnswer the question using a single word or phrase."
MC = "\nAnswer with the option's letter from the given choices directly."

REAL_PROMPTS = [
    # (source in the 665k mix, question, answer, expected class)
    (
        "llava_instruct conversation",
        "<image>\nWhat are the colors of the bus in the image?",
        "The bus in the image is white and red.",
        "open_ended",
    ),
    (
        "llava_instruct detail",
        "Describe the following image.\n<image>",
        "The image shows a busy city street with cars, a red double-decker bus and pedestrians.",
        "open_ended",
    ),
    (
        "llava_instruct complex_reasoning",
        "<image>\nWhat might be the purpose of this gathering?",
        "The people appear to be celebrating a birthday, as suggested by the cake and balloons.",
        "open_ended",
    ),
    ("vqav2", "<image>\nWhat is the man holding?" + SA, "Frisbee", "short_answer"),
    ("gqa", "<image>\nIs the sky blue or white?" + SA, "Blue", "short_answer"),
    ("vqav2 yes/no", "<image>\nIs the man wearing a hat?" + SA, "Yes", "short_answer"),
    ("okvqa", "<image>\nWhat sport can you use this for?" + SA, "Surfing", "short_answer"),
    (
        "a-okvqa mc",
        "<image>\nWhat is the man doing?\nA. surfing\nB. sleeping\nC. eating\nD. running" + MC,
        "A",
        "multiple_choice",
    ),
    ("scienceqa-like", "<image>\nWhich animal is a mammal?\nA. frog\nB. dog" + MC, "B", "multiple_choice"),
    ("ocrvqa", "<image>\nWho wrote this book?" + SA, "Stephen King", "ocr"),
    ("ocrvqa genre", "<image>\nWhat is the genre of this book?" + SA, "Travel", "ocr"),
    ("ocrvqa yes/no", "<image>\nIs this book related to Cookbooks?" + SA, "No", "ocr"),
    (
        "textcaps",
        "<image>\nProvide a one-sentence caption for the provided image.\nReference OCR token: STOP",
        "A red stop sign at a street corner.",
        "ocr",
    ),
    (
        "refcoco box",
        "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: man in red.",
        "[0.12, 0.35, 0.48, 0.91]",
        "region",
    ),
    (
        "refcoco caption",
        "<image>\nPlease provide a short description for this region: [0.12, 0.35, 0.48, 0.91]",
        "Man in red shirt.",
        "region",
    ),
    (
        "vg short caption",
        "<image>\nProvide a short description of the picture.",
        "A dog on a couch.",
        "short_caption",
    ),
    ("plain yes/no", "<image>\nIs there a dog in the image?", "No.", "yes_no"),
    ("one word", "<image>\nWhat animal is this?", "Giraffe", "one_word"),
]


def sample(question, answer, image="x.jpg"):
    return Sample.model_validate(
        {
            "id": "s",
            "image": image,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        }
    )


@pytest.mark.parametrize(
    ("source", "question", "answer", "expected"), REAL_PROMPTS, ids=[p[0] for p in REAL_PROMPTS]
)
def test_real_llava_prompts_get_their_class(source, question, answer, expected):
    assert classify_sample(sample(question, answer)) == expected


def test_text_only_sample():
    text = Sample.model_validate(
        {
            "id": "t",
            "conversations": [
                {"from": "human", "value": "Write a poem about the sea."},
                {"from": "gpt", "value": "Waves fold..."},
            ],
        }
    )
    assert classify_sample(text) == "text_only"


def test_one_hard_turn_makes_the_sample_hard():
    s = Sample.model_validate(
        {
            "id": "m",
            "image": "x.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is happening here?"},
                {"from": "gpt", "value": "Two people are playing tennis on a clay court."},
                {"from": "human", "value": "How many people?" + SA},
                {"from": "gpt", "value": "2"},
            ],
        }
    )
    assert classify_sample(s) == "short_answer"


def test_user_rules_from_yaml_go_first(tmp_path):
    config = tmp_path / "formats.yaml"
    config.write_text(
        "formats:\n  extra_rules:\n    - name: chart reading\n      format_class: chart\n"
        "      question_regex: '\\bchart\\b'\n"
    )
    settings = load_settings(FormatSettings, yaml_path=config, section="formats")
    chart = sample("<image>\nWhat does the chart show?" + SA, "Sales")
    assert classify_sample(chart, settings) == "chart"
    assert classify_sample(chart) == "short_answer"


def test_rule_without_condition_is_refused():
    with pytest.raises(ValueError, match="no condition"):
        FormatRule(name="everything", format_class="x")


def test_bad_regex_is_refused():
    with pytest.raises(ValueError, match="bad regex"):
        FormatRule(name="bad", format_class="x", question_regex="(")


def test_unknown_setting_is_refused(tmp_path):
    with pytest.raises(SettingsError, match="extra_rulez"):
        load_settings(FormatSettings, overrides=["extra_rulez=[]"])
