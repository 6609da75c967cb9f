"""Experiments without a server: the config's refusals, sticky hash assignment, the state store's refusals, the
join of outcomes to exposures and the analysis on logs whose truth is known, Thompson shares and the exposure
queue's behaviour while the bus is away."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from feature_store.events.contract import event_schema
from serving.config import ExperimentConfig, ExperimentsConfig
from serving.experiments import analysis
from serving.experiments.assign import pick, unit_point, unit_points
from serving.experiments.live import ExposureLog, exposure_events
from serving.experiments.manage import thompson_shares
from serving.experiments.store import ArmVersions, ExperimentStateError, ExperimentStore

T0 = 1_780_000_000.0


def definition(**kw: Any) -> ExperimentConfig:
    base: dict[str, Any] = {"arms": [{"name": "control", "share": 0.5}, {"name": "challenger", "share": 0.5,
                                                                         "ranker": "2"}]}
    return ExperimentConfig.model_validate({**base, **kw})


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("arms", "allocation", "message"), [
    ([{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}], "fixed", "sum to 1"),
    ([{"name": "a", "share": 0.5}, {"name": "b"}], "fixed", "needs a share on every arm"),
    ([{"name": "a", "share": 0.5}, {"name": "a", "share": 0.5}], "fixed", "repeat a name"),
    ([{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "ranker": "latest"}], "fixed",
     "neither a version number"),
])
def test_a_bad_experiment_definition_is_refused_naming_what_to_fix(arms: list[dict[str, Any]], allocation: str,
                                                                    message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExperimentConfig.model_validate({"arms": arms, "allocation": {"type": allocation}})


def test_unknown_keys_in_an_experiment_are_errors() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ExperimentConfig.model_validate({"arms": [{"name": "a", "share": 1.0, "weight": 3}, {"name": "b",
                                                                                             "share": 0.0}]})


def test_thompson_arms_may_omit_shares_and_start_equal() -> None:
    d = ExperimentConfig.model_validate({"arms": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                                         "allocation": {"type": "thompson"}})
    assert d.initial_shares() == pytest.approx([1 / 3] * 3)


def test_the_scenario_refuses_an_exposure_type_that_is_positive_or_unknown() -> None:
    from feature_store.config import ConfigError
    from recforge.config import load
    from tests.conftest import ROOT

    with pytest.raises(ConfigError, match="positive_types"):
        load(ROOT / "configs" / "demo.yaml", ["experiments.exposure_type=click"])
    with pytest.raises(ConfigError, match=r"not in events\.types"):
        load(ROOT / "configs" / "demo.yaml", ["experiments.exposure_type=view"])
    load(ROOT / "configs" / "demo.yaml", ["experiments.exposure_type=view", "experiments.definitions={}"])


# ------------------------------------------------------------------------------------------------ assignment
def test_assignment_is_sticky_and_ids_as_text_or_int_are_the_same_user() -> None:
    assert unit_point("s", 12) == unit_point("s", "12") == unit_point("s", 12)
    assert unit_point("s", 12) != unit_point("t", 12)  # the salt reshuffles
    assert 0 <= unit_point("s", "no-such-user") < 1


def test_assignment_splits_users_by_the_shares() -> None:
    from scipy.stats import chisquare

    points = unit_points("exp", range(40_000))
    arms = pick(points, [0.2, 0.3, 0.5])
    counts = np.bincount(arms, minlength=3)
    assert chisquare(counts, np.array([0.2, 0.3, 0.5]) * len(points)).pvalue > 0.001
    assert pick(points, [0.5, 0.0, 0.5]).tolist().count(1) == 0  # a stopped arm gets nobody


def test_changing_shares_moves_only_the_users_between_the_moved_boundaries() -> None:
    points = unit_points("exp", range(20_000))
    before, after = pick(points, [0.5, 0.5]), pick(points, [0.6, 0.4])
    moved = before != after
    assert np.all((points[moved] >= 0.5) & (points[moved] < 0.6))
    assert 0.08 < moved.mean() < 0.12


# ------------------------------------------------------------------------------------------------ store
def arms() -> list[ArmVersions]:
    return [ArmVersions("control", "model", "1", "1"), ArmVersions("challenger", "model", "2", "1")]


def test_the_store_refuses_a_used_name_an_overlapping_slice_and_a_second_stop(tmp_path: Path) -> None:
    store = ExperimentStore(tmp_path / "experiments.db")
    store.start(definition(traffic={"offset": 0.0, "share": 0.5}), "a", arms(), 100)
    with pytest.raises(ExperimentStateError, match="already runs"):
        store.start(definition(), "a", arms(), 100)
    with pytest.raises(ExperimentStateError, match=r"users \[0.4, 1\).*'a' takes \[0, 0.5\)"):
        store.start(definition(traffic={"offset": 0.4, "share": 0.6}), "b", arms(), 100)
    store.start(definition(traffic={"offset": 0.5, "share": 0.5}), "b", arms(), 100)  # disjoint: fine
    assert [s.name for s in store.running()] == ["a", "b"]
    store.stop("a", "done")
    with pytest.raises(ExperimentStateError, match="already stopped"):
        store.stop("a", "again")
    with pytest.raises(ExperimentStateError, match="no experiment 'zzz' was started"):
        store.get("zzz")
    store.allocate("b", [0.9, 0.1], "thompson")
    store.allocate("a", [0.1, 0.9], "ignored: a is stopped")
    assert store.get("b").shares == (0.9, 0.1)
    assert store.get("a").shares == (0.5, 0.5)


# ------------------------------------------------------------------------------------------------ analysis
def log_table(rows: list[dict[str, Any]]) -> pa.Table:
    schema = event_schema("int")
    cols: dict[str, list[Any]] = {f.name: [] for f in schema}
    for r in rows:
        for f in schema:
            v = r.get(f.name)
            if f.name == "context" and v is not None:
                v = json.dumps(v)
            cols[f.name].append(v)
    cols["ts_ms"] = [int(r["ts"] * 1000) for r in rows]
    cols["ts"] = [int(r["ts"]) for r in rows]
    return pa.table(cols, schema=schema)


def simulate_log(state: Any, ctr: dict[str, float], users: int, seed: int = 0, drop: dict[str, float] | None = None,
                 tag_share: float = 1.0) -> list[dict[str, Any]]:
    """Users assigned by the real hash; one or two exposures each; clicks at the arm's true rate; a share of the
    clicks carry the exposure_id, the others are matched by the attribution window."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    names = state.arm_names
    salt = state.definition.salt or state.name
    for u in range(users):
        arm = names[int(pick(unit_point(salt, u), state.shares))]
        if drop and rng.random() < drop.get(arm, 0.0):
            continue  # this user's exposures were lost
        for k in range(1 + int(rng.random() < 0.5)):
            ts = state.started_at + 10 + u + 0.1 * k
            eid = f"x{u}-{k}"
            item = int(rng.integers(100))
            ctx = {"experiment": state.name, "arm": arm}
            if k == 0:  # the serving shape: the shown items listed in context.items (one here)
                ctx["items"] = json.dumps([item])
            rows.append({"event_id": f"{eid}.1", "ts": ts, "user_id": u, "item_id": item, "type": "impression",
                         "exposure_id": eid, "context": ctx})
            if rng.random() < ctr[arm]:
                tagged = rng.random() < tag_share
                rows.append({"event_id": f"c{eid}", "ts": ts + 5, "user_id": u, "item_id": item, "type": "click",
                             "exposure_id": eid if tagged else None})
    return rows


