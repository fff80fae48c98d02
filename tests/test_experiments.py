"""The presence experiment's probes (experiments/presence_learnability.py): what its verdict rests on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vialign.toyworld.scene import sample_scene

SCRIPT = Path(__file__).parent.parent / "experiments" / "presence_learnability.py"


def load_experiment():
    spec = importlib.util.spec_from_file_location("presence_learnability", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_presence_probes_are_balanced_true_and_the_same_in_both_arms():
    experiment = load_experiment()
    image, text = (experiment.training_probes(0, 60, arm) for arm in ("image", "text"))
    assert [r["conversations"][1]["value"] for r in image].count("Yes") == 30
    for j, (with_image, in_words) in enumerate(zip(image, text, strict=True)):
        scene = sample_scene(0, "train", j)
        question = with_image["conversations"][0]["value"].split("\n")[1]
        colour, shape = question.removeprefix("Is there a ").removesuffix(" in the image?").split()
        answer = with_image["conversations"][1]["value"]
        assert answer == ("Yes" if (colour, shape) in scene.pairs else "No")
        assert with_image["image"] == f"images/train/{j:06d}.png" and "image" not in in_words
        # the text arm asks the same question about the same scene, written out instead of shown
        assert question in in_words["conversations"][0]["value"]
        assert in_words["conversations"][1]["value"] == answer
        assert all(f"{o.colour} {o.shape}" in in_words["conversations"][0]["value"] for o in scene.objects)
