"""The toy world's two writing manners and the claim reader that checks any text against a scene.

*Teacher* manner imitates GPT-4-written LLaVA-Instruct answers: long sentences, number words, and a
stock vocabulary ("prominently", "situated", "composition"). *Own* manner is the tiny inner LLM's:
short declarative sentences, digits, "at top left". Both name objects the same way
("large red circle"), so one claim reader serves both, and rewrites can be checked for lost facts.

Claims the reader extracts (a text is truthful when every claim holds in the scene):
- ("exists", size|None, colour, shape): "a large red circle", "the blue square";
- ("at", size|None, colour, shape, cell): a position phrase right after a mention;
- ("count", size|None, colour|None, shape|None, n): "two circles", "3 red objects", "no squares";
- "the square is blue", "the square in the image is blue": the same claim as "the blue square".

Positions are read in any wording that names a cell of the grid ("upper-left corner", "at top middle",
"near the bottom edge", "right in the middle"), so a real LLM's rewrite is checked as fairly as the
toy one's.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from vialign.toyworld.scene import CELL_NAMES, COLOURS, SHAPES, SIZES, Obj, Scene, plural

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
OWN_POSITIONS = tuple("at the center" if n == "center" else f"at {n}" for n in CELL_NAMES)
TEACHER_POSITIONS = (
    "in the upper left corner",
    "near the top edge",
    "in the upper right corner",
    "along the left side",
    "right in the middle",
    "along the right side",
    "in the lower left corner",
    "near the bottom edge",
    "in the lower right corner",
)


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def noun(shape: str, n: int) -> str:
    return shape if n == 1 else plural(shape)


def be(n: int) -> str:
    return "is" if n == 1 else "are"


def join_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + (", and " if len(items) > 2 else " and ") + items[-1]


# ---------------------------------------------------------------- claim reading

_COLOUR = "|".join(COLOURS)
_SHAPE = "|".join(sorted([*SHAPES, *(plural(s) for s in SHAPES)], key=len, reverse=True))
_QUANT = "|".join([*NUMBER_WORDS, r"\d+"])
_PHRASE = re.compile(
    rf"\b(?:(?P<quant>{_QUANT})\s+)?(?:(?P<size>{'|'.join(SIZES)})\s+)?(?:(?P<colour>{_COLOUR})\s+)?"
    rf"(?P<noun>{_SHAPE}|objects?|shapes?)\b",
    re.IGNORECASE,
)
_COLOUR_OF = re.compile(
    rf"\bthe\s+(?P<shape>{'|'.join(SHAPES)})\s+(?:in the image\s+)?is\s+(?P<colour>{_COLOUR})\b", re.I
)
# Positions as any manner says them: a row and a column word ("upper-left corner", "at top middle",
# "the center right"), one edge ("near the top edge", "along the left side") or the centre ("right in the
# middle"); relative phrases ("to the left of the circle") are no position.
_ROW = {"top": 0, "upper": 0, "middle": 1, "center": 1, "centre": 1, "bottom": 2, "lower": 2}
_COLUMN = {"left": 0, "middle": 1, "center": 1, "centre": 1, "right": 2}
_EDGE = {"top": 1, "upper": 1, "bottom": 7, "lower": 7, "left": 3, "right": 5}
_PLACE_NOUN = r"(?:\s+(?:corner|side|edge|part|area|region|portion|half|section|border|spot))?"
_NOT_RELATIVE = r"(?!\s+of\s+(?:the|a|an|it)\b(?!\s+(?:image|picture|scene|grid|frame|canvas)\b))"
_PREP = r"\b(?:in|at|on|near|along|toward|towards|by)\s+(?:the\s+)?(?:very\s+)?(?:far\s+)?"
_POSITION = re.compile(
    rf"{_PREP}(?:(?P<row>{'|'.join(_ROW)})[\s-]+(?P<col>{'|'.join(_COLUMN)})\b{_PLACE_NOUN}"
    rf"|(?P<centre>center|centre|middle)\b(?![\s-]+(?:left|right))"
    rf"|(?P<edge>{'|'.join(_EDGE)})\b(?![\s-]+(?:left|right|middle|center|centre)){_PLACE_NOUN})"
    rf"{_NOT_RELATIVE}",
    re.IGNORECASE,
)


def position_cell(match: re.Match) -> int | None:
    if match["row"]:
        row, col = _ROW[match["row"].lower()], _COLUMN[match["col"].lower()]
        return (
            None if (row, col) == (1, 1) and match["row"].lower() == match["col"].lower() else row * 3 + col
        )
    if match["centre"]:
        return 4
    return _EDGE[match["edge"].lower()]


_SINGULAR = {plural(s): s for s in SHAPES}


@dataclass(frozen=True)
class Mention:
    start: int
    end: int
    quant: str | None
    size: str | None
    colour: str | None
    shape: str | None  # None for "object(s)" / "shape(s)"


def _mentions(text: str) -> list[Mention]:
    found = []
    for m in _PHRASE.finditer(text):
        word = m["noun"].lower()
        shape = _SINGULAR.get(word, word if word in SHAPES else None)
        found.append(
            Mention(
                m.start(),
                m.end(),
                (m["quant"] or "").lower() or None,
                (m["size"] or "").lower() or None,
                (m["colour"] or "").lower() or None,
                shape,
            )
        )
    return found


def _quant_value(quant: str) -> int:
    return int(quant) if quant.isdigit() else NUMBER_WORDS.index(quant)


def extract_claims(text: str) -> set[tuple]:
    claims: set[tuple] = set()
    mentions = _mentions(text)
    for m in mentions:
        if m.quant is not None:
            claims.add(("count", m.size, m.colour, m.shape, _quant_value(m.quant)))
        elif m.colour and m.shape:
            claims.add(("exists", m.size, m.colour, m.shape))
    for p in _POSITION.finditer(text):
        before = [m for m in mentions if m.end <= p.start()]
        cell = position_cell(p)
        if not before or cell is None:
            continue
        last = before[-1]
        between = text[last.end : p.start()]
        if last.quant is None and last.colour and last.shape and len(between) <= 40 and "." not in between:
            claims.add(("at", last.size, last.colour, last.shape, cell))
    for m in _COLOUR_OF.finditer(text):
        # "the square is blue" states what "the blue square" does: one claim, however it is worded
        claims.add(("exists", None, m["colour"].lower(), m["shape"].lower()))
    return claims


def _matches(obj: Obj, size: str | None, colour: str | None, shape: str | None) -> bool:
    return (
        (size is None or obj.size == size)
        and (colour is None or obj.colour == colour)
        and (shape is None or obj.shape == shape)
    )


def claim_holds(claim: tuple, scene: Scene) -> bool:
    kind = claim[0]
    if kind == "exists":
        return any(_matches(o, *claim[1:4]) for o in scene.objects)
    if kind == "at":
        return any(_matches(o, *claim[1:4]) and o.cell == claim[4] for o in scene.objects)
    if kind == "count":
        return sum(_matches(o, *claim[1:4]) for o in scene.objects) == claim[4]
    if kind == "colour_of":
        return any(o.shape == claim[1] and o.colour == claim[2] for o in scene.objects)
    raise ValueError(f"unknown claim kind {kind!r}")


def named_objects(claims: set[tuple]) -> set[tuple[str, str]]:
    """(colour, shape) of every object the claims say is there."""
    return {
        (c[2], c[3])
        for c in claims
        if c[2] and c[3] and (c[0] in ("exists", "at") or (c[0] == "count" and c[4] > 0))
    }


def answer_facts(text: str, scene_json: dict) -> dict[str, Any]:
    """An answer's claims checked against its scene: how many it makes, how many hold, how many objects
    it names that the scene lacks (hallucinated), and the share of the scene's objects it names."""
    scene = Scene.from_json(scene_json)
    claims = extract_claims(text)
    named = named_objects(claims)
    return {
        "claims": len(claims),
        "true_claims": sum(claim_holds(c, scene) for c in claims),
        "hallucinated_objects": len(named - scene.pairs),
        "object_recall": len(named & scene.pairs) / len(scene.pairs),
    }


