"""The promotion gate: the candidate and the current champion scored on the SAME held-out data.

Why the same data: a candidate's own test metrics come from its own run, possibly on other prepared data or
through other vocabularies; only figures measured side by side on one set of rows say which model is better.
- rankers: the scenario's raw test rows (rebuilt from the source with `feature_store.prepare.assemble_events`),
  scored through each bundle's own feature spec; AUC and logloss.
- retrievers: recall@K of each bundle's towers on the test queries of the scenario's prepared data.
A metric worse than the champion's beyond `registry.gate` refuses the candidate (`MetricRow.failure`); a champion
that cannot be evaluated at all is a blocker (only `--force` with a reason gets past it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.registry.figures import recall_figure, score_histogram_figure
from serving.registry.settings import Kind, RegistrySettings
from serving.registry.store import RegistryError
from training.common.plots import plot_roc

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.figure import Figure

SCORE_CHUNK = 1 << 16  # raw rows scored per Ranker.score call


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

    def to_dict(self) -> dict[str, Any]:
        """The row as plain data, verdict included (review.json, the CLI's result, the report templates)."""
        return {"name": self.name, "candidate": self.candidate, "champion": self.champion, "delta": self.delta,
                "tolerance": self.tolerance, "allowed": self.allowed, "passed": self.passed}


@dataclass
class GateOutcome:
    """What the gate measured for one promotion attempt.

    Attributes:
        metrics: per side ("candidate", "champion" when there is one) the figures measured on the held-out data.
        rows: the gate metrics side by side with their verdicts.
        heldout: what the held-out data was (shown in the review).
        figures: plots of both sides, by file stem.
        blockers: reasons the gate could not compare at all (refuse unless forced).
        index_recall: retrievers: per side the recall its index measured at build time.
    """

    metrics: dict[str, dict[str, float]]
    rows: list[MetricRow]
    heldout: dict[str, Any]
    figures: dict[str, Figure] = field(default_factory=dict)
    blockers: list[str] = field(default_factory=list)
    index_recall: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failures(self) -> list[str]:
        """Why the gate refuses (empty: it accepts): the blockers, then each metric beyond its tolerance."""
        return self.blockers + [f for f in (r.failure() for r in self.rows) if f is not None]


def heldout_rows(settings: RegistrySettings) -> pa.Table:
    """The scenario's held-out test rows as RAW rows (joined features before any transform), so that each ranker
    scores them through its own feature spec."""
    import pyarrow as pa

    from feature_store.prepare import assemble_events, layout
    from feature_store.readers import read_scenario_source
    from feature_store.split import SPLITS

    fs = settings.feature_store
    raw = read_scenario_source(fs, layout(fs).raw)
    assembled = assemble_events(fs, raw)
    rows = assembled.table.filter(pa.array(assembled.codes == SPLITS.index("test")))
    if rows.num_rows == 0:
        raise RegistryError(f"the test split of scenario '{settings.name}' is empty: the gate has no held-out rows; "
                            f"raise split.test_fraction")
    return rows


def _score(ranker: Any, rows: pa.Table) -> np.ndarray:
    parts = [ranker.score(rows.slice(i, SCORE_CHUNK)) for i in range(0, rows.num_rows, SCORE_CHUNK)]
    return np.concatenate(parts).astype(np.float64)


def gate_rankers(settings: RegistrySettings, dirs: dict[str, Path], titles: dict[str, str]) -> GateOutcome:
    """AUC and logloss of each bundle (keys of `dirs`: candidate, champion) on the same raw held-out rows."""
    from training.common.metrics import auc, logloss
    from training.ranking.bundle import load_bundle

    gate = settings.gate
    rows = heldout_rows(settings)
    labels = rows.column(settings.label).to_numpy(zero_copy_only=False).astype(np.float64)
    n_pos = int((labels == 1).sum())
    if n_pos == 0 or n_pos == len(labels):
        raise RegistryError(f"the held-out rows of scenario '{settings.name}' hold one class only ({n_pos} positives "
                            f"of {len(labels)}): AUC is undefined, the gate cannot compare; raise split.test_fraction")
    probs = {side: _score(load_bundle(d), rows) for side, d in dirs.items()}
    metrics = {side: {"auc": auc(labels, p), "logloss": logloss(labels, p)} for side, p in probs.items()}
    champ = metrics.get("champion")
    table = [MetricRow("auc", metrics["candidate"]["auc"], champ["auc"] if champ else None, True, gate.auc_tolerance),
             MetricRow("logloss", metrics["candidate"]["logloss"], champ["logloss"] if champ else None, False,
                       gate.logloss_tolerance)]
    named = {titles[side]: p for side, p in probs.items()}
    figures = {"roc": plot_roc(labels, named, title="ROC on the held-out rows"),
               "scores": score_histogram_figure(named)}
    heldout = {"rows": len(labels), "positives": n_pos, "split": "test (raw rows, each model's own spec)"}
    return GateOutcome(metrics, table, heldout, figures)


def gate_retrievers(settings: RegistrySettings, dirs: dict[str, Path], titles: dict[str, str]) -> GateOutcome:
    """recall@K of each bundle's towers on the test queries of the scenario's prepared data."""
    from training.retrieval.bundle import load_retriever

    gate = settings.gate
    prepared = settings.prepared_dir
    ks = sorted({10, 20, 50, 100, gate.recall_k})
    key = f"recall@{gate.recall_k}"
    metrics: dict[str, dict[str, float]] = {}
    recalls: dict[str, dict[str, Any]] = {}
    blockers: list[str] = []
    for side, d in dirs.items():
        retriever = load_retriever(d)
        recalls[side] = retriever.index_recall
        try:
            metrics[side] = retriever.evaluate(prepared, ks)
        except (ValueError, FileNotFoundError) as exc:
            if side == "candidate":
                raise RegistryError(f"the candidate cannot be evaluated on {prepared}: {exc}") from None
            blockers.append(f"the champion cannot be evaluated on the candidate's held-out data ({exc}); the gate "
                            f"cannot compare them: promote with --force and a --reason to replace it")
    champ = metrics.get("champion")
    table = [MetricRow(key, float(metrics["candidate"][key]), float(champ[key]) if champ else None, True,
                       gate.recall_tolerance)]
    curves = {titles[side]: {k: float(m[f"recall@{k}"]) for k in ks if f"recall@{k}" in m}
              for side, m in metrics.items()}
    figures = {"recall_at_k": recall_figure(curves)}
    heldout = {"data": "the test queries of the prepared data (full corpus, seen items excluded)",
               "ks": ",".join(map(str, ks))}
    return GateOutcome(metrics, table, heldout, figures, blockers, recalls)


def run_gate(settings: RegistrySettings, kind: Kind, dirs: dict[str, Path], titles: dict[str, str]) -> GateOutcome:
    """The gate of `kind` on downloaded bundles (`dirs`: candidate and, when there is one, champion)."""
    return gate_rankers(settings, dirs, titles) if kind == "ranker" else gate_retrievers(settings, dirs, titles)
