"""One aggregate release: counts, sums and means per group (with margins), safe to leave the platform.

What a release is. `release(df, person, spec)` groups the rows of `df` by `spec.group_by` and releases, per cell,
the number of distinct people and each measure: "people" (the same count), "rows" (number of rows), "sum" and
"mean" of a column. The result has one row per cell (and per margin cell, level "(all)", when `margins`), never the
person column nor a row of the input.

Two modes.

- `mechanism="none"`: exact figures; the only protection is k-anonymity: every cell with fewer than k people is
  suppressed, then complementary suppression (privacy.suppress) hides enough other cells that no suppressed one
  can be recovered by subtraction from its line's margin. No contribution bounds and no clamping: the figures are
  those of a pandas groupby. This does *not* protect against differencing: two releases on data sets that differ
  by one person give that person's value by subtraction (privacy.checks.differencing_attack measures it), which is
  why the differentially private mode exists.
- `mechanism="laplace"` or `"gaussian"`: (epsilon, delta)-differential privacy for adding or removing one person,
  with noise calibrated and sampled by OpenDP (privacy.mechanisms).

The DP pipeline, in order.

1. Public keys. For a dim with public keys (`keys`), rows with other values are dropped (counted) and the cells
   are the full cross product of the keys, empty cells included, so which cells exist says nothing about the data.
   When some dim has no public keys, the cell keys themselves are private: they are released by OpenDP's
   threshold mechanism on the people counts (`make_laplace_threshold` / `make_gaussian_threshold`, the noisy
   count is released only above a threshold chosen so that the chance of revealing a key that one person created
   is within delta; this needs delta > 0). Only released keys get the other measures.
2. Contribution bounds. A person counts in at most L = `max_groups_per_person` cells: the rows of a person beyond
   L cells are dropped, keeping the L cells whose hash of (person, cell) is smallest, so reruns keep the same
   cells and no ordering of the input decides. Within one cell a person counts at most `max_rows_per_cell` (m)
   rows for "rows", "sum" and "mean" (the kept rows are again chosen by a hash, of the row). The numbers of
   dropped rows are in `meta["rows_dropped"]`.
3. Clamping. Sum and mean values are clamped to the measure's [lower, upper]; the bounds fix the sensitivity,
   whatever the data.
4. Noise. Per cell vector, one OpenDP measurement per released quantity: the people count (always released: k
   suppression needs it; a "people" measure is that count), one rows count per "rows" measure (plus one for the means
   when there is none), one sum per "sum" measure and per "mean" whose column and bounds no sum measure has (a mean
   otherwise divides that sum, at no extra cost). Sensitivities for one person, who reaches at most L cells with at
   most m rows each, each row at most M = max(|lower|, |upper|): people L1 = L (L2 = sqrt(L)); rows L1 = L*m (L2 =
   sqrt(L)*m); sum L1 = L*m*M (L2 = sqrt(L)*m*M). Counts get integer noise, sums float noise. The budget is split
   evenly over these quantities (basic composition: the epsilons add up to `epsilon`, and under the Gaussian the
   deltas to `delta`; under Laplace with private keys the whole delta goes to the key threshold).
   `meta["epsilon_split"]` is that split per quantity; `meta["measure_epsilon"]` the epsilon each measure rests on (a
   mean: its sum and the rows count, which other measures may share).
5. Post-processing, free of privacy cost: mean = noisy sum / noisy rows (NaN where the noisy rows are not
   positive); margins = sums of their noisy cells (a margin's people is then the sum of its cells' people counts:
   person-cells, equal to distinct people when L = 1); suppression of cells whose *noisy* people count is below k,
   then complementary suppression. Suppressed cells have every figure set to missing.

Intervals. `<name>_ci95` is the half-width of the 95% noise interval of the figure: exact for a cell (the
mechanism's quantile), the normal approximation with the exact variance for a margin summing n >= 2 cells (for
two Laplace cells its coverage is 94.1%, approaching 95% as n grows), and the delta method for a mean. They
describe the noise only, not the clamping or the dropped rows. 0 in exact mode.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import opendp.prelude as dp
import pandas as pd
from scipy import stats

from privacy.errors import PrivacyError
from privacy.mechanisms import Mechanism, calibrate
from privacy.suppress import ALL, COMPLEMENTARY, UNDER_K, suppress

MeasureKind = Literal["people", "rows", "sum", "mean"]
MechanismKind = Literal["none", "laplace", "gaussian"]
RESERVED = ("people", "suppressed", "reason")
LEVEL = 0.95
Z_LEVEL = float(stats.norm.ppf(0.5 + LEVEL / 2))
# Noisy rows count used by mean measures when the spec has no "rows" measure of its own.
MEAN_ROWS = "(rows for means)"


@dataclass(frozen=True)
class Measure:
    """One released figure per cell. "people" and "rows" take no column; "sum" and "mean" take a numeric column
    and both bounds, to which values are clamped under DP (the bounds set the sensitivity)."""

    name: str
    kind: MeasureKind
    column: str | None = None
    lower: float | None = None
    upper: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise PrivacyError(f"a measure needs a non-empty name; got {self.name!r}")
        where = f"measure '{self.name}'"
        if self.kind not in ("people", "rows", "sum", "mean"):
            raise PrivacyError(f"{where}: kind must be one of people, rows, sum, mean; got {self.kind!r}")
        if self.kind in ("people", "rows"):
            if self.column is not None or self.lower is not None or self.upper is not None:
                raise PrivacyError(f"{where}: a {self.kind} count takes no column or bounds; remove them")
            return
        if not isinstance(self.column, str) or not self.column:
            raise PrivacyError(f"{where}: a {self.kind} needs the column it adds up (column=...)")
        for bound in ("lower", "upper"):
            value = getattr(self, bound)
            if value is None:
                raise PrivacyError(f"{where}: a {self.kind} needs both bounds; set {bound}= (values are clamped to "
                                   f"[lower, upper] and the bounds fix how much one person can change it)")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise PrivacyError(f"{where}: {bound} must be a finite number; got {value!r}")
        assert self.lower is not None and self.upper is not None
        if self.lower >= self.upper:
            raise PrivacyError(f"{where}: lower ({self.lower}) must be below upper ({self.upper})")

    @property
    def bound(self) -> float:
        """M = max(|lower|, |upper|): the most one clamped row can add to or take from a sum."""
        assert self.lower is not None and self.upper is not None
        return max(abs(float(self.lower)), abs(float(self.upper)))


@dataclass(frozen=True)
class ReleaseSpec:
    """What to release and how (see the module docstring for each field's role)."""

    group_by: tuple[str, ...]
    measures: tuple[Measure, ...]
    k: int = 10
    mechanism: MechanismKind = "laplace"
    epsilon: float = 1.0
    delta: float = 0.0
    max_groups_per_person: int = 1
    max_rows_per_cell: int = 1
    margins: bool = True
    keys: dict[str, list[Any]] | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "group_by", tuple(self.group_by))
        object.__setattr__(self, "measures", tuple(self.measures))
        if len(set(self.group_by)) != len(self.group_by):
            raise PrivacyError(f"group_by lists a dim twice: {list(self.group_by)}")
        names = [m.name for m in self.measures]
        if len(set(names)) != len(names):
            raise PrivacyError(f"measure names must be unique; got {names}")
        for m in self.measures:
            if not isinstance(m, Measure):
                raise PrivacyError(f"measures must be Measure objects; got {m!r}")
            clash = m.name in self.group_by or m.name.endswith("_ci95") or (
                m.name in RESERVED and not (m.name == "people" and m.kind == "people"))
            if clash:
                raise PrivacyError(f"measure '{m.name}': the name is taken by a dim or a column of the released "
                                   f"table ({', '.join(RESERVED)}, *_ci95); rename it")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 2:
            raise PrivacyError(f"k must be an integer >= 2 (cells with fewer people are suppressed); got {self.k!r}")
        if self.mechanism not in ("none", "laplace", "gaussian"):
            raise PrivacyError(f"mechanism must be none, laplace or gaussian; got {self.mechanism!r}")
        for name in ("max_groups_per_person", "max_rows_per_cell"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PrivacyError(f"{name} must be an integer >= 1; got {value!r}")
        if self.mechanism != "none":
            eps = self.epsilon
            if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or eps <= 0:
                raise PrivacyError(f"epsilon must be a finite number > 0 under the {self.mechanism} mechanism; "
                                   f"got {eps!r}")
            dlt = self.delta
            if isinstance(dlt, bool) or not isinstance(dlt, int | float) or not 0 <= dlt < 1:
                raise PrivacyError(f"delta must be in [0, 1); got {dlt!r}")
            if self.mechanism == "gaussian" and dlt == 0:
                raise PrivacyError("delta must be > 0 under the gaussian mechanism (e.g. 1e-6); use laplace for "
                                   "pure epsilon-DP")
        if self.keys is not None:
            for dim, values in self.keys.items():
                if dim not in self.group_by:
                    raise PrivacyError(f"keys: '{dim}' is not a group_by dim ({list(self.group_by)}); remove it")
                if not isinstance(values, list | tuple) or len(values) == 0:
                    raise PrivacyError(f"keys['{dim}'] must be a non-empty list of the dim's public values")
                if len(set(values)) != len(values):
                    raise PrivacyError(f"keys['{dim}'] lists a value twice")
                if ALL in values:
                    raise PrivacyError(f"keys['{dim}'] contains '{ALL}', the margin level; rename that value")


@dataclass(frozen=True)
class Released:
    """The released table (one row per cell, margins included when asked) and what the release cost and did."""

    table: pd.DataFrame
    meta: dict[str, Any]


@dataclass(frozen=True)
class _Query:
    """One noisy quantity released per cell."""

    name: str
    kind: Literal["people", "rows", "sum"]
    measure: Measure | None


# ----------------------------------------------------------------------------------------------------- release


def release(df: pd.DataFrame, person: str, spec: ReleaseSpec) -> Released:
    """Release `spec` on `df`, where `person` identifies whose row each row is (see the module docstring)."""
    if spec.mechanism == "none":
        work, dropped = _input(df, person, spec)
        return _exact(work, person, spec, list(spec.group_by), dropped)
    return publish(prepare(df, person, spec))


def _input(df: pd.DataFrame, person: str, spec: ReleaseSpec) -> tuple[pd.DataFrame, dict[str, int]]:
    """The columns the release reads, rows outside the public keys dropped (counted)."""
    check_input(df, person, spec)
    dims = list(spec.group_by)
    columns = sorted({m.column for m in spec.measures if m.column is not None})
    work = df[[person, *dims, *columns]]
    dropped = {"outside_public_keys": 0, "max_groups_per_person": 0, "max_rows_per_cell": 0}
    if spec.keys:
        inside = np.ones(len(work), dtype=bool)
        for dim, values in spec.keys.items():
            inside &= work[dim].isin(values).to_numpy()
        dropped["outside_public_keys"] = int((~inside).sum())
        work = work[inside]
    return work, dropped


def check_input(df: pd.DataFrame, person: str, spec: ReleaseSpec) -> None:
    """Raise the PrivacyError `release` would raise for this data (a missing or null column, a non-numeric
    measure, the margin level among the values), so a caller can refuse before spending any budget."""
    if person not in df.columns:
        raise PrivacyError(f"the person column '{person}' is not in the data (columns: {list(df.columns)})")
    if person in spec.group_by:
        raise PrivacyError(f"the person column '{person}' cannot be a group_by dim: the release would list people")
    for dim in spec.group_by:
        if dim not in df.columns:
            raise PrivacyError(f"group_by dim '{dim}' is not a column of the data (columns: {list(df.columns)})")
        if df[dim].isna().any():
            raise PrivacyError(f"group_by dim '{dim}' has missing values: fill them (e.g. 'unknown') or filter "
                               f"those rows before the release")
        if (df[dim] == ALL).any():
            raise PrivacyError(f"group_by dim '{dim}' has the value '{ALL}', the margin level; rename it")
    if df[person].isna().any():
        raise PrivacyError(f"the person column '{person}' has missing values: every row needs its person")
    for m in spec.measures:
        if m.column is None:
            continue
        if m.column not in df.columns:
            raise PrivacyError(f"measure '{m.name}': column '{m.column}' is not in the data")
        if not pd.api.types.is_numeric_dtype(df[m.column]) or pd.api.types.is_bool_dtype(df[m.column]):
            raise PrivacyError(f"measure '{m.name}': column '{m.column}' must be numeric (dtype {df[m.column].dtype})")
        if df[m.column].isna().any():
            raise PrivacyError(f"measure '{m.name}': column '{m.column}' has missing values; fill or filter them")


def _patterns(dims: list[str], margins: bool) -> list[tuple[str, ...]]:
    """The dims each table level groups by: all of them first, then (with margins) every subset, the grand total
    last."""
    if not margins or not dims:
        return [tuple(dims)]
    out: list[tuple[str, ...]] = []
    for size in range(len(dims), -1, -1):
        out.extend(itertools.combinations(dims, size))
    return out


def _with_levels(frame: pd.DataFrame, dims: list[str], kept: tuple[str, ...]) -> pd.DataFrame:
    """Set the margin level on every dim a table level does not group by."""
    for dim in dims:
        if dim not in kept:
            frame[dim] = ALL
    return frame


# ------------------------------------------------------------------------------------------------------ exact


def _exact(work: pd.DataFrame, person: str, spec: ReleaseSpec, dims: list[str], dropped: dict[str, int]) -> Released:
    """Exact figures per observed cell and margin (distinct people, rows, sums, means), then suppression."""
    frames = []
    for kept in _patterns(dims, spec.margins):
        if kept:
            grouped = work.groupby(list(kept), sort=True, observed=True)
            agg = grouped[person].nunique().rename("people").to_frame()
            agg["_rows"] = grouped.size()
            for m in spec.measures:
                if m.column is not None:
                    agg[f"_sum:{m.name}"] = grouped[m.column].sum()
            agg = agg.reset_index()
        else:
            agg = pd.DataFrame({"people": [work[person].nunique()], "_rows": [len(work)]})
            for m in spec.measures:
                if m.column is not None:
                    agg[f"_sum:{m.name}"] = [float(work[m.column].sum())]
        agg = _with_levels(agg, dims, kept)
        if spec.margins and dims:
            agg = agg.astype({d: object for d in dims})
        frames.append(agg)
    cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    people = cells["people"].to_numpy(dtype=np.int64)
    rows = cells["_rows"].to_numpy(dtype=np.int64)
    values: dict[str, np.ndarray] = {}
    for m in spec.measures:
        if m.kind == "people":
            values[m.name] = people
        elif m.kind == "rows":
            values[m.name] = rows
        elif m.kind == "sum":
            values[m.name] = cells[f"_sum:{m.name}"].to_numpy(dtype=np.float64)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):  # a cell without rows has no mean: NaN
                values[m.name] = cells[f"_sum:{m.name}"].to_numpy(dtype=np.float64) / rows
    cis = {m.name: np.zeros(len(cells)) for m in spec.measures}
    table = _finish(cells, people, values, cis, np.zeros(len(cells)), spec, dims)
    meta = _meta(spec, table, dropped, queries={}, key_release="observed")
    return Released(table=table, meta=meta)


