"""The `recforge` command line: thin wrappers that load a config, apply overrides and call the stages.

Every option that changes behaviour is also a config key: the option table (`OPTIONS`) maps each flag to its
key path, and `--set KEY.PATH=VALUE` reaches any other key. The resolved config is written next to every
output. Errors are printed as one clear message (file, line, key, what to do) with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feature_store.config import ConfigError
from feature_store.online.base import StreamBusy
from feature_store.rejects import RejectFractionExceeded
from feature_store.secrets import scrub
from feature_store.spec import SpecError
from privacy.errors import PrivacyError
from recforge import config as config_mod
from recforge import logs
from serving.experiments.store import ExperimentStateError
from serving.registry import RegistryError
from serving.server import ServeError
from training.index.config import IndexRecallError


@dataclass(frozen=True)
class Option:
    flag: str
    key: str
    type: type
    help: str
    switch: bool = False  # a flag without a value that sets the key to true


# flag -> config key path; which commands accept which options
COMMON = [
    Option("--output-dir", "output_dir", str, "where outputs go (config: output_dir)"),
    Option("--seed", "seed", int, "seed of the feature-spec fitting samples (config: seed); the data, split and "
           "training have their own: source.seed, split.seed, train.runtime.seed, retrieval.runtime.seed"),
]
PREPARE = [
    Option("--ray-address", "prepare.ray_address", str, "attach to a Ray cluster, e.g. auto or ray://host:10001"),
    Option("--num-cpus", "prepare.num_cpus", int, "CPUs for the local Ray (config: prepare.num_cpus)"),
    Option("--max-reject-fraction", "prepare.max_reject_fraction", float, "fail above this reject fraction"),
    Option("--split", "split.method", str, "random, time or files (config: split.method)"),
]
GENERATE = [
    Option("--impressions", "source.n_impressions", int, "synthetic impressions (config: source.n_impressions)"),
    Option("--users", "source.n_users", int, "synthetic users (config: source.n_users)"),
    Option("--items", "source.n_items", int, "synthetic items (config: source.n_items)"),
]
MATERIALIZE = [
    Option("--online-store", "online_store.type", str, "sqlite or redis (config: online_store.type)"),
    Option("--online-path", "online_store.path", str, "SQLite file (config: online_store.path)"),
    Option("--redis-url", "online_store.url", str, "Redis URL (config: online_store.url)"),
]

# shared by `train ctr` and `train retrieval`
TRAIN_RAY_ADDRESS = Option("--ray-address", "prepare.ray_address", str,
                           "Ray cluster for --ray-workers (default: a local Ray)")
TRACKING_URI = Option("--tracking-uri", "train.tracking.uri", str,
                      "MLflow tracking URI (default: <output_dir>/mlflow.db)")
RETRIEVAL_TRACKING_URI = Option("--tracking-uri", "retrieval.tracking.uri", str,
                                "MLflow tracking URI (default: train.tracking.uri, else <output_dir>/mlflow.db)")

TRAIN = [
    Option("--model", "train.model", str, "model name: lr, fm, wide_deep, deepfm, dcnv2, dlrm, din, finalmlp"),
    Option("--epochs", "train.max_epochs", int, "maximum epochs (config: train.max_epochs)"),
    Option("--batch-size", "train.batch_size", int, "training batch size (config: train.batch_size)"),
    Option("--accelerator", "train.runtime.accelerator", str, "auto, cpu or gpu (config: train.runtime.accelerator)"),
    Option("--devices", "train.runtime.devices", int,
           "devices for the Trainer; >1 uses DDP, or the ranks with --sharded (config: train.runtime.devices)"),
    Option("--ray-workers", "train.runtime.ray_workers", int, "train through Ray Train with N workers"),
    TRAIN_RAY_ADDRESS,
    TRACKING_URI,
    Option("--resume", "train.resume", bool, "continue from the last checkpoint", switch=True),
    Option("--sharded", "train.sharded", bool, "TorchRec planner + DistributedModelParallel", switch=True),
    Option("--streaming", "train.streaming", bool, "stream row groups through a shuffle buffer", switch=True),
]

RETRIEVAL = [
    Option("--epochs", "retrieval.max_epochs", int, "maximum epochs (config: retrieval.max_epochs)"),
    Option("--batch-size", "retrieval.batch_size", int, "training batch size (config: retrieval.batch_size)"),
    Option("--accelerator", "retrieval.runtime.accelerator", str,
           "auto, cpu or gpu (config: retrieval.runtime.accelerator)"),
    Option("--ray-workers", "retrieval.runtime.ray_workers", int, "train through Ray Train with N workers"),
    TRAIN_RAY_ADDRESS,
    RETRIEVAL_TRACKING_URI,
]
REGISTRY = [
    Option("--tracking-uri", "train.tracking.uri", str, "MLflow tracking and registry URI (default: "
           "<output_dir>/mlflow.db)"),
]
SERVE = [
    Option("--port", "serving.port", int, "HTTP port on serving.host (config: serving.port, default 8000)"),
    Option("--ray-address", "serving.ray_address", str, "attach to a Ray cluster, e.g. auto (default: a local Ray)"),
]
INDEX = [
    Option("--index-type", "index.type", str, "auto, flat, ivf_flat, hnsw or ivf_pq (config: index.type)"),
    Option("--recall-floor", "index.recall_floor", float, "fail the build below this recall@k (config: index)"),
]

COMMANDS: dict[str, tuple[str, list[Option]]] = {
    "generate": ("write the built-in synthetic data set to `<output_dir>/raw` (deterministic by source.seed, cached)",
                 COMMON + GENERATE),
    "prepare": ("read and validate the source, join entity, profile and sequence features, split, fit the feature "
                "spec on train, write prepared Parquet, the spec, the rejects and the offline store",
                COMMON + PREPARE),
    "materialize": ("write the latest entity features, user profiles, segments and histories to the online store",
                    COMMON + MATERIALIZE),
    "demo": ("every stage in order: generate (synthetic sources only) -> prepare -> materialize -> train ctr; with "
             "a `retrieval:` section also -> train retrieval -> index build -> register and promote the ranker and "
             "the retriever -> serve them on 127.0.0.1, send a few requests, stop; then every stage's report",
             COMMON + PREPARE + GENERATE + MATERIALIZE),
    "train": ("`train ctr`: a CTR ranker on the prepared features (train.*); `train retrieval`: the two-tower "
              "candidate model and its baselines (retrieval.*)", COMMON + TRAIN),
    "index": ("`index build`: a FAISS index of the two-tower item embeddings, recall-checked against exact search",
              COMMON + INDEX),
    "config": ("validate a config as the stages will (every train.model_params entry against its model, the "
               "retrieval towers' features) and print it resolved (defaults filled in)", COMMON + PREPARE),
    "serve": ("serve the champion ranker and retriever over HTTP with Ray Serve until Ctrl-C; --detach returns once "
              "healthy, --stop stops a detached server", COMMON + SERVE),
    "register": ("register a finished training run as a model version with alias challenger: "
                 "`recforge register --config X --kind ranker|retriever [--run-id ID]`", COMMON + REGISTRY),
    "promote": ("gate a model version against the champion on the same held-out data and make it champion; "
                "exit 4 when the gate refuses", COMMON + REGISTRY),
    "rollback": ("make a model's `previous` version the champion again", COMMON + REGISTRY),
    "registry": ("`recforge registry list --config X`: models, versions, aliases, metrics and decisions",
                 COMMON + REGISTRY),
    "runs": ("`recforge runs list --config X`: the scenario's training runs with status, start and duration; a run "
             "left RUNNING by a process that is gone is marked KILLED", COMMON),
    "events": ("`events push FILE`: send a CSV / JSONL / Parquet file of events through the ingestion path (replay, "
               "backfill); `events rejected`: the dead-letter log (counts per reason, the latest rejected events); "
               "`events status`: the bus's lag and the stream's counters", COMMON),
    "stream": ("`stream run`: apply the bus's events to the online features and write the offline event log, until "
               "Ctrl-C (or --seconds, --until-idle)", COMMON),
    "experiment": ("`experiment start NAME`: check the arms' versions load, print the power calculation and route "
                   "traffic to the arms; `status NAME`: per-arm metrics and tests so far; `report NAME`: the HTML "
                   "report (also logged to MLflow); `stop NAME`; `list`", COMMON),
    "segment": ("customer segments: K-means on the customers' RFM (k by silhouette), named from their centroids, "
                "tested on the next period's revenue; assignments to the online store (analytics.segments)",
                COMMON + MATERIALIZE),
    "churn": ("churn risk: time to the next purchase with Cox and Weibull survival models (lifelines), scored on the "
              "period after the split beside a logistic-regression baseline; churn probability at the horizon to the "
              "online store (analytics.churn)", COMMON + MATERIALIZE),
    "ltv": ("customer lifetime value: BG/NBD purchases and Gamma-Gamma spend, scored on the period after the split "
            "beside the naive baseline; expected value per customer to the online store (analytics.ltv)",
            COMMON + MATERIALIZE),
    "budget": ("allocate a budget across channels (and segments) as a linear program solved by HiGHS: the allocation, "
               "the objective and the binding constraints with their shadow prices (analytics.budget)", COMMON),
    "attribution": ("credit conversions to channel touchpoints: first/last touch, linear, time decay, Markov removal "
                    "effect and Shapley values; on generated journeys, each method against the true contributions "
                    "(analytics.attribution)", COMMON),
    "report": ("privacy-safe aggregates: `report run NAME` releases a query of privacy.queries (group-by with "
               "cells under k suppressed, complementary cells too, optional Laplace/Gaussian noise from OpenDP paid "
               "from the data set's privacy budget); `report budget` shows the ledger; `report list` the queries",
               COMMON),
    "cleanroom": ("`cleanroom run`: join two parties' pseudonymised files inside RecForge and release only "
                  "aggregates (overlap, reach per segment, conversion lift by exposure), each under k and "
                  "differential privacy (privacy.cleanroom); no joined row ever leaves", COMMON),
    "simulate": ("drive a live server with synthetic users whose clicks and purchases follow the built-in "
                 "generator's true click model (synthetic scenarios): /recommend, then the outcomes to /events",
                 COMMON),
}
REGISTRY_COMMANDS = ("register", "promote", "rollback", "registry")
DATA_COMMANDS = ("generate", "prepare", "materialize")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recforge", description="RecForge: raw event logs to a served recommender.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, with every framework warning and log line (none filtered)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, options) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        default = "configs/demo.yaml" if name in ("demo", "generate") else None
        p.add_argument("--config", "-c", default=default, required=default is None and name != "serve",
                       help="scenario YAML (see configs/)" + (f"; default {default}" if default else ""))
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                       help="override any config key, e.g. --set split.seed=7 (repeatable)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        if name == "train":
            p.add_argument("kind", choices=["ctr", "retrieval"],
                           help="what to train: ctr (a ranker) or retrieval (the two-tower candidate model)")
        if name == "index":
            p.add_argument("action", choices=["build"], help="build: embeddings -> index, with the recall guard")
        if name == "runs":
            p.add_argument("action", choices=["list"], help="list: every run of the scenario's experiments")
        if name == "events":
            p.add_argument("action", choices=["push", "rejected", "status"],
                           help="push FILE, rejected (the dead-letter log) or status")
            p.add_argument("file", nargs="?", default=None, help="push: the .jsonl, .csv, .tsv or .parquet file")
            p.add_argument("--limit", type=int, default=20, help="rejected: how many of the latest to show")
        if name == "stream":
            p.add_argument("action", choices=["run"], help="run: the stream processor and the offline log writer")
            p.add_argument("--seconds", type=float, default=None, help="stop after this long")
            p.add_argument("--until-idle", action="store_true", help="stop once every event on the bus is applied "
                                                                     "and logged")
        if name == "experiment":
            p.add_argument("action", choices=["start", "status", "stop", "report", "list"],
                           help="start, status, stop or report NAME; list")
            p.add_argument("name", nargs="?", default=None, help="the experiment (a key of experiments.definitions)")
            p.add_argument("--reason", default=None, help="stop: why (recorded and shown in the report)")
        if name == "report":
            p.add_argument("action", choices=["run", "budget", "list"], help="run NAME, budget or list")
            p.add_argument("name", nargs="?", default=None, help="run: the query (a key of privacy.queries)")
            p.add_argument("--reset-total", default=None, metavar="DATASET",
                           help="budget: record the configured total of DATASET in the ledger (after changing it in "
                                "the config; kept in the ledger's history)")
        if name == "cleanroom":
            p.add_argument("action", choices=["run"], help="run: every clean-room release")
        if name == "simulate":
            p.add_argument("--url", default=None, help="the server (default: serving.host:serving.port)")
            p.add_argument("--requests", type=int, default=2000, help="how many /recommend calls (visits)")
            p.add_argument("--users", type=int, default=None, help="draw visitors from this many of the generator's "
                                                                   "users (default: all)")
            p.add_argument("--concurrency", type=int, default=4, help="visits in flight at once")
            p.add_argument("--k", type=int, default=10, help="items per /recommend")
            p.add_argument("--sim-seed", type=int, default=0, help="the simulation's seed (visitors, clicks)")
        if name in REGISTRY_COMMANDS:
            _registry_arguments(name, p)
        if name == "serve":
            p.add_argument("--detach", action="store_true", help="start in the background, return once healthy")
            p.add_argument("--stop", action="store_true", help="stop the server started for --port (or the "
                                                                "config's serving.port)")
        for opt in options:
            if opt.switch:
                p.add_argument(opt.flag, dest=_dest(opt), action="store_const", const=True, default=None,
                               help=opt.help)
            else:
                p.add_argument(opt.flag, dest=_dest(opt), type=opt.type, default=None, help=opt.help,
                               metavar=opt.flag.lstrip("-").upper().replace("-", "_"))
    from serving.client import add_parser as add_query_parser

    add_query_parser(sub)
    from recforge.draft import add_parser as add_init_parser

    add_init_parser(sub)
    _pseudonymise_parser(sub)
    return parser


def _pseudonymise_parser(sub: Any) -> None:
    text = ("write a copy of a CSV / TSV / Parquet file with its personal columns replaced by keyed HMAC-SHA256 "
            "pseudonyms (trimmed, lower-cased first), e.g. before a clean-room join; the key comes from an "
            "environment variable or a 0600 key file, never from a flag")
    p = sub.add_parser("pseudonymise", help=text, description=text)
    p.add_argument("file", help="the input file")
    p.add_argument("--id-column", required=True, help="the join column (e.g. email)")
    p.add_argument("--column", action="append", default=[], help="another personal column to hash (repeatable)")
    p.add_argument("--out", required=True, help="the Parquet file to write")
    p.add_argument("--key-env", default="RECFORGE_CLEANROOM_KEY", help="environment variable holding the key")
    p.add_argument("--key-file", default=None, help="file holding the key (mode 0600), instead of --key-env")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _pseudonymise(args: argparse.Namespace) -> int:
    from pathlib import Path

    from feature_store.config import PseudonymisationConfig
    from feature_store.pseudonymise import pseudonymise_file

    try:
        cfg = PseudonymisationConfig(enabled=True, key_env=args.key_env, key_file=args.key_file)
        out = pseudonymise_file(Path(args.file), Path(args.out), [args.id_column, *args.column], cfg)
    except ConfigError as exc:
        print(scrub(f"recforge pseudonymise: error: {exc}"), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"pseudonymised {out['rows']:,} rows of {out['input']}: {', '.join(out['columns'])} -> {out['output']} "
              f"(key id {out['key_id']})")
    return 0


def _registry_arguments(name: str, p: argparse.ArgumentParser) -> None:
    """What the registry commands act on (a run, a model version): arguments, not config keys."""
    if name == "register":
        p.add_argument("--kind", choices=["ranker", "retriever"], required=True,
                       help="ranker: a `train ctr` run; retriever: a `train retrieval` run (with its index)")
        p.add_argument("--run-id", default=None, help="the MLflow run to register (default: the scenario's latest "
                                                      "finished run of that kind)")
        p.add_argument("--index-dir", default=None, help="retriever: the index to log into the run's bundle "
                                                         "(default: <output_dir>/retrieval/bundle/index)")
    if name in ("promote", "rollback"):
        p.add_argument("--model", dest="model_name", required=name == "rollback", metavar="NAME",
                       help="registered model name, e.g. demo-ranker (see `recforge registry list`)")
    if name == "promote":
        p.add_argument("--version", type=int, default=None, metavar="N", help="the model version to promote")
        p.add_argument("--experiment", default=None, metavar="NAME",
                       help="promote the winner of this experiment (instead of --model/--version): its arm's "
                            "versions, each gated offline, with the online evidence in the review")
        p.add_argument("--force", action="store_true", help="promote even when the gate refuses (needs --reason; "
                                                            "who and why are recorded on the version)")
        p.add_argument("--reason", default=None, help="why the promotion is forced (recorded as a version tag)")
    if name == "registry":
        p.add_argument("action", choices=["list"], help="list: every registered model with its versions")


def _dest(opt: Option) -> str:
    return "opt_" + opt.flag.lstrip("-").replace("-", "_")


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """Flags become `KEY=VALUE` overrides applied after the YAML and before validation; --set comes last."""
    out: list[str] = []
    options = COMMANDS[args.command][1]
    if args.command == "train" and getattr(args, "kind", "ctr") == "retrieval":
        options = COMMON + RETRIEVAL
        allowed = {o.flag for o in options}
        ignored = [o.flag for o in TRAIN if o.flag not in allowed and getattr(args, _dest(o), None) is not None]
        if ignored:
            raise ConfigError(f"recforge train retrieval does not take {', '.join(ignored)} (options of `train ctr`); "
                              f"set retrieval.* keys with --set instead (docs/config.md#retrieval)")
    for opt in options:
        value = getattr(args, _dest(opt), None)
        if value is not None:
            shown = json.dumps(value) if isinstance(value, str) else "true" if value is True else value
            out.append(f"{opt.key}={shown}")
    return out + list(args.overrides)


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGPIPE"):  # `recforge ... | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.verbose)
    sys.excepthook = _scrubbed_excepthook
    if args.command == "query":  # a client of a running server: no config
        from serving.client import run as run_query

        return run_query(args)
    if args.command == "pseudonymise":  # a party's own file, before any scenario exists
        return _pseudonymise(args)
    if args.command == "init":  # drafts a config: has none yet
        from recforge.draft import run as run_init

        return run_init(args)
    if args.json:  # keep stdout valid JSON: no progress bars there
        os.environ["RECFORGE_PROGRESS"] = "0"
    try:
        no_config = args.command == "serve" and args.config is None  # `recforge serve --stop`
        data_only = args.command in DATA_COMMANDS  # no model is built: the model zoo (torch) is not imported
        cfg = None if no_config else config_mod.load(args.config, overrides_from_args(args), models=not data_only)
        if args.command == "serve":
            result = _serve(args, cfg, argv)
        elif args.command in REGISTRY_COMMANDS:
            result = _run_registry(args, cfg)
        else:
            result = _run(args.command, cfg, getattr(args, "kind", None), args)
    except (ConfigError, RejectFractionExceeded, FileNotFoundError, SpecError, ConnectionError,
            RegistryError, ServeError, StreamBusy, ExperimentStateError, PrivacyError) as exc:
        print(scrub(f"recforge {args.command}: error: {exc}"), file=sys.stderr)
        return 2
    except IndexRecallError as exc:  # a built index below the recall floor: nothing was written
        print(scrub(f"recforge {args.command}: error: {exc}"), file=sys.stderr)
        return 3
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):  # server unreachable, auth, ...
            print(scrub(f"recforge {args.command}: error: online store: {exc}"), file=sys.stderr)
            return 2
        raise
    if args.command == "promote" and not result["promoted"]:  # refused by the gate: the figures go to stderr
        from recforge.report import render

        print(scrub(render("promote", result)), file=sys.stderr)
        if args.json:
            print(scrub(json.dumps(result, indent=2, default=str)))
        return 4
    if args.json:
        print(scrub(json.dumps(result, indent=2, default=str)))
    else:
        from recforge.report import render

        print(scrub(render(args.command if getattr(args, "kind", None) != "retrieval" else "train_retrieval", result)))
    return 0


def _scrubbed_excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    """An unexpected error's traceback, with the config's secrets and any URL's credentials masked."""
    import traceback

    sys.stderr.write(scrub("".join(traceback.format_exception(kind, exc, tb))))


