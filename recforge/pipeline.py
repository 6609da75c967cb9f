"""The end-to-end jobs the CLI runs: generate, prepare, materialize, and the demo that chains them.

This module composes the packages (feature_store now; training and serving as they arrive) and returns
plain dicts that `recforge.report` renders for people and `--json` prints for machines.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from feature_store import progress
from feature_store.config import ConfigError, SyntheticSource, dump_config
from recforge.config import RecForgeConfig, app_settings, gauc_absent_reason, registry_settings


def generate(cfg: RecForgeConfig) -> dict[str, Any]:
    """Write the synthetic data set of `cfg.source` under <output_dir>/raw (cached by config)."""
    from feature_store.prepare import layout
    from feature_store.readers.synthetic import load_synthetic

    if not isinstance(cfg.source, SyntheticSource):
        raise ConfigError(f"source.type: `recforge generate` needs type 'synthetic', the config has "
                          f"'{cfg.source.type}'; use `recforge prepare` to read that source")
    t0 = time.perf_counter()
    lay = layout(cfg)
    with progress.step("generate") as s:
        raw = load_synthetic(cfg.source, lay.raw)
        s.figures.update({name: t.num_rows for name, t in raw.tables.items()})
    dump_config(cfg, lay.raw / "resolved_config.yaml")
    events = raw.tables["events"]
    clicks = events.column("click").to_numpy()
    return {
        "rows": {name: t.num_rows for name, t in raw.tables.items()},
        "mean_ctr": float(clicks.mean()) if len(clicks) else None,
        "paths": raw.paths,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def prepare(cfg: RecForgeConfig) -> dict[str, Any]:
    from feature_store.prepare import prepare as run_prepare

    return run_prepare(cfg).summary


def materialize(cfg: RecForgeConfig) -> dict[str, Any]:
    from feature_store.materialize import materialize_job

    with progress.step("materialize") as s:
        result = materialize_job(cfg)
        s.figures.update({name: v["entities"] for name, v in result["entities"].items()})
    return result


def train_ctr(cfg: RecForgeConfig) -> dict[str, Any]:
    """Train the configured ranker; adds the oracle AUC on test when the data carries the true probability.
    `train.model` and every `train.model_params` entry were validated when the config was loaded (as for
    `recforge config`)."""
    from training.ranking.run import train_ctr as run_train

    absent = gauc_absent_reason(cfg)
    train = cfg.train.model_copy(update={"gauc": absent is None})
    doc = cfg.model_dump(mode="json")
    doc["train"]["gauc"] = absent is None
    result = run_train(cfg.output_dir, cfg.name, train, config_doc=doc, ray_address=cfg.prepare.ray_address).to_dict()
    if absent is not None:
        result["test"]["gauc_absent"] = absent
    oracle = oracle_auc(cfg)
    if oracle is not None:
        result["test"]["oracle_auc"] = oracle
    return result


def train_retrieval(cfg: RecForgeConfig) -> dict[str, Any]:
    """Train the two-tower model; test metrics of it and of the baselines on the same queries."""
    from training.retrieval.run import train_retrieval as run_retrieval

    try:
        return run_retrieval(cfg.output_dir, cfg.name, cfg.retrieval, config_doc=cfg.model_dump(mode="json"),
                             tracking_uri=cfg.retrieval_tracking_uri, ray_address=cfg.prepare.ray_address).to_dict()
    except ValueError as exc:
        if "retrieval." in str(exc):
            raise ConfigError(str(exc)) from None
        raise


def build_index(cfg: RecForgeConfig) -> dict[str, Any]:
    """FAISS index of the retrieval bundle's item embeddings, recall-checked against exact search, saved into the
    bundle (<output_dir>/retrieval/bundle/index) so that the bundle is complete for registration and serving."""
    from training.index.build import build_from_embeddings

    t0 = time.perf_counter()
    bundle = Path(cfg.output_dir) / "retrieval" / "bundle"
    emb = bundle / "embeddings"
    out = bundle / "index"
    with progress.step("index build") as s:
        index = build_from_embeddings(emb, cfg.index, out)
        s.figures.update({"items": len(index.item_ids), "recall": index.recall.get("recall_at_k")})
    return {"path": str(out), "n_items": len(index.item_ids), "dim": index.dim, "params": index.build_params,
            "recall": index.recall, "seconds": round(time.perf_counter() - t0, 3)}


def oracle_auc(cfg: RecForgeConfig) -> float | None:
    """AUC of the true click probability on the test split (synthetic data only; never a model input)."""
    from feature_store.prepare import layout, prepared_columns, read_prepared
    from training.common.metrics import auc

    split = layout(cfg).split_dir("test")
    if "p_click" not in prepared_columns(split):
        return None
    test = read_prepared(split, columns=("label", "p_click"))  # the two columns alone: 8 bytes per row
    return auc(test.column("label").to_numpy(), test.column("p_click").to_numpy())


def runs(cfg: RecForgeConfig) -> dict[str, Any]:
    """`recforge runs list`: the scenario's training runs (both stages), runs of dead processes marked KILLED."""
    from recforge.config import tracking_uri
    from training.common.tracking import list_runs

    uri = tracking_uri(cfg)
    experiments = [cfg.train.tracking.experiment or cfg.name, cfg.retrieval.tracking.experiment or cfg.name]
    found, killed = list_runs(uri, experiments)
    return {"tracking_uri": uri, "experiments": list(dict.fromkeys(experiments)), "runs": found,
            "killed_now": killed}


