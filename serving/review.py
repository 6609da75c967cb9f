"""The review report of a promotion attempt: what a reviewer reads before (or after) a model becomes champion.

Every attempt (accepted, refused or forced) writes one: the gate metrics of the candidate and the champion side
by side (with deltas and the tolerance that decided), plots of both models on the same held-out data, the data
lineage (prepared-data hash and feature-spec fingerprint of each), the key-by-key diff of the two runs' resolved
configs, the index recall (retrievers) and the decision with who and why. `write_review` writes `review.md`
(plots as PNG files next to it), `review.html` (self-contained: plots embedded as base64 PNG) and `review.json`.
Figures are drawn on matplotlib's Agg canvas without pyplot, so this works headless and in workers.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.common.tracking import flatten

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Side:
    """One model of the comparison: its registry version, run, lineage and figures on the held-out data."""

    version: int
    run_id: str
    data_hash: str
    spec_fingerprint: str
    metrics: dict[str, float]
    index_recall: dict[str, Any] | None = None


@dataclass(frozen=True)
class MetricRow:
    """One gate metric: both values, the delta (candidate - champion), the allowed delta and the verdict."""

    name: str
    candidate: float
    champion: float | None
    higher_is_better: bool
    tolerance: float

    @property
    def delta(self) -> float | None:
        return None if self.champion is None else self.candidate - self.champion

    @property
    def passed(self) -> bool:
        """Within tolerance of the champion (always true without one); NaN never passes."""
        if math.isnan(self.candidate):
            return False
        if self.delta is None:
            return True
        return self.delta >= -self.tolerance if self.higher_is_better else self.delta <= self.tolerance

    @property
    def allowed(self) -> str:
        return f">= -{self.tolerance:g}" if self.higher_is_better else f"<= +{self.tolerance:g}"

    def failure(self) -> str | None:
        """Why this metric refuses the candidate, with the figures; None when it passes."""
        if self.passed:
            return None
        if math.isnan(self.candidate):
            return f"{self.name} of the candidate is undefined (NaN) on the held-out data"
        direction = "dropped" if self.higher_is_better else "rose"
        return (f"{self.name} {direction} by {abs(self.delta or 0.0):.5f} (candidate {self.candidate:.5f} vs "
                f"champion {self.champion:.5f}); the tolerance is {self.tolerance:g}")


@dataclass
class Review:
    """Everything one promotion attempt's report shows. `figures` maps a file stem to a matplotlib Figure."""

    model: str
    kind: str
    timestamp: str
    candidate: Side
    champion: Side | None
    rows: list[MetricRow]
    decision: str  # accepted | refused | forced
    user: str
    reason: str | None
    heldout: dict[str, Any]
    config_diff: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    figures: dict[str, Figure] = field(default_factory=dict)
    blockers: list[str] = field(default_factory=list)  # reasons the gate could not compare at all

    @property
    def failures(self) -> list[str]:
        """Why the gate refuses (empty: it accepts): the blockers, then each metric beyond its tolerance."""
        return self.blockers + [f for f in (r.failure() for r in self.rows) if f is not None]

    def summary(self) -> dict[str, Any]:
        """The report as plain data (what review.json holds)."""
        return {
            "model": self.model,
            "kind": self.kind,
            "timestamp": self.timestamp,
            "decision": self.decision,
            "user": self.user,
            "reason": self.reason,
            "failures": self.failures,
            "candidate": asdict(self.candidate),
            "champion": asdict(self.champion) if self.champion is not None else None,
            "metrics": [{"name": r.name, "candidate": r.candidate, "champion": r.champion, "delta": r.delta,
                         "tolerance": r.tolerance, "allowed": r.allowed, "passed": r.passed} for r in self.rows],
            "heldout": self.heldout,
            "config_diff": [{"key": k, "candidate": a, "champion": b} for k, a, b in self.config_diff],
            "warnings": self.warnings,
        }


