"""Answer parsers and metrics. Every parser has a name, and the name is stored with every result
(METHODS.md trap 8: POPE numbers differ between LLaVA's script and lmms-eval because they parse
differently)."""

from __future__ import annotations

import importlib
import re
import shutil
from collections.abc import Callable, Sequence
from typing import Any

# ---------------------------------------------------------------- POPE


def yes_no_exact(text: str) -> str:
    """lmms-eval: the whole answer, lower-cased and stripped, must be exactly 'yes' or 'no'."""
    answer = text.lower().strip()
    return answer if answer in ("yes", "no") else "other"


def yes_no_first_sentence(text: str) -> str:
    """LLaVA's eval_pope.py: keep the first sentence, drop commas; 'no' if it has the word No/no/not,
    else 'yes' (so an empty answer reads as 'yes', as in that script)."""
    first = text.split(".")[0] if "." in text else text
    words = first.replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


POPE_PARSERS: dict[str, Callable[[str], str]] = {
    "exact": yes_no_exact,
    "first_sentence": yes_no_first_sentence,
}


def pope_metrics(parsed: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of 'yes', and the share of 'yes' answers. An unparsable
    answer ('other') is wrong and is not a 'yes'."""
    pairs = list(zip(parsed, labels, strict=True))
    tp = sum(p == "yes" and gt == "yes" for p, gt in pairs)
    fp = sum(p == "yes" and gt == "no" for p, gt in pairs)
    fn = sum(p != "yes" and gt == "yes" for p, gt in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(p == gt for p, gt in pairs) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(p == "yes" for p, _ in pairs) / len(pairs),
        "unparsed": sum(p == "other" for p, _ in pairs) / len(pairs),
    }


# ---------------------------------------------------------------- VQA
# The VQAv2 answer normalisation is written out here because its only reference is the evaluation
# script in the VQA repository (no maintained package ships it).

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hes": "he's",
    "im": "i'm",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "ive": "i've",
    "shouldnt": "shouldn't",
    "thats": "that's",
    "theres": "there's",
    "theyre": "they're",
    "wasnt": "wasn't",
    "werent": "weren't",
    "whats": "what's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "youre": "you're",
    "youve": "you've",
}
_PUNCTUATION = [
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalise_vqa_answer(answer: str) -> str:
    """VQAv2: punctuation removed or spaced (kept inside numbers), lower case, number words to digits,
    articles dropped, common contractions restored."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    for p in _PUNCTUATION:
        if (p + " " in text or " " + p in text) or _COMMA_IN_NUMBER.search(text):
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD.sub("", text)
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(_CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_score(prediction: str, human_answers: Sequence[str]) -> float:
    """VQAv2 accuracy: for each human answer left out in turn, min(1, matches among the others / 3),
    averaged."""
    pred = normalise_vqa_answer(prediction)
    gts = [normalise_vqa_answer(a) for a in human_answers]
    if len(gts) == 1:
        return float(pred == gts[0])
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        scores.append(min(1.0, sum(g == pred for g in others) / 3))
    return sum(scores) / len(scores)


# ---------------------------------------------------------------- multiple choice and text

_EXPLICIT = re.compile(r"(?i:answer|option|choice)\s*(?:is|would be|:)?\s*\(?([A-Z])\)?(?![\w'])")
_LEADING = re.compile(r"^\(?([A-Z])(?:[.):]|\)?$|\s+[-–—]\s)")
_STANDALONE = re.compile(r"\(?\b([A-Z])\b\)?")
# "A dog", "I think": an article or pronoun, not option A or I ("A is correct" still names option A)
_ARTICLE = re.compile(r"[AI]\s+(?!(?:is|was|seems|would|should)\b)[a-z]")


def parse_option_letter(text: str, options: dict[str, str]) -> str | None:
    """The option letter an answer gives: one named explicitly ('the answer is B', 'Option B'), else a
    leading letter ('B', 'B.', '(B)', 'B) …'), else a standalone capital that is not an article or
    pronoun ('A dog …'), else the option whose text the answer equals."""
    stripped = text.strip()
    explicit = [m.group(1) for m in _EXPLICIT.finditer(stripped) if m.group(1) in options]
    if explicit:
        return explicit[-1]
    leading = _LEADING.match(stripped)
    if leading and leading.group(1) in options:
        return leading.group(1)
    for match in _STANDALONE.finditer(stripped):
        letter = match.group(1)
        if letter in options and not _ARTICLE.match(stripped, match.start(1)):
            return letter
    lowered = stripped.lower().rstrip(".")
    for letter, option in options.items():
        if lowered == option.lower():
            return letter
    return None


def normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


# ---------------------------------------------------------------- captions


def java_available() -> bool:
    return shutil.which("java") is not None


def fallback_tokenize(captions: dict[Any, list[str]]) -> dict[Any, list[str]]:
    """What pycocoevalcap's PTB tokenizer yields for plain English (lower case, its punctuation list
    removed), for machines without Java."""
    drop = re.compile(r"''|'|``|`|-LRB-|-RRB-|-LCB-|-RCB-|[.?!,:\-@;_()\[\]{}/\\\"]")
    return {k: [" ".join(drop.sub(" ", c.lower()).split()) for c in v] for k, v in captions.items()}


def caption_scores(
    references: dict[Any, list[str]], predictions: dict[Any, str], spice: bool = False, java: bool = True
) -> dict[str, Any]:
    """CIDEr and BLEU-4 with pycocoevalcap (METEOR and SPICE too when Java runs them, unless `java` is
    off). Returns corpus metrics, per-image CIDEr, the tokenizer used, and notes on what was skipped."""
    java = java and java_available()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = {k: [{"caption": c} for c in v] for k, v in references.items()}
    res = {k: [{"caption": predictions[k]}] for k in references}
    notes = []
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        gts_t, res_t, tokenizer_name = tokenizer.tokenize(gts), tokenizer.tokenize(res), "ptb"
    else:
        gts_t = fallback_tokenize(references)
        res_t = fallback_tokenize({k: [predictions[k]] for k in references})
        tokenizer_name = "python (the PTB tokenizer needs Java: not installed, or caption_java off)"
        notes.append("METEOR and SPICE skipped: Java is not installed or caption_java is off")
    # pycocoevalcap treats an empty hypothesis as an error; score it as the single token "" would be.
    res_t = {k: [v[0] if v[0].strip() else "<empty>"] for k, v in res_t.items()}
    bleu, _ = Bleu(4).compute_score(gts_t, res_t, verbose=0)
    cider, per_image = Cider().compute_score(gts_t, res_t)
    metrics = {"CIDEr": float(cider), "BLEU-4": float(bleu[3])}
    if java:
        metrics.update(java_metrics(gts_t, res_t, notes, spice))
    keys = list(gts_t)
    return {
        "metrics": metrics,
        "per_image_cider": dict(zip(keys, map(float, per_image), strict=True)),
        "tokenizer": tokenizer_name,
        "notes": notes,
    }


def java_metrics(gts: dict, res: dict, notes: list[str], spice: bool) -> dict[str, float]:
    out = {}
    scorers = [("METEOR", "pycocoevalcap.meteor.meteor", "Meteor")]
    if spice:
        scorers.append(("SPICE", "pycocoevalcap.spice.spice", "Spice"))
    else:
        notes.append("SPICE off (caption_spice=true turns it on; it downloads Stanford CoreNLP on first use)")
    for name, module, cls in scorers:
        try:
            scorer = getattr(importlib.import_module(module), cls)()
            out[name] = float(scorer.compute_score(gts, res)[0])
        except Exception as exc:  # SPICE downloads Stanford CoreNLP on first use; offline it fails
            notes.append(f"{name} skipped: {type(exc).__name__}: {str(exc)[:160]}")
    return out
