"""Human-readable summaries of what a command produced (rows, rejects, vocabularies, outputs, time)."""

from __future__ import annotations

import json
from typing import Any


def _rows(d: dict[str, Any], indent: str = "  ") -> list[str]:
    width = max((len(str(k)) for k in d), default=0)
    return [f"{indent}{k!s:<{width}}  {v:,}" if isinstance(v, int) else f"{indent}{k!s:<{width}}  {v}"
            for k, v in d.items()]


def render_generate(r: dict[str, Any]) -> list[str]:
    lines = ["Synthetic data", *_rows(r["rows"])]
    if r.get("mean_ctr") is not None:
        lines.append(f"  mean CTR  {r['mean_ctr']:.4f}")
    lines += [f"  written in {r['seconds']:.1f}s to {next(iter(r['paths'].values()), '?').rsplit('/', 1)[0]}"]
    return lines


def render_prepare(r: dict[str, Any]) -> list[str]:
    lines = ["Prepare", "  rows read (per table):", *_rows(r["rows_read"], "    ")]
    lines.append(f"  rows rejected: {r['rows_rejected']:,}")
    lines += _rows(r["rejected_by_reason"], "    ") if r["rejected_by_reason"] else ["    (none)"]
    lines += [f"    hint: {h}" for h in r.get("reject_hints", [])]
    lines.append(f"  events kept: {r['events_kept']:,}")
    lines.append(f"  engine: {r['engine']} ({r['engine_reason']})")
    if r.get("ray_nodes"):
        nodes = r["ray_nodes"]
        lines.append(f"  Ray tasks on {len(nodes)} node{'s' if len(nodes) != 1 else ''}: "
                     + ", ".join(f"{node[:8]} {n}" for node, n in sorted(nodes.items())))
    if r.get("source_counts"):
        lines += ["  source counts:", *_rows(r["source_counts"], "    ")]
    split = r["split"]
    lines.append(f"  split ({split['method']}): " + ", ".join(f"{k} {v:,}" for k, v in split["rows"].items()))
    lines += [f"    {k}: {v}" for k, v in split.get("files", {}).items()]
    if r.get("timestamp", "") is None:
        lines.append("  event time: none (the events have no time column)")
    lines.append("  vocabulary sizes (incl. index 0 = OOV):")
    lines += _rows(r["vocab_sizes"], "    ")
    lines.append("  outputs:")
    lines += _rows(r["outputs"], "    ")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in r["stage_seconds"].items())
    lines.append(f"  time: {r['seconds']:.1f}s ({stages})")
    return lines


def render_materialize(r: dict[str, Any]) -> list[str]:
    lines = [f"Materialize -> {r['store']}"]
    for name, v in r["entities"].items():
        lines.append(f"  {name:<14} {v['entities']:,} entities, features: {', '.join(v['features'])}")
    lines.append(f"  time: {r['seconds']:.1f}s")
    return lines


def _ray_train_lines(r: dict[str, Any]) -> list[str]:
    """Where a Ray Train job's ranks ran: `Ray Train: N workers on M nodes: <node> <ranks>, ...`."""
    dist = r.get("distributed") or {}
    nodes = dist.get("nodes") or {}
    if not nodes:
        return []
    return [f"  Ray Train: {dist['workers']} workers on {len(nodes)} node{'s' if len(nodes) != 1 else ''}: "
            + ", ".join(f"{node[:8]} {n}" for node, n in sorted(nodes.items()))]


