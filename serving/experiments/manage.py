"""The experiment lifecycle behind `recforge experiment start | stop | status | report | list`, and the monitor
step that runs Thompson sampling and the guardrails.

Start refuses, before any traffic moves: a name that is not defined or already used, a traffic slice that
overlaps a running experiment, an arm whose version does not exist or does not load (each distinct version is
downloaded and loaded here, as a replica would; the champion keeps serving meanwhile). Aliases are resolved
once and pinned, so a promotion during the experiment does not change what an arm serves.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.events.ingest import read_log
from feature_store.events.scenario import log_dir
from serving.config import AppSettings, ExperimentConfig
from serving.experiments import analysis, stats
from serving.experiments.store import (
    ArmVersions,
    ExperimentState,
    ExperimentStateError,
    ExperimentStore,
    experiment_store_path,
)


def store_of(app: AppSettings) -> ExperimentStore:
    return ExperimentStore(experiment_store_path(app.output_dir, app.experiments))


def definition(app: AppSettings, name: str) -> ExperimentConfig:
    defs = app.experiments.definitions
    if name not in defs:
        known = ", ".join(defs) or "none: add one under experiments.definitions"
        raise ExperimentStateError(f"no experiment '{name}' in experiments.definitions (defined: {known})")
    return defs[name]


def planned_users(d: ExperimentConfig) -> int:
    """Users per arm from the power calculation (`design`) for the test decisions use, the always-valid mSPRT
    (`stats.sequential_sample_size`); for revenue per user the rate is conversion's."""
    g = d.design
    return stats.sequential_sample_size(g.baseline, g.mde, alpha=g.alpha, power=g.power, tau=d.sequential_tau)


# ------------------------------------------------------------------------------------------------ versions
def _client(app: AppSettings) -> Any:
    from training.common.tracking import tracking_client

    return tracking_client(app.tracking_uri, registry=True)


def resolve_arms(app: AppSettings, d: ExperimentConfig, name: str) -> list[ArmVersions]:
    """Each arm's versions as registry version numbers (aliases resolved now); refuses unknown versions."""
    from mlflow.exceptions import MlflowException

    client = _client(app)
    models = {"ranker": app.ranker_model, "retriever": app.retriever_model}
    out = []
    for i, arm in enumerate(d.arms):
        versions: dict[str, str | None] = {}
        for role, model in models.items():
            if role == "retriever" and not app.has_retriever:
                versions[role] = None
                continue
            wanted = getattr(arm, role)
            where = f"experiments.definitions.{name}.arms[{i}] ({arm.name}).{role}"
            try:
                if wanted is None or wanted.startswith("@"):
                    alias = wanted[1:] if wanted else app.serving.alias
                    mv = client.get_model_version_by_alias(model, alias)
                else:
                    mv = client.get_model_version(model, wanted)
            except MlflowException:
                known = _versions(client, model)
                shown = wanted or f"@{app.serving.alias} (the served alias)"
                raise ExperimentStateError(f"{where}: {model} has no version {shown} (versions: {known}); register "
                                           f"it first (`recforge register`) or name an existing one") from None
            versions[role] = str(mv.version)
        out.append(ArmVersions(arm.name, arm.policy, versions["ranker"], versions["retriever"]))
    return out


def _versions(client: Any, model: str) -> str:
    try:
        found = client.search_model_versions(f"name='{model}'")
    except Exception:
        return "none registered"
    parts = []
    for mv in sorted(found, key=lambda m: int(m.version)):
        aliases = getattr(mv, "aliases", []) or []
        parts.append(str(mv.version) + (f" (@{', @'.join(aliases)})" if aliases else ""))
    return ", ".join(parts) or "none registered"


def check_loads(app: AppSettings, arms: list[ArmVersions], name: str) -> None:
    """Download and load every distinct version the arms serve, as a replica will; refuses one that fails."""
    from serving.slots import ModelSlot, ModelSource, load_ranker, load_retriever

    loaders = {"ranker": (app.ranker_model, load_ranker("cpu")), "retriever": (app.retriever_model, load_retriever)}
    done: set[tuple[str, str]] = set()
    for arm in arms:
        for role in ("ranker", "retriever"):
            version = getattr(arm, role)
            if version is None or (role, version) in done:
                continue
            done.add((role, version))
            model, loader = loaders[role]
            slot = ModelSlot(ModelSource(role, model, app.serving.alias, app.tracking_uri, 3600.0, version), loader)
            try:
                slot.check()
            finally:
                slot.stop()
            if slot.last_error is not None:
                raise ExperimentStateError(
                    f"experiment '{name}', arm {arm.name}: {role} {model} version {version} does not load "
                    f"({slot.last_error['error']}); nothing was started and the champion keeps serving")


