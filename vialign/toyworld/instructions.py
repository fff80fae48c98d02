"""Visual instructions about a scene: LLaVA-Instruct-like soft subsets in the teacher manner, and
hard-format subsets with exact answers, plus the corruptions that curation has to find.

A generator returns a list of (question, answer) pairs; `<image>` placement is added by the caller.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from vialign.data.formats import OPTION_LETTER_SUFFIX, SHORT_ANSWER_SUFFIX
from vialign.toyworld.language import (
    CELL_NAMES,
    OWN_POSITIONS,
    TEACHER_POSITIONS,
    be,
    join_list,
    noun,
    number_word,
    own_description,
    own_object,
    teacher_count_sentence,
    teacher_description,
    teacher_object,
)
from vialign.toyworld.scene import COLOURS, SHAPES, SIZES, Scene, plural

QA = tuple[str, str]
QAO = tuple[str, str, str]  # question, teacher-manner answer, own-manner answer with the same facts
SOFT_SUBSETS = ("conversation", "detail", "complex_reasoning")
HARD_SUBSETS = ("short_answer", "yes_no", "multiple_choice", "counting")
CORRUPTIONS = ("wrong_attribute", "hallucinated_object", "truncated_answer", "swapped_image")

DETAIL_PROMPTS = (
    "Describe the following image in detail.",
    "Can you elaborate on the elements of the picture provided?",
    "Explain the visual content of the image in great detail.",
    "Analyze the image in a comprehensive and detailed manner.",
    "What do you see in this image? Please describe it thoroughly.",
)


def absent_pairs(scene: Scene) -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in scene.pairs]


# ---------------------------------------------------------------- soft: conversation


LISTING_QUESTIONS = (
    "What objects can you see in the image?",
    "What is shown in this picture?",
    "Which shapes appear in the image?",
)


def conv_objects(scene: Scene, rng: random.Random) -> QAO:
    n = len(scene.objects)
    q = rng.choice(LISTING_QUESTIONS)
    teacher = f"In the image, there {be(n)} {number_word(n)} {noun('shape', n)}: {join_list([teacher_object(o) for o in scene.objects])}."
    own = f"There {be(n)} {n} {noun('object', n)}: {join_list([own_object(o) for o in scene.objects])}."
    return q, teacher, own


def conv_colour(scene: Scene, rng: random.Random) -> QAO | None:
    unique = scene.unique_by("shape")
    if not unique:
        return None
    obj = rng.choice(unique)
    return (
        f"What color is the {obj.shape} in the image?",
        f"The {obj.shape} in the image is {obj.colour}, which makes it stand out vividly against the dark background.",
        f"The {obj.shape} is {obj.colour}.",
    )


def conv_position(scene: Scene, rng: random.Random) -> QAO:
    obj = rng.choice(scene.objects)
    return (
        f"Where is the {obj.name} located?",
        f"The {obj.full_name} is situated {TEACHER_POSITIONS[obj.cell]}, occupying that part of the scene.",
        f"The {obj.full_name} is {OWN_POSITIONS[obj.cell]}.",
    )


def conv_count(scene: Scene, rng: random.Random) -> QAO:
    shape = rng.choice([o.shape for o in scene.objects] + [rng.choice(SHAPES)])
    n = scene.count(shape=shape)
    return (
        f"How many {plural(shape)} are there in the image?",
        teacher_count_sentence(n, shape),
        f"There {be(n)} {n} {noun(shape, n)}.",
    )


def conversation(scene: Scene, rng: random.Random) -> list[QAO]:
    makers: list[Callable[[Scene, random.Random], QAO | None]] = [conv_colour, conv_position, conv_count]
    rng.shuffle(makers)
    turns = [conv_objects(scene, rng)]
    for make in makers[: rng.randint(1, 3)]:
        qa = make(scene, rng)
        if qa:
            turns.append(qa)
    return turns


# ---------------------------------------------------------------- soft: detail, complex reasoning


def detail(scene: Scene, rng: random.Random) -> list[QAO]:
    return [(rng.choice(DETAIL_PROMPTS), teacher_description(scene, rng), own_description(scene))]


def reason_topmost(scene: Scene, rng: random.Random) -> QAO | None:
    top_row = min(o.row for o in scene.objects)
    top = [o for o in scene.objects if o.row == top_row]
    if len(top) != 1 or len(scene.objects) < 2:
        return None
    obj = top[0]
    return (
        "Which object is closest to the top of the image, and how can you tell?",
        f"Looking at the vertical arrangement of the scene, the {obj.full_name} {TEACHER_POSITIONS[obj.cell]} sits "
        "highest of all the elements, so it is the one closest to the top of the image. The remaining elements are "
        "all placed lower in the composition.",
        f"The {obj.full_name} {OWN_POSITIONS[obj.cell]} is closest to the top. The others are lower.",
    )


def reason_compare(scene: Scene, rng: random.Random) -> QAO:
    a, b = rng.sample(SHAPES, 2)
    if rng.random() < 0.7:
        a = rng.choice(scene.objects).shape
        b = rng.choice([s for s in SHAPES if s != a])
    na, nb = scene.count(shape=a), scene.count(shape=b)
    verdict = "yes, the {} do outnumber the {}" if na > nb else "no, the {} do not outnumber the {}"
    return (
        f"Are there more {plural(a)} than {plural(b)} in the image?",
        f"Upon careful inspection, there {be(na)} {number_word(na)} {noun(a, na)} and {number_word(nb)} {noun(b, nb)} "
        f"in the image. Therefore, {verdict.format(plural(a), plural(b))} in this particular scene.",
        f"There {be(na)} {na} {noun(a, na)} and {nb} {noun(b, nb)}. So {'yes' if na > nb else 'no'}.",
    )


def reason_remove_colour(scene: Scene, rng: random.Random) -> QAO:
    colour = rng.choice(scene.objects).colour
    rest = [o for o in scene.objects if o.colour != colour]
    k = scene.count(colour=colour)
    q = f"What would remain in the scene if all the {colour} objects were removed?"
    head = f"The scene currently contains {number_word(k)} {colour} {noun('object', k)}."
    own_head = f"There {be(k)} {k} {colour} {noun('object', k)}."
    if not rest:
        return (
            q,
            f"{head} Since every element in the image shares that color, nothing at all would remain, leaving only the dark background.",
            f"{own_head} Without them, nothing is left.",
        )
    return (
        q,
        f"{head} If they were removed, the scene would still contain {join_list([teacher_object(o) for o in rest])}, preserving part of the original layout.",
        f"{own_head} Without them, there is {join_list([own_object(o) for o in rest])}.",
    )


def complex_reasoning(scene: Scene, rng: random.Random) -> list[QAO]:
    makers = [reason_topmost, reason_compare, reason_remove_colour]
    rng.shuffle(makers)
    for make in makers:
        qa = make(scene, rng)
        if qa:
            return [qa]
    raise AssertionError("reason_compare always answers")


SOFT_MAKERS: dict[str, Callable[[Scene, random.Random], list[QAO]]] = {
    "conversation": conversation,
    "detail": detail,
    "complex_reasoning": complex_reasoning,
}


def teacher_turns(
    make: Callable[[Scene, random.Random], list[QAO]],
) -> Callable[[Scene, random.Random], list[QA]]:
    return lambda scene, rng: [(q, teacher) for q, teacher, _ in make(scene, rng)]


# ---------------------------------------------------------------- hard subsets


def short_answer(scene: Scene, rng: random.Random) -> list[QA]:
    by_shape, by_colour = scene.unique_by("shape"), scene.unique_by("colour")
    options = ["where"] + (["colour"] if by_shape else []) + (["shape"] if by_colour else [])
    kind = rng.choice(options)
    if kind == "colour":
        obj = rng.choice(by_shape)
        q, a = f"What color is the {obj.shape}?", obj.colour
    elif kind == "shape":
        obj = rng.choice(by_colour)
        q, a = f"What shape is the {obj.colour} object?", obj.shape
    else:
        obj = rng.choice(scene.objects)
        q, a = f"Where is the {obj.name}?", CELL_NAMES[obj.cell]
    return [(f"{q}\n{SHORT_ANSWER_SUFFIX}", a.capitalize())]


def yes_no(scene: Scene, rng: random.Random) -> list[QA]:
    if rng.random() < 0.5:
        colour, shape = rng.choice(sorted(scene.pairs))
        answer = "Yes"
    else:
        colour, shape = rng.choice(absent_pairs(scene))
        answer = "No"
    return [(f"Is there a {colour} {shape} in the image?\n{SHORT_ANSWER_SUFFIX}", answer)]


def mc_item(scene: Scene, rng: random.Random) -> tuple[str, list[str], int]:
    """A question, its 2–4 options, and the index of the right one."""
    by_shape = scene.unique_by("shape")
    if by_shape and rng.random() < 0.5:
        obj = rng.choice(by_shape)
        q, right, pool = f"What color is the {obj.shape}?", obj.colour, list(COLOURS)
    else:
        obj = rng.choice(scene.objects)
        q, right, pool = f"What is the size of the {obj.name}?", obj.size, list(SIZES)
        if scene.count(colour=obj.colour, shape=obj.shape) > 1:
            q, right, pool = f"What shape is at {CELL_NAMES[obj.cell]}?", obj.shape, list(SHAPES)
    options = [right, *rng.sample([p for p in pool if p != right], min(3, len(pool) - 1))]
    rng.shuffle(options)
    return q, options, options.index(right)


def mc_prompt(question: str, options: list[str]) -> str:
    lines = "\n".join(f"{letter}. {opt}" for letter, opt in zip("ABCD", options, strict=False))
    return f"{question}\n{lines}\n{OPTION_LETTER_SUFFIX}"


def multiple_choice(scene: Scene, rng: random.Random) -> list[QA]:
    question, options, right = mc_item(scene, rng)
    return [(mc_prompt(question, options), "ABCD"[right])]


def counting(scene: Scene, rng: random.Random) -> list[QA]:
    kind = rng.choice(("all", "shape", "colour"))
    if kind == "shape":
        shape = rng.choice(SHAPES)
        q, n = f"How many {plural(shape)} are there in the image?", scene.count(shape=shape)
    elif kind == "colour":
        colour = rng.choice(list(COLOURS))
        q, n = f"How many {colour} objects are there in the image?", scene.count(colour=colour)
    else:
        q, n = "How many objects are there in the image?", len(scene.objects)
    return [(f"{q}\n{SHORT_ANSWER_SUFFIX}", str(n))]


SUBSET_MAKERS: dict[str, Callable[[Scene, random.Random], list[QA]]] = {
    **{name: teacher_turns(make) for name, make in SOFT_MAKERS.items()},
    "short_answer": short_answer,
    "yes_no": yes_no,
    "multiple_choice": multiple_choice,
    "counting": counting,
}


# ---------------------------------------------------------------- corruptions of answers

_COLOUR_SHAPE = re.compile(rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b")


def wrong_attribute(text: str, scene: Scene, rng: random.Random) -> tuple[str, dict] | None:
    """Recolour the first named object to a colour that no object of that shape has."""
    m = _COLOUR_SHAPE.search(text)
    if not m:
        return None
    shape = m.group(2)
    choices = [c for c in COLOURS if (c, shape) not in scene.pairs]
    if not choices:
        return None
    new = rng.choice(choices)
    detail_ = {"original": m.group(0), "replaced": f"{new} {shape}"}
    return text[: m.start()] + f"{new} {shape}" + text[m.end() :], detail_


def hallucinated_object(text: str, scene: Scene, rng: random.Random) -> tuple[str, dict] | None:
    colour, shape = rng.choice(absent_pairs(scene))
    size, cell = rng.choice(SIZES), rng.randrange(9)
    sentence = f"Additionally, there is a {size} {colour} {shape} {TEACHER_POSITIONS[cell]}."
    return f"{text} {sentence}", {"object": f"{size} {colour} {shape}", "cell": cell}


def truncated_answer(text: str, scene: Scene, rng: random.Random) -> tuple[str, dict] | None:
    words = text.split(" ")
    if len(words) < 6:
        return None
    keep = max(3, int(len(words) * rng.uniform(0.3, 0.7)))
    while keep > 2 and words[keep - 1][-1] in ".,:;!?":
        keep -= 1
    return " ".join(words[:keep]), {"kept_words": keep, "original_words": len(words)}


ANSWER_CORRUPTIONS = {
    "wrong_attribute": wrong_attribute,
    "hallucinated_object": hallucinated_object,
    "truncated_answer": truncated_answer,
}
