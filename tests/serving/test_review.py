"""The promotion review report rendered from its templates, without MLflow or training: user-supplied text is
escaped in the HTML, the Markdown and the HTML show the same figures, plots are embedded, and the shared
renderer's filters format figures the same way for every report."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pytest

from serving.registry.figures import recall_figure
from serving.registry.gate import MetricRow
from serving.registry.review import Review, Side, write_review
from serving.reports import render, render_report
from serving.reports.render import delta, md_cell, num

SCRIPT = "<script>alert('owned')</script>"


def make_review(reason: str | None = "campaign hotfix", champion: bool = True) -> Review:
    """A forced ranker promotion with a champion, a config diff, a warning and one plot."""
    rows = [MetricRow("auc", 0.71234, 0.72345 if champion else None, True, 0.002),
            MetricRow("logloss", 0.51, 0.5 if champion else None, False, 0.005)]
    candidate = Side(3, "run-candidate", "hash-candidate", "spec-candidate", {"auc": 0.71234, "logloss": 0.51})
    champ = Side(2, "run-champion", "hash-champion", "spec-champion", {"auc": 0.72345, "logloss": 0.5})
    return Review("demo-ranker", "ranker", "2024-05-01T12:00:00+00:00", candidate, champ if champion else None, rows,
                  "forced", "alice", reason, {"rows": 1000, "positives": 120},
                  config_diff=[("train.model", "lr", "dcnv2"), ("train.extra", None, "a|b")],
                  warnings=["candidate v3 was trained on other prepared data"],
                  figures={"recall_at_k": recall_figure({"candidate v3": {10: 0.1, 50: 0.3}})})


def _markdown_metrics(md: str) -> list[list[str]]:
    """The metric table's data rows of review.md, cell by cell."""
    lines = md.split("## Metrics on the same held-out data", 1)[1].split("\n## ", 1)[0].splitlines()
    rows = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| metric ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]


def _html_metrics(page: str) -> list[list[str]]:
    """The metric table's data rows of review.html, cell by cell, tags stripped and entities decoded."""
    section = page.split("<h2>Metrics on the same held-out data</h2>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section, flags=re.S)[1:]  # the first row is the header
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td>(.*?)</td>", r, flags=re.S)]
            for r in rows]


def test_review_html_escapes_user_supplied_reason(tmp_path: Path) -> None:
    paths = write_review(make_review(reason=SCRIPT), tmp_path)
    page = paths["html"].read_text()
    assert "<script" not in page
    assert "Reason given: &lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in page
    assert json.loads(paths["json"].read_text())["reason"] == SCRIPT  # the record keeps what was typed


def test_review_markdown_and_html_carry_the_same_metrics(tmp_path: Path) -> None:
    paths = write_review(make_review(), tmp_path)
    md_rows = _markdown_metrics(paths["markdown"].read_text())
    html_rows = _html_metrics(paths["html"].read_text())
    assert md_rows == html_rows
    assert md_rows == [["auc", "0.71234", "0.72345", "-0.01111", ">= -0.002", "NO"],
                       ["logloss", "0.51000", "0.50000", "+0.01000", "<= +0.005", "NO"]]
    summary = json.loads(paths["json"].read_text())
    assert [m["passed"] for m in summary["metrics"]] == [False, False]


def test_review_html_embeds_its_plots_and_markdown_links_the_files(tmp_path: Path) -> None:
    paths = write_review(make_review(), tmp_path)
    page = paths["html"].read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 1 and base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![recall_at_k](plots/recall_at_k.png)" in paths["markdown"].read_text()
    assert (tmp_path / "plots" / "recall_at_k.png").read_bytes()[:4] == b"\x89PNG"


def test_review_config_diff_marks_absent_keys_and_escapes_markdown_pipes(tmp_path: Path) -> None:
    paths = write_review(make_review(), tmp_path)
    md = paths["markdown"].read_text()
    assert "| `train.model` | lr | dcnv2 |" in md
    assert "| `train.extra` | (absent) | a\\|b |" in md
    assert "<td>train.extra</td><td>(absent)</td><td>a|b</td>" in paths["html"].read_text()


def test_first_promotion_review_says_there_is_no_champion(tmp_path: Path) -> None:
    paths = write_review(make_review(champion=False), tmp_path)
    md = paths["markdown"].read_text()
    assert "against no champion (first promotion)" in md and "No champion to compare with." in md
    assert _markdown_metrics(md)[0] == ["auc", "0.71234", "-", "-", ">= -0.002", "yes"]


@pytest.mark.parametrize(("value", "plain", "signed"), [(None, "-", "-"), (float("nan"), "NaN", "NaN"),
                                                        (0.5, "0.50000", "+0.50000"), (-0.25, "-0.25000", "-0.25000")])
def test_number_filters_show_missing_and_undefined_figures_as_such(value: float | None, plain: str,
                                                                   signed: str) -> None:
    assert (num(value), delta(value)) == (plain, signed)


def test_markdown_cells_flatten_newlines_and_name_absent_values() -> None:
    assert md_cell("a|b\nc") == "a\\|b c" and md_cell(None) == "(absent)"


def test_a_context_missing_a_key_fails_instead_of_rendering_an_empty_cell() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render_report("review", {"model": "m"})
    with pytest.raises(jinja2.TemplateNotFound):
        render("no_such_report.md.j2", {})


def test_a_review_with_online_evidence_shows_it_beside_the_offline_gate(tmp_path: Path) -> None:
    review = make_review()
    review.online = {"experiment": "ranker-v5", "arm": "challenger", "control": "champion", "primary": "ctr",
                     "decision": "challenger beats champion on ctr by +0.01000", "trustworthy": True,
                     "report": "runs/demo/experiments/ranker-v5/report.html",
                     "metrics": [{"metric": "ctr", "control": 0.1, "treatment": 0.11, "difference": 0.01,
                                  "ci_low": 0.005, "ci_high": 0.015, "always_valid_p_holm": 0.001,
                                  "always_valid_low": 0.002, "always_valid_high": 0.018}]}
    paths = write_review(review, tmp_path)
    for key in ("markdown", "html"):
        text = paths[key].read_text()
        assert "Online evidence: experiment ranker-v5" in text and "challenger beats champion" in text
        assert "+0.01000" in text and "Metrics on the same held-out data" in text
    assert json.loads(paths["json"].read_text())["online"]["experiment"] == "ranker-v5"
