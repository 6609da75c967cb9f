"""The prepare job: raw source -> validated, joined, split events -> fitted spec -> prepared Parquet shards.

Before anything starts, `preflight` checks what the config and a look at the input files can tell: for a
table source (whose columns the config declares), that every file exists, is not empty and has a line 1 (or
Parquet schema) that fits the columns, and that an event time column exists when something needs one. So such
a mistake costs no Ray start-up.

Stages (each timed and reported in `PrepareResult.summary`):
1. read the source (rejects kept with file/line/reason; the reject fraction is checked);
2. assemble the raw event table: point-in-time joins of entity tables, user profiles (RFM, category
   affinity) and behaviour sequences, all columnar;
3. split (random/grouped/time, or by input file);
4. fit the feature spec on the TRAIN split (per-block partial statistics, merged here);
5. transform every split (`FeatureSpec.transform` per block) and write Parquet shards;
6. write the offline store (entity tables, profile snapshots, interaction log), spec, rejects, summary and
   the resolved config.

Stages 4 and 5 run on one of two engines (`prepare.engine`, chosen by `choose_engine`): `ray` hands the
joined rows to Ray Data through staged files, so large data streams through worker processes (or a
cluster); `local` runs the same `SpecFitter.partial`/`finish` and `FeatureSpec.transform` on the same blocks
(`blocks`) in this process, and neither imports nor starts Ray. Starting a local Ray costs seconds (4 s on a
quiet 2-core machine, 20-40 s on a busy one), which dominates a prepare of a few thousand rows; the
default threshold `prepare.local_max_rows` comes from timing both engines (docs/architecture.md#ray).
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store import progress
from feature_store.config import ConfigError, FeatureStoreConfig, PrepareConfig, TableSource, dump_config
from feature_store.layout import RunLayout
from feature_store.offline import OfflineStore, point_in_time_join
from feature_store.profiles import UserProfiles
from feature_store.raycluster import ensure_ray
from feature_store.readers.base import RawData
from feature_store.spec import FeatureSpec
from feature_store.spec_fit import SpecFitter
from feature_store.split import SPLITS, SplitReport, assign_splits

log = logging.getLogger("recforge.prepare")

HISTORY_TABLE = "interactions"


def layout(cfg: FeatureStoreConfig) -> RunLayout:
    return RunLayout(Path(cfg.output_dir))


@dataclass
class AssembledEvents:
    """Raw events with every joined column, and the split code of each row."""

    table: pa.Table
    codes: np.ndarray
    split: SplitReport
    offline_tables: dict[str, pa.Table] = field(default_factory=dict)
    profiles: UserProfiles | None = None


@dataclass(frozen=True)
class EngineChoice:
    """Which engine fits and transforms, and why (recorded in `summary.json`)."""

    engine: Literal["local", "ray"]
    reason: str


def choose_engine(p: PrepareConfig, event_rows: int) -> EngineChoice:
    """`prepare.engine`, with `auto` resolved: local below `prepare.local_max_rows` event rows without a cluster
    address, Ray otherwise."""
    if p.engine != "auto":
        return EngineChoice(p.engine, f"prepare.engine is {p.engine}")
    if p.ray_address:
        return EngineChoice("ray", f"auto chose ray: prepare.ray_address is {p.ray_address}")
    if event_rows < p.local_max_rows:
        return EngineChoice("local", f"auto chose local: {event_rows:,} event rows < prepare.local_max_rows "
                                     f"{p.local_max_rows:,}")
    return EngineChoice("ray", f"auto chose ray: {event_rows:,} event rows >= prepare.local_max_rows "
                               f"{p.local_max_rows:,}")


def _engine_needs_rows(p: PrepareConfig) -> bool:
    """Whether the engine depends on the data's size (else it is known, and Ray can start, before reading)."""
    return p.engine == "auto" and not p.ray_address


@dataclass
class _Staged:
    """What the read-to-staging half of the job hands to the fit and transform half: staged files for Ray, the
    split tables themselves for the local engine."""

    raw: RawData
    events_kept: int
    split: SplitReport
    engine: EngineChoice
    files: dict[str, list[Path]]
    tables: dict[str, pa.Table]
    split_rows: dict[str, int]
    label_mean: dict[str, float | None]
    has_time: bool


@dataclass
class PrepareResult:
    spec: FeatureSpec
    summary: dict[str, Any]
    layout: RunLayout