def render_train(r: dict[str, Any]) -> list[str]:
    t = r["test"]
    lines = [f"Train {r['model']} ({r['epochs_run']} epochs, {r['global_steps']:,} steps on {r['device']}, "
             f"{r['precision']})"]
    line = f"  test AUC {t.get('auc', float('nan')):.4f}  logloss {t.get('logloss', float('nan')):.4f}"
    if "gauc" in t:
        line += f"  gAUC {t['gauc']:.4f}"
    line += f"  calibration {t.get('calibration', float('nan')):.3f}"
    lines.append(line)
    if "gauc_absent" in t:
        lines.append(f"  gAUC absent: {t['gauc_absent']}")
    if "oracle_auc" in t:
        gap = t["oracle_auc"] - t["auc"]
        lines.append(f"  oracle AUC (true click probability) {t['oracle_auc']:.4f}  gap {gap:+.4f} (oracle - test AUC; "
                     f"docs/metrics.md)")
    lines += _ray_train_lines(r)
    lines.append(f"  bundle: {r['bundle']}")
    ml = r["mlflow"]
    lines.append(f"  MLflow run {ml['run_id']} (experiment '{ml['experiment']}', {ml['tracking_uri']})")
    point = r.get("resumed_from")
    if point:
        where = f"epoch {point['epoch']}, step {point['step']:,}" if point.get("step") is not None else "latest"
        lines.append(f"  resumed from {point['checkpoint']} ({where})")
    lines.append(f"  time: {r['seconds']:.1f}s")
    return lines


def render_runs(r: dict[str, Any]) -> list[str]:
    lines = [f"Runs of {', '.join(r['experiments'])} ({r['tracking_uri']})"]
    if r["killed_now"]:
        lines.append(f"  marked KILLED now (their process is gone): {', '.join(r['killed_now'])}")
    if not r["runs"]:
        lines.append("  (no runs yet: `recforge train ctr --config X` makes one)")
    for run in r["runs"]:
        note = f"  {run['note']}" if run["note"] else ""
        lines.append(f"  {run['run_id']}  {run['name'] or '-':<10} {run['status']:<9} {run['start']}  "
                     f"{run['seconds']:>8.1f}s{note}")
    return lines


def render_events(r: dict[str, Any]) -> list[str]:
    if r["action"] == "push":
        lines = [f"Pushed {r['file']} -> {r['bus']}: {r['received']:,} events, {r['accepted']:,} accepted, "
                 f"{r['rejected_count']:,} rejected ({r['seconds']:.1f}s)"]
        lines += [f"  rejected {x['reason']}" for x in r["rejected"]]
        if r["rejected_count"] > len(r["rejected"]):
            lines.append(f"  ... {r['rejected_count'] - len(r['rejected']):,} more: `recforge events rejected`")
        return lines
    if r["action"] == "rejected":
        lines = [f"Rejected events ({r['bus']}): {sum(r['counts'].values()):,}"]
        lines += [f"  {n:>8,}  {kind}" for kind, n in r["counts"].items()]
        if r["latest"]:
            lines.append("  latest:")
            lines += [f"    {x['event_id'] or '-'}: {x['reason']}" for x in r["latest"]]
        return lines
    s = r["stream"] or {}
    lag = r["lag"]
    return [f"Events ({r['bus']}): online group {lag['online']['unread']:,} unread / {lag['online']['pending']:,} "
            f"pending, offline log {lag['offline']['unread']:,} unread / {lag['offline']['pending']:,} pending",
            f"  applied {s.get('applied', 0):,}, repeated {s.get('duplicates', 0):,}, too late "
            f"{s.get('too_late', 0):,}; watermark {s.get('watermark')}; rejected at ingestion {r['rejected']:,}"]


def render_stream(r: dict[str, Any]) -> list[str]:
    f = r["freshness_ms"]
    fresh = f"; freshness p50 {f['p50']} ms, p99 {f['p99']} ms" if f["p50"] is not None else ""
    return [f"Stream {r['bus']} -> {r['store']}: {r['applied']:,} events applied in {r['seconds']:.1f}s "
            f"({r['events_per_second'] or 0:,.0f}/s){fresh}",
            f"  repeated {r['duplicates']:,}, too late {r['too_late']:,}, entries {r['entries']:,} "
            f"(redelivered {r['redelivered']:,}), written to the offline log {r['logged']:,}",
            f"  totals: applied {r['state']['applied']:,}, watermark {r['state']['watermark']}; "
            f"left on the bus: {r['lag']['unread']:,} unread, {r['lag']['pending']:,} pending"]


