"""The clean room: two parties learn what their customers have in common without handing each other a row.

Who does what:
1. Each party pseudonymises its own file with the key both agreed on (`recforge pseudonymise FILE --id-column
   email --out FILE.parquet`, key from `RECFORGE_CLEANROOM_KEY` or a key file): the join column becomes keyed
   HMAC-SHA256 pseudonyms (trimmed, lower-cased first), and the file's Parquet metadata records which columns and
   which key (its public id, never the key).
2. RecForge reads both files (`privacy.cleanroom`), refuses a file whose join column is not pseudonymised or was
   hashed under another key, joins them in memory and releases three aggregates, each with k-anonymity and Laplace
   noise from OpenDP, paid from the clean room's privacy budget (one ledger entry per run, all or nothing):
   - overlap: people only in the advertiser's list, only in the publisher's, in both;
   - reach per segment: the advertiser's customers per segment, exposed or not (segments released only above a
     noisy threshold, so a segment of one person does not even show its name);
   - conversion lift by exposure: customers and conversions, exposed or not (per campaign when a campaign column is
     given), and the lift of the exposed group's conversion rate over the unexposed one's, with its interval from
     the noise (delta method).
3. Only those tables are written (JSON, Markdown, HTML under `<output_dir>/privacy/cleanroom/`). No command and no
   endpoint returns joined rows: the joined frame lives in this function only, group-by columns are the declared
   attributes (never the join column), and k is at least 5.

What a party can learn: the noisy aggregates above, nothing per person; the other party's ids stay pseudonyms
under a key RecForge holds, and pseudonyms of people outside the overlap never leave either file's owner.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from feature_store.config import FeatureStoreConfig, PseudonymisationConfig
from feature_store.pseudonymise import key_id_of, marked, read_key
from privacy.config import CleanRoomConfig, CleanRoomParty, PrivacyConfig
from privacy.errors import BudgetExceeded, PrivacyError
from privacy.release import Measure, ReleaseSpec, release
from privacy.reports import budget_json, open_ledger, release_doc, write_release
from serving.registry.store import os_user

DATASET = "cleanroom"
PERSON = "pseudonym"
EXPOSED = ("exposed", "not exposed")
MEMBERSHIP = ("advertiser only", "publisher only", "both")


def cleanroom_dir(fs: FeatureStoreConfig) -> Path:
    return Path(fs.output_dir) / "privacy" / "cleanroom"


def _key_config(cfg: CleanRoomConfig) -> PseudonymisationConfig:
    return PseudonymisationConfig(enabled=True, key_env=cfg.key_env, key_file=cfg.key_file)


def read_party(side: str, party: CleanRoomParty, key_id: str) -> pd.DataFrame:
    """A party's declared columns, its join column renamed `pseudonym`; refused unless pseudonymised under the
    shared key (see the module docstring)."""
    path = Path(party.path)
    where = f"privacy.cleanroom.{side}.path"
    if not path.is_file():
        raise PrivacyError(f"{where}: {path} does not exist")
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # not Parquet: a raw CSV of ids, say
        raise PrivacyError(f"{where}: {path} is not a Parquet file written by `recforge pseudonymise` ({exc}); run "
                           f"`recforge pseudonymise {path} --id-column {party.id_column} --out OUT.parquet`") from None
    fix = (f"run `recforge pseudonymise {path} --id-column {party.id_column} --out OUT.parquet` with the shared key "
           f"and point {where} at OUT.parquet")
    mark = marked(schema)
    if mark is None or party.id_column not in mark[1]:
        raise PrivacyError(f"{where}: {path}: column '{party.id_column}' holds unhashed ids (the file carries no "
                           f"pseudonymisation record for it); the clean room joins pseudonyms only: {fix}")
    if mark[0] != key_id:
        raise PrivacyError(f"{where}: {path} was pseudonymised under another key (key id {mark[0]}, the clean "
                           f"room's is {key_id}): the parties must hash with the same key; {fix}")
    missing = [c for c in [party.id_column, *party.columns] if c not in schema.names]
    if missing:
        raise PrivacyError(f"{where}: {path} has no column(s) {missing} (it has {schema.names})")
    frame = pq.read_table(path, columns=[party.id_column, *party.columns]).to_pandas()
    frame = frame.rename(columns={party.id_column: PERSON})
    if frame[PERSON].isna().any():
        raise PrivacyError(f"{where}: {path}: {int(frame[PERSON].isna().sum())} rows have no '{party.id_column}'; "
                           f"drop them before pseudonymising")
    return frame


def run_cleanroom(fs: FeatureStoreConfig, privacy: PrivacyConfig) -> dict[str, Any]:
    """`recforge cleanroom run` (see the module docstring)."""
    cfg = privacy.cleanroom
    if cfg is None:
        raise PrivacyError("no privacy.cleanroom section: declare the two parties' files (docs/privacy.md)")
    t0 = time.perf_counter()
    key_id = key_id_of(read_key(_key_config(cfg)))
    adv = read_party("advertiser", cfg.advertiser, key_id)
    pub = read_party("publisher", cfg.publisher, key_id)
    queries = _queries(cfg, adv, pub)

    ledger = open_ledger(fs, privacy, DATASET, cfg.budget)
    eps = sum(spec.epsilon for _, _, spec in queries)
    dlt = sum(spec.delta for _, _, spec in queries)
    try:
        ledger.spend(DATASET, eps, dlt, query="cleanroom run: " + ", ".join(n for n, _, _ in queries), who=os_user())
    except BudgetExceeded as exc:
        raise PrivacyError(f"clean room refused, nothing released and the ledger unchanged: this run needs epsilon "
                           f"{float(exc.requested[0]):.6g}, delta {float(exc.requested[1]):.6g} and the clean room "
                           f"has {float(exc.remaining[0]):.6g}, {float(exc.remaining[1]):.6g} left (privacy."
                           f"cleanroom.budget)") from None
    out_dir = cleanroom_dir(fs)
    releases = []
    for name, frame, spec in queries:
        rel = release(frame, PERSON, spec)
        table = _with_rates(rel.table) if name == "conversion_lift" else rel.table
        doc = release_doc(name, DATASET, spec, table, rel.meta, budget_json(ledger.budget(DATASET)))
        if name == "conversion_lift":
            doc["lift"] = _lift(table)
        releases.append({**doc, "outputs": write_release(out_dir, doc)})
    return {"key_id": key_id, "advertiser_rows": len(adv), "publisher_rows": len(pub), "releases": releases,
            "budget": budget_json(ledger.budget(DATASET)), "seconds": round(time.perf_counter() - t0, 3)}


def _queries(cfg: CleanRoomConfig, adv: pd.DataFrame, pub: pd.DataFrame) -> list[tuple[str, pd.DataFrame,
                                                                                          ReleaseSpec]]:
    """(name, input frame, spec) of each release; the frames are the join's only form, never written."""
    a_ids = pd.Index(adv[PERSON].unique())
    p_ids = pd.Index(pub[PERSON].unique())
    both = a_ids.intersection(p_ids)
    membership = pd.DataFrame({PERSON: a_ids.union(p_ids)})
    in_a = membership[PERSON].isin(a_ids).to_numpy()
    in_p = membership[PERSON].isin(p_ids).to_numpy()
    membership["membership"] = np.where(in_a & in_p, MEMBERSHIP[2], np.where(in_a, MEMBERSHIP[0], MEMBERSHIP[1]))
    people = (Measure("people", "people"),)
    common = {"k": cfg.k, "mechanism": "laplace", "epsilon": cfg.epsilon, "margins": True}
    out: list[tuple[str, pd.DataFrame, ReleaseSpec]] = [
        ("overlap", membership, ReleaseSpec(group_by=("membership",), measures=people,
                                            keys={"membership": list(MEMBERSHIP)}, **common))]  # type: ignore[arg-type]
    customers = adv.drop_duplicates(PERSON)
    customers = customers.assign(exposed=np.where(customers[PERSON].isin(both), EXPOSED[0], EXPOSED[1]))
    if cfg.segment_column:
        frame = customers[[PERSON, cfg.segment_column, "exposed"]].fillna({cfg.segment_column: "unknown"})
        out.append(("reach_per_segment", frame, ReleaseSpec(
            group_by=(cfg.segment_column, "exposed"), measures=people, keys={"exposed": list(EXPOSED)},
            delta=cfg.delta, **common)))  # type: ignore[arg-type]
    if cfg.converted_column:
        conv = customers[cfg.converted_column].astype(float).clip(0, 1)
        frame = customers[[PERSON, "exposed"]].assign(converted=conv.to_numpy())
        measures = (Measure("people", "people"), Measure("converted", "sum", "converted", 0.0, 1.0))
        group: tuple[str, ...] = ("exposed",)
        keys: dict[str, list[Any]] = {"exposed": list(EXPOSED)}
        if cfg.campaign_column:
            seen = pub[[PERSON, cfg.campaign_column]].drop_duplicates()
            frame = frame.merge(seen, on=PERSON, how="left").fillna({cfg.campaign_column: "(none)"})
            group = (cfg.campaign_column, "exposed")
        out.append(("conversion_lift", frame, ReleaseSpec(
            group_by=group, measures=measures, keys=keys, delta=cfg.delta if cfg.campaign_column else 0.0,
            max_groups_per_person=3 if cfg.campaign_column else 1, **common)))  # type: ignore[arg-type]
    return out


