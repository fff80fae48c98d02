"""The run report: one static HTML file (images and plots embedded), no server needed.

Sections: the comparison tables (mean over seeds, the seed spread, bootstrap 95% intervals, paired
deltas), plots (loss curves, metric bars with intervals, reward-score and gap histograms) and a dataset
viewer (image, conversation, reward scores, kept/dropped, the rewrite as a diff with its verdict).
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import Field, model_validator

from vialign.config import Settings
from vialign.evaluate.compare import compare_results, delta_intervals, paired_delta
from vialign.records import confined_image_path, read_jsonl
from vialign.report.lab_results import LabResultsSettings, fmt, lab_results
from vialign.stage import StageContext

DEFAULT_METRICS = [
    ["pope", "f1"],
    ["pope", "accuracy"],
    ["pope", "yes_ratio"],
    ["caption", "CIDEr"],
    ["vqa", "accuracy"],
    ["mc", "accuracy"],
    ["text", "normalised_match"],
]


class Comparison(Settings):
    title: str
    baseline: str
    variant: str


class Claim(Settings):
    """A published claim tested by one comparison: a metric of `variant` against `baseline` (run labels),
    or a writing-manner gap (`gap`: the gap stage's folder per seed; its delta is vs − input)."""

    claim: str
    paper: str = Field(description="the paper's figure, as quoted")
    bench: str | None = None
    metric: str | None = None
    baseline: str | None = None
    variant: str | None = None
    gap: list[str] = Field(default_factory=list)
    expect: Literal["higher", "lower"] = Field("higher", description="the direction the paper reports")
    margin: float = Field(
        0.0,
        ge=0,
        description="non-inferiority margin, fixed before the run: the claim holds when the delta, in the "
        "paper's direction, stays above −margin (0: the variant must do better)",
    )

    @model_validator(mode="after")
    def gap_or_comparison(self) -> Claim:
        fields = {
            "bench": self.bench,
            "metric": self.metric,
            "baseline": self.baseline,
            "variant": self.variant,
        }
        missing = [name for name, value in fields.items() if not value]
        if not self.gap and missing:
            raise ValueError(
                f"claim {self.claim!r}: give `gap`, or bench, metric, baseline and variant (missing {missing})"
            )
        return self


class ReportSettings(Settings):
    title: str = "vialign run"
    runs: dict[str, list[str]] = Field(description="model label → its eval folders, one per seed")
    comparisons: list[Comparison] = Field(default_factory=list)
    metrics: list[list[str]] = Field(default_factory=lambda: [list(m) for m in DEFAULT_METRICS])
    training: dict[str, str] = Field(
        default_factory=dict, description="label → run folder with log_history.json"
    )
    gap: str | None = Field(None, description="gap stage folder (gap.json, gap.png)")
    selection: str | None = Field(None, description="select stage folder")
    rewritten: str | None = Field(None, description="rewritten JSONL")
    viewer_data: str | None = Field(None, description="JSONL whose samples the viewer shows")
    image_root: str | None = None
    viewer_limit: int = Field(24, ge=0)
    resamples: int = Field(1000, ge=10)
    notes: list[str] = Field(default_factory=list)
    claims: list[Claim] = Field(
        default_factory=list, description="the lab table: each claim's measured delta"
    )
    rewrite_facts: list[str] = Field(
        default_factory=list, description="oracle-review folders (*.facts.json), per seed"
    )
    first_seed: int = Field(0, description="the seed of each label's first run folder (the others follow)")
    lab_results: LabResultsSettings | None = Field(
        None, description="write lab-results.json: short arm names and the image-reliance folders per seed"
    )

    @model_validator(mode="after")
    def compared_runs_exist(self) -> ReportSettings:
        named = [(c.title, c.baseline, c.variant) for c in self.comparisons]
        named += [(c.claim, c.baseline, c.variant) for c in self.claims if not c.gap]
        for title, *labels in named:
            unknown = [label for label in labels if label not in self.runs]
            if unknown:
                raise ValueError(f"{title!r} compares {unknown}, which are not in runs {sorted(self.runs)}")
        return self


def results(folder: str | Path) -> dict[str, Any]:
    return orjson.loads((Path(folder) / "results.json").read_bytes())


def run_results(settings: ReportSettings, labels: Iterable[str] | None = None) -> dict[str, list[dict]]:
    """Per model label (all, or `labels`), its results per seed."""
    return {label: [results(f) for f in settings.runs[label]] for label in labels or settings.runs}


def metric(result: dict[str, Any], bench: str, name: str) -> float | None:
    return result["benchmarks"].get(bench, {}).get("metrics", {}).get(name)


def png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def file_uri(path: Path) -> str:
    kind = "png" if path.suffix == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


# ---------------------------------------------------------------- tables


def summary_rows(
    settings: ReportSettings, loaded: dict[str, list[dict]], intervals: dict[str, dict]
) -> list[list[str]]:
    rows = []
    for label, per_seed in loaded.items():
        row = [html.escape(label)]
        for bench, name in settings.metrics:
            values = [v for v in (metric(r, bench, name) for r in per_seed) if v is not None]
            if not values:
                row.append("–")
                continue
            cell = fmt(statistics.fmean(values))
            if len(values) > 1:
                cell += f" <span class=spread>(seeds {fmt(min(values))}–{fmt(max(values))})</span>"
            interval = intervals[label].get((bench, name))
            if interval:
                cell += f" <span class=ci>[{fmt(interval[0])}, {fmt(interval[1])}]</span>"
            row.append(cell)
        rows.append(row)
    return rows


def bootstrap_intervals(settings: ReportSettings) -> dict[str, dict[tuple[str, str], tuple[float, float]]]:
    """Per model, the bootstrap interval of every metric on its first seed's samples."""
    out: dict[str, dict[tuple[str, str], tuple[float, float]]] = {}
    for label, folders in settings.runs.items():
        rows = compare_results([Path(folders[0]) / "results.json"], resamples=settings.resamples)
        out[label] = {(r["bench"], r["metric"]): r["intervals"][0] for r in rows if r["intervals"][0]}
    return out


def comparison_table(settings: ReportSettings, comparison: Comparison, loaded: dict[str, list[dict]]) -> str:
    intervals = delta_intervals(
        loaded[comparison.baseline][0], loaded[comparison.variant][0], settings.resamples
    )
    body = []
    for bench, name in settings.metrics:
        base_values = [
            v for v in (metric(r, bench, name) for r in loaded[comparison.baseline]) if v is not None
        ]
        var_values = [
            v for v in (metric(r, bench, name) for r in loaded[comparison.variant]) if v is not None
        ]
        if not base_values or not var_values:
            continue
        deltas = [v - b for b, v in zip(base_values, var_values, strict=False)]
        interval = intervals.get((bench, name))
        ci = f"[{fmt(interval[0])}, {fmt(interval[1])}]" if interval else "–"
        sign = "up" if statistics.fmean(deltas) > 0 else "down" if statistics.fmean(deltas) < 0 else ""
        body.append(
            f"<tr><td>{bench}</td><td>{name}</td><td>{fmt(statistics.fmean(base_values))}</td>"
            f"<td>{fmt(statistics.fmean(var_values))}</td><td class='{sign}'>{statistics.fmean(deltas):+.3f}</td>"
            f"<td>{ci}</td><td>{' '.join(f'{d:+.3f}' for d in deltas)}</td></tr>"
        )
    return (
        f"<h3>{html.escape(comparison.title)}</h3><table class=cmp><thead><tr><th>benchmark</th><th>metric</th>"
        f"<th>{html.escape(comparison.baseline)}</th><th>{html.escape(comparison.variant)}</th><th>Δ (mean over seeds)</th>"
        f"<th>Δ 95% paired bootstrap (seed {settings.first_seed})</th><th>Δ per seed</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def claim_delta(
    settings: ReportSettings, claim: Claim, loaded: dict[str, list[dict]] | None = None
) -> tuple[list[float], tuple[float, float] | None]:
    """The claim's delta per seed and the paired-bootstrap 95% interval over items of the first seed;
    none at all for a gap claim where some seed replaced no answer (the claim is then inconclusive).
    `loaded`: every run's results, as `run_results` reads them (read here when not given)."""
    if claim.gap:
        deltas, interval = [], None
        for k, folder in enumerate(claim.gap):
            summary = orjson.loads((Path(folder) / "gap.json").read_bytes())
            if summary["delta_mean_nll"] is None:  # a seed with no answer replaced measured nothing
                return [], None
            deltas.append(summary["delta_mean_nll"])
            if k == 0:
                base, other = (
                    [{"id": r["id"], "nll": r["nll"]} for r in read_jsonl(Path(folder) / f"{n}.nll.jsonl")]
                    for n in ("input", "vs")
                )
                mean_nll = lambda rs: {"nll": statistics.fmean(r["nll"] for r in rs)}  # noqa: E731
                interval = paired_delta(base, other, mean_nll, settings.resamples, 0).get("nll")
        return deltas, interval
    loaded = loaded or run_results(settings, (claim.baseline, claim.variant))
    pairs = list(zip(loaded[claim.baseline], loaded[claim.variant], strict=False))
    deltas = []
    for base, variant in pairs:
        a, b = metric(base, claim.bench, claim.metric), metric(variant, claim.bench, claim.metric)
        if a is not None and b is not None:
            deltas.append(b - a)
    intervals = delta_intervals(*pairs[0], settings.resamples, benches={claim.bench})
    return deltas, intervals.get((claim.bench, claim.metric))


def verdict(
    expect: str, deltas: list[float], interval: tuple[float, float] | None, margin: float = 0.0
) -> str:
    """Reproduced when the interval lies on the paper's side of −margin (of 0 for a claim of
    superiority) and every seed's delta does; not reproduced when both lie on the other side;
    inconclusive when the interval holds −margin or the seeds disagree."""
    if not deltas or interval is None or any(v != v for v in interval):
        return "inconclusive"
    sign = 1 if expect == "higher" else -1
    low, high = sorted((sign * interval[0], sign * interval[1]))
    if low > -margin and all(sign * d > -margin for d in deltas):
        return "reproduced"
    if high < -margin and all(sign * d < -margin for d in deltas):
        return "not reproduced"
    return "inconclusive"


def claim_results(
    settings: ReportSettings, loaded: dict[str, list[dict]] | None = None
) -> list[dict[str, Any]]:
    """Each claim with its measure, the delta per seed, the first seed's interval and the verdict: what
    the claims table shows, and `claims.json` beside the report holds."""
    rows = []
    for claim in settings.claims:
        deltas, interval = claim_delta(settings, claim, loaded)
        measure = (
            "writing-manner gap (rewritten − teacher), nats/token"
            if claim.gap
            else f"{claim.bench} {claim.metric}: {claim.variant} − {claim.baseline}"
        )
        if claim.margin:
            measure += f" (no worse than {-claim.margin if claim.expect == 'higher' else claim.margin:+g})"
        rows.append(
            {
                "claim": claim.claim,
                "paper": claim.paper,
                "measure": measure,
                **(
                    {}
                    if claim.gap
                    else {k: getattr(claim, k) for k in ("bench", "metric", "baseline", "variant")}
                ),
                "expect": claim.expect,
                "margin": claim.margin,
                "deltas": deltas,
                "interval": list(interval) if interval else None,
                "verdict": verdict(claim.expect, deltas, interval, claim.margin),
            }
        )
    return rows


def claims_table(settings: ReportSettings, rows: list[dict[str, Any]]) -> str:
    body = []
    for row in rows:
        deltas, interval, outcome = row["deltas"], row["interval"], row["verdict"]
        mean = f"{statistics.fmean(deltas):+.3f}" if deltas else "–"
        ci = f"[{fmt(interval[0])}, {fmt(interval[1])}]" if interval else "–"
        body.append(
            f"<tr><td>{html.escape(row['claim'])}</td><td>{html.escape(row['paper'])}</td><td>{html.escape(row['measure'])}</td>"
            f"<td>{mean}</td><td>{ci}</td><td>{' '.join(f'{d:+.3f}' for d in deltas)}</td>"
            f"<td class='verdict {outcome.replace(' ', '-')}'>{outcome}</td></tr>"
        )
    return (
        "<table id=claims><thead><tr><th>claim</th><th>paper</th><th>our measure</th><th>Δ (mean over seeds)</th>"
        f"<th>Δ 95% paired bootstrap (seed {settings.first_seed})</th><th>Δ per seed</th><th>verdict</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def seed_count(settings: ReportSettings) -> int:
    return max((len(folders) for folders in settings.runs.values()), default=1)


def facts_table(folders: list[str], first_seed: int, seeds: int) -> str:
    """One row per facts file; a folder per seed is labelled with its seed, one shared by every seed (a
    seed-independent rewrite) says so, and any other layout numbers its folders."""
    rows = []
    for k, folder in enumerate(folders):
        seed = (
            str(first_seed + k)
            if len(folders) == seeds
            else "every seed"
            if len(folders) == 1
            else f"run {k}"
        )
        for path in sorted(Path(folder).glob("*.facts.json")):
            f = orjson.loads(path.read_bytes())
            llm, n = f["llm_review"], max(f["answers"], 1)
            rows.append(
                f"<tr><td>{seed}</td><td>{f['answers']}</td><td>{f['raw_preserved'] / n:.1%}</td><td>{llm['kept_rewrite']}</td>"
                f"<td>{fmt(llm.get('review_precision'))}</td><td>{fmt(llm.get('review_recall'))}</td>"
                f"<td>{llm['final_preserved'] / n:.1%}</td><td>{f['oracle_review']['kept_rewrite']}</td></tr>"
            )
    return (
        "<table id=facts><thead><tr><th>seed</th><th>answers</th><th>raw rewrites keep the facts</th><th>LLM review kept</th>"
        "<th>review precision</th><th>review recall</th><th>facts preserved after the LLM review</th><th>oracle review kept</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


# ---------------------------------------------------------------- plots


def loss_plot(training: dict[str, str]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    drawn = False
    for label, folder in training.items():
        path = Path(folder) / "log_history.json"
        if not path.is_file():
            continue
        history = [h for h in orjson.loads(path.read_bytes()) if "loss" in h]
        if history:
            ax.plot([h["step"] for h in history], [h["loss"] for h in history], label=label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("loss curves")
    ax.legend(fontsize=8)
    return png(fig)


def metric_bars(settings: ReportSettings, loaded: dict[str, list[dict]], intervals: dict[str, dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [
        (b, m) for b, m in settings.metrics if any(metric(r[0], b, m) is not None for r in loaded.values())
    ]
    fig, axes = plt.subplots(1, max(1, len(shown)), figsize=(2.3 * max(1, len(shown)), 3.2), squeeze=False)
    labels = list(loaded)
    for ax, (bench, name) in zip(axes[0], shown, strict=False):
        means, errors = [], [[], []]
        for label in labels:
            values = [v for v in (metric(r, bench, name) for r in loaded[label]) if v is not None]
            mean = statistics.fmean(values) if values else 0.0
            low, high = intervals[label].get((bench, name), (mean, mean))
            means.append(mean)
            errors[0].append(max(0.0, mean - low))
            errors[1].append(max(0.0, high - mean))
        ax.bar(range(len(labels)), means, yerr=errors, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{bench} {name}", fontsize=8)
    fig.tight_layout()
    return png(fig)


# ---------------------------------------------------------------- dataset viewer


def word_diff(original: str, rewrite: str) -> str:
    a, b = original.split(), rewrite.split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape(" ".join(a[i1:i2])))
        if op in ("delete", "replace"):
            out.append(f"<del>{html.escape(' '.join(a[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            out.append(f"<ins>{html.escape(' '.join(b[j1:j2]))}</ins>")
    return " ".join(out)


def viewer(settings: ReportSettings) -> str:
    if not settings.viewer_data or settings.viewer_limit == 0:
        return "<p>No dataset given.</p>"
    decisions = {}
    if settings.selection and (Path(settings.selection) / "decisions.jsonl").is_file():
        decisions = {d["id"]: d for d in read_jsonl(Path(settings.selection) / "decisions.jsonl")}
    rewrites = {}
    if settings.rewritten and Path(settings.rewritten).is_file():
        for r in read_jsonl(settings.rewritten):
            turns = [
                t
                for p in r.get("meta", {}).get("provenance", [])
                if p.get("stage") == "align.rewrite"
                for t in p.get("turns", [])
            ]
            if turns:
                rewrites[r["id"]] = turns
    chosen = [r for r in read_jsonl(settings.viewer_data) if r["id"] in rewrites or not rewrites][
        : settings.viewer_limit
    ]
    cards = []
    for r in chosen:
        cards.append(sample_card(r, decisions.get(r["id"]), rewrites.get(r["id"], []), settings.image_root))
    return "<div class=viewer>" + "".join(cards) + "</div>"


def sample_card(
    record: dict[str, Any], decision: dict | None, rewrites: list[dict], image_root: str | None
) -> str:
    image_html = ""
    image = record.get("image")
    if isinstance(image, str) and image_root:
        path = confined_image_path(image_root, image)
        if path.is_file():
            image_html = f"<img class=sample-image src='{file_uri(path)}' alt='{html.escape(image)}'>"
    by_turn = {t["turn"]: t for t in rewrites}
    turns = []
    for k, turn in enumerate(record["conversations"]):
        text = html.escape(turn["value"])
        extra = ""
        if k in by_turn:
            t = by_turn[k]
            extra = (
                f"<div class=rewrite><b>rewrite</b> ({html.escape(t['verdict'])}, kept {html.escape(t['kept'])}): "
                f"{word_diff(t['original'], t['rewrite'])}</div>"
            )
            text = html.escape(t["original"])
        turns.append(f"<div class='turn {turn['from']}'><b>{turn['from']}</b> {text}{extra}</div>")
    meta = record.get("meta", {})
    status = ""
    if decision:
        kept = decision.get("kept")
        status = (
            f"<div class='status {'kept' if kept else 'dropped'}'>{'kept' if kept else html.escape(decision.get('decision', 'dropped'))}"
            f" · question score {fmt(decision.get('question_score'))} · answer score {fmt(decision.get('answer_score'))}</div>"
        )
    corruption = meta.get("corruption")
    flag = (
        f"<div class=corrupt>toy-world corruption: {html.escape(corruption['kind'])}</div>"
        if corruption
        else ""
    )
    return (
        f"<div class=card><div class=card-head>{html.escape(record['id'])} · {html.escape(str(meta.get('subset')))}</div>"
        f"{image_html}{status}{flag}{''.join(turns)}</div>"
    )


# ---------------------------------------------------------------- page

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:1200px;color:#222;padding:0 1rem}
table{border-collapse:collapse;margin:.6rem 0 1.4rem;font-size:.85rem}th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th:first-child,td:first-child{text-align:left}.spread,.ci{color:#777;font-size:.75rem}.up{color:#1a7f37}.down{color:#b42318}
img.plot{max-width:100%;border:1px solid #eee;margin:.4rem 0}.viewer{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:.8rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem;font-size:.8rem;background:#fff}.card-head{font-weight:bold;margin-bottom:.3rem}
.sample-image{width:96px;height:96px;image-rendering:pixelated;float:right;margin-left:.4rem}.turn{margin:.25rem 0}.turn.gpt{color:#234}
.rewrite{background:#f6f8fa;padding:.2rem .3rem;margin-top:.2rem}ins{background:#d1f7d6;text-decoration:none}del{background:#ffd7d5}
.verdict.reproduced{color:#1a7f37;font-weight:bold}.verdict.not-reproduced{color:#b42318;font-weight:bold}.verdict.inconclusive{color:#777}
.status.kept{color:#1a7f37}.status.dropped{color:#b42318}.corrupt{color:#9a6700}.notes{color:#555}
"""


def write_report(out: Path, settings: ReportSettings) -> Path:
    loaded = run_results(settings)
    intervals = bootstrap_intervals(settings)
    header = "".join(f"<th>{html.escape(b)} {html.escape(m)}</th>" for b, m in settings.metrics)
    summary = "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for row in summary_rows(settings, loaded, intervals)
    )
    seeds = seed_count(settings)
    claims = claim_results(settings, loaded)
    parts = [
        f"<h1>{html.escape(settings.title)}</h1>",
        f"<p class=notes>{seeds} seed(s); values are means over seeds, (min–max over seeds), [bootstrap 95% interval of the first seed].</p>",
        *[f"<p class=notes>{html.escape(n)}</p>" for n in settings.notes],
        *(["<h2>Claims</h2>", claims_table(settings, claims)] if claims else []),
        *(
            [
                "<h2>Rewrites and their review</h2>",
                facts_table(settings.rewrite_facts, settings.first_seed, seed_count(settings)),
            ]
            if settings.rewrite_facts
            else []
        ),
        "<h2>Results</h2>",
        f"<table id=summary><thead><tr><th>model</th>{header}</tr></thead><tbody>{summary}</tbody></table>",
        "<h2>Comparisons</h2>",
        *[comparison_table(settings, c, loaded) for c in settings.comparisons],
    ]
    if settings.gap and (Path(settings.gap) / "gap.json").is_file():
        gap = orjson.loads((Path(settings.gap) / "gap.json").read_bytes())
        names = {"input": "original (teacher manner)", "vs": "rewritten"}
        rows = "".join(
            f"<tr><td>{html.escape(names.get(k, k))}</td><td>{v['samples']}</td><td>{fmt(v['mean_nll'])}</td><td>{fmt(v['token_mean_nll'])}</td></tr>"
            for k, v in gap.items()
            if isinstance(v, dict)
        )
        parts += [
            "<h2>Writing-manner gap</h2>",
            "<table id=gap><thead><tr><th>data</th><th>samples</th><th>mean NLL</th>"
            f"<th>token-weighted</th></tr></thead><tbody>{rows}</tbody></table>",
            f"<p>delta (rewritten − teacher): {fmt(gap.get('delta_mean_nll'))} nats/token</p>",
            *([f"<p class=notes id=gap-note>{html.escape(gap['note'])}</p>"] if gap.get("note") else []),
        ]
    parts.append("<h2>Plots</h2>")
    bars = metric_bars(settings, loaded, intervals)
    parts.append(f"<img class=plot id=metric-bars alt='metric bars' src='{bars}'>")
    curves = loss_plot(settings.training)
    if curves:
        parts.append(f"<img class=plot id=loss-curves alt='loss curves' src='{curves}'>")
    if settings.selection and (Path(settings.selection) / "score_histograms.png").is_file():
        parts.append(
            f"<img class=plot id=reward-histograms alt='reward-score histograms' src='{file_uri(Path(settings.selection) / 'score_histograms.png')}'>"
        )
    if settings.gap and (Path(settings.gap) / "gap.png").is_file():
        parts.append(
            f"<img class=plot id=gap-histograms alt='gap histograms' src='{file_uri(Path(settings.gap) / 'gap.png')}'>"
        )
    parts += ["<h2>Dataset viewer</h2>", viewer(settings)]
    page = f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(settings.title)}</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    out.mkdir(parents=True, exist_ok=True)
    if claims:
        (out / "claims.json").write_bytes(orjson.dumps(claims, option=orjson.OPT_INDENT_2))
    if settings.lab_results:
        data = lab_results(
            settings.lab_results,
            settings.runs,
            settings.metrics,
            claims,
            settings.rewrite_facts[0] if settings.rewrite_facts else None,
            settings.first_seed,
            lambda folder, bench, name: metric(results(folder), bench, name),
        )
        (out / "lab-results.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    path = out / "report.html"
    path.write_text(page)
    return path


def run_stage(ctx: StageContext) -> None:
    ctx.say(f"report → {write_report(ctx.out, ctx.settings)}")