def render_retrieval(r: dict[str, Any]) -> list[str]:
    c = r["counts"]
    lines = [f"Train two-tower retrieval ({r['epochs_run']} epochs, best {r['best_epoch'] + 1}; {c['users']:,} users, "
             f"{c['items']:,} items; positives train {c['train']:,} / valid {c['valid']:,} / test {c['test']:,})",
             "  test, full-corpus ranking, seen items excluded:",
             f"  {'method':14} {'recall@10':>10} {'recall@50':>10} {'ndcg@10':>8} {'hit@50':>8} {'mrr':>7}"]
    for method, m in r["test"].items():
        nan = float("nan")
        lines.append(f"  {method:14} {m.get('recall@10', nan):>10.4f} {m.get('recall@50', nan):>10.4f} "
                     f"{m.get('ndcg@10', nan):>8.4f} {m.get('hit_rate@50', nan):>8.4f} {m.get('mrr', nan):>7.4f}")
    lines.append(f"  embeddings: {r['embeddings']['dir']}")
    lines += _ray_train_lines(r)
    ml = r["mlflow"]
    lines.append(f"  MLflow run {ml['run_id']} (experiment '{ml['experiment']}', {ml['tracking_uri']})")
    lines.append(f"  time: {r['seconds']:.1f}s (fit {r['fit_seconds']:.1f}s, "
                 f"{r['train_samples_per_second']:,.0f} samples/s)")
    return lines


def render_index(r: dict[str, Any]) -> list[str]:
    rec = r.get("recall", {})
    return [f"Index {r['params'].get('type', '?')} over {r['n_items']:,} items (dim {r['dim']}) -> {r['path']}",
            f"  recall guard: {json.dumps(rec)}", f"  time: {r['seconds']:.1f}s"]


def _aliases(aliases: dict[str, int]) -> str:
    return ", ".join(f"{a} v{v}" for a, v in sorted(aliases.items())) or "none"


def render_register(r: dict[str, Any]) -> list[str]:
    tags = r["tags"]
    metrics = {k[len("metric."):]: v for k, v in tags.items() if k.startswith("metric.")}
    lines = [f"Registered {r['name']} v{r['version']} ({r['kind']}) from run {r['run_id']}, alias challenger",
             f"  source: {r['source']}",
             f"  prepared-data hash {tags.get('recforge.data_hash') or 'unknown'}",
             f"  feature-spec fingerprint {tags.get('recforge.spec_fingerprint') or 'unknown'}"]
    if metrics:
        lines.append("  test metrics: " + ", ".join(f"{k} {v}" for k, v in metrics.items()))
    if "index.type" in tags:
        lines.append(f"  index: {tags['index.type']}, recall {tags.get('index.recall', '?')}")
    return lines


def _num(v: float | None, signed: bool = False) -> str:
    return "-" if v is None else f"{v:+.5f}" if signed else f"{v:.5f}"


def render_promote(r: dict[str, Any]) -> list[str]:
    against = f"champion v{r['champion_before']}" if r["champion_before"] is not None else "no champion"
    lines = [f"Promotion of {r['model']} v{r['version']} ({r['kind']}) against {against}: {r['decision'].upper()}",
             f"  {'metric':12} {'candidate':>10} {'champion':>10} {'delta':>10}  allowed     ok"]
    for m in r["metrics"]:
        lines.append(f"  {m['name']:12} {_num(m['candidate']):>10} {_num(m['champion']):>10} "
                     f"{_num(m['delta'], True):>10}  {m['allowed']:<10}  {'yes' if m['passed'] else 'NO'}")
    lines += [f"  gate: {f}" for f in r["failures"]]
    if r.get("reason"):
        lines.append(f"  forced by {r['user']}: {r['reason']}" if r["decision"] == "forced"
                     else f"  reason: {r['reason']}")
    lines.append(f"  review: {r['review']['html']} (MLflow: {r['review']['artifact_uri']})")
    lines.append(f"  aliases now: {_aliases(r['aliases'])}")
    return lines


def render_rollback(r: dict[str, Any]) -> list[str]:
    replaced = f"v{r['replaced']}" if r["replaced"] is not None else "none"
    return [f"Rolled back {r['model']}: champion v{r['champion']} (replaced {replaced}) by {r['user']}",
            f"  aliases now: {_aliases(r['aliases'])}"]