# -------------------------------------------------------------------------------------------------------- DP


@dataclass(frozen=True)
class _KeyThreshold:
    """OpenDP's threshold measurement releasing the cell keys with their noisy people counts."""

    measurement: dp.Measurement
    threshold: int


@dataclass(frozen=True)
class Prepared:
    """A DP release up to the noise: the candidate cells (the public cross product, or the observed cells when
    the keys go through the threshold), the exact bounded and clamped figures of every noisy quantity on them and
    the calibrated mechanisms. `publish` draws the noise and post-processes, so a simulation (privacy.checks)
    draws many releases of one data set through the same code as `release`."""

    spec: ReleaseSpec
    dims: tuple[str, ...]
    cells: pd.DataFrame
    exact: dict[str, np.ndarray]
    mechanisms: dict[str, Mechanism]
    threshold: _KeyThreshold | None
    dropped: dict[str, int]


def prepare(df: pd.DataFrame, person: str, spec: ReleaseSpec) -> Prepared:
    """Everything of a DP release of `spec` on `df` but the noise (`publish` adds it)."""
    if spec.mechanism == "none":
        raise PrivacyError("prepare/publish are the differentially private path; mechanism 'none' is released "
                           "exactly by release()")
    work, dropped = _input(df, person, spec)
    dims = list(spec.group_by)
    work, value_rows = _bound_contributions(work, person, spec, dims, dropped)
    queries = _queries(spec)
    eps_q = spec.epsilon / len(queries)
    delta_q = spec.delta / len(queries) if spec.mechanism == "gaussian" else 0.0
    L, m_rows = spec.max_groups_per_person, spec.max_rows_per_cell

    if dims:
        people = work.groupby(dims, sort=False, observed=True)[person].nunique()
        if not isinstance(people.index, pd.MultiIndex):
            people.index = pd.MultiIndex.from_arrays([people.index], names=dims)
    else:
        people = pd.Series([work[person].nunique()])
    threshold: _KeyThreshold | None = None
    if not dims:
        domain: pd.Index = pd.RangeIndex(1)
    elif all(spec.keys and d in spec.keys for d in dims):
        assert spec.keys is not None
        domain = pd.MultiIndex.from_product([list(spec.keys[d]) for d in dims], names=dims)
    else:
        domain = people.index
    mechanisms: dict[str, Mechanism] = {}
    if dims and domain is people.index:
        mechanisms["people"], threshold = _key_threshold(spec, eps_q, delta_q, dims)
    else:
        mechanisms["people"] = _mechanism(spec, "people", eps_q, delta_q, L)
    exact = {"people": _on_domain(people, domain, dims).astype(np.int64)}
    for q in queries[1:]:
        if q.kind == "rows":
            counts = value_rows.groupby(dims, sort=False, observed=True).size() if dims else pd.Series(
                [len(value_rows)])
            exact[q.name] = _on_domain(counts, domain, dims).astype(np.int64)
            sens = float(L * m_rows)
        else:
            m = q.measure
            assert m is not None and m.column is not None and m.lower is not None and m.upper is not None
            clamped = value_rows[m.column].astype(np.float64).clip(m.lower, m.upper)
            if dims:
                sums = clamped.groupby([value_rows[d] for d in dims], sort=False, observed=True).sum()
            else:
                sums = pd.Series([float(clamped.sum())])
            exact[q.name] = _on_domain(sums, domain, dims).astype(np.float64)
            sens = float(L * m_rows) * m.bound
        mechanisms[q.name] = _mechanism(spec, q.kind, eps_q, delta_q, L, sens)
    cells = domain.to_frame(index=False) if dims else pd.DataFrame(index=pd.RangeIndex(1))
    return Prepared(spec=spec, dims=tuple(dims), cells=cells, exact=exact, mechanisms=mechanisms,
                    threshold=threshold, dropped=dropped)