def _run(command: str, cfg: config_mod.RecForgeConfig, kind: str | None = None,
         args: argparse.Namespace | None = None) -> dict[str, Any]:
    from recforge import pipeline

    if command == "config":
        return cfg.model_dump(mode="json")
    if command == "generate":
        return pipeline.generate(cfg)
    if command == "prepare":
        return pipeline.prepare(cfg)
    if command == "materialize":
        return pipeline.materialize(cfg)
    if command == "train":
        return pipeline.train_retrieval(cfg) if kind == "retrieval" else pipeline.train_ctr(cfg)
    if command == "index":
        return pipeline.build_index(cfg)
    if command == "demo":
        return pipeline.demo(cfg)
    if command == "runs":
        return pipeline.runs(cfg)
    if command == "events":
        assert args is not None
        if args.action == "push" and not args.file:
            raise ConfigError("`recforge events push` needs the FILE to push (a .jsonl, .csv, .tsv or .parquet file)")
        return pipeline.events(cfg, args.action, file=args.file, limit=args.limit)
    if command == "stream":
        assert args is not None
        return pipeline.stream(cfg, seconds=args.seconds, until_idle=args.until_idle)
    if command == "experiment":
        assert args is not None
        return pipeline.experiment(cfg, args.action, args.name, reason=args.reason)
    if command in ("segment", "churn", "ltv", "budget", "attribution"):
        return pipeline.analysis(cfg, command)
    if command == "report":
        assert args is not None
        return pipeline.report(cfg, args.action, args.name, reset_total=args.reset_total)
    if command == "cleanroom":
        return pipeline.cleanroom(cfg)
    if command == "simulate":
        assert args is not None
        return pipeline.simulate(cfg, url=args.url, requests=args.requests, users=args.users,
                                 concurrency=args.concurrency, k=args.k, seed=args.sim_seed)
    raise AssertionError(command)