def render_registry(r: dict[str, Any]) -> list[str]:
    lines = [f"Model registry ({r['tracking_uri']})"]
    if not r["models"]:
        lines.append("  (no registered models: `recforge register --config X --kind ranker` creates one)")
    for m in r["models"]:
        lines.append(f"  {m['name']} ({m['kind'] or '?'}): {_aliases(m['aliases'])}")
        for v in m["versions"]:
            gate = ", ".join(f"{k} {val}" for k, val in v["gate"].items())
            decision = v["decision"] or "not reviewed"
            if v["decision_reason"]:
                decision += f" ({v['decision_user']}: {v['decision_reason']})"
            aliases = f" [{', '.join(v['aliases'])}]" if v["aliases"] else ""
            lines.append(f"    v{v['version']}{aliases} run {v['run_id']} {v['created']}  {decision}"
                         + (f"  gate: {gate}" if gate else ""))
    return lines


def render_serve(r: dict[str, Any]) -> list[str]:
    """`recforge serve` (foreground, --detach or --stop)."""
    if r["action"] == "stop":
        if not r.get("stopped"):
            return [f"No server running at {r.get('url')} (pid {r['pid']} {r.get('note', 'not running')})"]
        return [f"Stopped the server at {r.get('url')} (pid {r['pid']})"]
    if r["action"] == "detach":
        models = ", ".join(f"{role} v{v}" for role, v in r.get("models", {}).items()) or "none"
        port = r["url"].rsplit(":", 1)[-1]
        return [f"Serving at {r['url']} (pid {r['pid']}; docs {r['url']}/docs)", f"  models: {models}",
                f"  log: {r['log']}", f"  stop it: recforge serve --stop --port {port}"]
    return [f"Stopped serving {r['url']} after {r['seconds']:.0f}s"]


def render_demo_registry(r: dict[str, Any]) -> list[str]:
    lines = ["Registry (MLflow aliases; each candidate gated against the champion on the same held-out data):"]
    for name, d in r.items():
        why = f" ({'; '.join(d['failures'])})" if d.get("failures") else ""
        lines.append(f"  {name} v{d['version']}: {d['decision']}{why}; aliases {_aliases(d['aliases'])}")
        lines.append(f"    review: {d['review']}")
    return lines


def _answer(body: Any) -> str:
    """One line of an app answer: items or predictions with scores, the fallback flag, the model versions."""
    if not isinstance(body, dict):
        return json.dumps(body)[:160]
    versions = ", ".join(f"{m['name']} v{m['version']}" for m in body.get("models", {}).values())
    if "items" in body:
        items = ", ".join(f"{i['item_id']}:{i['score']:.3f}" for i in body["items"])
        extra = f" fallback={body['fallback']}" if body.get("fallback") else ""
        return f"[{items}]{extra} ({versions})"
    if "predictions" in body:
        preds = ", ".join(f"{p['item_id']}:" + (f"{p['score']:.3f}" if p.get("score") is not None else p["status"])
                          for p in body["predictions"])
        return f"user {body.get('user_status')} [{preds}] ({versions})"
    return json.dumps(body)[:160]


def render_demo_serving(r: dict[str, Any]) -> list[str]:
    lines = [f"Serving at {r['url']} (Ray Serve, up in {r['start_seconds']:.1f}s), real requests:"]
    for a in r["answers"]:
        lines.append(f"  {a['request']} -> HTTP {a['status']} {_answer(a['body'])}")
    e = r.get("event")
    if e:
        lines.append(f"  POST /events: user {e['user_id']} {e['type']} item {e['item_id']} (the top recommendation) "
                     f"-> HTTP {e['status']}, accepted {e['accepted']}")
        lines.append(f"    /recommend before: {e['before']}")
        lines.append(f"    /recommend after:  {e['after']} "
                     + (f"({e['item_id']} now seen and left out, {e['seconds']:.2f}s after the event)"
                        if e["changed"] else f"(unchanged after {e['seconds']:.0f}s: the stream did not apply it)"))
    x = r.get("experiment")
    if x:
        lines.append(f"  experiment {x['name']} (Thompson sampling, {x['simulation']['completed']:,} simulated "
                     f"visits of the generator's users):")
        for name, a in x["simulation"]["arms"].items():
            lines.append(f"    {name:<10} {a['exposures']:>5,} answers, true CTR {a['true_ctr']:.4f}, observed "
                         f"{a['observed_ctr']:.4f}")
        shares = ", ".join(f"{k} {v:.2f}" for k, v in x["shares"].items())
        if x.get("guardrail"):
            lines.append(f"    {x['guardrail']}")
        lines.append(f"    shares after {x['allocations'] - 1} updates: {shares}; {x['decision']}")
        lines.append(f"    report: {x['report']}")
    lines.append("  app shut down")
    return lines