def events(cfg: RecForgeConfig, action: str, *, file: str | None = None, limit: int = 20) -> dict[str, Any]:
    """`recforge events push|rejected|status`."""
    from feature_store.events.ingest import OfflineLog, push
    from feature_store.events.processor import GROUP
    from feature_store.events.scenario import open_bus

    with open_bus(cfg) as bus:
        where = getattr(bus, "describe", lambda: bus.name)()
        if action == "push":
            assert file is not None
            with progress.step(f"push {Path(file).name}", unit="events") as prog:
                out = push(cfg, bus, Path(file), progress=prog.advance)
                prog.figures.update(accepted=out["accepted"], rejected=out["rejected_count"])
            return {"action": "push", "bus": where, **out}
        if action == "rejected":
            return {"action": "rejected", "bus": where, "counts": bus.rejected_counts(),
                    "latest": bus.rejected(limit=limit)}
        from feature_store.materialize import open_store

        bus.ensure_group(GROUP)
        bus.ensure_group(OfflineLog.GROUP)
        with open_store(cfg) as store:
            state = store.stream_state(GROUP)
        return {"action": "status", "bus": where, "lag": {GROUP: bus.lag(GROUP), "offline": bus.lag(OfflineLog.GROUP)},
                "stream": state, "rejected": sum(bus.rejected_counts().values())}


def stream(cfg: RecForgeConfig, *, seconds: float | None = None, until_idle: bool = False) -> dict[str, Any]:
    """`recforge stream run`."""
    from feature_store.events.runner import run_stream

    return run_stream(cfg, seconds=seconds, until_idle=until_idle)


def experiment(cfg: RecForgeConfig, action: str, name: str | None, *, reason: str | None = None) -> dict[str, Any]:
    """`recforge experiment start|status|stop|report|list`."""
    from serving.experiments import manage

    app = app_settings(cfg)
    if action == "list":
        return {"action": "list", **manage.list_experiments(app)}
    if not name:
        known = ", ".join(cfg.experiments.definitions) or "none defined under experiments.definitions"
        raise ConfigError(f"`recforge experiment {action}` needs the experiment's NAME ({known})")
    if action == "start":
        out = manage.start(app, name)
        if not cfg.events.stream.serve:
            out["note"] = ("outcomes reach the analysis through the offline event log: keep `recforge stream run` "
                           "running, or set events.stream.serve: true so that `recforge serve` runs it")
        return out
    if action == "stop":
        return manage.stop(app, name, reason)
    with progress.step(f"analyse {name}") as prog:
        res = manage.result(app, name)
        prog.figures.update(exposures=sum(a["exposures"] for a in res["arms"]))
    if action == "report":
        from serving.experiments.report import write_report

        res["paths"] = write_report(app, res, manage.report_dir(app) / name)
    return {"action": action, **res}


