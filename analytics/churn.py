"""Churn as time to the next purchase: survival models (lifelines) beside the classifier a team tries first.

In a shop without contracts nobody announces that they left; what can be observed is how long a customer goes
without buying. So each customer known at a cut-off T gets a duration: the days from T to their next purchase
(an event), or the length of the observation window when they did not buy in it (censored). A customer's churn
probability at horizon h is S(h | features) = P(no purchase within h days).

Held out by time, twice over:
- train: customers known at T_train = split - window, durations observed in (T_train, split];
- test: customers known at the split, durations observed in (split, end of the data]
so the models never see the period they are scored on. Features are what `customers.customers_at` gives at the
cut-off (log1p, standardised on train): recency, frequency, monetary, tenure, average order value; and the
profile columns named in `analytics.churn.profile_columns` (e.g. country), one indicator per level that at least
`min_level_customers` train customers have, the most common level the reference (no column of its own) and the
rarer ones and nulls pooled into one "other" indicator, so that a level seen only at test or serving time maps to
"other" instead of a column the models never saw.

Models: Kaplan-Meier per segment (no features: the curves a marketer reads), Cox proportional hazards and a
Weibull accelerated-failure-time model (lifelines, with an L2 penalizer so that nearly collinear features still
fit), scored with the concordance index on test; and at the horizon, their churn probabilities and a logistic
regression trained on the train period's "no purchase within h days" label, all scored with the same AUC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from analytics.customers import DAY, Orders, customers_at, next_period
from feature_store.config import ConfigError

FEATURES = ("recency_days", "frequency", "monetary", "tenure_days", "avg_order_value")


OTHER = "other"

# profile column -> (reference level, levels with an indicator of their own, whether an "other" indicator exists)
Levels = dict[str, tuple[str, tuple[str, ...], bool]]


@dataclass(frozen=True)
class SurvivalData:
    """Customers known at `as_of` with their features (log1p), `duration` (days) and `event` (bought again)."""

    customers: pa.Table
    x: pd.DataFrame
    duration: np.ndarray
    event: np.ndarray
    as_of: int
    window_days: float
    levels: Levels


def profile_levels(customers: pa.Table, columns: tuple[str, ...], min_customers: int) -> Levels:
    """Each profile column's levels, chosen on `customers` (the train ones): see the module docstring."""
    out: Levels = {}
    for c in columns:
        counts = pd.Series(customers.column(c).to_pandas()).value_counts()  # nulls left out: they are "other"
        common = counts[counts >= min_customers]
        if common.empty:
            raise ConfigError(f"analytics.churn.profile_columns: no level of {c} has {min_customers} customers "
                              f"(analytics.churn.min_level_customers) among the {customers.num_rows} train "
                              f"customers; lower it or remove {c}")
        rare = int(customers.num_rows - common.sum())
        out[c] = (str(common.index[0]), tuple(str(v) for v in common.index[1:]), rare > 0)
    return out


def features(customers: pa.Table, levels: Levels | None = None) -> pd.DataFrame:
    """The models' inputs: log1p of each of `FEATURES`, then the profile indicators of `levels` (named
    `column=level`); standardised later, on the train customers."""
    x = pd.DataFrame({f: np.log1p(np.maximum(customers.column(f).to_numpy().astype(np.float64), 0.0))
                      for f in FEATURES})
    for c, (reference, own, other) in (levels or {}).items():
        values = customers.column(c).to_pandas().astype(object).to_numpy()
        for level in own:
            x[f"{c}={level}"] = (values == level).astype(np.float64)
        if other:
            x[f"{c}={OTHER}"] = (~np.isin(values, [reference, *own])).astype(np.float64)
    return x


def survival_data(orders: Orders, as_of: int, window_days: float, levels: Levels | None = None,
                  profile: tuple[str, ...] = (), min_level_customers: int = 30) -> SurvivalData:
    """Durations to the next purchase after `as_of`, censored at `window_days`. The profile indicators follow
    `levels`, or are chosen on these customers from the `profile` columns when `levels` is None."""
    customers = customers_at(orders, as_of)
    nxt = next_period(orders, customers, as_of, int(as_of + window_days * DAY))
    days = nxt.column("days_to_next").to_numpy()
    event = ~np.isnan(days)
    # a purchase in the first second after the cut-off is a duration of ~0: lifelines needs durations > 0
    duration = np.where(event, np.maximum(days, 1e-3), window_days)
    if levels is None:
        levels = profile_levels(customers, profile, min_level_customers)
    return SurvivalData(customers, features(customers, levels), duration, event, as_of, window_days, levels)