def _ci(m: dict[str, Any] | None, digits: int = 4) -> str:
    if not m or m.get("value") is None:
        return "-"
    low, high = m.get("low"), m.get("high")
    if low is None or high is None or low != low or high != high:
        return f"{m['value']:.{digits}f}"
    return f"{m['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _p(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.3g}"


def render_experiment(r: dict[str, Any]) -> list[str]:
    """`recforge experiment start|stop|status|report|list`."""
    action = r["action"]
    if action == "list":
        if not r["experiments"]:
            return ["No experiments defined (add one under experiments.definitions; docs/cli.md#experiments)"]
        lines = ["Experiments"]
        for e in r["experiments"]:
            when = f" started {e['started_at']}" if e["started_at"] else ""
            when += f", stopped {e['stopped_at']} ({e['stop_reason']})" if e["stopped_at"] else ""
            lines.append(f"  {e['name']:<20} {e['status']:<8} arms {', '.join(e['arms'])}; {e['allocation']}, "
                         f"primary {e['primary']}{when}")
        return lines
    if action in ("start", "stop"):
        lines = [f"Experiment {r['name']}: {r['status']}" + (f" ({r['stop_reason']})" if action == "stop" else "")]
        for a in r["arms"]:
            serves = ("most popular" if a["policy"] == "popular"
                      else f"ranker v{a['ranker']}, retriever v{a['retriever']}")
            lines.append(f"  {a['name']:<14} share {r['shares'][a['name']]:.3f}  {serves}")
        if action == "start":
            p = r["power"]
            lines.append(f"  power: {p['note']}; {p['users_total']:,} users in all "
                         f"({p['traffic_share']:.0%} of traffic)")
            lines.append("  traffic reaches the arms within experiments.poll_s of a running `recforge serve`")
            if r.get("note"):
                lines.append(f"  note: {r['note']}")
        return lines
    e = r["experiment"]
    lines = [f"Experiment {e['name']} ({e['status']}, started {e['started_at']}): {r['decision']}"]
    if not r["trustworthy"]:
        lines.append("  UNTRUSTWORTHY: sample ratio mismatch; no metric below can be read as an effect")
    lines.append(f"  {'arm':<14} {'users':>8} {'exposures':>10}  {'CTR':<26} {'conversion':<26} revenue/user")
    for a in r["arms"]:
        lines.append(f"  {a['arm']:<14} {a['users']:>8,} {a['exposures']:>10,}  {_ci(a['ctr']):<26} "
                     f"{_ci(a['conversion']):<26} {_ci(a['revenue_per_user'], 3)}")
    for metric, by_arm in r["comparisons"].items():
        for arm, c in by_arm.items():
            lines.append(f"  {metric} {arm} - {r['control']}: {c['difference']:+.5f} "
                         f"[{c['ci_low']:+.5f}, {c['ci_high']:+.5f}] p {_p(c['p_value'])}, always-valid p "
                         f"{_p(c['always_valid_p_holm'])}" + (" (CUPED)" if c["cuped"] else ""))
    srm = r["srm"]
    if srm is not None:
        lines.append(f"  sample ratio: users {srm['observed']} vs expected "
                     f"{[round(x, 1) for x in srm['expected']]}, p {_p(srm['p_value'])}"
                     + (" MISMATCH" if srm["mismatch"] else " ok"))
    lines.append(f"  planned {r['planned_users_per_arm']:,} users per arm; events: "
                 + ", ".join(f"{k} {v:,}" for k, v in r["counts"].items()))
    if len(r["allocations"]) > 1:
        last = r["allocations"][-1]
        lines.append(f"  allocation ({len(r['allocations']) - 1} changes), last at {last['at_iso']}: {last['reason']}")
    if r.get("paths"):
        lines.append(f"  report: {r['paths']['html']}" + (f" (MLflow run {r['paths']['mlflow_run']})"
                                                         if r["paths"].get("mlflow_run") else ""))
    return lines