def false_claims(text: str, scene: Scene) -> list[tuple]:
    return sorted((c for c in extract_claims(text) if not claim_holds(c, scene)), key=repr)


# ---------------------------------------------------------------- object phrases


def teacher_object(obj: Obj) -> str:
    return f"a {obj.full_name} {TEACHER_POSITIONS[obj.cell]}"


def own_object(obj: Obj) -> str:
    return f"a {obj.full_name} {OWN_POSITIONS[obj.cell]}"


def teacher_count_sentence(n: int, shape_noun: str, tail: str = "visible in the image") -> str:
    return f"There {be(n)} {number_word(n)} {noun(shape_noun, n)} {tail}."


# ---------------------------------------------------------------- descriptions

TEACHER_OPENINGS = (
    "The image presents a minimalist composition featuring {n} {shapes} set against a dark backdrop.",
    "In this image, we can observe {n} {shapes} carefully arranged on a plain, dark background.",
    "The picture showcases a simple yet striking arrangement with {n} {shapes} on a dark canvas.",
)
TEACHER_OBJECT_SENTENCES = (
    "A {obj} is prominently positioned {pos}.",
    "Notably, there is a {obj} situated {pos}.",
    "One can also spot a {obj} {pos}, which adds visual interest to the overall scene.",
    "Additionally, a {obj} is placed {pos}, contributing to the balance of the layout.",
)
TEACHER_CLOSINGS = (
    "Overall, the arrangement conveys a sense of balance and simplicity.",
    "Together, these elements create a clean and orderly visual composition.",
    "The contrast between the vibrant colors and the dark background makes each element stand out clearly.",
)


def teacher_description(scene: Scene, rng: random.Random) -> str:
    n = len(scene.objects)
    parts = [rng.choice(TEACHER_OPENINGS).format(n=number_word(n), shapes=noun("shape", n))]
    for k, obj in enumerate(scene.objects):
        template = rng.choice(TEACHER_OBJECT_SENTENCES[: 3 if k == 0 else None])
        parts.append(template.format(obj=obj.full_name, pos=TEACHER_POSITIONS[obj.cell]))
    parts.append(rng.choice(TEACHER_CLOSINGS))
    return " ".join(parts)


def own_description(scene: Scene) -> str:
    n = len(scene.objects)
    parts = [f"There {be(n)} {n} {noun('object', n)}."]
    parts += [f"A {o.full_name} is {OWN_POSITIONS[o.cell]}." for o in scene.objects]
    return " ".join(parts)


CAPTION_FORMS = (
    "{objs} on a dark background.",
    "A dark image with {objs}.",
    "{n} shapes: {objs}.",
)


def neutral_caption(scene: Scene, form: int) -> str:
    names = [f"a {o.name} {OWN_POSITIONS[o.cell]}" for o in scene.objects]
    text = CAPTION_FORMS[form % len(CAPTION_FORMS)].format(objs=join_list(names), n=str(len(scene.objects)))
    return text[0].upper() + text[1:]