class _Timer:
    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with progress.step(f"prepare: {name}") as s:
            yield
        self.stages[name] = round(time.perf_counter() - s.started, 3)


# ------------------------------------------------------------------------------------------- assembling


def _check_columns(cfg: FeatureStoreConfig, table: pa.Table, has_time: bool = True) -> None:
    have = set(table.column_names)
    missing: list[str] = []
    f = cfg.features
    for group_name, group in (("categorical", f.categorical), ("numeric", f.numeric),
                              ("multi_valued", f.multi_valued), ("vector", f.vector)):
        for i, feat in enumerate(group):
            if feat.source_column not in have:
                missing.append(f"features.{group_name}.{i} ('{feat.name}') needs column '{feat.source_column}'")
    for key, col in (("label", f.label), ("timestamp", f.timestamp)):
        if col not in have and (key == "label" or has_time):
            missing.append(f"features.{key} names column '{col}'")
    for i, col in enumerate(f.passthrough):
        if col not in have:
            missing.append(f"features.passthrough.{i} names column '{col}'")
    if missing:
        raise ConfigError(
            "the configured features do not match the data:\n  " + "\n  ".join(missing)
            + f"\n  available columns after joins: {', '.join(sorted(have))}"
        )


def time_needs(cfg: FeatureStoreConfig) -> list[str]:
    """The config keys whose work needs the events' time column (`features.timestamp`)."""
    needs = ["split.method: time"] if cfg.split.method == "time" else []
    needs += [f"entities.{name}.timestamp (a point-in-time join)" for name, ent in cfg.entities.items()
              if ent.timestamp is not None]
    if cfg.profiles.enabled:
        needs.append("profiles.enabled")
    needs += [f"features.sequence.{i} ('{seq.name}')" for i, seq in enumerate(cfg.features.sequence)]
    return needs


def check_event_time(cfg: FeatureStoreConfig, columns: list[str], where: str) -> bool:
    """Whether the events (`columns`) have the time column; a ConfigError when they lack it and something
    needs it, naming the keys and what to do. `where` says where the columns come from."""
    ts = cfg.features.timestamp
    if ts in columns:
        return True
    needs = time_needs(cfg)
    if needs:
        raise ConfigError(
            f"features.timestamp: column '{ts}' is not in the events ({where}: {', '.join(columns)}), but "
            f"{'; '.join(needs)} need{'s' if len(needs) == 1 else ''} the event time. Set features.timestamp to "
            f"the column that holds it (declared `timestamp` under source.columns), or prepare without time: a "
            f"random or files split, static entities, no profiles or sequences"
        )
    return False


def split_files(cfg: FeatureStoreConfig) -> dict[str, str]:
    """`split.method: files`: split name -> file, in split order (`source.path` is train); {} otherwise."""
    files = cfg.split.files
    if cfg.split.method != "files" or files is None:
        return {}
    out = {"train": str(getattr(cfg.source, "path", ""))}
    if files.valid is not None:
        out["valid"] = files.valid
    out["test"] = files.test
    return out


def preflight(cfg: FeatureStoreConfig) -> None:
    """Check what can be told before Ray starts, from the config and a look at each input file of a table
    source: the files exist and are not empty, their line 1 or Parquet schema fits the declared columns, and an
    event time column exists when something needs one; the pseudonymisation key, when pseudonymisation is on."""
    from feature_store import pseudonymise

    pseudonymise.load(cfg.pseudonymisation)
    if not isinstance(cfg.source, TableSource):
        return
    from feature_store.readers.table import check_table_file, event_columns

    check_table_file(cfg.source)
    for name, path in split_files(cfg).items():
        if name != "train":
            check_table_file(cfg.source.model_copy(update={"path": path}), f"split.files.{name}")

    check_event_time(cfg, event_columns(cfg.source), "source.columns declares")


