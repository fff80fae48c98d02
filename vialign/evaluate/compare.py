"""`vialign eval compare`: metrics of several results files side by side, with bootstrap 95% intervals
for each value and paired-bootstrap intervals for each delta against the first file."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import orjson

from vialign.evaluate.benches import BENCHES


def bootstrap_metrics(
    records: Sequence[dict],
    aggregate: Callable[[Sequence[dict]], dict[str, float]],
    resamples: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Percentile 95% interval of every metric `aggregate` computes, over resamples of the records."""
    rng = random.Random(seed)
    n = len(records)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        for k, v in aggregate([records[rng.randrange(n)] for _ in range(n)]).items():
            draws.setdefault(k, []).append(v)
    return {k: percentile_interval(v) for k, v in draws.items()}


def paired_delta(
    base: Sequence[dict],
    other: Sequence[dict],
    aggregate: Callable[[Sequence[dict]], dict[str, float]],
    resamples: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    """Interval of aggregate(other) − aggregate(base) resampling the shared ids together."""
    by_id = {r["id"]: r for r in other}
    shared = [(r, by_id[r["id"]]) for r in base if r["id"] in by_id]
    if not shared:
        return {}
    rng = random.Random(seed)
    n = len(shared)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        picks = [shared[rng.randrange(n)] for _ in range(n)]
        a, b = aggregate([p[0] for p in picks]), aggregate([p[1] for p in picks])
        for k in a.keys() & b.keys():
            draws.setdefault(k, []).append(b[k] - a[k])
    return {k: percentile_interval(v) for k, v in draws.items()}


def delta_intervals(
    base: dict[str, Any],
    other: dict[str, Any],
    resamples: int,
    seed: int = 0,
    benches: Collection[str] | None = None,
) -> dict[tuple[str, str], tuple[float, float]]:
    """Paired-bootstrap interval of other − base for every metric of the benchmarks both results hold
    (only `benches`, when given), without the per-file intervals `compare_results` adds."""
    out = {}
    for bench, entry in base["benchmarks"].items():
        if bench not in other["benchmarks"] or (benches is not None and bench not in benches):
            continue
        samples = entry["samples"], other["benchmarks"][bench]["samples"]
        for name, interval in paired_delta(*samples, BENCHES[bench].aggregate, resamples, seed).items():
            out[(bench, name)] = interval
    return out


def percentile_interval(values: list[float]) -> tuple[float, float]:
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return (math.nan, math.nan)
    last = len(finite) - 1
    return finite[math.floor(0.025 * last)], finite[math.ceil(0.975 * last)]


def compare_results(
    paths: Sequence[Path], resamples: int = 1000, seed: int = 0, all_metrics: bool = False
) -> list[dict[str, Any]]:
    """One row per (benchmark, metric): each file's value and interval, and the delta against the first."""
    results = [orjson.loads(Path(p).read_bytes()) for p in paths]
    rows = []
    benches = [b for b in results[0]["benchmarks"] if all(b in r["benchmarks"] for r in results)]
    deltas = [delta_intervals(results[0], r, resamples, seed, benches) for r in results[1:]]
    for bench in benches:
        entries = [r["benchmarks"][bench] for r in results]
        aggregate = BENCHES[bench].aggregate
        intervals = [bootstrap_metrics(e["samples"], aggregate, resamples, seed) for e in entries]
        for metric in entries[0]["metrics"]:
            if "/" in metric and not all_metrics:
                continue
            values = [e["metrics"].get(metric) for e in entries]
            rows.append(
                {
                    "bench": bench,
                    "metric": metric,
                    "values": values,
                    "intervals": [iv.get(metric) for iv in intervals],
                    "deltas": [None if v is None or values[0] is None else v - values[0] for v in values[1:]],
                    "delta_intervals": [d.get((bench, metric)) for d in deltas],
                }
            )
    return rows


def comparison_table(paths: list[Path], rows: list[dict[str, Any]]):
    """`eval compare`'s table: each file's value with its interval, and deltas against the first."""
    from rich.table import Table

    view = Table(title="comparison (95% bootstrap intervals; deltas paired over shared samples)")
    view.add_column("benchmark")
    view.add_column("metric")
    for k, path in enumerate(paths):
        view.add_column(f"[{k}] {path.parent.name or path.name}", justify="right")
        if k:
            view.add_column(f"Δ [{k}]−[0]", justify="right")

    def show(value, interval) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    for row in rows:
        cells = [show(row["values"][0], row["intervals"][0])]
        for k in range(1, len(paths)):
            cells += [
                show(row["values"][k], row["intervals"][k]),
                show(row["deltas"][k - 1], row["delta_intervals"][k - 1]),
            ]
        view.add_row(row["bench"], row["metric"], *cells)
    return view