# ------------------------------------------------------------------------------------------------ commands
def start(app: AppSettings, name: str, *, check: bool = True) -> dict[str, Any]:
    """`recforge experiment start NAME`: checks, the power calculation, then the experiment runs (replicas pick
    it up within `experiments.poll_s`)."""
    d = definition(app, name)
    store = store_of(app)
    store.check_startable(d, name)  # the cheap refusals before any download
    if any(a.policy == "popular" for a in d.arms) and not app.has_retriever:
        raise ExperimentStateError(f"experiment '{name}': a popular arm needs the retriever's popularity list, and "
                                   "this scenario has no retriever")
    arms = resolve_arms(app, d, name)
    if check:
        check_loads(app, arms, name)
    planned = planned_users(d)
    state = store.start(d, name, arms, planned)
    return {"action": "start", **state.to_json(), "power": _power(d, planned)}


def _power(d: ExperimentConfig, planned: int) -> dict[str, Any]:
    g = d.design
    fixed = stats.sample_size(g.baseline, g.mde, alpha=g.alpha, power=g.power)
    return {"baseline": g.baseline, "mde": g.mde, "alpha": g.alpha, "power": g.power,
            "users_per_arm": planned, "users_total": planned * len(d.arms), "fixed_horizon_users_per_arm": fixed,
            "traffic_share": d.traffic.share,
            "note": f"{planned:,} users per arm detect {g.baseline:g} -> {g.baseline + g.mde:g} with probability "
                    f"{g.power:g} at alpha {g.alpha:g} with the always-valid test, however often it is looked at "
                    f"(a single look at a fixed horizon would need {fixed:,}: statsmodels NormalIndPower)"}


def stop(app: AppSettings, name: str, reason: str | None = None) -> dict[str, Any]:
    state = store_of(app).stop(name, reason or "stopped by `recforge experiment stop`")
    return {"action": "stop", **state.to_json()}


def list_experiments(app: AppSettings) -> dict[str, Any]:
    started = {s.name: s for s in store_of(app).all()}
    rows = []
    for name, d in app.experiments.definitions.items():
        s = started.get(name)
        rows.append({"name": name, "status": s.status if s else "defined", "arms": [a.name for a in d.arms],
                     "allocation": d.allocation.type, "primary": d.primary,
                     "started_at": s.to_json()["started_at"] if s else None,
                     "stopped_at": s.to_json()["stopped_at"] if s else None,
                     "stop_reason": s.stop_reason if s else None})
    for name, s in started.items():  # started under a definition since removed from the config
        if name not in app.experiments.definitions:
            rows.append({"name": name, "status": s.status, "arms": s.arm_names, "allocation":
                         s.definition.allocation.type, "primary": s.definition.primary, **{
                             k: s.to_json()[k] for k in ("started_at", "stopped_at")}, "stop_reason": s.stop_reason})
    return {"experiments": rows}


def result(app: AppSettings, name: str, *, now: float | None = None, looks: int = analysis.LOOKS) -> dict[str, Any]:
    """`recforge experiment status NAME`: the analysis of everything the offline log holds so far."""
    state = store_of(app).get(name)
    return analyze_state(app, state, now=now, looks=looks)


def analyze_state(app: AppSettings, state: ExperimentState, *, now: float | None = None,
                  looks: int = analysis.LOOKS) -> dict[str, Any]:
    fs = app.feature_store
    events = read_log(log_dir(fs), fs.events.id_type)
    joined = analysis.join(state, events, app.experiments, list(fs.events.purchase_types),
                           now=time.time() if now is None else now)
    return analysis.analyze(state, joined, looks=looks)


