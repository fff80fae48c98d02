"""The toy world's vision tower: per-cell labels true to the scene, a tower that learns to see the
scenes (held-out cells right), saved as a plain CLIP tower that `model assemble --vision` takes; the
`facts` benchmark's claim checks; stage 1's extra captions."""

import json

import pytest
import torch

from vialign.evaluate.benches import BENCHES
from vialign.toyworld.language import answer_facts
from vialign.toyworld.scene import Obj, Scene
from vialign.toyworld.vision import cell_labels

SCENE = Scene(
    "s",
    (
        Obj(shape="circle", colour="red", size="large", cell=0),
        Obj(shape="cross", colour="blue", size="small", cell=4),
        Obj(shape="square", colour="red", size="small", cell=8),
    ),
)


def test_cell_labels_name_each_cells_object_and_leave_empty_cells_zero():
    labels = cell_labels(SCENE)
    # classes are 1 + the value's index in SHAPES / COLOURS / SIZES; 0 is an empty cell
    assert labels["shape"].tolist() == [1, 0, 0, 0, 5, 0, 0, 0, 2]
    assert labels["colour"].tolist() == [1, 0, 0, 0, 2, 0, 0, 0, 1]
    assert labels["size"].tolist() == [2, 0, 0, 0, 1, 0, 0, 0, 1]


def test_the_tower_learns_to_see_held_out_scenes_and_assembles_into_a_llava(toyworld, tmp_path):
    from typer.testing import CliRunner

    from vialign.cli import app
    from vialign.models.loading import load_llava

    tower = tmp_path / "tower"
    result = CliRunner().invoke(
        app,
        [
            "toyworld",
            "vision",
            "--toyworld",
            str(toyworld),
            "--out",
            str(tower),
            "--images",
            "1500",
            "--max-steps",
            "150",
            "--set",
            "held_out=200",
        ],
    )
    assert result.exit_code == 0, result.output
    accuracy = json.loads((tower / "manifest.json").read_text())["counts"]["held_out_accuracy"]
    # chance for an empty-or-not cell is ~0.7 (2.5 objects in 9 cells); a tower that sees does far better
    assert accuracy["presence"] > 0.97 and accuracy["shape"] > 0.9 and accuracy["colour"] > 0.9, accuracy
    from vialign.models.importing import import_model

    import_model("tiny:smollm2", tmp_path / "lm")
    llava = tmp_path / "llava"
    result = CliRunner().invoke(
        app,
        [
            "model",
            "assemble",
            "--lm",
            str(tmp_path / "lm"),
            "--vision",
            str(tower),
            "--vision-feature-layer",
            "-1",
            "--out",
            str(llava),
        ],
    )
    assert result.exit_code == 0, result.output
    model, _ = load_llava(llava)
    from safetensors.torch import load_file

    saved = load_file(tower / "model.safetensors")
    inside = model.model.vision_tower.state_dict()
    assert saved and all(torch.equal(inside[k], v) for k, v in saved.items()), "the tower goes in unchanged"


def test_facts_count_true_claims_and_objects_the_scene_lacks():
    scene = SCENE.to_json()
    right = answer_facts(
        "There is a large red circle in the top left and a small blue cross in the center.", scene
    )
    assert right["claims"] == right["true_claims"] > 0 and right["hallucinated_objects"] == 0
    assert right["object_recall"] == pytest.approx(2 / 3)
    wrong = answer_facts("There is a green triangle and a red circle in the bottom right.", scene)
    # the green triangle is invented; the red circle exists, but not in the bottom right
    assert wrong["hallucinated_objects"] == 1 and wrong["true_claims"] == 1 and wrong["claims"] == 3
    empty = answer_facts("I cannot tell.", scene)
    assert empty == {"claims": 0, "true_claims": 0, "hallucinated_objects": 0, "object_recall": 0.0}


def test_facts_bench_aggregates_over_claims_and_answers():
    records = [
        {"claims": 3, "true_claims": 3, "hallucinated_objects": 0, "object_recall": 1.0},
        {"claims": 1, "true_claims": 0, "hallucinated_objects": 2, "object_recall": 0.0},
        {"claims": 0, "true_claims": 0, "hallucinated_objects": 0, "object_recall": 0.0},
    ]
    metrics = BENCHES["facts"].aggregate(records)
    assert metrics == {
        "fact_precision": 3 / 4,
        "correct_answers": 1 / 3,
        "hallucinated_objects": 2 / 3,
        "object_recall": 1 / 3,
    }


def test_facts_questions_carry_their_scene_and_extra_captions_render_their_images(toyworld, tmp_path):
    from vialign.records import read_jsonl, read_samples
    from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld
    from vialign.toyworld.scene import sample_scene

    rows = list(read_jsonl(toyworld / "eval" / "facts" / "questions.jsonl"))
    assert len(rows) == 30 and all(
        r["scene"] == sample_scene(7, "eval", k).to_json() for k, r in enumerate(rows)
    )
    generate_toyworld(
        tmp_path,
        ToyWorldSettings(
            seed=3,
            size=10,
            pretrain_images=12,
            annotation_images=0,
            eval_scenes=1,
            eval_text_per_task=1,
            eval_ifeval=1,
            workers=1,
        ),
    )
    captions = list(read_samples(tmp_path / "pretrain.jsonl"))
    assert len(captions) == 12 and all((tmp_path / c.image).is_file() for c in captions)
    assert len((tmp_path / "corpus.jsonl").read_text().splitlines()) == 10