def render_simulate(r: dict[str, Any]) -> list[str]:
    lines = [f"Simulated {r['completed']:,} of {r['visits']:,} visits against {r['url']} in {r['seconds']:.1f}s "
             f"(true click model of the synthetic generator)",
             f"  {'arm':<14} {'exposures':>10} {'shown':>8} {'true CTR':>9} {'observed':>9} {'clicks':>7} "
             f"{'purchases':>9} revenue"]
    for name, a in r["arms"].items():
        lines.append(f"  {name:<14} {a['exposures']:>10,} {a['impressions']:>8,} {a['true_ctr']:>9.4f} "
                     f"{a['observed_ctr']:>9.4f} "
                     f"{a['clicks']:>7,} {a['purchases']:>9,} {a['revenue']:,.2f}")
    lines.append(f"  regret: {r['regret']['expected_clicks_lost']:,.1f} expected clicks lost against the truly best "
                 f"arm ({r['regret']['per_impression']:.5f} per shown item)")
    ev = r["events"]
    lines.append(f"  events: {ev['sent']:,} sent, {ev['accepted']:,} accepted, {ev['rejected']:,} rejected")
    if r["error_count"]:
        lines += [f"  errors ({r['error_count']}):", *(f"    {e}" for e in r["errors"][:5])]
    return lines


def render_promote_experiment(r: dict[str, Any]) -> list[str]:
    ev = r["evidence"]
    lines = [f"Experiment {r['experiment']}: winner {r['winner']} ({ev['decision']}); report {ev['report']}"]
    for sub in r["results"]:
        lines += ["", *render_promote(sub)]
    return lines


def render_segment(r: dict[str, Any]) -> list[str]:
    t = r["next_period_test"]
    lines = [f"Segments: k = {r['k']} (mean silhouette {r['silhouette']:.3f}) over {r['customers']:,} customers "
             f"(data {r['data']['start']} to {r['data']['end']})"]
    width = max(len(s["segment"]) for s in r["segments"])
    for s in r["segments"]:
        lines.append(f"  {s['segment']:<{width}}  {s['customers']:>6,} customers ({s['share']:.1%})  revenue share "
                     f"{s['revenue_share']:.1%}  median recency {s['median_recency_days']:.0f} d, orders "
                     f"{s['median_frequency']:.0f}")
    verdict = "differs" if t["significant"] else "does NOT differ significantly"
    lines.append(f"  next-period revenue {verdict} between the segments fitted at {r['data']['split']}: "
                 f"{t['test']} p = {t['p_value']:.3g}")
    online = r["online"]
    lines.append(f"  online: view {online['view']} ({online['entities']:,} customers) in {online['store']}")
    return lines + _outputs(r)


def _outputs(r: dict[str, Any]) -> list[str]:
    lines = [f"  report: {r['outputs']['html']}"]
    if r.get("mlflow_run"):
        lines.append(f"  MLflow run {r['mlflow_run']}")
    lines.append(f"  time: {r['seconds']:.1f}s")
    return lines


def render_churn(r: dict[str, Any]) -> list[str]:
    lines = [f"Churn at {r['horizon_days']:g} days: trained on {r['train_customers']:,} customers known at "
             f"{r['data']['train_as_of']}, scored on {r['test_customers']:,} known at {r['data']['split']} "
             f"({r['test_churn_rate']:.1%} churned)"]
    for name, m in r["models"].items():
        c = "" if m["concordance"] is None else f"concordance {m['concordance']:.4f}  "
        lines.append(f"  {name:<20} {c}AUC {m['auc']:.4f}")
    g = r["goal"]
    lines.append(f"  goal (survival AUC >= baseline): {'met' if g['met'] else 'NOT met'} "
                 f"({g['survival_auc']:.4f} vs {g['baseline_auc']:.4f})")
    for k in r["kaplan_meier"]:
        lines.append(f"  KM {k['segment']}: {k['no_purchase_at_horizon']:.1%} not bought again by the horizon")
    online = r["online"]
    lines.append(f"  online: view {online['view']} ({online['entities']:,} customers) in {online['store']}")
    return lines + _outputs(r)


