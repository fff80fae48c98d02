"""The toy world's oracle judge: the five preference aspects (0–4) of a response, from scene facts."""

from __future__ import annotations

import re
from typing import Any

from vialign.toyworld.language import claim_holds, extract_claims
from vialign.toyworld.scene import Scene

_SENTENCE = re.compile(r"[^.!?]+[.!?]")


def repeated_share(words: list[str], n: int = 3) -> float:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def oracle_ratings(text: str, scene_json: dict[str, Any]) -> dict[str, int]:
    scene = Scene.from_json(scene_json)
    claims = extract_claims(text)
    false = sum(not claim_holds(c, scene) for c in claims)
    true = len(claims) - false
    words = text.split()
    truncated = bool(words) and not text.rstrip().endswith((".", "!", "?"))
    if not words:
        correctness = 0
    elif false:
        correctness = max(0, 2 - false)
    else:
        correctness = 4 if true else 2
    helpfulness = 0 if not words else max(0, min(4, 1 + true) - 2 * false)
    coherence = (
        max(0, 4 - 2 * truncated - 2 * (repeated_share(words) > 0.2) - (len(words) < 2)) if words else 0
    )
    sentences = len(_SENTENCE.findall(text))
    verbosity = sum(len(words) >= t for t in (3, 8, 16, 32))
    return {
        "helpfulness": helpfulness,
        "correctness": correctness,
        "coherence": coherence,
        "complexity": min(4, sentences + (len(claims) > 2)),
        "verbosity": verbosity,
    }