# ------------------------------------------------------------------------------------------------ figures
def _figure(width: float = 5.5, height: float = 4.5) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def roc_figure(labels: np.ndarray, probs: Mapping[str, np.ndarray], title: str = "ROC on the held-out rows") -> Figure:
    """The ROC curves of several models' probabilities for the same labels, AUC in the legend."""
    from training.common.metrics import auc, roc_curve

    fig = _figure()
    ax = fig.add_subplot()
    for name, p in probs.items():
        fpr, tpr, _ = roc_curve(labels, p)
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} (AUC {auc(labels, p):.4f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def score_histogram_figure(probs: Mapping[str, np.ndarray], title: str = "Predicted click probability") -> Figure:
    """Histograms of several models' predicted probabilities on the same rows (shared bins)."""
    fig = _figure(5.5, 3.8)
    ax = fig.add_subplot()
    bins = np.linspace(0.0, 1.0, 51)
    for name, p in probs.items():
        ax.hist(np.asarray(p, dtype=np.float64), bins=bins, histtype="step", lw=1.6, label=name)
    ax.set(xlabel="probability", ylabel="rows", title=title, yscale="log")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def recall_figure(curves: Mapping[str, Mapping[int, float]], title: str = "Recall@K on the held-out queries") -> Figure:
    """Recall@K against K for several retrievers evaluated on the same queries."""
    fig = _figure()
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker="o", lw=1.8, label=name)
    ax.set(xscale="log", xlabel="K", ylabel="recall@K", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ config diff
def config_diff(candidate: Mapping[str, Any] | None, champion: Mapping[str, Any] | None,
                ignore: Sequence[str] = ("output_dir",)) -> list[tuple[str, str | None, str | None]]:
    """The flattened keys whose values differ between two resolved configs: (key, candidate, champion); a key
    absent on one side is None there. Keys starting with an `ignore` prefix are left out."""
    a, b = flatten(candidate or {}), flatten(champion or {})
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not any(k == p or k.startswith(p + ".") for p in ignore)]


# ------------------------------------------------------------------------------------------------ rendering
def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    if math.isnan(v):
        return "NaN"
    return f"{v:+.5f}" if signed else f"{v:.5f}"


def _short(h: str) -> str:
    return h or "unknown"


def _lineage_rows(r: Review) -> list[tuple[str, str, str]]:
    c, p = r.candidate, r.champion
    return [
        ("registry version", str(c.version), str(p.version) if p else "-"),
        ("MLflow run", c.run_id, p.run_id if p else "-"),
        ("prepared-data hash", _short(c.data_hash), _short(p.data_hash) if p else "-"),
        ("feature-spec fingerprint", _short(c.spec_fingerprint), _short(p.spec_fingerprint) if p else "-"),
    ]


def _index_rows(r: Review) -> list[tuple[str, str, str]]:
    c, p = r.candidate.index_recall, r.champion.index_recall if r.champion else None
    if c is None and p is None:
        return []
    keys = sorted(set(c or {}) | set(p or {}))
    return [(k, str((c or {}).get(k, "-")), str((p or {}).get(k, "-"))) for k in keys]


def _decision_line(r: Review) -> str:
    against = f"champion v{r.champion.version}" if r.champion else "no champion (first promotion)"
    return f"{r.decision.upper()}: {r.model} v{r.candidate.version} against {against}, by {r.user}"


def render_markdown(r: Review, plot_files: Mapping[str, str]) -> str:
    """The report as Markdown; `plot_files` maps a figure stem to its path relative to the report."""
    lines = [f"# Promotion review: {r.model} v{r.candidate.version} ({r.kind})", "",
             f"**Decision:** {_decision_line(r)}  ", f"**When:** {r.timestamp}  "]
    if r.reason:
        lines.append(f"**Reason given:** {r.reason}  ")
    for f in r.failures:
        lines.append(f"- gate: {f}")
    lines += ["", "## Metrics on the same held-out data", "",
              f"Held-out data: {', '.join(f'{k} {v}' for k, v in r.heldout.items())}", "",
              "| metric | candidate | champion | delta | allowed delta | within tolerance |",
              "|---|---|---|---|---|---|"]
    for row in r.rows:
        lines.append(f"| {row.name} | {_fmt(row.candidate)} | {_fmt(row.champion)} | {_fmt(row.delta, True)} | "
                     f"{row.allowed} | {'yes' if row.passed else 'NO'} |")
    if plot_files:
        lines += ["", "## Plots", ""]
        lines += [f"![{stem}]({path})" for stem, path in plot_files.items()]
    lines += ["", "## Data lineage", "", "| | candidate | champion |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in _lineage_rows(r)]
    index = _index_rows(r)
    if index:
        lines += ["", "## Index recall (measured at build time)", "", "| figure | candidate | champion |",
                  "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in index]
    if r.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in r.warnings]
    lines += ["", "## Config diff (resolved configs, key by key)", ""]
    if r.champion is None:
        lines.append("No champion to compare with.")
    elif not r.config_diff:
        lines.append("The two runs' resolved configs are identical.")
    else:
        lines += ["| key | candidate | champion |", "|---|---|---|"]
        lines += [f"| `{k}` | {_md_cell(a)} | {_md_cell(b)} |" for k, a, b in r.config_diff]
    return "\n".join(lines) + "\n"


def _md_cell(v: str | None) -> str:
    return "(absent)" if v is None else v.replace("|", "\\|").replace("\n", " ")


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}.fail{color:#b00020;font-weight:600}.ok{color:#1b7f3b}.decision{font-size:1.2em}
img{max-width:48%;margin:.3em}code{background:#f6f6f6}"""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], raw_cells: bool = False) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw_cells else html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(r: Review, pngs: Mapping[str, bytes]) -> str:
    """The report as one self-contained HTML page (plots embedded as base64 PNG)."""
    e = html.escape
    cls = "ok" if r.decision == "accepted" else "fail"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Review {e(r.model)} v{r.candidate.version}"
             f"</title><style>{_CSS}</style></head><body>",
             f"<h1>Promotion review: {e(r.model)} v{r.candidate.version} ({e(r.kind)})</h1>",
             f"<p class='decision {cls}'>{e(_decision_line(r))}</p><p>When: {e(r.timestamp)}</p>"]
    if r.reason:
        parts.append(f"<p>Reason given: {e(r.reason)}</p>")
    if r.failures:
        parts.append("<ul>" + "".join(f"<li class='fail'>gate: {e(f)}</li>" for f in r.failures) + "</ul>")
    parts.append("<h2>Metrics on the same held-out data</h2>")
    parts.append(f"<p>Held-out data: {e(', '.join(f'{k} {v}' for k, v in r.heldout.items()))}</p>")
    rows = [[row.name, _fmt(row.candidate), _fmt(row.champion), _fmt(row.delta, True), e(row.allowed),
             "<span class='ok'>yes</span>" if row.passed else "<span class='fail'>NO</span>"] for row in r.rows]
    parts.append(_table(["metric", "candidate", "champion", "delta", "allowed delta", "within tolerance"], rows,
                        raw_cells=True))
    if pngs:
        parts.append("<h2>Plots</h2><div>")
        parts += [f"<img alt='{e(stem)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                  for stem, png in pngs.items()]
        parts.append("</div>")
    parts.append("<h2>Data lineage</h2>" + _table(["", "candidate", "champion"], _lineage_rows(r)))
    index = _index_rows(r)
    if index:
        parts.append("<h2>Index recall (measured at build time)</h2>"
                     + _table(["figure", "candidate", "champion"], index))
    if r.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in r.warnings) + "</ul>")
    parts.append("<h2>Config diff (resolved configs, key by key)</h2>")
    if r.champion is None:
        parts.append("<p>No champion to compare with.</p>")
    elif not r.config_diff:
        parts.append("<p>The two runs' resolved configs are identical.</p>")
    else:
        parts.append(_table(["key", "candidate", "champion"],
                            [(k, "(absent)" if a is None else a, "(absent)" if b is None else b)
                             for k, a, b in r.config_diff]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_review(review: Review, directory: str | Path) -> dict[str, Path]:
    """Write review.md (+ plots/*.png), review.html and review.json under `directory`; returns their paths."""
    out = Path(directory)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    pngs = {stem: _png(fig) for stem, fig in review.figures.items()}
    files: dict[str, str] = {}
    for stem, png in pngs.items():
        (out / "plots" / f"{stem}.png").write_bytes(png)
        files[stem] = f"plots/{stem}.png"
    paths = {"markdown": out / "review.md", "html": out / "review.html", "json": out / "review.json"}
    paths["markdown"].write_text(render_markdown(review, files))
    paths["html"].write_text(render_html(review, pngs))
    paths["json"].write_text(json.dumps(review.summary(), indent=2, default=_json_default))
    return paths


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return str(v)