def render_ltv(r: dict[str, Any]) -> list[str]:
    d, e = r["data"], r["evaluation"]
    lines = [f"Lifetime value: fitted on {r['calibration_customers']:,} customers known at {d['split']}, scored on "
             f"the next {d['holdout_days']:g} days (to {d['end']}) against same-as-last-period"]
    for row in r["evaluation_table"]:
        metric = f"MAE ({row['forecast']})" if row["metric"] == "mae" else "correlation"
        lines.append(f"  {row['target']:<10} {metric:<14} model {row['model']:>10,.3f}  naive {row['naive']:>10,.3f}  "
                     f"{'better' if row['model_better'] else 'NOT better'}")
    lines.append(f"  next-period purchase days: actual {e['purchases_total_actual']:,.0f}, model "
                 f"{e['purchases_total_model']:,.0f}, naive {e['purchases_total_naive']:,.0f}")
    s = r["served"]
    lines.append(f"  served over {r['settings']['horizon_days']:g} days: {r['customers']:,} customers, expected value "
                 f"{s['expected_value_total']:,.0f} (median {s['expected_value_median']:,.2f}), expected buyers "
                 f"{s['expected_buyers']:,.0f}, mean P(alive) {s['p_alive_mean']:.1%}")
    online = r["online"]
    lines.append(f"  online: view {online['view']} ({online['entities']:,} customers) in {online['store']}")
    return lines + _outputs(r)


def render_budget(r: dict[str, Any]) -> list[str]:
    t = r["totals"]
    lines = [f"Budget ({r['objective_kind']}): objective {r['objective']:,.2f}, spend {t['spend']:,.2f}, volume "
             f"{t['volume']:,.2f}"]
    for c in r["channels"]:
        lines.append(f"  {c['channel']:<16} volume {c['volume']:>12,.2f}  spend {c['spend']:>12,.2f}  return "
                     f"{c['return']:>12,.2f}")
    lines.append("  binding constraints (shadow price = objective gained per unit of relaxation):")
    lines += [f"    {b['name']}: {b['shadow_price']:,.4g}" for b in r["binding"]]
    return lines + _outputs(r)


def render_attribution(r: dict[str, Any]) -> list[str]:
    lines = [f"Attribution ({r['source']} journeys): {r['journeys']:,} journeys, {r['touchpoints']:,} touchpoints, "
             f"{r['total_conversions']:,.0f} conversions; Shapley {r['shapley']['mode']}"]
    for m in r["methods"]:
        rho = "" if m.get("spearman") is None else f"  rank correlation with the truth {m['spearman']:+.3f}"
        lines.append(f"  {m['method']:<12}{rho}")
    if r.get("null_channel_touchpoints"):
        lines.append(f"  touchpoints without a channel (left out): {r['null_channel_touchpoints']:,}")
    return lines + _outputs(r)