def _run_registry(args: argparse.Namespace, cfg: config_mod.RecForgeConfig) -> dict[str, Any]:
    from serving import registry

    settings = config_mod.registry_settings(cfg)
    if args.command == "register":
        if args.kind == "ranker":
            if args.index_dir is not None:
                raise ConfigError("--index-dir applies to `recforge register --kind retriever` only")
            return registry.register_ranker(settings, args.run_id).to_dict()
        return registry.register_retriever(settings, args.run_id, args.index_dir).to_dict()
    if args.command == "promote":
        if args.experiment is not None:
            if args.model_name is not None or args.version is not None:
                raise ConfigError("--experiment promotes the winning arm's versions: leave out --model and --version")
            return _promote_experiment(args, cfg)
        if args.model_name is None or args.version is None:
            raise ConfigError("recforge promote needs --model NAME --version N, or --experiment NAME")
        return registry.promote(settings, args.model_name, args.version, force=args.force,
                                reason=args.reason).to_dict()
    if args.command == "rollback":
        return registry.rollback(settings, args.model_name)
    return registry.list_models(settings)


def _promote_experiment(args: argparse.Namespace, cfg: config_mod.RecForgeConfig) -> dict[str, Any]:
    """`recforge promote --experiment NAME`: each of the winning arm's versions through the gate, with the online
    evidence beside it in the review."""
    from serving import registry
    from serving.experiments.manage import promotion_plan

    if args.force and not (args.reason or "").strip():
        raise ConfigError("--force needs a non-empty --reason: a forced promotion records who forced it and why")
    plan = promotion_plan(config_mod.app_settings(cfg), args.experiment, force=args.force)
    settings = config_mod.registry_settings(cfg)
    results = [registry.promote(settings, m["model"], m["version"], force=args.force, reason=args.reason,
                                online=plan["evidence"]).to_dict() for m in plan["promotions"]]
    return {**plan, "results": results, "promoted": all(r["promoted"] for r in results)}