def assemble_events(cfg: FeatureStoreConfig, raw: RawData) -> AssembledEvents:
    """Join entity features, profiles and sequences onto the events and assign splits (no leakage).

    Events without the time column are assembled without time when nothing needs it (see `check_event_time`).
    """
    f = cfg.features
    events = raw.events
    has_time = check_event_time(cfg, events.column_names, "the events have")
    if not has_time:
        log.info("prepare: the events have no column '%s': prepared without event time", f.timestamp)
    codes, report = assign_splits(events, cfg.split, ts_column=f.timestamp, parts=raw.parts,
                                  files=split_files(cfg))
    offline: dict[str, pa.Table] = {}

    for name, ent in cfg.entities.items():
        if ent.table not in raw.tables:
            raise ConfigError(f"entities.{name}.table: the source has no table '{ent.table}' "
                              f"(has: {', '.join(sorted(raw.tables))})")
        feats = raw.tables[ent.table]
        unknown = [c for c in [ent.key, *ent.features] if c not in feats.column_names]
        if unknown:
            raise ConfigError(f"entities.{name}: table '{ent.table}' lacks columns {unknown} "
                              f"(has: {', '.join(feats.column_names)})")
        if ent.key not in events.column_names:
            raise ConfigError(f"entities.{name}.key: events have no column '{ent.key}'")
        clash = [c for c in ent.features if c in events.column_names]
        if clash:
            raise ConfigError(f"entities.{name}.features: {clash} already exist in the events; remove them "
                              f"from the entity's features or rename them in the source")
        events = point_in_time_join(
            events,
            feats,
            key=ent.key,
            event_ts=f.timestamp,
            feature_ts=ent.timestamp,
            ttl_seconds=ent.ttl_days * 86400 if ent.ttl_days else None,
            columns=list(ent.features),
        )
        offline[ent.table] = feats

    profiles = None
    if cfg.profiles.enabled:
        from feature_store.profiles import fit_user_profiles

        p = cfg.profiles
        if p.table not in raw.tables:
            raise ConfigError(f"profiles.table: the source has no table '{p.table}' (has: {sorted(raw.tables)})")
        items = raw.tables.get(p.category_table) if p.category_table else None
        if p.category_table and items is None:
            raise ConfigError(f"profiles.category_table: the source has no table '{p.category_table}'")
        train_end = _train_end_ts(events, codes, report, f.timestamp)
        profiles = fit_user_profiles(raw.tables[p.table], items, p, train_end_ts=train_end)
        events = profiles.add_to(events, ts=f.timestamp)

    if f.sequence:
        from feature_store.sequences import history_sequences

        cats = {c.name: c for c in f.categorical}
        for seq in f.sequence:
            source_col = cats[seq.source].source_column
            hist = history_sequences(
                events, user=f.user_key, item=source_col, ts=f.timestamp, max_len=seq.max_len,
                positive=f.label if seq.positive_only else None,
            )
            events = events.append_column(seq.name, hist)

    # the interaction log: online histories, behaviour tags and `as_of` come from it, so it keeps the item
    # attributes those read (point-in-time, as joined above)
    cats = {c.name: c.source_column for c in f.categorical}
    attrs = [cats.get(s.source, s.source) for s in f.sequence] + [cfg.events.stream.tag_column]
    keep = [c for c in dict.fromkeys([f.user_key, f.item_key, f.timestamp, f.label, *attrs])
            if c is not None and c in events.column_names]
    offline[HISTORY_TABLE] = events.select(keep)
    _check_columns(cfg, events, has_time)
    return AssembledEvents(events, codes, report, offline, profiles)


def _train_end_ts(events: pa.Table, codes: np.ndarray, report: SplitReport, ts: str) -> int:
    if report.train_end_ts is not None:
        return int(report.train_end_ts)
    train_ts = events.column(ts).to_numpy()[codes == 0]
    return int(train_ts.max()) + 1 if len(train_ts) else 0


# ------------------------------------------------------------------------------------------------ Ray


ROW = "__row"  # staged row number: names the prepared shards so that they sort in dataset order
MAX_STAGED_FILES = 16  # more files make Ray fetch Parquet footers in extra worker processes
# rows per Parquet row group of a prepared shard: what a streaming reader holds at a time. A shard grows with the
# data (at most 16 per split), and with Parquet's default (1Mi rows a group) streamed training's memory grew with
# it: 1.39 GiB at 5M rows, 3.02 GiB at 20M (docs/benchmarks.md, cost curves)
SHARD_ROW_GROUP = 131_072


