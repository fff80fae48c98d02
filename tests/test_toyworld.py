"""Toy world: byte-identical per seed, and truthful: clean answers agree with the scene facts,
corrupted ones disagree exactly in the recorded way. Hard answers are recomputed here from the
question text and the scene, independently of the generator."""

import json
import random
import re
from pathlib import Path

import pytest
from PIL import Image

from vialign.records import read_jsonl, read_samples
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld, make_sample
from vialign.toyworld.language import extract_claims, false_claims
from vialign.toyworld.scene import CELL_NAMES, COLOURS, Scene, render_scene, sample_scene

SUFFIX = "\nAnswer the question using a single word or phrase."


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def small(seed, **kw):
    return ToyWorldSettings(
        seed=seed, size=120, annotation_images=8, eval_scenes=8, eval_text_per_task=3, **kw
    )


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(tmp_path):
    generate_toyworld(tmp_path / "a", small(3, workers=1))
    generate_toyworld(tmp_path / "b", small(3, workers=2))
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    manifest_a, manifest_b = json.loads(a.pop("manifest.json")), json.loads(b.pop("manifest.json"))
    assert a.keys() == b.keys() and len(a) == 60 + 8 + 8 + 17
    assert [name for name in a if a[name] != b[name]] == []
    for volatile in ("started_at", "duration_s"):
        manifest_a.pop(volatile), manifest_b.pop(volatile)
    assert manifest_a == manifest_b


def test_same_seed_gives_byte_identical_files_across_processes_with_other_hash_seeds(tmp_path):
    """String hashing differs between processes; nothing may depend on set or dict-of-set order."""
    import os
    import subprocess
    import sys

    script = (
        "import sys; from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld; "
        "generate_toyworld(sys.argv[1], ToyWorldSettings(seed=3, size=300, annotation_images=8, "
        "eval_scenes=8, eval_text_per_task=3, workers=1))"
    )
    for name, hash_seed in (("a", "1"), ("b", "2")):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, env=env, timeout=300)
    a, b = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    a.pop("manifest.json"), b.pop("manifest.json")
    assert a.keys() == b.keys() and [name for name in a if a[name] != b[name]] == []


def test_another_seed_gives_another_world(tmp_path):
    generate_toyworld(tmp_path / "a", small(3))
    generate_toyworld(tmp_path / "b", small(4))
    assert (tmp_path / "a" / "corpus.jsonl").read_bytes() != (tmp_path / "b" / "corpus.jsonl").read_bytes()


def test_counts_and_layout(toyworld):
    samples = list(read_samples(toyworld / "corpus.jsonl"))
    assert len(samples) == 800 and len({s.id for s in samples}) == 800
    manifest = json.loads((toyworld / "manifest.json").read_text())
    assert manifest["counts"]["samples"] == 800
    assert {s.meta.subset for s in samples} == {
        "conversation",
        "detail",
        "complex_reasoning",
        "short_answer",
        "yes_no",
        "multiple_choice",
        "counting",
    }
    for s in samples[:50]:
        assert Image.open(toyworld / s.image).size == (48, 48)


def test_caption_pretraining_set_is_true_to_each_image(toyworld):
    captions = list(read_samples(toyworld / "pretrain.jsonl"))
    assert len(captions) == 400 and [c.image for c in captions] == [
        f"images/train/{j:06d}.png" for j in range(400)
    ]
    for c in captions:
        scene = Scene.from_json(c.meta.truth["scene"])
        assert extract_claims(c.answers[0]) and false_claims(c.answers[0], scene) == []


def test_every_record_keeps_its_scene_and_matches_scenes_file(toyworld):
    scenes = {row["scene_id"]: row for row in read_jsonl(toyworld / "scenes.jsonl")}
    for s in read_samples(toyworld / "corpus.jsonl"):
        scene = s.meta.truth["scene"]
        assert scenes[scene["scene_id"]] == scene