def started(tmp_path: Path, d: ExperimentConfig | None = None) -> Any:
    store = ExperimentStore(tmp_path / "experiments.db")
    return store.start(d or definition(design={"baseline": 0.1, "mde": 0.02}), "exp", arms(), 100, now=T0)


def run(state: Any, rows: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    joined = analysis.join(state, log_table(rows), ExperimentsConfig(), ["purchase"], now=now or T0 + 1e6)
    return analysis.analyze(state, joined, looks=10)


def test_a_challenger_with_a_higher_true_ctr_wins_and_its_rates_are_recovered(tmp_path: Path) -> None:
    state = started(tmp_path)
    res = run(state, simulate_log(state, {"control": 0.10, "challenger": 0.16}, 6000, tag_share=0.6))
    arms_ = {a["arm"]: a for a in res["arms"]}
    for arm, truth in (("control", 0.10), ("challenger", 0.16)):
        ci = arms_[arm]["ctr"]
        assert ci["low"] < truth < ci["high"], (arm, ci)
    assert res["trustworthy"] and not res["srm"]["mismatch"]
    assert res["winner"] == "challenger", res["decision"]
    c = res["comparisons"]["ctr"]["challenger"]
    assert c["always_valid_p"] >= c["p_value"]  # the price of looking any time
    assert res["counts"]["outcomes_by_window"] > 0 and res["counts"]["outcomes_by_exposure_id"] > 0


def test_an_aa_experiment_has_no_winner(tmp_path: Path) -> None:
    state = started(tmp_path)
    res = run(state, simulate_log(state, {"control": 0.1, "challenger": 0.1}, 4000))
    assert res["winner"] is None and "no significant difference" in res["decision"]


def test_losing_a_share_of_one_arms_exposures_is_flagged_as_untrustworthy(tmp_path: Path) -> None:
    state = started(tmp_path)
    res = run(state, simulate_log(state, {"control": 0.1, "challenger": 0.2}, 20000, drop={"challenger": 0.08}))
    assert res["srm"]["mismatch"] and not res["trustworthy"]
    assert res["winner"] is None and res["decision"].startswith("untrustworthy")


def test_outcomes_for_unknown_exposures_and_after_the_window_are_counted_not_joined(tmp_path: Path) -> None:
    state = started(tmp_path, definition(attribution_window_s=60))
    rows = simulate_log(state, {"control": 0.0, "challenger": 0.0}, 200)
    rows.append({"event_id": "u1", "ts": T0 + 50, "user_id": 3, "item_id": 1, "type": "click",
                 "exposure_id": "never-served"})
    first = next(r for r in rows if r["type"] == "impression")
    rows.append({"event_id": "late", "ts": first["ts"] + 61, "user_id": first["user_id"],
                 "item_id": first["item_id"], "type": "click"})  # outside the 60 s window: not credited
    res = run(state, rows)
    assert res["counts"]["outcomes_unknown_exposure"] == 1
    assert res["counts"]["outcomes_by_window"] == 0
    assert sum(a["clicks"] for a in res["arms"]) == 0


def test_events_after_the_stop_plus_the_window_are_counted_and_left_out(tmp_path: Path) -> None:
    store = ExperimentStore(tmp_path / "experiments.db")
    state = store.start(definition(attribution_window_s=60), "exp", arms(), 100, now=T0)
    rows = simulate_log(state, {"control": 0.5, "challenger": 0.5}, 100)
    state = store.stop("exp", "test", now=T0 + 200)
    rows.append({"event_id": "after", "ts": T0 + 500, "user_id": 1, "item_id": 1, "type": "click",
                 "exposure_id": rows[0]["exposure_id"]})
    res = run(state, rows)
    assert res["counts"]["outcomes_after_window"] == 1
    assert res["experiment"]["status"] == "stopped"


def test_revenue_per_user_uses_cuped_when_the_log_has_a_pre_period(tmp_path: Path) -> None:
    d = definition(primary="revenue_per_user", pre_period_s=86400.0)
    state = started(tmp_path, d)
    rng = np.random.default_rng(3)
    rows = []
    for u in range(3000):
        arm = state.arm_names[int(pick(unit_point("exp", u), state.shares))]
        spend = rng.gamma(2.0, 10.0)  # a user's spending level, before and during
        rows.append({"event_id": f"pre{u}", "ts": T0 - 3600, "user_id": u, "item_id": 1, "type": "purchase",
                     "value": spend * rng.uniform(0.8, 1.2)})
        eid = f"x{u}"
        rows.append({"event_id": f"{eid}.1", "ts": T0 + 10, "user_id": u, "item_id": 2, "type": "impression",
                     "exposure_id": eid, "context": {"experiment": "exp", "arm": arm}})
        rows.append({"event_id": f"p{u}", "ts": T0 + 20, "user_id": u, "item_id": 2, "type": "purchase",
                     "value": spend * rng.uniform(0.8, 1.2) * (1.1 if arm == "challenger" else 1.0),
                     "exposure_id": eid})
    res = run(state, rows)
    c = res["comparisons"]["revenue_per_user"]["challenger"]
    assert c["cuped"]
    raw = analysis.compare(analysis.per_user(analysis.join(state, log_table(rows), ExperimentsConfig(),
                                                           ["purchase"], now=T0 + 1e5).exposures),
                           "control", "challenger", "revenue_per_user", 0.05)[0]
    assert (c["ci_high"] - c["ci_low"]) < 0.5 * (raw.ci_high - raw.ci_low)  # the pre-period explains most variance


# ------------------------------------------------------------------------------------------------ bandit
def test_thompson_gives_the_better_arm_most_traffic_and_every_live_arm_its_minimum() -> None:
    rng = np.random.default_rng(0)
    shares = thompson_shares(np.array([100.0, 150.0, 0.0]), np.array([1000.0, 1000.0, 10.0]), prior=(1, 1),
                             min_share=0.05, live=np.array([True, True, False]), draws=5000, rng=rng)
    assert shares[2] == 0 and shares.sum() == pytest.approx(1.0)
    assert shares[1] > 0.9 and shares[0] >= 0.05 - 1e-12


# ------------------------------------------------------------------------------------------------ exposures
def test_exposures_wait_while_the_bus_is_away_and_overflow_is_counted_not_silent() -> None:
    up = threading.Event()
    published: list[dict[str, Any]] = []

    def publish(events: list[dict[str, Any]]) -> int:
        if not up.is_set():
            raise ConnectionError("bus away")
        published.extend(events)
        return 0

    log = ExposureLog(publish, max_pending=30, batch=7, idle_s=0.05)
    from serving.experiments.live import Route

    route = Route("exp", "challenger", "model", "2", "1")
    for i in range(40):
        log.put(exposure_events(f"e{i}", 1, [10, 11, 12, 13], route, {"ranker": "2"}, "impression", time.time()))
    time.sleep(0.3)
    assert log.status()["dropped"] == 10 and log.status()["pending"] == 30
    assert "bus away" in log.status()["last_error"]
    up.set()
    assert log.flush(10.0)
    log.stop()
    assert len(published) == 30 and log.status()["published"] == 30
    assert published[-1]["context"] == {"experiment": "exp", "arm": "challenger", "ranker_version": "2",
                                        "items": "[10, 11, 12, 13]", "offset": 0}
    assert published[-1]["event_id"] == published[-1]["exposure_id"] == "e39"


def test_a_long_list_of_shown_items_is_split_over_events_within_the_contracts_length() -> None:
    items = [f"item-{i:04d}" for i in range(100)]
    events = exposure_events("x", 1, items, None, {}, "impression", T0, max_value_length=200)
    assert len(events) > 1 and all(len(e["context"]["items"]) <= 200 for e in events)
    assert [i for e in events for i in json.loads(e["context"]["items"])] == items
    assert [e["context"]["offset"] for e in events][:2] == [0, len(json.loads(events[0]["context"]["items"]))]
    assert exposure_events("x", 1, [], None, {}, "impression", T0) == []


# ------------------------------------------------------------------------------------------------ report
def test_the_report_shows_the_decision_the_plots_and_an_srm_warning(tmp_path: Path) -> None:
    from serving.experiments.report import write_report

    state = started(tmp_path)
    res = run(state, simulate_log(state, {"control": 0.1, "challenger": 0.2}, 20000, drop={"challenger": 0.08}))
    paths = write_report(None, res, tmp_path / "report", now=T0 + 1e5, log_to_mlflow=False)  # type: ignore[arg-type]
    html = Path(paths["html"]).read_text()
    md = Path(paths["markdown"]).read_text()
    for text in (html, md):
        assert "UNTRUSTWORTHY: sample ratio mismatch" in text and "Decision:" in text
    assert html.count("data:image/png;base64,") == 3
    assert {p.name for p in (tmp_path / "report" / "plots").iterdir()} == {"cumulative_ctr.png", "allocation.png",
                                                                           "sample_ratio.png"}
    assert json.loads(Path(paths["json"]).read_text())["trustworthy"] is False


def test_an_experiment_without_any_logged_event_yet_has_an_empty_result(tmp_path: Path) -> None:
    state = started(tmp_path)
    res = run(state, [{"event_id": "other", "ts": T0 + 5, "user_id": 1, "item_id": 1, "type": "click"}])
    assert [a["exposures"] for a in res["arms"]] == [0, 0] and res["srm"] is None and res["winner"] is None


def test_an_arm_without_users_yet_gives_no_comparison_instead_of_failing(tmp_path: Path) -> None:
    state = started(tmp_path)
    rows = [r for r in simulate_log(state, {"control": 0.2, "challenger": 0.2}, 300)
            if (r.get("context") or {}).get("arm", "control") == "control"]
    res = run(state, rows)
    c = res["comparisons"]["ctr"]["challenger"]
    assert math.isnan(c["difference"]) and res["winner"] is None
    assert {a["arm"]: a["users"] for a in res["arms"]}["challenger"] == 0


# ------------------------------------------------------------------------------------------------ CLI
def test_the_experiment_commands_answer_bad_input_with_a_message_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recforge.cli import main
    from tests.conftest import ROOT

    cfg = ["-c", str(ROOT / "configs" / "demo.yaml"), "--output-dir", str(tmp_path)]
    assert main(["experiment", "list", *cfg]) == 0
    assert "ranker-vs-popular" in capsys.readouterr().out and not (tmp_path / "experiments.db").exists()
    assert main(["experiment", "status", "nope", *cfg]) == 2
    assert "no experiment 'nope' was started" in capsys.readouterr().err
    assert main(["experiment", "start", *cfg]) == 2
    assert "needs the experiment's NAME (ranker-vs-popular)" in capsys.readouterr().err
    assert main(["experiment", "start", "nope", *cfg]) == 2
    assert "no experiment 'nope' in experiments.definitions (defined: ranker-vs-popular)" in capsys.readouterr().err
    assert main(["promote", "--experiment", "nope", "--version", "3", *cfg]) == 2
    assert "leave out --model and --version" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ monitor, promote
def scenario_app(tmp_path: Path, allocation: str = "fixed") -> Any:
    from recforge.config import app_settings, load
    from tests.conftest import ROOT

    spec = json.dumps({"arms": [{"name": "control", "share": 0.5}, {"name": "challenger", "share": 0.5,
                                                                     "ranker": "2"}],
                       "allocation": {"type": allocation, "min_share": 0.1}, "guardrails": [{"metric": "ctr"}],
                       "design": {"baseline": 0.1, "mde": 0.02}})
    cfg = load(ROOT / "configs" / "demo.yaml", [f"output_dir={tmp_path}", f"experiments.definitions.exp={spec}"])
    return app_settings(cfg)


def start_logged(app: Any, ctr: dict[str, float], users: int) -> Any:
    """The experiment started in the app's store, its simulated log written where the analysis reads it."""
    import pyarrow.parquet as pq

    from feature_store.events.scenario import log_dir
    from serving.experiments.manage import store_of

    state = store_of(app).start(app.experiments.definitions["exp"], "exp", arms(), 100, now=T0)
    day = log_dir(app.feature_store) / "date=2026-05-28"
    day.mkdir(parents=True)
    pq.write_table(log_table(simulate_log(state, ctr, users)), day / "part-1-1.parquet")
    return state


def test_a_challenger_worse_on_a_guardrail_loses_its_traffic_and_the_report_says_why(tmp_path: Path) -> None:
    from serving.experiments.manage import analyze_state, monitor_step, store_of

    app = scenario_app(tmp_path)
    state = start_logged(app, {"control": 0.2, "challenger": 0.08}, 3000)
    actions = monitor_step(app, state, analyze_state(app, state, now=T0 + 1e5, looks=0), now=T0 + 1e5)
    assert len(actions) == 1 and actions[0]["shares"] == {"control": 1.0, "challenger": 0.0}
    after = store_of(app).get("exp")
    assert after.shares == (1.0, 0.0) and after.allocations[-1].reason.startswith("guardrail: challenger is worse")
    res = analyze_state(app, after, now=T0 + 1e5)
    assert "receives no more traffic" in res["allocations"][-1]["reason"]


def test_thompson_moves_traffic_to_the_better_arm_and_keeps_the_minimum_share(tmp_path: Path) -> None:
    from serving.experiments.manage import analyze_state, monitor_step, store_of

    app = scenario_app(tmp_path, "thompson")
    state = start_logged(app, {"control": 0.1, "challenger": 0.2}, 2000)
    monitor_step(app, state, analyze_state(app, state, now=T0 + 1e5, looks=0), now=T0 + 1e5,
                 rng=np.random.default_rng(0))
    shares = store_of(app).get("exp").shares
    assert shares[1] == pytest.approx(0.9) and shares[0] == pytest.approx(0.1)


def test_promote_experiment_plans_the_winning_arms_versions_with_the_evidence(tmp_path: Path) -> None:
    from serving.experiments.manage import promotion_plan

    app = scenario_app(tmp_path)
    start_logged(app, {"control": 0.1, "challenger": 0.2}, 3000)
    plan = promotion_plan(app, "exp")
    assert plan["winner"] == "challenger"
    assert plan["promotions"] == [{"model": app.ranker_model, "version": "2", "role": "ranker"}]  # retriever: same
    ev = plan["evidence"]
    assert ev["trustworthy"] and ev["metrics"][0]["metric"] == "ctr" and ev["metrics"][0]["difference"] > 0
    assert Path(plan["report"]["html"]).is_file() and plan["report"]["mlflow_run"]