def analysis(cfg: RecForgeConfig, name: str) -> dict[str, Any]:
    """`recforge segment | churn | ltv | budget | attribution`: the analysis's job (analytics) on the scenario's
    feature-store sections and its `analytics:` section, logged to the scenario's tracking store."""
    from analytics import jobs
    from recforge.config import feature_store_config, tracking_uri

    if name == "budget":
        from analytics.run_budget import run_budget as run
    elif name == "attribution":
        from analytics.run_attribution import run_attribution as run
    elif name == "ltv":
        from analytics.run_ltv import run_ltv as run
    else:
        run = jobs.run_segments if name == "segment" else jobs.run_churn
    with progress.step(name):
        return run(feature_store_config(cfg), cfg.analytics, tracking_uri=tracking_uri(cfg), scenario=cfg.name)


def report(cfg: RecForgeConfig, action: str, name: str | None, *, reset_total: str | None = None) -> dict[str, Any]:
    """`recforge report run NAME | budget | list`: privacy-safe aggregate releases (privacy.reports)."""
    from privacy import reports
    from recforge.config import feature_store_config

    fs = feature_store_config(cfg)
    if action == "list":
        return {"action": "list", **reports.list_queries(cfg.privacy)}
    if action == "budget":
        return {"action": "budget", **reports.budgets(fs, cfg.privacy, reset_total)}
    if not name:
        known = ", ".join(cfg.privacy.queries) or "none defined under privacy.queries"
        raise ConfigError(f"`recforge report run` needs the query's NAME ({known})")
    app = app_settings(cfg) if cfg.experiments.definitions else None
    return {"action": "run", **reports.run_query(name, fs, cfg.privacy, cfg.analytics, app)}


def cleanroom(cfg: RecForgeConfig) -> dict[str, Any]:
    """`recforge cleanroom run`: the two parties' aggregates (privacy.cleanroom)."""
    from privacy.cleanroom import run_cleanroom
    from recforge.config import feature_store_config

    return run_cleanroom(feature_store_config(cfg), cfg.privacy)


def simulate(cfg: RecForgeConfig, *, url: str | None, requests: int, users: int | None, concurrency: int, k: int,
             seed: int) -> dict[str, Any]:
    """`recforge simulate`: synthetic visitors against a live server (serving.experiments.simulate)."""
    from serving.experiments.simulate import run_simulation

    if not isinstance(cfg.source, SyntheticSource):
        raise ConfigError(f"recforge simulate needs the built-in synthetic source (its true click model); "
                          f"{cfg.name}'s source is {cfg.source.type}")
    target = url or f"http://{cfg.serving.host}:{cfg.serving.port}"
    with progress.step("simulate", total=requests, unit="visits") as prog:
        return run_simulation(cfg.source, target, requests=requests, users=users, concurrency=concurrency, k=k,
                              seed=seed, events=cfg.events, progress=prog.advance,
                              events_token=cfg.serving.events_token, read_token=cfg.serving.read_token)