def blocks(rows: int, batch_rows: int) -> list[tuple[int, int]]:
    """(first row, rows) of each block of a split that the fit and the transform see, with either engine.

    At least `batch_rows` rows a block and at most `MAX_STAGED_FILES` blocks; an empty split is one empty
    block. Both engines must cut the same blocks: quantile sampling is per block (its seed is the block's
    size), so other blocks would fit other bucket boundaries.
    """
    per_block = max(batch_rows, -(-rows // MAX_STAGED_FILES))
    return [(start, min(per_block, rows - start)) for start in range(0, max(rows, 1), per_block)]


def stage_split(table: pa.Table, directory: Path, batch_rows: int) -> list[Path]:
    """Write one split's joined rows (plus their row number) as uncompressed Parquet files for Ray to read,
    one file per block."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    table = table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    files = []
    for i, (start, n) in enumerate(blocks(table.num_rows, batch_rows)):
        path = directory / f"part-{i:05d}.parquet"
        pq.write_table(table.slice(start, n), path, compression="none", use_dictionary=False,
                       row_group_size=batch_rows)
        files.append(path)
    return files


def _shard_path(out_dir: str | Path, first_row: int) -> str:
    """A prepared shard is named by the split row it starts at, so that the shards sort in dataset order."""
    return f"{out_dir}/part-{first_row:012d}.parquet"


def _write_runs(batch: pa.Table, spec: FeatureSpec, out_dir: str) -> pa.Table:
    """Transform a block and write it as one shard per run of consecutive staged rows, named by its first row."""
    rows = batch.column(ROW).to_numpy()
    if len(rows) == 0:
        return pa.table({"rows": [0]})
    if (np.diff(rows) < 0).any():
        order = np.argsort(rows, kind="stable")
        batch, rows = batch.take(pa.array(order)), rows[order]
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    out = spec.transform(batch.drop_columns([ROW]))
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(rows)]])
    for lo, hi in zip(starts, ends):
        pq.write_table(out.slice(int(lo), int(hi - lo)), _shard_path(out_dir, int(rows[lo])),
                       row_group_size=SHARD_ROW_GROUP)
    return pa.table({"rows": [len(rows)]})


def _map_files(cfg: FeatureStoreConfig, items: list[dict[str, str]], fn: Any, fn_args: tuple[Any, ...],
               nodes: dict[str, int] | None = None) -> list[Any]:
    """Run `fn(path, *extra item fields, *fn_args)` once per staged file with Ray Data; returns the outputs and
    adds to `nodes` (Ray node id -> tasks) where each task ran, which `summary.json` records under `ray_nodes`.

    A dataset of file items mapped one item per task: each task reads its own staged Parquet file, so
    blocks stream through the workers without passing through the object store. (`ray.data.read_parquet`
    over the same files spends more on its metadata pass, footer fetches and file listing tasks, than the
    whole fit at a few million rows.) The staged files must be on storage every Ray node can read.
    """
    ray = ensure_ray(cfg.prepare.ray_address, cfg.prepare.num_cpus)
    keys = list(items[0])

    def run(batch: dict[str, Any], *args: Any) -> dict[str, list[Any]]:
        import ray

        rows = list(zip(*(batch[k] for k in keys)))
        node = ray.get_runtime_context().get_node_id()
        return {"out": [pickle.dumps(fn(*(str(v) for v in row), *args)) for row in rows], "node": [node] * len(rows)}

    ds = ray.data.from_items(items, override_num_blocks=len(items))
    done = ds.map_batches(run, batch_size=1, fn_args=fn_args).take_all()
    if nodes is not None:
        for r in done:
            nodes[str(r["node"])] = nodes.get(str(r["node"]), 0) + 1
    return [pickle.loads(r["out"]) for r in done]


def _fit_file(path: str, fitter: SpecFitter, columns: list[str]) -> Any:
    return fitter.partial(pq.read_table(path, columns=columns))


def fit_spec_ray(cfg: FeatureStoreConfig, train_files: list[Path], nodes: dict[str, int] | None = None) -> FeatureSpec:
    """Fit the spec with Ray Data: one partial-statistics task per staged train file, merged on the driver."""
    fitter = SpecFitter(cfg.features, seed=cfg.seed)
    needed = _fit_columns(cfg, pq.read_schema(train_files[0]).names)
    items = [{"path": str(f.resolve())} for f in train_files]
    return fitter.finish(_map_files(cfg, items, _fit_file, (fitter, needed), nodes))


def _fit_columns(cfg: FeatureStoreConfig, columns: list[str]) -> list[str]:
    f = cfg.features
    cols = [c.source_column for c in (*f.categorical, *f.numeric, *f.multi_valued, *f.vector)]
    return [c for c in dict.fromkeys(cols) if c in columns]


def _transform_columns(spec: FeatureSpec, have: list[str]) -> list[str]:
    """The staged columns the transform reads (its raw inputs, label, passthrough, row keys)."""
    return [c for c in dict.fromkeys([*spec.raw_columns(), spec.label, *spec.passthrough,
                                      *spec.key_columns().values()]) if c in have]


def _clear_shards(out_dirs: dict[str, Path]) -> None:
    for out_dir in out_dirs.values():
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*.parquet"):
            old.unlink()


def _write_empty_shard(spec: FeatureSpec, empty: pa.Table, out_dir: Path) -> None:
    """An empty split still gets a (typed, empty) shard so that readers find its schema."""
    pq.write_table(spec.transform(empty), _shard_path(out_dir, 0))


def _transform_file(path: str, out_dir: str, spec: FeatureSpec, columns: list[str]) -> int:
    return int(_write_runs(pq.read_table(path, columns=[*columns, ROW]), spec, out_dir).column("rows")[0].as_py())


def transform_ray(
    cfg: FeatureStoreConfig, spec: FeatureSpec, files: dict[str, list[Path]], out_dirs: dict[str, Path],
    rows: dict[str, int], nodes: dict[str, int] | None = None,
) -> dict[str, int]:
    """Transform every split's staged files in one Ray Data job, writing Parquet shards to `out_dirs[split]`.

    Returns the rows written per split, checked against `rows`.
    """
    _clear_shards(out_dirs)
    needed = _transform_columns(spec, pq.read_schema(next(iter(files.values()))[0]).names)
    items = [{"path": str(f.resolve()), "out": str(out_dirs[n].resolve()), "split": n}
             for n, fs in files.items() for f in fs]
    counts = _map_files(cfg, [{"path": i["path"], "out": i["out"]} for i in items], _transform_file, (spec, needed),
                        nodes)
    written = dict.fromkeys(files, 0)
    for item, count in zip(items, counts):
        written[item["split"]] += count
    for name, n in written.items():
        if n != rows[name]:
            raise RuntimeError(f"prepare wrote {n} rows to {out_dirs[name]}, expected {rows[name]}")
        if n == 0:
            _write_empty_shard(spec, pq.read_table(files[name][0], columns=needed).slice(0, 0), out_dirs[name])
    return written


# ----------------------------------------------------------------------------------------------- local


def fit_spec_local(cfg: FeatureStoreConfig, train: pa.Table) -> FeatureSpec:
    """Fit the spec in this process: the partial statistics of the same blocks as `fit_spec_ray`, merged."""
    fitter = SpecFitter(cfg.features, seed=cfg.seed)
    train = train.select(_fit_columns(cfg, train.column_names))
    return fitter.finish([fitter.partial(train.slice(start, n))
                          for start, n in blocks(train.num_rows, cfg.prepare.batch_rows)])


def transform_local(
    cfg: FeatureStoreConfig, spec: FeatureSpec, tables: dict[str, pa.Table], out_dirs: dict[str, Path],
) -> dict[str, int]:
    """Transform every split in this process, one shard per block, named as `transform_ray` names them."""
    _clear_shards(out_dirs)
    for name, table in tables.items():
        table = table.select(_transform_columns(spec, table.column_names))
        if table.num_rows == 0:
            _write_empty_shard(spec, table, out_dirs[name])
            continue
        for start, n in blocks(table.num_rows, cfg.prepare.batch_rows):
            pq.write_table(spec.transform(table.slice(start, n)), _shard_path(out_dirs[name], start),
                           row_group_size=SHARD_ROW_GROUP)
    return {name: t.num_rows for name, t in tables.items()}


def _staged_columns(cfg: FeatureStoreConfig, columns: list[str]) -> list[str]:
    """The raw columns the spec reads (features, label, passthrough, row keys): all the fit and transform need."""
    f = cfg.features
    cols = [c.source_column for c in (*f.categorical, *f.numeric, *f.multi_valued, *f.vector)]
    cols += [s.name for s in f.sequence] + [f.label, *f.passthrough, f.user_key, f.item_key, f.timestamp]
    return [c for c in dict.fromkeys(cols) if c in columns]


def _split_tables(table: pa.Table, codes: np.ndarray) -> dict[str, pa.Table]:
    """Zero-copy slices when the rows are already ordered by split (a time split of time-sorted events)."""
    if len(codes) and not (np.diff(codes) >= 0).all():
        order = np.argsort(codes, kind="stable")
        table, codes = table.take(pa.array(order)), codes[order]
    bounds = np.searchsorted(codes, np.arange(len(SPLITS) + 1), side="left")
    return {name: table.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])) for i, name in enumerate(SPLITS)}


# ------------------------------------------------------------------------------------------------- job


def prepare(cfg: FeatureStoreConfig, *, raw: RawData | None = None) -> PrepareResult:
    """Run the whole prepare job for `cfg`; see the module docstring."""
    t_start = time.perf_counter()
    if raw is None:
        preflight(cfg)
    timer = _Timer()
    lay = layout(cfg)
    lay.prepared.mkdir(parents=True, exist_ok=True)
    staging = lay.prepared / "_staging"

    chosen: Future[EngineChoice] = Future()

    def to_staged_files() -> _Staged:
        owns_raw = raw is None
        with timer.stage("read"):
            if raw is None and isinstance(cfg.source, TableSource) and split_files(cfg):
                from feature_store.readers import pseudonymise_raw
                from feature_store.readers.table import read_table_files

                src = pseudonymise_raw(read_table_files(cfg.source, split_files(cfg), lay.raw), cfg)
            elif raw is None:
                from feature_store.readers import read_scenario_source

                src = read_scenario_source(cfg, lay.raw)
            else:
                src = raw
            src.rejects.write(lay.rejects)
            src.rejects.check_fraction(src.total_read(), cfg.prepare.max_reject_fraction)
        engine = choose_engine(cfg.prepare, src.events.num_rows)
        chosen.set_result(engine)
        with timer.stage("assemble"):
            assembled = assemble_events(cfg, src)
        with timer.stage("offline_store"):
            store = OfflineStore(lay.offline)
            for name, t in assembled.offline_tables.items():
                store.write_table(name, t)
            if assembled.profiles is not None:
                save_profiles(store, assembled.profiles)
        with timer.stage("stage"):
            splits = _split_tables(assembled.table, assembled.codes)
            keep = _staged_columns(cfg, assembled.table.column_names)
            files: dict[str, list[Path]] = {}
            tables: dict[str, pa.Table] = {}
            if engine.engine == "ray":
                # the driver hands the joined rows to Ray through files and lets go of them: Ray streams the
                # blocks, so the peak memory of the fit and transform stages does not hold the whole table
                files = {n: stage_split(t.select(keep), staging / n, cfg.prepare.batch_rows)
                         for n, t in splits.items()}
            else:
                tables = {n: t.select(keep) for n, t in splits.items()}
            staged = _Staged(src, assembled.table.num_rows, assembled.split, engine, files, tables,
                             {n: t.num_rows for n, t in splits.items()},
                             {n: _label_mean(t, cfg.features.label) for n, t in splits.items()},
                             cfg.features.timestamp in assembled.table.column_names)
            if owns_raw:
                src.tables.clear()
        return staged

    # Ray starts (in this thread: it installs signal handlers) while a worker thread reads, joins and stages
    # the data; both mostly wait on other processes or run Arrow kernels that release the GIL. Where the engine
    # depends on the data's size, Ray starts as soon as the read has counted the events.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as pool:
        staging_job = pool.submit(to_staged_files)
        try:
            if _engine_needs_rows(cfg.prepare):
                wait([chosen, staging_job], return_when=FIRST_COMPLETED)  # the job ends first when the read fails
                start_ray = chosen.done() and chosen.result().engine == "ray"
            else:
                start_ray = cfg.prepare.engine != "local"
            if start_ray:
                with timer.stage("ray_start"):
                    ensure_ray(cfg.prepare.ray_address, cfg.prepare.num_cpus)
        finally:
            st = staging_job.result()
    raw, split_rows, label_mean, split_report = st.raw, st.split_rows, st.label_mean, st.split
    events_kept = st.events_kept
    out_dirs = {n: lay.split_dir(n) for n in SPLITS}
    ray_nodes: dict[str, int] = {}  # Ray node id -> fit and transform tasks that ran there
    with timer.stage("fit"):
        if st.engine.engine == "ray":
            spec = fit_spec_ray(cfg, st.files["train"], ray_nodes)
        else:
            spec = fit_spec_local(cfg, st.tables["train"])
        spec.save(lay.spec)
    with timer.stage("transform"):
        if st.engine.engine == "ray":
            written = transform_ray(cfg, spec, st.files, out_dirs, split_rows, ray_nodes)
        else:
            written = transform_local(cfg, spec, st.tables, out_dirs)
    shutil.rmtree(staging, ignore_errors=True)
    dump_config(cfg, lay.prepared / "resolved_config.yaml")
    rejects = raw.rejects.counts_by_reason()
    summary: dict[str, Any] = {
        "name": cfg.name,
        "source": cfg.source.type,
        "rows_read": raw.rows_read,
        "rows_read_total": raw.total_read(),
        "rows_rejected": len(raw.rejects),
        "rejected_by_reason": rejects,
        "reject_hints": raw.rejects.hints(),
        "events_kept": events_kept,
        "source_counts": raw.counts,
        "engine": st.engine.engine,
        "engine_reason": st.engine.reason,
        "ray_nodes": ray_nodes,
        "split": {"method": split_report.method, "rows": written,
                  "valid_start_ts": split_report.valid_start_ts,
                  "test_start_ts": split_report.test_start_ts,
                  "group_by": split_report.group_by, "groups": split_report.groups,
                  **({"files": split_report.files} if split_report.files else {})},
        "timestamp": cfg.features.timestamp if st.has_time else None,
        "vocab_sizes": spec.vocab_sizes(),
        "spec_fingerprint": spec.fingerprint(),
        "pseudonymised": raw.pseudonymised,
        "label_mean": label_mean,
        "outputs": {
            "prepared": str(lay.prepared),
            "spec": str(lay.spec / "feature_spec.json"),
            "rejects": str(lay.rejects),
            "offline_store": str(lay.offline),
        },
        "stage_seconds": timer.stages,
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    lay.summary.write_text(json.dumps(summary, indent=2))
    return PrepareResult(spec, summary, lay)


PROFILE_META = "profiles.json"


def save_profiles(store: OfflineStore, profiles: UserProfiles) -> None:
    """Persist fitted profile state (snapshots, categories, IDF) so materialize/serving recompute it exactly."""
    store.write_table("profile_rfm", profiles.rfm)
    if profiles.affinity is not None:
        store.write_table("profile_affinity", profiles.affinity)
    meta = {
        "user_key": profiles.user_key,
        "categories": list(profiles.categories),
        "idf": None if profiles.idf is None else [float(v) for v in profiles.idf],
        "ttl_seconds": profiles.ttl_seconds,
        "affinity_name": profiles.affinity_name,
        "data_end_ts": profiles.data_end_ts,
    }
    (store.root / PROFILE_META).write_text(json.dumps(meta, indent=2))


def load_profiles(store: OfflineStore) -> UserProfiles | None:
    path = store.root / PROFILE_META
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    return UserProfiles(
        meta["user_key"],
        store.read_table("profile_rfm"),
        store.read_table("profile_affinity") if meta["idf"] is not None else None,
        meta["categories"],
        None if meta["idf"] is None else np.asarray(meta["idf"], dtype=np.float64),
        meta["ttl_seconds"],
        meta["affinity_name"],
        meta.get("data_end_ts"),  # absent in stores written before it was recorded: the next-day rule only
    )


def _label_mean(t: pa.Table, label: str) -> float | None:
    if t.num_rows == 0:
        return None
    return float(pc.mean(t.column(label).cast(pa.float64())).as_py())


def read_prepared(directory: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """All shards of one prepared split as one table, in written order; only `columns` when given (a split's
    sequence and vector columns are most of its bytes: reading two scalar columns of a test split costs 8 bytes per
    row instead of the whole row's ~450)."""
    return pa.concat_tables(pq.read_table(f, columns=None if columns is None else list(columns))
                            for f in _prepared_shards(directory))


def prepared_columns(directory: str | Path) -> list[str]:
    """The column names of one prepared split, from its first shard's footer (nothing else is read)."""
    return list(pq.read_schema(_prepared_shards(directory)[0]).names)


def _prepared_shards(directory: str | Path) -> list[Path]:
    """The shards of one prepared split in written order; an error naming the fix where there are none."""
    d = Path(directory)
    files = sorted(d.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{d}: no prepared shards; run `recforge prepare --config ...` first")
    return files