def publish(prepared: Prepared) -> Released:
    """Draw the noise of one release (one OpenDP call per quantity) and post-process: margins, means,
    intervals, suppression."""
    spec, dims, mechanisms = prepared.spec, list(prepared.dims), prepared.mechanisms
    exact, cells = prepared.exact, prepared.cells
    noisy: dict[str, np.ndarray] = {}
    if prepared.threshold is not None:
        released = prepared.threshold.measurement(
            dict(zip(map(str, range(len(cells))), exact["people"].tolist())))
        keep = np.sort(np.fromiter((int(i) for i in released), dtype=np.int64, count=len(released)))
        noisy["people"] = np.array([released[str(i)] for i in keep], dtype=np.float64)
        cells = cells.iloc[keep].reset_index(drop=True)
        exact = {name: values[keep] for name, values in exact.items()}
    else:
        noisy["people"] = mechanisms["people"].add_noise(exact["people"]).astype(np.float64)
    for name, values in exact.items():
        if name != "people":
            noisy[name] = mechanisms[name].add_noise(values).astype(np.float64)

    # post-processing: margins as sums of noisy cells, means, intervals
    table, n_cells = _margins(cells, noisy, dims, spec.margins)

    def ci(query: str) -> np.ndarray:
        mech = mechanisms[query]
        return np.where(n_cells == 1, mech.interval(LEVEL), Z_LEVEL * np.sqrt(n_cells * mech.variance()))

    rows_query = _rows_query(spec)
    values: dict[str, Any] = {}
    cis: dict[str, np.ndarray] = {}
    for m in spec.measures:
        if m.kind == "people":
            values[m.name] = table["people"].to_numpy()
            cis[m.name] = ci("people")
        elif m.kind in ("rows", "sum"):
            values[m.name] = table[m.name].to_numpy()
            cis[m.name] = ci(m.name)
        else:
            assert rows_query is not None
            sum_query = _sum_query(spec, m)
            total = table[sum_query].to_numpy()
            rows = table[rows_query].to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = np.where(rows > 0, total / rows, np.nan)
                var_total = n_cells * mechanisms[sum_query].variance()
                var_rows = n_cells * mechanisms[rows_query].variance()
                cis[m.name] = np.where(rows > 0, Z_LEVEL * np.sqrt(var_total + mean**2 * var_rows) / rows, np.nan)
            values[m.name] = mean
    for m in spec.measures:
        if m.kind in ("people", "rows"):
            values[m.name] = np.round(values[m.name]).astype(np.int64)
    people = np.round(table["people"].to_numpy()).astype(np.int64)
    out = _finish(table, people, values, cis, ci("people"), spec, dims)
    key_release = "threshold" if prepared.threshold is not None else "public"
    meta = _meta(spec, out, prepared.dropped, queries=mechanisms, key_release=key_release)
    if prepared.threshold is not None:
        meta["key_threshold"] = prepared.threshold.threshold
    return Released(table=out, meta=meta)


