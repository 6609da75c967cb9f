"""Marketing analytics on the scenario's data: customer segments (K-means on RFM), churn (survival analysis),
lifetime value (BG/NBD and Gamma-Gamma), budget allocation (a linear program solved by HiGHS) and multi-touch
attribution (Markov removal effect, Shapley values).

Each analysis is a `recforge` command with a config section (`analytics:`), Parquet outputs, an HTML report with
plots rendered by the one report renderer (serving.reports) and an MLflow run in the scenario's tracking store.
Per-user results (segment, churn risk, predicted value) are written to the online store as the view
`user_analytics`, keyed by the scenario's user key, so serving reads them like any other user feature.

Imports run feature_store <- training <- serving <- analytics <- recforge: this package reads the feature store,
logs with training's tracking helpers and renders with serving's report renderer; nothing below imports it.
"""