def demo(cfg: RecForgeConfig) -> dict[str, Any]:
    """generate (synthetic sources) -> prepare -> materialize -> train the ranker -> train the two-tower
    retrieval model and build its index -> register both and promote them through the gate -> serve them and
    send a few real requests (when the config has a `retrieval:` section); every stage's report."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"name": cfg.name, "output_dir": str(Path(cfg.output_dir))}
    if isinstance(cfg.source, SyntheticSource):
        out["generate"] = generate(cfg)
    out["prepare"] = prepare(cfg)
    out["materialize"] = materialize(cfg)
    out["train"] = train_ctr(cfg)
    if cfg.retrieval.user_features and cfg.retrieval.item_features:
        out["retrieval"] = train_retrieval(cfg)
        out["index"] = build_index(cfg)
        out["registry"] = register_and_promote(cfg)
        out["serving"] = serve_and_query(cfg)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def register_and_promote(cfg: RecForgeConfig) -> dict[str, Any]:
    """Register the latest ranker and retriever runs and promote each through the gate (against the current
    champion when there is one); the decisions and review paths."""
    from serving.registry import promote, register_ranker, register_retriever

    settings = registry_settings(cfg)
    out: dict[str, Any] = {}
    for name, register in zip((settings.ranker_model, settings.retriever_model),
                              (register_ranker, register_retriever), strict=True):
        version = register(settings)
        result = promote(settings, name, version.version, user="recforge-demo")
        out[name] = {"version": version.version, "decision": result.decision, "failures": result.failures,
                     "aliases": result.aliases, "review": result.review.get("markdown") or result.review}
    return out


def serve_and_query(cfg: RecForgeConfig, users: int = 3) -> dict[str, Any]:
    """Start the Ray Serve app on 127.0.0.1 with the stream processor beside it, send a few real requests (known
    users, an unknown user, a CTR request), then post one purchase to /events and show it change that user's
    recommendations; collect the answers and shut the app down."""
    import pyarrow.parquet as pq

    from feature_store.prepare import layout
    from serving.server import start_app, stop_app

    test = pq.read_table(next(iter(sorted(layout(cfg).split_dir("test").glob("*.parquet")))),
                         columns=["__user_key", "__item_key"]).slice(0, 50)
    user_ids = list(dict.fromkeys(test.column("__user_key").to_pylist()))[:users]
    if cfg.pseudonymisation.enabled:  # the data holds pseudonyms; a caller of the API sends the ids it knows
        user_ids = _raw_ids_of(cfg, user_ids)
    items = list(dict.fromkeys(test.column("__item_key").to_pylist()))[:5]
    t0 = time.perf_counter()
    settings = app_settings(cfg)
    if settings.serving.events_token is None:  # the demo's own app: ingestion needs a token, so it makes one
        import secrets as token_source

        from feature_store import secrets

        token = token_source.token_urlsafe(24)
        secrets.add([token])
        settings = replace(settings, serving=settings.serving.model_copy(update={"events_token": token}))
    tokens = {"events": settings.serving.events_token, "read": settings.serving.read_token}
    events = settings.feature_store.events
    settings = replace(settings, feature_store=settings.feature_store.model_copy(update={
        "events": events.model_copy(update={"stream": events.stream.model_copy(update={"serve": True}),
                                            "log_flush_s": min(events.log_flush_s, 2.0)})}))  # the bandit reads it
    url = start_app(settings)
    ask = _asker(url, tokens)
    answers: list[dict[str, Any]] = []
    event: dict[str, Any] | None = None
    try:
        started = round(time.perf_counter() - t0, 3)
        for user in [*user_ids, "no-such-user"]:
            code, body = ask("/recommend", {"user_id": user, "k": 5, "exclude_seen": True})
            answers.append({"request": f"POST /recommend user_id={user} k=5", "status": code, "body": body})
        code, body = ask("/predict", {"user_id": user_ids[0], "item_ids": [*items, "no-such-item"]})
        answers.append({"request": f"POST /predict user_id={user_ids[0]} items={len(items) + 1}", "status": code,
                        "body": body})
        code, models = ask("/models")
        event = _one_event_changes_recommendations(ask, user_ids[0], events.purchase_types[0]
                                                   if events.purchase_types else events.positive_types[0])
        experiment = _simulated_experiment(cfg, settings, url, tokens) if cfg.experiments.definitions else None
    finally:
        stop_app()
    return {"url": url, "start_seconds": started, "answers": answers, "models": models if code == 200 else None,
            "event": event, "experiment": experiment}


def _asker(url: str, tokens: dict[str, str | None]) -> Any:
    """`request` against the demo's app with its tokens: X-Events-Token on /events, the read token elsewhere."""
    from serving.client import request

    def ask(path: str, body: Any = None) -> tuple[int, Any]:
        if path == "/events":
            headers = {"X-Events-Token": tokens["events"]} if tokens["events"] else None
        else:
            headers = {"Authorization": f"Bearer {tokens['read']}"} if tokens["read"] else None
        return request(url, path, body, headers=headers)

    return ask