def _queries(spec: ReleaseSpec) -> list[_Query]:
    """The noisy quantities, people first: one per rows and sum measure, one per mean whose column and bounds no
    sum measure has (otherwise the mean divides that sum), plus a rows count for means when the spec has no rows
    measure ("people" measures are the people count)."""
    queries = [_Query("people", "people", None)]
    for m in spec.measures:
        if m.kind == "rows":
            queries.append(_Query(m.name, "rows", m))
        elif m.kind == "sum" or (m.kind == "mean" and _sum_query(spec, m) == m.name):
            queries.append(_Query(m.name, "sum", m))
    if _rows_query(spec) == MEAN_ROWS:
        queries.append(_Query(MEAN_ROWS, "rows", None))
    return queries


def _sum_query(spec: ReleaseSpec, mean: Measure) -> str:
    """The noisy sum a mean divides: a sum measure of the same column and bounds, else the mean's own."""
    for m in spec.measures:
        if m.kind == "sum" and (m.column, m.lower, m.upper) == (mean.column, mean.lower, mean.upper):
            return m.name
    return mean.name


def _rows_query(spec: ReleaseSpec) -> str | None:
    if not any(m.kind == "mean" for m in spec.measures):
        return None
    rows = [m.name for m in spec.measures if m.kind == "rows"]
    return rows[0] if rows else MEAN_ROWS


