"""Frequent task templates ("Answer the question using a single word or phrase."), found by counting
how many samples' user turns contain each sentence. LIT never puts loss on them (METHODS.md §2)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from vialign.config import Settings
from vialign.models.encoding import sentences
from vialign.records import Sample
from vialign.stage import StageContext

# A sentence in at least this share of samples' user turns is a template (LIT never trains it).
DEFAULT_TEMPLATE_MIN_FRAC = 0.05
# A sentence that only one sample asks is that sample's question, whatever share one sample is of a small corpus.
TEMPLATE_MIN_SAMPLES = 2


class TemplateSettings(Settings):
    min_frac: float = Field(
        DEFAULT_TEMPLATE_MIN_FRAC,
        gt=0,
        le=1,
        description="a sentence in at least this share of samples is a template",
    )


def count_sentences(samples: Iterable[Sample]) -> tuple[Counter[str], int]:
    """Per sentence, the number of samples whose user turns contain it (once per sample)."""
    counts: Counter[str] = Counter()
    n = 0
    for sample in samples:
        n += 1
        counts.update({s for q in sample.questions for s in sentences(q)})
    return counts, n


def find_templates(samples: Iterable[Sample], min_frac: float) -> dict[str, Any]:
    if not 0.0 < min_frac <= 1.0:
        raise ValueError(f"min_frac must be in (0, 1], got {min_frac}")
    counts, n = count_sentences(samples)
    rows = [
        {"sentence": s, "count": c, "frac": round(c / n, 6)}
        for s, c in counts.most_common()
        if n and c / n >= min_frac and c >= TEMPLATE_MIN_SAMPLES
    ]
    return {"min_frac": min_frac, "samples": n, "templates": rows}


def write_templates(result: dict[str, Any], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


def read_template_file(path: str | Path) -> dict[str, Any]:
    """The template list and the threshold that produced it (both go into a training manifest)."""
    data = orjson.loads(Path(path).read_bytes())
    return {
        "path": str(path),
        "min_frac": data["min_frac"],
        "sentences": [row["sentence"] for row in data["templates"]],
    }


def detected_templates(samples: Iterable[Sample], min_frac: float) -> dict[str, Any]:
    """Templates found over a training corpus, in the shape of a template file (list and threshold)."""
    found = find_templates(samples, min_frac)
    return {
        "path": None,
        "detected": True,
        "min_frac": min_frac,
        "sentences": [row["sentence"] for row in found["templates"]],
    }


def run_stage(ctx: StageContext) -> None:
    from rich.table import Table

    from vialign.records import read_samples

    min_frac = ctx.settings.min_frac
    result = find_templates(read_samples(ctx.path("data")), min_frac)
    write_templates(result, ctx.out)
    table = Table(title=f"templates in {result['samples']} samples (min share {min_frac})")
    for column in ("sentence", "samples", "share"):
        table.add_column(column, justify="left" if column == "sentence" else "right")
    for row in result["templates"]:
        table.add_row(row["sentence"], str(row["count"]), f"{row['frac']:.1%}")
    ctx.show(table)
    ctx.say(f"wrote {len(result['templates'])} templates to {ctx.out}")
