"""`vialign data stats`: counts per subset and format class, and length distributions."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vialign.data.formats import FormatSettings, classify_sample, is_soft
from vialign.records import read_samples

UNKNOWN_SUBSET = "(none)"


@dataclass
class DatasetStats:
    samples: int = 0
    by_subset_class: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Histograms (length → count), so memory does not grow with the number of samples.
    lengths: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))

    def tables(self, name: str, settings: FormatSettings) -> list[Any]:
        """`data stats`' view: subset × format class, lengths, and the subset and soft/hard totals."""
        from rich.table import Table

        table = Table(title=f"{name}: {self.samples} samples")
        for column in ("subset", "format class", "soft/hard", "samples", "share"):
            table.add_column(column, justify="right" if column in ("samples", "share") else "left")
        for (subset, cls), n in sorted(self.by_subset_class.items()):
            kind = "soft" if is_soft(cls, settings) else "hard"
            table.add_row(subset, cls, kind, str(n), f"{n / self.samples:.1%}")
        lengths = Table(title="lengths")
        for column in ("measure", "n", "min", "median", "mean", "p90", "max"):
            lengths.add_column(column, justify="left" if column == "measure" else "right")
        for measure, s in self.length_summary().items():
            lengths.add_row(measure, *(str(s[k]) for k in ("n", "min", "median", "mean", "p90", "max")))
        soft_hard = self.soft_hard(settings)
        subsets = ", ".join(f"{subset} {n}" for subset, n in sorted(self.subsets.items()))
        return [table, lengths, f"subsets: {subsets}", f"soft {soft_hard['soft']}  hard {soft_hard['hard']}"]

    @property
    def subsets(self) -> Counter[str]:
        """Samples per `meta.subset`, `(none)` for those without one."""
        out: Counter[str] = Counter()
        for (subset, _), n in self.by_subset_class.items():
            out[subset] += n
        return out

    @property
    def classes(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (_, cls), n in self.by_subset_class.items():
            out[cls] += n
        return out

    def soft_hard(self, settings: FormatSettings) -> Counter[str]:
        return Counter({("soft" if is_soft(c, settings) else "hard"): n for c, n in self.classes.items()})

    def length_summary(self) -> dict[str, dict[str, float]]:
        return {name: summarise(values) for name, values in sorted(self.lengths.items()) if values}

    def to_json(self, settings: FormatSettings) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "subsets": dict(sorted(self.subsets.items())),
            "format_classes": dict(sorted(self.classes.items())),
            "soft_hard": dict(self.soft_hard(settings)),
            "by_subset_and_class": [
                {"subset": subset, "format_class": cls, "samples": n}
                for (subset, cls), n in sorted(self.by_subset_class.items())
            ],
            "lengths": self.length_summary(),
        }


def summarise(histogram: Counter[int]) -> dict[str, float]:
    n = histogram.total()
    middle = value_at_rank(histogram, n // 2)
    if n % 2 == 0:
        middle = (value_at_rank(histogram, n // 2 - 1) + middle) / 2
    return {
        "n": n,
        "min": min(histogram),
        "median": middle,
        "mean": round(sum(v * c for v, c in histogram.items()) / n, 2),
        "p90": value_at_rank(histogram, min(n - 1, int(0.9 * n))),
        "max": max(histogram),
    }


def value_at_rank(histogram: Counter[int], rank: int) -> int:
    """The value at 0-based position `rank` of the sorted values the histogram counts."""
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen > rank:
            return value
    raise IndexError(rank)


def dataset_stats(path: str | Path, settings: FormatSettings | None = None) -> DatasetStats:
    settings = settings or FormatSettings()
    stats = DatasetStats()
    for sample in read_samples(path):
        stats.samples += 1
        stats.by_subset_class[(sample.meta.subset or UNKNOWN_SUBSET, classify_sample(sample, settings))] += 1
        stats.lengths["turns per sample"][len(sample.conversations)] += 1
        stats.lengths["words per question"].update(len(q.split()) for q in sample.questions)
        stats.lengths["words per answer"].update(len(a.split()) for a in sample.answers)
    return stats