def _serve(args: argparse.Namespace, cfg: config_mod.RecForgeConfig | None,
           argv: Sequence[str] | None) -> dict[str, Any]:
    """`recforge serve`: in the foreground until Ctrl-C, in the background (--detach) or stop one (--stop)."""
    from pathlib import Path

    from serving import server

    if args.stop:
        port = args.opt_port or (cfg.serving.port if cfg is not None else 8000)
        return {"action": "stop", **server.stop_detached(port)}
    if cfg is None:
        raise ConfigError("pass --config FILE (only `recforge serve --stop` works without one)")
    from feature_store import pseudonymise

    # a missing or short key stops here, not in every replica; and a key other than the one the data was hashed
    # with would make every user unknown (answered with the popular items): refused too
    p = pseudonymise.load(cfg.pseudonymisation)
    pseudonymise.check_same_key(p, config_mod.prepared_summary(cfg))
    if args.detach:  # the same command without --detach, in a new session, logging to a file
        child = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--detach"]
        log = Path(cfg.output_dir) / "serving" / f"serve-{cfg.serving.port}.log"
        return {"action": "detach", **server.start_detached(child, cfg.serving.port, cfg.serving.host, log)}
    return {"action": "serve", **server.serve_forever(config_mod.app_settings(cfg))}


if __name__ == "__main__":
    raise SystemExit(main())
