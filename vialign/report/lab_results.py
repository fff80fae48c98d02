"""`lab-results.json`: the lab's numbers in one file (every arm's metrics per seed, the claims with their
verdicts, the rewrite's figures, image reliance per seed), and the README's lab table generated from it.

`python -m vialign.report.lab_results FILE` prints the table the README shows between its
`lab-results` markers; the README test checks that they agree.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field

from vialign.config import Settings

README_START = "<!-- lab-results:start (python -m vialign.report.lab_results docs/lab-results.json) -->"
README_END = "<!-- lab-results:end -->"
TABLE_METRICS = (
    "pope_accuracy",
    "pope_yes_ratio",
    "vqa_accuracy",
    "facts_fact_precision",
    "ifeval_prompt_level_strict",
    "drift_mean_nll",
)


class LabResultsSettings(Settings):
    arms: dict[str, str] = Field(description="short arm name (vit, lit, …) → its run label")
    reliance: list[str] = Field(default_factory=list, description="image_reliance folders, one per seed")


def metric_key(bench: str, metric: str) -> str:
    return f"{bench}_{metric}"


def rewrite_figures(facts_folder: str | None, gap: dict[str, Any] | None) -> dict[str, Any]:
    """Share of soft answers replaced and facts preserved in the kept rewrites (the claim reader's count),
    and the gap over samples with an answer replaced, from the rewrite's first oracle-review folder and the
    gap claim's result."""
    figures: dict[str, Any] = {"replaced_share": None, "facts_preserved": None}
    facts = next(iter(sorted(Path(facts_folder).glob("*.facts.json"))), None) if facts_folder else None
    if facts:
        review = orjson.loads(facts.read_bytes())["llm_review"]
        if review["answers"]:
            figures["replaced_share"] = round(review["kept_rewrite"] / review["answers"], 4)
        # kept rewrites with every fact preserved ÷ kept rewrites: the review's precision
        figures["facts_preserved"] = review["review_precision"]
    figures["gap"] = gap["deltas"] if gap else None
    figures["gap_interval"] = gap["interval"] if gap else None
    return figures


def lab_results(
    settings: LabResultsSettings,
    runs: dict[str, list[str]],
    metrics: list[list[str]],
    claims: list[dict[str, Any]],
    facts_folder: str | None,
    first_seed: int,
    read_metric,
) -> dict[str, Any]:
    """The file's content; `read_metric(folder, bench, metric)` reads one eval folder's value."""
    seeds = max(len(runs[label]) for label in settings.arms.values())
    gap = next((c for c in claims if "bench" not in c), None)
    return {
        "seeds": list(range(first_seed, first_seed + seeds)),
        "arms": {
            arm: {metric_key(b, m): [read_metric(f, b, m) for f in runs[label]] for b, m in metrics}
            for arm, label in settings.arms.items()
        },
        "claims": [
            {**c, "metric": metric_key(c["bench"], c["metric"]) if "bench" in c else "gap_mean_nll"}
            for c in claims
        ],
        "rewrite": rewrite_figures(facts_folder, gap),
        "image_reliance": [
            orjson.loads((Path(f) / "reliance.json").read_bytes())["gap"] for f in settings.reliance
        ],
    }


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table; none as a dash."""
    return "–" if value is None else f"{value:.{digits}f}"


def mean_and_range(values: list[float | None]) -> str:
    known = [v for v in values if v is not None and v == v]
    if not known:
        return "–"
    spread = f" ({min(known):.3f}–{max(known):.3f})" if len(known) > 1 else ""
    return f"{statistics.fmean(known):.3f}{spread}"


def lab_markdown(data: dict[str, Any]) -> str:
    """The README's lab tables: the claims with their verdicts, then the arms' main metrics."""
    seeds = ", ".join(str(s) for s in data["seeds"])
    lines = [
        f"Seeds {seeds}. Δ is variant − baseline per seed; the interval is the first seed's paired bootstrap.",
        "",
        "| claim | measure | Δ per seed | 95% interval | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in data["claims"]:
        interval = f"[{fmt(c['interval'][0])}, {fmt(c['interval'][1])}]" if c["interval"] else "–"
        deltas = " ".join(f"{d:+.3f}" for d in c["deltas"]) or "–"
        lines.append(f"| {c['claim']} | {c['measure']} | {deltas} | {interval} | {c['verdict']} |")
    shown = [m for m in TABLE_METRICS if any(m in metrics for metrics in data["arms"].values())]
    lines += ["", "| arm | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for arm, metrics in data["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(mean_and_range(metrics.get(m, [])) for m in shown) + " |")
    r = data["rewrite"]
    lines += [
        "",
        f"Rewrite: {fmt(r['replaced_share'])} of soft answers replaced; {fmt(r['facts_preserved'])} of kept "
        f"rewrites keep every fact; gap (rewritten − teacher) "
        + (" ".join(f"{g:+.3f}" for g in r["gap"]) if r["gap"] else "–")
        + (
            f", interval [{fmt(r['gap_interval'][0])}, {fmt(r['gap_interval'][1])}]"
            if r["gap_interval"]
            else ""
        )
        + ". Image reliance (VIT, nats/token): "
        + (" ".join(f"{v:.3f}" for v in data["image_reliance"]) or "–")
        + ".",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    print(lab_markdown(orjson.loads(Path(argv[0]).read_bytes())))


if __name__ == "__main__":
    main(sys.argv[1:])
