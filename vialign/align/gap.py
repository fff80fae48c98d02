"""The writing-manner gap: the inner LLM's mean per-token negative log-likelihood of the answers,
text only (image tags removed), per sample and aggregated. Lower means closer to its own manner."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from vialign.choices import ChatFormatName
from vialign.config import Settings
from vialign.generation.local import TransformersBackend
from vialign.models.encoding import IGNORE_INDEX, ChatEncoder, EncoderSettings, EncodingError, Kind
from vialign.records import IMAGE_TAG, Sample, Turn
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

    def summary(self) -> dict[str, float]:
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
        False, description="score only the samples that `align rewrite` processed in the vs dataset, in both"
    )


def rewritten_ids(path: Path) -> set[str]:
    from vialign.records import read_samples

    return {
        s.id for s in read_samples(path) if any(p.get("stage") == "align.rewrite" for p in s.meta.provenance)
    }


def text_only(sample: Sample) -> Sample:
    turns = [
        Turn(role=t.role, value=" ".join(t.value.replace(IMAGE_TAG, " ").split()))
        for t in sample.conversations
    ]
    return Sample(id=sample.id, conversations=turns)


@torch.no_grad()
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
    model, tokenizer = backend.model, backend.tokenizer
    encoder = ChatEncoder(
        tokenizer, EncoderSettings(chat_format=chat_format, mode="response", image_tokens=0)
    )
    encoded = []
    for sample in samples:
        try:
            e = encoder.encode(text_only(sample))
        except EncodingError:
            continue
        answer_only = [
            t if k == Kind.ASSISTANT else IGNORE_INDEX for t, k in zip(e.input_ids, e.kinds, strict=True)
        ]
        encoded.append((sample.id, e.input_ids, answer_only))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for _, ids, _ in chunk)
        input_ids = torch.tensor(
            [ids + [pad] * (width - len(ids)) for _, ids, _ in chunk], device=model.device
        )
        labels = torch.tensor(
            [lab + [IGNORE_INDEX] * (width - len(lab)) for _, _, lab in chunk], device=model.device
        )
        mask = (
            torch.arange(width, device=model.device)[None, :]
            < torch.tensor([len(i) for _, i, _ in chunk], device=model.device)[:, None]
        ).long()
        with backend.autocast():
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        valid = target != IGNORE_INDEX
        for k, (sample_id, _, _) in enumerate(chunk):
            n = int(valid[k].sum())
            if n:
                rows.append({"id": sample_id, "nll": float(nll[k][valid[k]].mean()), "tokens": n})
    return GapReport(rows)


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

    from vialign.records import read_samples, write_jsonl

    wanted = set(subsets) if subsets is not None else None
    out.mkdir(parents=True, exist_ok=True)
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
        write_jsonl(reports[name].per_sample, out / f"{name}.nll.jsonl")
    summary: dict[str, Any] = {
        name: {"path": str(datasets[name]), **r.summary()} for name, r in reports.items()
    }
    if "input" in reports and "vs" in reports:
        summary["delta_mean_nll"] = round(reports["vs"].sample_mean - reports["input"].sample_mean, 4)
    (out / "gap.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
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