def split_train_test(orders: Orders, split: int, window_days: float, profile: tuple[str, ...] = (),
                     min_level_customers: int = 30) -> tuple[SurvivalData, SurvivalData]:
    """Train at `split - window`, test at `split` (module docstring), the profile levels chosen on train. Refuses
    a window reaching before the data."""
    t_train = int(split - window_days * DAY)
    if t_train <= orders.data_start + 30 * DAY:
        raise ConfigError(f"analytics.holdout_days {window_days:g}: churn trains on the window before the split "
                          f"and tests on the one after it, so the data must span more than twice the holdout plus "
                          f"a month; it spans {(orders.data_end - orders.data_start) / DAY:.0f} days: shorten "
                          f"analytics.holdout_days")
    train = survival_data(orders, t_train, window_days, profile=profile, min_level_customers=min_level_customers)
    return train, survival_data(orders, split, window_days, train.levels)


@dataclass(frozen=True)
class Standardizer:
    mean: pd.Series
    scale: pd.Series

    @classmethod
    def fit(cls, x: pd.DataFrame) -> Standardizer:
        scale = x.std(ddof=0)
        constant = [c for c in x.columns if not scale[c] > 0]
        if constant:
            raise ConfigError(f"churn: features {constant} take one value for every customer; the survival models "
                              f"cannot use them (too little or too uniform data)")
        return cls(x.mean(), scale)

    def __call__(self, x: pd.DataFrame) -> pd.DataFrame:
        return (x - self.mean) / self.scale


def fit_models(train: SurvivalData, penalizer: float) -> dict[str, Any]:
    """Cox PH and Weibull AFT on the train customers (standardised features). A fit that does not converge (a
    singular covariate matrix) is a ConfigError that says to raise the penalizer."""
    from lifelines import CoxPHFitter, WeibullAFTFitter
    from lifelines.exceptions import ConvergenceError

    std = Standardizer.fit(train.x)
    df = std(train.x).assign(duration=train.duration, event=train.event.astype(int))
    models: dict[str, Any] = {"standardizer": std}
    try:
        models["cox"] = CoxPHFitter(penalizer=penalizer).fit(df, "duration", "event")
        models["weibull"] = WeibullAFTFitter(penalizer=penalizer).fit(df, "duration", "event")
    except (ConvergenceError, np.linalg.LinAlgError) as exc:
        raise ConfigError(f"churn: the survival fit did not converge ({str(exc).splitlines()[0]}); the features are "
                          f"(nearly) collinear on this data: raise analytics.churn.penalizer (now {penalizer:g})"
                          ) from None
    return models


def churn_probability(model: Any, x: pd.DataFrame, horizon_days: float) -> np.ndarray:
    """S(horizon | x) for each row of the standardised features `x`: the event is a purchase, so surviving to
    the horizon means not having bought by then."""
    return model.predict_survival_function(x, times=[horizon_days]).to_numpy()[0]


def evaluate(models: dict[str, Any], train: SurvivalData, test: SurvivalData, horizon_days: float) -> dict[str, Any]:
    """Concordance on test for Cox and Weibull; AUC at the horizon for both and for a logistic regression trained
    on the train period's label. Returns the scores per customer too (for the ROC figure)."""
    from lifelines.utils import concordance_index
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    std = models["standardizer"]
    xt = std(test.x)
    churned = ~(test.event & (test.duration <= horizon_days))
    label_train = ~(train.event & (train.duration <= horizon_days))
    out: dict[str, Any] = {"horizon_days": horizon_days, "test_customers": len(churned),
                           "test_churn_rate": float(churned.mean()), "train_customers": len(label_train),
                           "scores": {}, "models": {}}
    if not test.event.any() or test.event.all():
        raise ConfigError(f"churn: {'no' if not test.event.any() else 'every'} customer known at the split bought "
                          f"again in the {test.window_days:g} days after it, so nothing can be ranked; change "
                          f"analytics.holdout_days")
    for name in ("cox", "weibull"):
        m = models[name]
        if name == "cox":  # higher partial hazard = sooner purchase
            c = concordance_index(test.duration, -m.predict_partial_hazard(xt).to_numpy(), test.event)
        else:
            c = concordance_index(test.duration, m.predict_median(xt).to_numpy(), test.event)
        p = churn_probability(m, xt, horizon_days)
        out["scores"][name] = p
        out["models"][name] = {"concordance": float(c), "auc": float(roc_auc_score(churned, p)),
                               "train_concordance": float(m.concordance_index_)}
    if len(np.unique(label_train)) < 2:
        raise ConfigError(f"churn: every train customer has the same label at horizon {horizon_days:g} days; the "
                          f"baseline cannot be fitted: change analytics.churn.horizon_days")
    logit = LogisticRegression(max_iter=1000).fit(std(train.x), label_train)
    p = logit.predict_proba(xt)[:, 1]
    out["scores"]["logistic regression"] = p
    out["models"]["logistic regression"] = {"concordance": None, "auc": float(roc_auc_score(churned, p)),
                                            "train_concordance": None}
    out["churned"] = churned
    return out
