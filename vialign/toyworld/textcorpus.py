"""Text-only tasks in the inner LLM's own manner: what the tiny LLM is pretrained on, and the
text-retention evaluation. Each task returns (prompt, answer); answers are exact.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from vialign.align.prompts import DEFAULT_REVIEW_PROMPT, DEFAULT_REWRITE_PROMPT
from vialign.toyworld.instructions import SOFT_MAKERS
from vialign.toyworld.language import OWN_POSITIONS, extract_claims, own_description
from vialign.toyworld.scene import COLOURS, SHAPES, SIZES, Scene, plural, sample_scene

CORNERS = {"circle": 0, "square": 4, "triangle": 3, "diamond": 4, "cross": 12}
MIXES = {
    frozenset(("red", "yellow")): "orange",
    frozenset(("blue", "yellow")): "green",
    frozenset(("red", "blue")): "purple",
}
DESCRIBE_PROMPT = "Describe this scene: "


def fact_task(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(("corners", "round", "mix"))
    if kind == "corners":
        shape = rng.choice(SHAPES)
        return f"How many corners does a {shape} have?", f"A {shape} has {CORNERS[shape]} corners."
    if kind == "round":
        shape = rng.choice(SHAPES)
        answer = "Yes. A circle is round." if shape == "circle" else f"No. A {shape} is not round."
        return f"Is a {shape} round?", answer
    pair, result = rng.choice(sorted(MIXES.items(), key=lambda kv: sorted(kv[0])))
    a, b = sorted(pair)
    return f"What color do you get when you mix {a} and {b}?", f"{a.capitalize()} and {b} make {result}."


def counting_task(rng: random.Random) -> tuple[str, str]:
    items = [(rng.choice(list(COLOURS)), rng.choice(SHAPES)) for _ in range(rng.randint(2, 6))]
    listing = ", ".join(f"{c} {s}" for c, s in items)
    if rng.random() < 0.5:
        colour = rng.choice(items)[0]
        n = sum(c == colour for c, _ in items)
        return (
            f"Count the {colour} shapes in this list: {listing}.",
            f"There {'is' if n == 1 else 'are'} {n} {colour} {'shape' if n == 1 else 'shapes'}.",
        )
    shape = rng.choice(items)[1]
    n = sum(s == shape for _, s in items)
    return (
        f"Count the {plural(shape)} in this list: {listing}.",
        f"There {'is' if n == 1 else 'are'} {n} {shape if n == 1 else plural(shape)}.",
    )


def reasoning_task(rng: random.Random) -> tuple[str, str]:
    (c1, s1), (c2, s2) = [(rng.choice(list(COLOURS)), rng.choice(SHAPES)) for _ in range(2)]
    while (c1, s1) == (c2, s2):
        c2 = rng.choice(list(COLOURS))
    relation, other = rng.choice(
        (("left of", "right"), ("above", "bottom"), ("right of", "left"), ("below", "top"))
    )
    return (
        f"A {c1} {s1} is {relation} a {c2} {s2}. Which one is on the {other}?",
        f"The {c2} {s2} is on the {other}.",
    )


def arithmetic_task(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    if rng.random() < 0.5:
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    a, b = max(a, b), min(a, b)
    return f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."


def scene_listing(scene: Scene) -> str:
    return "; ".join(f"{o.full_name} {OWN_POSITIONS[o.cell]}" for o in scene.objects) + "."


TEXT_TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "text_facts": fact_task,
    "text_counting": counting_task,
    "text_reasoning": reasoning_task,
    "text_arithmetic": arithmetic_task,
}
CORPUS_SHARES = {
    "text_describe": 0.08,
    "text_rewrite": 0.30,
    "text_review": 0.38,
    "text_facts": 0.06,
    "text_counting": 0.06,
    "text_reasoning": 0.06,
    "text_arithmetic": 0.06,
}


def soft_answer_pair(scene: Scene, rng: random.Random) -> tuple[str, str]:
    """A teacher-manner answer about the scene and the own-manner answer with the same facts."""
    _, teacher, own = rng.choice(SOFT_MAKERS[rng.choice(sorted(SOFT_MAKERS))](scene, rng))
    return teacher, own


def replace_one(text: str, pattern: str, new: str, rng: random.Random) -> str:
    """Replace one occurrence of `pattern`, chosen at random (not always the first: a reviewer trained
    only on first-occurrence edits learns to check the first object only)."""
    matches = list(re.finditer(pattern, text))
    m = rng.choice(matches)
    return text[: m.start()] + new + text[m.end() :]


def change_one_fact(text: str, rng: random.Random) -> str | None:
    """The text with one fact changed (colour, shape, number, position, size) or its last sentence dropped."""
    edits = []
    for word in (*COLOURS, *SHAPES):
        if re.search(rf"\b{word}\b", text):
            pool = [c for c in COLOURS if c != word] if word in COLOURS else [s for s in SHAPES if s != word]
            edits.append((rf"\b{word}\b", rng.choice(pool)))
    for number in sorted(set(re.findall(r"\b\d\b", text))):
        edits.append((rf"\b{number}\b", str((int(number) + rng.randint(1, 3)) % 5)))
    for position in OWN_POSITIONS:
        if position in text:
            edits.append((re.escape(position), rng.choice([p for p in OWN_POSITIONS if p != position])))
    for size in SIZES:
        if re.search(rf"\b{size}\b", text):
            edits.append((rf"\b{size}\b", next(x for x in SIZES if x != size)))
    rng.shuffle(edits)
    candidates = [replace_one(text, pattern, new, rng) for pattern, new in edits]
    sentences = text.split(". ")
    if len(sentences) > 2:
        candidates.append(". ".join(sentences[:-1]) + ".")
    for candidate in candidates:
        if extract_claims(candidate) != extract_claims(text):
            return candidate
    return None


def review_example(scene: Scene, rng: random.Random) -> tuple[str, str]:
    teacher, own = soft_answer_pair(scene, rng)
    changed = change_one_fact(own, rng) if rng.random() < 0.5 else None
    verdict = "No." if changed else "Yes."
    return DEFAULT_REVIEW_PROMPT.format(original=teacher, rewrite=changed or own), verdict


def text_example(seed: int, stream: str, index: int, subset: str) -> tuple[str, str, Scene | None]:
    """One own-manner example; scene-based kinds also return the scene they describe."""
    rng = random.Random(f"vialign-toyworld:{seed}:{stream}:{index}")
    if subset in TEXT_TASKS:
        prompt, answer = TEXT_TASKS[subset](rng)
        return prompt, answer, None
    scene = sample_scene(seed, stream, index)
    if subset == "text_describe":
        return DESCRIBE_PROMPT + scene_listing(scene), own_description(scene), scene
    if subset == "text_rewrite":
        teacher, own = soft_answer_pair(scene, rng)
        return DEFAULT_REWRITE_PROMPT.format(text=teacher), own, scene
    if subset == "text_review":
        prompt, verdict = review_example(scene, rng)
        return prompt, verdict, scene
    raise ValueError(f"unknown text subset {subset!r}")
