"""The writing-manner gap: the inner LLM's mean per-token negative log-likelihood of the answers,
text only (image tags removed), per sample and aggregated. Lower means closer to its own manner."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from vialign.choices import ChatFormatName
from vialign.config import Settings
from vialign.generation.likelihood import answer_nll_rows
from vialign.generation.local import TransformersBackend
from vialign.records import Sample
from vialign.stage import StageContext


@dataclass
class GapReport:
    per_sample: list[dict[str, Any]]

    @property
    def sample_mean(self) -> float:
        return statistics.fmean(r["nll"] for r in self.per_sample)

    @property
    def token_mean(self) -> float:
        return sum(r["nll"] * r["tokens"] for r in self.per_sample) / sum(
            r["tokens"] for r in self.per_sample
        )

    def summary(self) -> dict[str, float | None]:
        if not self.per_sample:
            return {"samples": 0, "mean_nll": None, "token_mean_nll": None, "median_nll": None}
        values = sorted(r["nll"] for r in self.per_sample)
        return {
            "samples": len(values),
            "mean_nll": round(self.sample_mean, 4),
            "token_mean_nll": round(self.token_mean, 4),
            "median_nll": round(statistics.median(values), 4),
        }


class GapSettings(Settings):
    chat_format: ChatFormatName = "vicuna_v1"
    subsets: list[str] | None = Field(None, description="score only these subsets (default all)")
    rewritten_only: bool = Field(
        False,
        description="score only the samples of which `align rewrite` replaced some answer in the vs "
        "dataset, in both (a sample whose every rewrite was refused is its original)",
    )


def rewritten_ids(path: Path) -> set[str]:
    """Samples of `path` with at least one answer replaced by a rewrite."""
    from vialign.align.rewrite import replaced_some_answer
    from vialign.records import read_samples

    return {s.id for s in read_samples(path) if replaced_some_answer(s)}


def answer_nll(
    llm: str | Path | TransformersBackend,
    samples: Iterable[Sample],
    *,
    chat_format: str = "vicuna_v1",
    batch_size: int = 16,
) -> GapReport:
    backend = (
        llm
        if isinstance(llm, TransformersBackend)
        else TransformersBackend.load(llm, chat_format=chat_format)
    )
    return GapReport(answer_nll_rows(backend, samples, chat_format=chat_format, batch_size=batch_size))


def scored_reports(
    llm: str | Path,
    datasets: dict[str, Path],
    subsets: Iterable[str] | None,
    chat_format: str,
    ids: set[str] | None,
) -> dict[str, GapReport]:
    """Each dataset's answers (of `subsets`, of `ids`) scored under one load of the inner LLM."""
    from vialign.records import read_samples

    wanted = set(subsets) if subsets is not None else None
    backend = TransformersBackend.load(llm, chat_format=chat_format)
    reports = {}
    for name, path in datasets.items():
        chosen = (
            s
            for s in read_samples(path)
            if (wanted is None or s.meta.subset in wanted) and (ids is None or s.id in ids)
        )
        reports[name] = answer_nll(backend, chosen, chat_format=chat_format)
        if not reports[name].per_sample:
            which = f" of subsets {sorted(wanted)}" if wanted is not None else ""
            raise ValueError(
                f"{path}: no answer{which} could be scored (empty file, or no sample with an answer)"
            )
    return reports


def gap_files(
    llm: str | Path,
    datasets: dict[str, Path],
    out: Path,
    *,
    subsets: Iterable[str] | None = None,
    chat_format: str = "vicuna_v1",
    ids: set[str] | None = None,
) -> tuple[dict[str, GapReport], dict[str, Any]]:
    """The gap of each dataset under one load of the inner LLM: `NAME.nll.jsonl` per dataset, `gap.json`
    (with the delta `vs − input` when both are given) and `gap.png` in `out`."""
    import orjson

    from vialign.records import write_jsonl

    out.mkdir(parents=True, exist_ok=True)
    replaced_none = ids is not None and not ids  # `rewritten_only` with no answer replaced: nothing to score
    reports = (
        {name: GapReport([]) for name in datasets}
        if replaced_none
        else scored_reports(llm, datasets, subsets, chat_format, ids)
    )
    for name, report in reports.items():
        write_jsonl(report.per_sample, out / f"{name}.nll.jsonl")
    summary: dict[str, Any] = {
        name: {"path": str(datasets[name]), **r.summary()} for name, r in reports.items()
    }
    if replaced_none:
        summary.update(delta_mean_nll=None, note="no sample of vs has an answer replaced by a rewrite")
    elif "input" in reports and "vs" in reports:
        summary["delta_mean_nll"] = round(reports["vs"].sample_mean - reports["input"].sample_mean, 4)
    (out / "gap.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    if replaced_none:
        (out / "gap.png").unlink(missing_ok=True)
    else:
        plot_histograms({str(datasets[n]): r for n, r in reports.items()}, out / "gap.png")
    return reports, summary


def plot_histograms(reports: dict[str, GapReport], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, report in reports.items():
        ax.hist(
            [r["nll"] for r in report.per_sample],
            bins=40,
            alpha=0.55,
            label=f"{name} (mean {report.sample_mean:.3f})",
        )
    ax.set_xlabel("per-token NLL of answers under the inner LLM")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_stage(ctx: StageContext) -> None:
    from rich.table import Table

    s, llm = ctx.settings, ctx.take("llm")
    datasets = {"input": ctx.path("data"), **({"vs": ctx.path("vs")} if ctx.take("vs", None) else {})}
    if s.rewritten_only and "vs" not in datasets:
        raise ValueError(
            "rewritten_only compares the rewritten samples of --vs with their originals: give --vs"
        )
    ids = rewritten_ids(datasets["vs"]) if s.rewritten_only else None
    reports, summary = gap_files(
        llm, datasets, ctx.out, subsets=s.subsets, chat_format=s.chat_format, ids=ids
    )
    if summary.get("note"):
        ctx.say(f"no gap: {summary['note']}")
        return
    view = Table(title=f"writing-manner gap under {llm}")
    for column in ("dataset", "samples", "mean NLL", "token-weighted", "median"):
        view.add_column(column, justify="left" if column == "dataset" else "right")
    for name, r in reports.items():
        row = r.summary()
        view.add_row(
            str(datasets[name]),
            str(row["samples"]),
            *(f"{row[k]:.4f}" for k in ("mean_nll", "token_mean_nll", "median_nll")),
        )
    ctx.show(view)
    if "delta_mean_nll" in summary:
        ctx.say(f"gap delta (vs − input): {summary['delta_mean_nll']:+.4f} nats/token")