def _with_rates(table: pd.DataFrame) -> pd.DataFrame:
    """Conversion rate per released cell (post-processing of the noisy figures: free of privacy cost)."""
    people = pd.to_numeric(table["people"], errors="coerce")
    converted = pd.to_numeric(table["converted"], errors="coerce")
    rate = (converted / people).where(people > 0)
    return table.assign(conversion_rate=rate.clip(0, 1))


def _lift(table: pd.DataFrame) -> dict[str, Any] | None:
    """Exposed vs not exposed over all campaigns: rate ratio - 1 and its 95% interval from the noise (delta
    method on the released counts and their noise intervals)."""
    rows = table
    for dim in [c for c in table.columns if c not in ("exposed", "people", "converted", "suppressed", "reason",
                                                       "conversion_rate") and not c.endswith("_ci95")]:
        rows = rows[rows[dim] == "(all)"]
    by = {r["exposed"]: r for r in rows.to_dict(orient="records")}
    if not all(e in by and not by[e]["suppressed"] for e in EXPOSED):
        return None
    rates, variances = {}, {}
    for e in EXPOSED:
        n, c = float(by[e]["people"]), float(by[e]["converted"])
        if n <= 0 or c <= 0:
            return None
        sd_n, sd_c = by[e]["people_ci95"] / 1.96, by[e]["converted_ci95"] / 1.96
        rates[e] = c / n
        variances[e] = (sd_c / c) ** 2 + (sd_n / n) ** 2  # variance of log(rate) from the noise
    log_ratio = np.log(rates[EXPOSED[0]] / rates[EXPOSED[1]])
    half = 1.96 * float(np.sqrt(variances[EXPOSED[0]] + variances[EXPOSED[1]]))
    return {"exposed_rate": rates[EXPOSED[0]], "unexposed_rate": rates[EXPOSED[1]],
            "lift": float(np.exp(log_ratio) - 1), "lift_low": float(np.exp(log_ratio - half) - 1),
            "lift_high": float(np.exp(log_ratio + half) - 1),
            "note": "interval from the privacy noise only, not the sampling of customers"}