def _raw_ids_of(cfg: RecForgeConfig, pseudonyms: list[Any]) -> list[Any]:
    """The source's raw user ids behind `pseudonyms` (in their order), found by hashing the source's ids: what the
    demo, as the service calling the API, would know."""
    from feature_store import pseudonymise
    from feature_store.prepare import layout
    from feature_store.readers import read_source

    p = pseudonymise.load(cfg.pseudonymisation)
    assert p is not None
    raw = read_source(cfg.source, layout(cfg).raw).events.column(cfg.features.user_key).unique()
    hashed = p.array(raw).to_pylist()
    back = dict(zip(hashed, raw.to_pylist()))
    return [back[u] for u in pseudonyms if u in back] or [raw[0].as_py()]


def _simulated_experiment(cfg: RecForgeConfig, settings: Any, url: str, tokens: dict[str, str | None],
                          visits: int = 600, timeout: float = 60.0) -> dict[str, Any] | None:
    """A short run of the config's first experiment (under a new name, so the demo can run again) with synthetic
    visitors (`recforge simulate`), then its report: what the experiment loop produces end to end."""
    from serving.experiments import manage
    from serving.experiments.report import write_report
    from serving.experiments.simulate import run_simulation

    if not isinstance(cfg.source, SyntheticSource):
        return None
    base, definition = next(iter(cfg.experiments.definitions.items()))
    name = f"{base}-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    app = replace(settings, experiments=settings.experiments.model_copy(
        update={"definitions": {**settings.experiments.definitions, name: definition}}))
    store = manage.store_of(app)
    for stale in store.running():  # an earlier demo run that did not finish would hold the same users
        if stale.name.startswith(f"{base}-demo-"):
            store.stop(stale.name, "left running by an earlier demo run")
    started = manage.start(app, name)
    try:
        time.sleep(2 * cfg.experiments.poll_s + 1)  # the replicas load the arms and join
        sim = run_simulation(cfg.source, url, requests=visits, concurrency=4, seed=1, events=cfg.events,
                             events_token=tokens["events"], read_token=tokens["read"])
        deadline = time.monotonic() + timeout  # the offline log's next flush brings the last exposures
        res = manage.result(app, name)
        while sum(a["exposures"] for a in res["arms"]) < sim["completed"] and time.monotonic() < deadline:
            time.sleep(1.0)
            res = manage.result(app, name)
    finally:
        manage.stop(app, name, "demo over")
    res = manage.result(app, name)
    paths = write_report(app, res, manage.report_dir(app) / name)
    return {"name": name, "power": started["power"]["note"], "simulation": sim, "decision": res["decision"],
            "arms": res["arms"], "shares": res["allocations"][-1]["shares"], "allocations": len(res["allocations"]),
            "guardrail": next((a["reason"] for a in res["allocations"] if a["reason"].startswith("guardrail")), None),
            "report": paths["html"]}


def _one_event_changes_recommendations(ask: Any, user: Any, kind: str, timeout: float = 15.0) -> dict[str, Any]:
    """Post one event of `kind` for `user` on the top item of their recommendations; wait until /recommend no
    longer shows it (bought: seen, left out). The before and after lists and how long the change took."""
    _, before = ask("/recommend", {"user_id": user, "k": 5, "exclude_seen": True})
    item = before["items"][0]["item_id"]
    event = {"event_id": f"demo-{uuid.uuid4().hex[:12]}", "ts": time.time(), "user_id": user, "item_id": item,
             "type": kind, "value": 19.9, "exposure_id": before.get("exposure_id")}
    t0 = time.perf_counter()
    code, posted = ask("/events", {"events": [event]})
    after = before
    while time.perf_counter() - t0 < timeout:
        _, after = ask("/recommend", {"user_id": user, "k": 5, "exclude_seen": True})
        if item not in [it["item_id"] for it in after["items"]]:
            break
        time.sleep(0.05)
    changed = item not in [it["item_id"] for it in after["items"]]
    return {"user_id": user, "item_id": item, "type": kind, "status": code, "accepted": posted.get("accepted"),
            "before": [it["item_id"] for it in before["items"]], "after": [it["item_id"] for it in after["items"]],
            "changed": changed, "seconds": round(time.perf_counter() - t0, 3)}