# ------------------------------------------------------------------------------------------------ monitor
def thompson_shares(clicks: np.ndarray, impressions: np.ndarray, *, prior: tuple[float, float], min_share: float,
                    live: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Each live arm's posterior probability of the highest click rate (Beta-Bernoulli on clicks per shown item,
    Monte Carlo over `draws`), floored at `min_share` (share = min_share + (1 - k min_share) P(best)); arms not
    live get 0."""
    a = prior[0] + clicks
    b = prior[1] + np.maximum(impressions - clicks, 0)
    idx = np.flatnonzero(live)
    samples = rng.beta(a[idx][:, None], b[idx][:, None], size=(len(idx), draws))
    best = np.bincount(samples.argmax(axis=0), minlength=len(idx)) / draws
    shares = np.zeros(len(clicks))
    shares[idx] = min_share + (1 - len(idx) * min_share) * best
    return shares / shares.sum()


def monitor_step(app: AppSettings, state: ExperimentState, res: dict[str, Any], *, now: float | None = None,
                 rng: np.random.Generator | None = None) -> list[dict[str, Any]]:
    """One pass of the monitor over a running experiment's result: a challenger whose always-valid interval on a
    guardrail lies below -tolerance stops receiving traffic (its share goes to the control arm); then Thompson
    sampling recomputes the live arms' shares. The allocations written, with their reasons."""
    d = state.definition
    store = store_of(app)
    names = state.arm_names
    shares = np.array(state.shares, dtype=np.float64)
    control = names.index(d.control_arm)
    actions = []
    tau = d.sequential_tau or d.design.mde
    for g in d.guardrails:
        for arm, c in res["comparisons"].get(g.metric, {}).items():
            i = names.index(arm)
            if shares[i] == 0:
                continue
            low, high = c["always_valid_low"], c["always_valid_high"]
            if g.alpha != d.design.alpha and c["variance"] == c["variance"] and c["variance"] > 0:
                low, high = stats.always_valid_interval(c["difference"], c["variance"], tau * tau, g.alpha)
            if high == high and high < -g.tolerance:
                shares[control] += shares[i]
                shares[i] = 0.0
                reason = (f"guardrail: {arm} is worse than {d.control_arm} on {g.metric} (always-valid "
                          f"{1 - g.alpha:.0%} interval of the difference [{low:+.5f}, {high:+.5f}] lies below "
                          f"-{g.tolerance:g}); {arm} receives no more traffic")
                store.allocate(state.name, shares.tolist(), reason, now=now)
                actions.append({"at": now or time.time(), "reason": reason, "shares": dict(zip(names, shares))})
    if d.allocation.type == "thompson":
        a = d.allocation
        arms = {r["arm"]: r for r in res["arms"]}
        clicks = np.array([arms[n]["clicks"] for n in names], dtype=np.float64)
        impressions = np.array([arms[n]["impressions"] for n in names], dtype=np.float64)
        new = thompson_shares(clicks, impressions, prior=(a.prior_alpha, a.prior_beta), min_share=a.min_share,
                              live=shares > 0, draws=a.draws, rng=rng or np.random.default_rng())
        reason = "thompson: " + ", ".join(f"{n} {s:.3f}" for n, s in zip(names, new))
        store.allocate(state.name, new.tolist(), reason, now=now)
        actions.append({"at": now or time.time(), "reason": reason, "shares": dict(zip(names, new.tolist()))})
    return actions


def monitor_once(app: AppSettings, *, now: float | None = None) -> list[dict[str, Any]]:
    """One monitor pass over every running experiment (what the monitor actor runs every `update_s`)."""
    out = []
    for state in store_of(app).running():
        res = analyze_state(app, state, now=now, looks=0)
        out.extend({"experiment": state.name, **a} for a in monitor_step(app, state, res, now=now))
    return out


def report_dir(app: AppSettings) -> Path:
    e = app.experiments
    return Path(e.reports_dir) if e.reports_dir else Path(app.output_dir) / "experiments"


# ------------------------------------------------------------------------------------------------ promotion
def promotion_plan(app: AppSettings, name: str, *, force: bool = False) -> dict[str, Any]:
    """What `recforge promote --experiment NAME` promotes: the winning arm's versions that differ from the
    control's, with the online evidence each review shows. Refuses an untrustworthy result (sample ratio
    mismatch) unless forced, no winner yet, a control that wins, and a non-model winner."""
    from serving.experiments.report import write_report

    state = store_of(app).get(name)
    res = analyze_state(app, state)
    paths = write_report(app, res, report_dir(app) / name)
    if not res["trustworthy"] and not force:
        raise ExperimentStateError(f"experiment '{name}' is untrustworthy ({res['decision']}); nothing promoted. "
                                   f"Report: {paths['html']}. --force --reason \"...\" promotes anyway")
    winner = res["winner"]
    control = state.definition.control_arm
    if winner is None:
        raise ExperimentStateError(f"experiment '{name}' has no winner yet ({res['decision']}); let it run longer "
                                   f"(planned {state.planned_users_per_arm} users per arm). Report: {paths['html']}")
    if winner == control:
        raise ExperimentStateError(f"experiment '{name}': the control arm {control} wins ({res['decision']}); the "
                                   f"champion stays, nothing to promote. Report: {paths['html']}")
    arms = {a.name: a for a in state.arms}
    arm = arms[winner]
    if arm.policy != "model":
        raise ExperimentStateError(f"experiment '{name}': the winner {winner} is the non-model policy "
                                   f"'{arm.policy}', which has no model version to promote. Report: {paths['html']}")
    base = arms[control]
    moves = [{"model": model, "version": getattr(arm, role), "role": role}
             for role, model in (("ranker", app.ranker_model), ("retriever", app.retriever_model))
             if getattr(arm, role) is not None and getattr(arm, role) != getattr(base, role)]
    evidence = {"experiment": name, "arm": winner, "control": control, "primary": res["primary"],
                "decision": res["decision"], "trustworthy": res["trustworthy"], "report": paths["html"],
                "metrics": [analysis.plain({"metric": m, **by_arm[winner]})
                            for m, by_arm in res["comparisons"].items()]}
    return {"experiment": name, "winner": winner, "promotions": moves, "evidence": evidence, "report": paths}
