"""The model registry of a scenario: trained runs become MLflow model versions, and a gate decides which one is
the champion.

Modules by role:
- `settings`: `RegistrySettings`, everything the registry needs to know about a scenario (built by the composition
  root, `recforge.config.registry_settings`; the registry never imports `recforge`).
- `store`: the MLflow client, runs, versions, aliases, artifact downloads and the shared names (aliases, tags).
- `register`: `register_ranker` / `register_retriever` (a run's bundle -> a version with alias `challenger`; a
  retriever's FAISS index is checked and logged into its bundle first).
- `gate`: the candidate and the champion scored on the SAME held-out data -> `GateOutcome`.
- `figures`, `review`: the plots and the review report (rendered by `serving.reports`).
- `promote`: gate, review, decision tags and aliases (`champion`, `previous`); `force` needs a reason.
- `versions`: `rollback` and `list_models`.

Only MLflow aliases (`champion`, `challenger`, `previous`) are used, never the deprecated stages. The registry lives
in the training tracking store (`RegistrySettings.tracking_uri`: `train.tracking.uri`, default
`<output_dir>/mlflow.db`).
"""

from serving.registry.gate import GateOutcome, MetricRow, heldout_rows
from serving.registry.promote import PromotionResult, promote
from serving.registry.register import RegisteredVersion, default_index_dir, register_ranker, register_retriever
from serving.registry.settings import Kind, RegistrySettings
from serving.registry.store import CHALLENGER, CHAMPION, PREVIOUS, RegistryError, find_run, mlflow_client
from serving.registry.versions import list_models, rollback

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PREVIOUS",
    "GateOutcome",
    "Kind",
    "MetricRow",
    "PromotionResult",
    "RegisteredVersion",
    "RegistryError",
    "RegistrySettings",
    "default_index_dir",
    "find_run",
    "heldout_rows",
    "list_models",
    "mlflow_client",
    "promote",
    "register_ranker",
    "register_retriever",
    "rollback",
]