def test_rendered_pixels_show_each_object_colour_in_its_cell():
    scene = sample_scene(0, "train", 5)
    image = render_scene(scene, 48)
    for obj in scene.objects:
        centre = (obj.col * 16 + 8, obj.row * 16 + 8)
        assert image.getpixel(centre) == COLOURS[obj.colour], obj
    empty = set(range(9)) - {o.cell for o in scene.objects}
    for cell in empty:
        assert image.getpixel(((cell % 3) * 16 + 8, (cell // 3) * 16 + 8)) == (16, 16, 16)


def clean_soft(toyworld):
    return [
        s
        for s in read_samples(toyworld / "corpus.jsonl")
        if s.meta.subset in ("conversation", "detail", "complex_reasoning") and not s.meta.corruption
    ]


def test_clean_soft_answers_make_checkable_claims_that_all_hold(toyworld):
    samples = clean_soft(toyworld)
    assert len(samples) > 100
    for s in samples:
        scene = Scene.from_json(s.meta.truth["scene"])
        claims = set().union(*(extract_claims(a) for a in s.answers))
        assert claims, f"{s.id}: no checkable claim, the check would be vacuous"
        for answer in s.answers:
            assert false_claims(answer, scene) == [], (s.id, answer)


def test_claim_reader_catches_false_statements():
    scene = Scene.from_json(
        {
            "scene_id": "x",
            "objects": [
                {"shape": "circle", "colour": "red", "size": "large", "cell": 0},
                {"shape": "square", "colour": "blue", "size": "small", "cell": 4},
            ],
        }
    )
    assert false_claims("A large red circle is at top left. There are 2 objects.", scene) == []
    assert false_claims("The small blue square is situated right in the middle.", scene) == []
    assert false_claims("A large red circle is at the center.", scene) == [
        ("at", "large", "red", "circle", 4)
    ]
    assert false_claims("There are three shapes.", scene) == [("count", None, None, None, 3)]
    assert false_claims("There are no circles here.", scene) == [("count", None, None, "circle", 0)]
    assert false_claims("I see a green square.", scene) == [("exists", None, "green", "square")]
    assert false_claims("The square in the image is red.", scene) == [("exists", None, "red", "square")]
    assert false_claims("A small red circle is at top left.", scene) == [
        ("at", "small", "red", "circle", 0),
        ("exists", "small", "red", "circle"),
    ]


@pytest.mark.parametrize(
    "text, cell",
    [
        ("A large red circle is in the top-left corner.", 0),
        ("A large red circle sits at the upper left.", 0),
        ("A large red circle is at top middle.", 1),
        ("A large red circle is near the top edge of the image.", 1),
        ("A large red circle is on the right side.", 5),
        ("A large red circle is along the left side.", 3),
        ("A large red circle is in the center of the picture.", 4),
        ("A large red circle is right in the middle.", 4),
        ("A large red circle is in the lower right corner.", 8),
        ("A large red circle is at the very bottom.", 7),
    ],
)
def test_positions_are_read_in_any_wording(text, cell):
    assert extract_claims(text) == {
        ("exists", "large", "red", "circle"),
        ("at", "large", "red", "circle", cell),
    }


def test_relative_places_are_no_position_and_colour_wordings_are_one_claim():
    assert extract_claims("A large red circle is on the left of the blue square.") == {
        ("exists", "large", "red", "circle"),
        ("exists", None, "blue", "square"),
    }
    assert extract_claims("The square is blue.") == extract_claims("I see the blue square.")


def expected_hard_answer(question: str, scene: Scene) -> str:
    q = question.replace("<image>", "").strip()
    if q.endswith("directly."):
        lines = q.split("\n")
        options = {line[0]: line[3:] for line in lines[1:-1]}
        head = lines[0]
        if m := re.match(r"What color is the (\w+)\?", head):
            truth = next(o.colour for o in scene.objects if o.shape == m[1])
        elif m := re.match(r"What is the size of the (\w+) (\w+)\?", head):
            truth = next(o.size for o in scene.objects if (o.colour, o.shape) == (m[1], m[2]))
        else:
            m = re.match(r"What shape is at (.+)\?", head)
            truth = next(o.shape for o in scene.objects if CELL_NAMES[o.cell] == m[1])
        return next(letter for letter, text in options.items() if text == truth)
    q = q.removesuffix(SUFFIX.strip()).strip()
    if m := re.match(r"Is there a (\w+) (\w+) in the image\?", q):
        return "Yes" if (m[1], m[2]) in scene.pairs else "No"
    if m := re.match(r"How many (\w+) objects are there", q):
        return str(scene.count(colour=m[1]))
    if q.startswith("How many objects"):
        return str(len(scene.objects))
    if m := re.match(r"How many (\w+) are there", q):
        shape = m[1][:-2] if m[1] == "crosses" else m[1][:-1]
        return str(scene.count(shape=shape))
    if m := re.match(r"What color is the (\w+)\?", q):
        (obj,) = [o for o in scene.objects if o.shape == m[1]]
        return obj.colour.capitalize()
    if m := re.match(r"What shape is the (\w+) object\?", q):
        (obj,) = [o for o in scene.objects if o.colour == m[1]]
        return obj.shape.capitalize()
    m = re.match(r"Where is the (\w+) (\w+)\?", q)
    cells = {CELL_NAMES[o.cell].capitalize() for o in scene.objects if (o.colour, o.shape) == (m[1], m[2])}
    return next(iter(cells)) if len(cells) == 1 else cells


def test_hard_answers_agree_with_scene_facts(toyworld):
    hard = [
        s
        for s in read_samples(toyworld / "corpus.jsonl")
        if s.meta.subset in ("short_answer", "yes_no", "multiple_choice", "counting")
    ]
    assert len(hard) > 300
    for s in hard:
        assert s.meta.corruption is None
        scene = Scene.from_json(s.meta.truth["scene"])
        expected = expected_hard_answer(s.questions[0], scene)
        answer = s.answers[0]
        assert answer in expected if isinstance(expected, set) else answer == expected, (
            s.id,
            s.questions[0],
            answer,
        )


def test_corrupted_answers_disagree_in_the_recorded_way(toyworld):
    samples = list(read_samples(toyworld / "corpus.jsonl"))
    corrupted = [s for s in samples if s.meta.corruption]
    soft = [s for s in samples if s.meta.subset in ("conversation", "detail", "complex_reasoning")]
    assert len(corrupted) == round(0.3 * len(soft))
    kinds = {s.meta.corruption["kind"] for s in corrupted}
    assert kinds == {"wrong_attribute", "hallucinated_object", "truncated_answer", "swapped_image"}
    settings = ToyWorldSettings(seed=7, size=800, corrupt_share=0.3)
    scenes = {row["scene_id"]: Scene.from_json(row) for row in read_jsonl(toyworld / "scenes.jsonl")}
    for s in corrupted:
        c = s.meta.corruption
        scene = Scene.from_json(s.meta.truth["scene"])
        clean = make_sample(int(s.id.split("-")[1]), settings, 400, corruption_kind=None)
        if c["kind"] == "swapped_image":
            assert s.conversations == clean.conversations
            assert s.image != clean.image
            assert scenes[c["image_scene"]].pairs.isdisjoint(scene.pairs)
            assert s.image == f"images/train/{c['image_scene'].split('-')[1]}.png"
            continue
        turn = c["turn"]
        text, original = s.conversations[turn].value, clean.conversations[turn].value
        others = [t for k, t in enumerate(s.conversations) if k != turn]
        assert others == [t for k, t in enumerate(clean.conversations) if k != turn], "only one turn changes"
        if c["kind"] == "truncated_answer":
            assert original.startswith(text) and len(text.split(" ")) == c["kept_words"] < c["original_words"]
            assert text[-1] not in ".!?"
        elif c["kind"] == "wrong_attribute":
            colour, shape = c["replaced"].split()
            assert ("exists", None, colour, shape) in extract_claims(text) or any(
                cl[2:4] == (colour, shape) for cl in extract_claims(text)
            )
            assert (colour, shape) not in scene.pairs
            assert false_claims(text, scene)
        else:
            size, colour, shape = c["object"].split()
            assert ("exists", size, colour, shape) in false_claims(text, scene)
            assert text.startswith(original)


def test_soft_samples_are_open_ended_and_hard_ones_are_not(toyworld):
    for s in read_samples(toyworld / "corpus.jsonl"):
        soft = s.meta.subset in ("conversation", "detail", "complex_reasoning")
        assert (s.meta.format_class == "open_ended") == soft, (s.id, s.meta.format_class)


def test_text_corpus_is_in_own_manner_and_correct(toyworld):
    rows = list(read_samples(toyworld / "text" / "corpus.jsonl"))
    assert len(rows) == 1000 and all(not r.images for r in rows)
    teacher_words = re.compile(r"\b(prominently|situated|composition|Additionally|showcases)\b")
    for r in rows:
        answer = r.answers[0]
        assert not teacher_words.search(answer), answer
        if r.meta.subset == "text_arithmetic":
            a, op, b = re.match(r"What is (\d+) (plus|minus) (\d+)\?", r.questions[0]).groups()
            assert answer == f"{a} {op} {b} is {int(a) + int(b) if op == 'plus' else int(a) - int(b)}."
        if r.meta.subset in ("text_describe", "text_rewrite"):
            assert false_claims(answer, Scene.from_json(r.meta.truth["scene"])) == []
            if r.meta.subset == "text_rewrite":
                source = r.questions[0].split("Answer: ", 1)[1]
                assert extract_claims(source) - extract_claims(answer) <= {
                    c for c in extract_claims(source) if c[0] == "count"
                }, "rewrite loses facts"


def test_pope_sets_are_balanced_and_labelled_from_the_scene(toyworld):
    for category in ("random", "popular", "adversarial"):
        rows = list(read_jsonl(toyworld / "eval" / "pope" / f"{category}.jsonl"))
        assert sum(r["label"] == "yes" for r in rows) == sum(r["label"] == "no" for r in rows) > 0
        for r in rows:
            k = int(Path(r["image"]).stem)
            scene = sample_scene(7, "eval", k)
            colour, shape = re.match(r"Is there a (\w+) (\w+) in the image\?", r["text"]).groups()
            assert r["label"] == ("yes" if (colour, shape) in scene.pairs else "no")
            if category == "adversarial" and r["label"] == "no":
                assert any(colour == c or shape == s for c, s in scene.pairs) or len(scene.pairs) > 5


def test_eval_vqa_mc_caption_and_text_sets(toyworld):
    questions = list(read_jsonl(toyworld / "eval" / "vqa" / "questions.jsonl"))
    annotations = json.loads((toyworld / "eval" / "vqa" / "annotations.json").read_text())["annotations"]
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in annotations]
    for q, a in zip(questions, annotations, strict=True):
        scene = sample_scene(7, "eval", int(Path(q["image"]).stem))
        expected = expected_hard_answer(q["text"], scene)
        expected = {e.lower() for e in expected} if isinstance(expected, set) else {expected.lower()}
        assert a["multiple_choice_answer"] in expected and len(a["answers"]) == 10
    for row in read_jsonl(toyworld / "eval" / "mc" / "questions.jsonl"):
        scene = sample_scene(7, "eval", int(Path(row["image"]).stem))
        prompt = row["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in row["options"].items())
        assert (
            expected_hard_answer(
                prompt + "\nAnswer with the option's letter from the given choices directly.", scene
            )
            == row["answer"]
        )
    captions = json.loads((toyworld / "eval" / "caption" / "references.json").read_text())
    assert len(captions["annotations"]) == 3 * len(captions["images"]) == 90
    by_id = {im["id"]: im["file_name"] for im in captions["images"]}
    for ann in captions["annotations"]:
        scene = sample_scene(7, "eval", int(Path(by_id[ann["image_id"]]).stem))
        assert extract_claims(ann["caption"]) and false_claims(ann["caption"], scene) == []
    text = list(read_jsonl(toyworld / "eval" / "text" / "tasks.jsonl"))
    assert {t["task"] for t in text} == {"text_facts", "text_counting", "text_reasoning", "text_arithmetic"}


def test_annotations_rank_clean_candidates_first(toyworld):
    from vialign.toyworld.annotations import ANSWER_WEIGHTS, QUESTION_WEIGHTS

    answer_groups = list(read_jsonl(toyworld / "annotations" / "answers.jsonl"))
    question_groups = list(read_jsonl(toyworld / "annotations" / "questions.jsonl"))
    assert len(question_groups) == 40 and len(answer_groups) == 80
    best_is_clean = 0
    for group in answer_groups + question_groups:
        weights = ANSWER_WEIGHTS if group["kind"] == "answers" else QUESTION_WEIGHTS
        noiseless = {
            id(c): sum(w * c["criteria"][k] for k, w in weights.items()) for c in group["candidates"]
        }
        assert len(group["candidates"]) >= 3
        for c in group["candidates"]:
            assert 0.0 <= c["score"] <= 1.0 and abs(c["score"] - noiseless[id(c)]) < 0.15
        clean = next(c for c in group["candidates"] if c["truth"]["flaw"] == "none")
        assert all(noiseless[id(clean)] >= noiseless[id(c)] for c in group["candidates"]), group["group_id"]
        best_is_clean += max(group["candidates"], key=lambda c: c["score"])["truth"]["flaw"] in (
            "none",
            "terse",
        )
        scene = Scene.from_json(group["truth"])
        for c in group["candidates"] if group["kind"] == "answers" else []:
            if c["truth"]["flaw"] in ("wrong_attribute", "hallucinated_object"):
                assert false_claims(c["answer"], scene), c
            if c["truth"]["flaw"] in ("none", "terse"):
                assert false_claims(c["answer"], scene) == [], c
    assert best_is_clean / (len(answer_groups) + len(question_groups)) > 0.85


def test_teacher_and_own_answers_state_the_same_facts():
    from vialign.toyworld.instructions import SOFT_MAKERS

    checked = 0
    for k in range(300):
        scene = sample_scene(11, "train", k)
        for make in SOFT_MAKERS.values():
            for _, teacher, own in make(scene, random.Random(k)):
                assert extract_claims(teacher) == extract_claims(own), (teacher, own)
                assert false_claims(own, scene) == [] and extract_claims(own)
                checked += 1
    assert checked > 900


def test_review_examples_say_yes_exactly_when_the_facts_match(toyworld):
    from vialign.align.prompts import DEFAULT_REVIEW_PROMPT

    head = DEFAULT_REVIEW_PROMPT.split("{original}")[0]
    reviews = [r for r in read_samples(toyworld / "text" / "corpus.jsonl") if r.meta.subset == "text_review"]
    assert len(reviews) > 100 and {r.answers[0] for r in reviews} == {"Yes.", "No."}
    for r in reviews:
        original, rewrite = r.questions[0].removeprefix(head).split("\n\nText B: ")
        same = extract_claims(original) == extract_claims(rewrite)
        assert r.answers[0] == ("Yes." if same else "No."), r.questions[0]


@pytest.mark.slow
def test_20k_samples_generate(tmp_path):
    manifest = generate_toyworld(tmp_path, ToyWorldSettings(seed=0, size=20_000, workers=2))
    assert manifest.counts["samples"] == 20_000
    assert sum(1 for _ in (tmp_path / "corpus.jsonl").open()) == 20_000
