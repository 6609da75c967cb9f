"""The review report of a promotion attempt: what a reviewer reads before (or after) a model becomes champion.

Every attempt (accepted, refused or forced) writes one: the gate metrics of the candidate and the champion side
by side (with deltas and the tolerance that decided), plots of both models on the same held-out data, the data
lineage (prepared-data hash and feature-spec fingerprint of each), the key-by-key diff of the two runs' resolved
configs, the index recall (retrievers) and the decision with who and why.

This module owns the report's data (`Review`) and turns it into one plain context (`review_context`); the layout
is in the templates `review.md.j2` / `review.html.j2` of `serving.reports`, rendered from that same context so the
two formats cannot disagree. `write_review` writes `review.md` (plots as PNG files next to it), `review.html`
(self-contained: plots embedded as base64 PNG) and `review.json` (the same data for machines).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.registry.figures import png
from serving.registry.gate import MetricRow
from serving.reports import render_report
from training.common.tracking import flatten

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT = "review"  # templates review.md.j2 and review.html.j2


@dataclass(frozen=True)
class Side:
    """One model of the comparison: its registry version, run, lineage and figures on the held-out data."""

    version: int
    run_id: str
    data_hash: str
    spec_fingerprint: str
    metrics: dict[str, float]
    index_recall: dict[str, Any] | None = None


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
    online: dict[str, Any] | None = None  # an experiment's evidence (`promote --experiment`), shown beside the gate

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
            "metrics": [r.to_dict() for r in self.rows],
            "heldout": self.heldout,
            "config_diff": [{"key": k, "candidate": a, "champion": b} for k, a, b in self.config_diff],
            "warnings": self.warnings,
            "online": self.online,
        }


def config_diff(candidate: Mapping[str, Any] | None, champion: Mapping[str, Any] | None,
                ignore: Sequence[str] = ("output_dir",)) -> list[tuple[str, str | None, str | None]]:
    """The flattened keys whose values differ between two resolved configs: (key, candidate, champion); a key
    absent on one side is None there. Keys starting with an `ignore` prefix are left out."""
    a, b = flatten(candidate or {}), flatten(champion or {})
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k), b.get(k)) for k in keys
            if a.get(k) != b.get(k) and not any(k == p or k.startswith(p + ".") for p in ignore)]


# ------------------------------------------------------------------------------------------------ context
def _known(h: str) -> str:
    return h or "unknown"


def _lineage_rows(r: Review) -> list[tuple[str, str, str]]:
    c, p = r.candidate, r.champion
    return [
        ("registry version", str(c.version), str(p.version) if p else "-"),
        ("MLflow run", c.run_id, p.run_id if p else "-"),
        ("prepared-data hash", _known(c.data_hash), _known(p.data_hash) if p else "-"),
        ("feature-spec fingerprint", _known(c.spec_fingerprint), _known(p.spec_fingerprint) if p else "-"),
    ]


def _index_rows(r: Review) -> list[tuple[str, str, str]]:
    c, p = r.candidate.index_recall, r.champion.index_recall if r.champion else None
    if c is None and p is None:
        return []
    keys = sorted(set(c or {}) | set(p or {}))
    return [(k, str((c or {}).get(k, "-")), str((p or {}).get(k, "-"))) for k in keys]


def decision_line(r: Review) -> str:
    """The one line that says what happened: decision, model version, against what, by whom."""
    against = f"champion v{r.champion.version}" if r.champion else "no champion (first promotion)"
    return f"{r.decision.upper()}: {r.model} v{r.candidate.version} against {against}, by {r.user}"


def review_context(r: Review, plots: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The context both review templates render: plain data only (strings, numbers, lists, dicts).

    `plots` holds one mapping per figure: `stem`, `path` (relative to the report, for Markdown) and `png` (the
    bytes, embedded by the HTML)."""
    return {
        "model": r.model,
        "kind": r.kind,
        "version": r.candidate.version,
        "timestamp": r.timestamp,
        "decision": r.decision,
        "decision_line": decision_line(r),
        "user": r.user,
        "reason": r.reason,
        "failures": r.failures,
        "heldout": ", ".join(f"{k} {v}" for k, v in r.heldout.items()),
        "metrics": [row.to_dict() for row in r.rows],
        "plots": list(plots),
        "lineage": _lineage_rows(r),
        "index_recall": _index_rows(r),
        "warnings": list(r.warnings),
        "has_champion": r.champion is not None,
        "config_diff": list(r.config_diff),
        "online": r.online,
    }


def write_review(review: Review, directory: str | Path) -> dict[str, Path]:
    """Write review.md (+ plots/*.png), review.html and review.json under `directory`; returns their paths."""
    out = Path(directory)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots = []
    for stem, fig in review.figures.items():
        data = png(fig)
        (out / "plots" / f"{stem}.png").write_bytes(data)
        plots.append({"stem": stem, "path": f"plots/{stem}.png", "png": data})
    text = render_report(REPORT, review_context(review, plots))
    paths = {"markdown": out / "review.md", "html": out / "review.html", "json": out / "review.json"}
    paths["markdown"].write_text(text["md"])
    paths["html"].write_text(text["html"])
    paths["json"].write_text(json.dumps(review.summary(), indent=2, default=_json_default))
    return paths


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return str(v)