def _measure_queries(spec: ReleaseSpec) -> dict[str, list[str]]:
    """The noisy quantities each measure is computed from (shared ones appear under every measure using them)."""
    out: dict[str, list[str]] = {}
    for m in spec.measures:
        if m.kind == "people":
            out[m.name] = ["people"]
        elif m.kind in ("rows", "sum"):
            out[m.name] = [m.name]
        else:
            rows = _rows_query(spec)
            assert rows is not None
            out[m.name] = [_sum_query(spec, m), rows]
    return out


def _mechanism(spec: ReleaseSpec, kind: str, eps: float, delta: float, L: int,
               l1: float | None = None) -> Mechanism:
    """The calibrated mechanism of one quantity: L1 sensitivity for Laplace, L2 (sqrt(L) in place of L) for
    Gaussian; counts integer, sums float."""
    if kind == "people":
        l1 = float(L)
    assert l1 is not None
    if spec.mechanism == "laplace":
        return calibrate("laplace", eps, 0.0, l1, integer=kind != "sum")
    l2 = l1 / L * math.sqrt(L)
    return calibrate("gaussian", eps, delta, l2, integer=kind != "sum")


def _on_domain(exact: pd.Series, domain: pd.Index, dims: list[str]) -> np.ndarray:
    """`exact` (indexed by the cells that have rows) on the domain, 0 for the cells without rows."""
    if not dims:
        return exact.to_numpy()
    if not isinstance(exact.index, pd.MultiIndex):
        exact.index = pd.MultiIndex.from_arrays([exact.index], names=dims)
    return exact.reindex(domain, fill_value=0).to_numpy()