def render_release(r: dict[str, Any]) -> list[str]:
    """`recforge report run`: the released table as text, suppressed cells marked, and what it cost."""
    q = r["query"]
    how = ("exact, k-anonymity only" if q["mechanism"] == "none" else
           f"{q['mechanism']} noise, epsilon {q['epsilon']:g}" + (f", delta {q['delta']:g}" if q["delta"] else ""))
    lines = [f"Release {q['name']} of data set {r['dataset']} ({how}; k = {q['k']}):"]
    cols = [c for c in r["columns"] if c not in ("suppressed", "reason")]
    lines.append("  " + " | ".join(cols))
    for row in r["rows"]:
        cells = [str(row[c]) if c in q["group_by"] else "suppressed" if row["suppressed"] else
                 f"{row[c]:,.2f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        lines.append("  " + " | ".join(cells) + (f"   ({row['reason']})" if row["suppressed"] else ""))
    b = r.get("budget")
    if b:
        lines.append(f"  budget of {b['dataset']}: epsilon {b['spent_epsilon']:g} spent of {b['total_epsilon']:g} "
                     f"({b['remaining_epsilon']:g} left), {b['queries']} releases")
    lines.append(f"  report: {r['outputs']['html']}")
    return [*lines, f"  time: {r['seconds']:.1f}s"] if "seconds" in r else lines


def render_ledger(r: dict[str, Any]) -> list[str]:
    """`recforge report budget`: each data set's budget and its releases."""
    lines = [f"Privacy-budget ledger {r['ledger']}:"]
    if not r["datasets"]:
        lines.append("  no release yet")
    for d in r["datasets"]:
        lines.append(f"  {d['dataset']}: epsilon {d['spent_epsilon']:g} spent of {d['total_epsilon']:g} "
                     f"({d['remaining_epsilon']:g} left), delta {d['spent_delta']:g} of {d['total_delta']:g}")
        lines += [f"    {h['at']}  {h['query']:<24} epsilon {h['epsilon']:g}  delta {h['delta']:g}  by {h['who']}"
                  for h in d["history"]]
    return lines


def render_cleanroom(r: dict[str, Any]) -> list[str]:
    """`recforge cleanroom run`: one block per release."""
    lines = [f"Clean room: {r['advertiser_rows']:,} advertiser and {r['publisher_rows']:,} publisher rows joined on "
             f"pseudonyms (key {r['key_id']}); only these aggregates leave:"]
    for rel in r["releases"]:
        lines += ["", *render_release(rel)]
    return lines


def render(command: str, result: dict[str, Any]) -> str:
    if command == "report":
        if result["action"] == "run":
            return "\n".join(render_release(result))
        if result["action"] == "budget":
            return "\n".join(render_ledger(result))
        return "\n".join([f"  {q['name']}: {q['dataset']} by {', '.join(q['group_by'])} -> "
                          f"{', '.join(q['measures'])} ({q['mechanism']}, epsilon {q['epsilon']:g}, k {q['k']})"
                          for q in result["queries"]] or ["no queries under privacy.queries"])
    if command == "cleanroom":
        return "\n".join(render_cleanroom(result))
    if command == "budget":
        return "\n".join(render_budget(result))
    if command == "attribution":
        return "\n".join(render_attribution(result))
    if command == "segment":
        return "\n".join(render_segment(result))
    if command == "churn":
        return "\n".join(render_churn(result))
    if command == "ltv":
        return "\n".join(render_ltv(result))
    if command == "promote" and "results" in result:
        return "\n".join(render_promote_experiment(result))
    if command == "experiment":
        return "\n".join(render_experiment(result))
    if command == "simulate":
        return "\n".join(render_simulate(result))
    if command == "generate":
        return "\n".join(render_generate(result))
    if command == "prepare":
        return "\n".join(render_prepare(result))
    if command == "materialize":
        return "\n".join(render_materialize(result))
    if command == "train":
        return "\n".join(render_train(result))
    if command == "train_retrieval":
        return "\n".join(render_retrieval(result))
    if command == "index":
        return "\n".join(render_index(result))
    if command == "register":
        return "\n".join(render_register(result))
    if command == "promote":
        return "\n".join(render_promote(result))
    if command == "rollback":
        return "\n".join(render_rollback(result))
    if command == "registry":
        return "\n".join(render_registry(result))
    if command == "runs":
        return "\n".join(render_runs(result))
    if command == "events":
        return "\n".join(render_events(result))
    if command == "stream":
        return "\n".join(render_stream(result))
    if command == "serve":
        return "\n".join(render_serve(result))
    if command == "demo":
        lines = [f"RecForge demo: {result['name']} -> {result['output_dir']}", ""]
        if "generate" in result:
            lines += [*render_generate(result["generate"]), ""]
        lines += [*render_prepare(result["prepare"]), ""]
        lines += [*render_materialize(result["materialize"]), ""]
        if "train" in result:
            lines += [*render_train(result["train"]), ""]
        if "retrieval" in result:
            lines += [*render_retrieval(result["retrieval"]), ""]
        if "index" in result:
            lines += [*render_index(result["index"]), ""]
        if "registry" in result:
            lines += [*render_demo_registry(result["registry"]), ""]
        if "serving" in result:
            lines += [*render_demo_serving(result["serving"]), ""]
        lines.append(f"Total time: {result['seconds']:.1f}s")
        return "\n".join(lines)
    import yaml

    return yaml.safe_dump(result, sort_keys=False)