def _bound_contributions(work: pd.DataFrame, person: str, spec: ReleaseSpec, dims: list[str],
                         dropped: dict[str, int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep each person's L cells with the smallest hash of (person, cell); within a cell, the person's m rows
    with the smallest row hash (for rows and sums). Returns (rows for people counts, rows for values)."""
    if len(work) == 0:
        return work, work
    L, m = spec.max_groups_per_person, spec.max_rows_per_cell
    pair_hash = pd.util.hash_pandas_object(work[[person, *dims]], index=False).to_numpy()
    # 53 bits so the ranking (float inside pandas) is exact
    pair_key = pd.Series((pair_hash >> np.uint64(11)).astype(np.int64), index=work.index)
    cell_rank = pair_key.groupby(work[person], sort=False).rank(method="dense")
    keep = (cell_rank <= L).to_numpy()
    dropped["max_groups_per_person"] = int((~keep).sum())
    work = work[keep]
    row_hash = pd.util.hash_pandas_object(work, index=False).to_numpy()
    ordered = work.assign(_h=(row_hash >> np.uint64(11)).astype(np.int64)).sort_values("_h", kind="stable")
    within = ordered.groupby([person, *dims], sort=False, observed=True).cumcount().to_numpy()
    keep_rows = within < m
    dropped["max_rows_per_cell"] = int((~keep_rows).sum())
    return work, ordered[keep_rows].drop(columns="_h")


def _key_threshold(spec: ReleaseSpec, eps: float, delta_q: float,
                   dims: list[str]) -> tuple[Mechanism, _KeyThreshold]:
    """OpenDP's threshold mechanism on the people counts, releasing only cells whose noisy count clears the
    threshold: the smallest threshold that keeps the people query within its (epsilon, delta) share. Laplace:
    the scale of a plain count at this epsilon, the whole delta for the threshold. Gaussian: the scale of a plain
    count at half the delta share, the other half for the threshold."""
    L = spec.max_groups_per_person
    if spec.delta <= 0:
        missing = [d for d in dims if not (spec.keys and d in spec.keys)]
        raise PrivacyError(
            f"group_by dims {missing} have no public keys: under DP the set of cells would reveal who is in the data. "
            f"Give their public values in keys (every cell is then released, empty ones included), or set delta > 0 "
            f"(e.g. 1e-6) so the keys are released by OpenDP's threshold mechanism")
    domain_map = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64"))
    if spec.mechanism == "laplace":
        delta = spec.delta
        mech = calibrate("laplace", eps, 0.0, float(L), integer=True)
        d_in: tuple[int, float, float] = (L, float(L), 1.0)
        metric = dp.l01inf_distance(dp.absolute_distance(T=float))

        def build(t: int) -> dp.Measurement:
            return dp.m.make_laplace_threshold(domain_map, metric, scale=mech.scale, threshold=t)
    else:
        delta = delta_q
        mech = calibrate("gaussian", eps, delta / 2, math.sqrt(L), integer=True)
        d_in = (L, math.sqrt(L), 1.0)
        metric = dp.l02inf_distance(dp.absolute_distance(T=float))

        def build(t: int) -> dp.Measurement:
            inner = dp.m.make_gaussian_threshold(domain_map, metric, scale=mech.scale, threshold=t)
            return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(inner), delta)

    def fits(t: int) -> bool:
        try:
            return bool(build(t).check(d_in, (eps, delta)))
        except dp.OpenDPException:  # below the l-infinity sensitivity, or more delta than the share
            return False

    try:
        threshold = int(dp.binary_search(fits, bounds=(1, 2**30), T=int))
    except ValueError as exc:
        raise PrivacyError(f"no key threshold reaches epsilon {eps:g}, delta {delta:g} for the people count; "
                           f"raise epsilon or delta") from exc
    mech = Mechanism(kind=mech.kind, epsilon=eps, delta=delta, sensitivity=mech.sensitivity, integer=True,
                     scale=mech.scale)
    return mech, _KeyThreshold(measurement=build(threshold), threshold=threshold)


def _margins(interior: pd.DataFrame, noisy: dict[str, np.ndarray], dims: list[str],
             margins: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """The interior cells and (with margins) every margin as the sum of its noisy cells; with the number of
    interior cells each row sums."""
    base = pd.DataFrame({**{d: interior[d].to_numpy() for d in dims}, **noisy, "_n": np.ones(len(interior))},
                        index=pd.RangeIndex(len(interior)))
    if not margins or not dims or len(base) == 0:
        return base, base["_n"].to_numpy()
    frames = [base.astype({d: object for d in dims})]
    sums = [*noisy, "_n"]
    for kept in _patterns(dims, True)[1:]:
        if kept:
            agg = base.groupby(list(kept), sort=False, observed=True)[sums].sum().reset_index()
            agg = agg.astype({d: object for d in kept})
        else:
            agg = base[sums].sum().to_frame().T
        frames.append(_with_levels(agg, dims, kept)[[*dims, *sums]])
    cells = pd.concat(frames, ignore_index=True)
    return cells, cells["_n"].to_numpy(dtype=np.float64)


# ------------------------------------------------------------------------------------------------------ shared


def _finish(cells: pd.DataFrame, people: np.ndarray, values: dict[str, np.ndarray], cis: dict[str, np.ndarray],
            people_ci: np.ndarray, spec: ReleaseSpec, dims: list[str]) -> pd.DataFrame:
    """The released table: suppression (under k, then complementary) on the released people count, every figure
    of a suppressed cell blanked. Counts arrive as int64 and leave as nullable Int64."""
    keys = {d: cells[d].to_numpy() for d in dims}
    marked = suppress(pd.DataFrame({**keys, "people": people.astype(np.float64)}), dims, spec.k)
    hidden = marked["suppressed"].to_numpy(dtype=bool)
    columns: dict[str, Any] = {**keys, "people": _blank(people, hidden)}
    for m in spec.measures:
        if m.name != "people":
            columns[m.name] = _blank(values[m.name], hidden)
    columns["suppressed"] = hidden
    columns["reason"] = marked["reason"].to_numpy()
    columns["people_ci95"] = _blank(people_ci, hidden)
    for m in spec.measures:
        if m.name != "people":
            columns[f"{m.name}_ci95"] = _blank(cis[m.name], hidden)
    return pd.DataFrame(columns, index=pd.RangeIndex(len(hidden)))


def _blank(values: np.ndarray, hidden: np.ndarray) -> Any:
    """The figures with suppressed cells missing: Int64 <NA> for counts, NaN for the rest."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer):
        return pd.arrays.IntegerArray(values.astype(np.int64), hidden.copy())
    return np.where(hidden, np.nan, values.astype(np.float64))


def _meta(spec: ReleaseSpec, table: pd.DataFrame, dropped: dict[str, int], queries: dict[str, Mechanism],
          key_release: str) -> dict[str, Any]:
    reasons = table["reason"].value_counts().to_dict()
    return {
        "mechanism": spec.mechanism,
        "epsilon_spent": float(sum(m.epsilon for m in queries.values())),
        "delta_spent": float(sum(m.delta for m in queries.values())),
        "epsilon_split": {name: m.epsilon for name, m in queries.items()},
        "measure_epsilon": {name: float(sum(queries[q].epsilon for q in used))
                            for name, used in _measure_queries(spec).items()} if queries else {},
        "delta_split": {name: m.delta for name, m in queries.items()},
        "scales": {name: m.scale for name, m in queries.items()},
        "sensitivities": {name: m.sensitivity for name, m in queries.items()},
        "rows_dropped": dict(dropped),
        "k": spec.k,
        "max_groups_per_person": spec.max_groups_per_person,
        "max_rows_per_cell": spec.max_rows_per_cell,
        "key_release": key_release,
        "cells": len(table),
        "suppressed": {UNDER_K: int(reasons.get(UNDER_K, 0)), COMPLEMENTARY: int(reasons.get(COMPLEMENTARY, 0))},
    }
