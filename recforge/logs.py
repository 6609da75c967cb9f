"""Logging of the `recforge` command: our INFO lines, the frameworks' problems, none of their chatter.

What a run prints is the stages' progress (`feature_store.progress`), their reports and real problems. The
frameworks under it (Lightning, Ray, MLflow, TorchRec / FBGEMM, FAISS, torch) also print tips, environment notes
and deprecation warnings that tell the user nothing they can act on; each is silenced here at its source: a
`warnings` filter on its exact message and category, the level of the one logger that writes it, or a filter on
the record's message and origin. Nothing else is hidden: an unknown warning still shows. `-v` installs none of
it (every framework line at DEBUG).
"""

from __future__ import annotations

import logging
import warnings

from feature_store import progress, secrets

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# (message regex, category, module regex) of Python warnings that say nothing to a user of the CLI
WARNINGS: list[tuple[str, type[Warning], str]] = [
    # Lightning's pytree helper on torch >= 2.9: a deprecation inside Lightning itself
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", Warning, r"pytorch_lightning\.utilities\._pytree"),
    # a small split has fewer batches than the (unused) step logging interval: we log per epoch
    (r"The number of training batches \(\d+\) is smaller than the logging interval", UserWarning,
     r"pytorch_lightning\.loops\.fit_loop"),
    # a resumed or re-run job writes its checkpoints into the same stage folder on purpose
    (r"Checkpoint directory .* exists and is not empty", UserWarning,
     r"pytorch_lightning\.callbacks\.model_checkpoint"),
    # the DataLoader worker hint: the batches are in-memory tensors, workers would only copy them
    (r"The '(train|val|test)_dataloader' does not have many workers", UserWarning,
     r"pytorch_lightning\.trainer\.connectors\.data_connector"),
]

# logger -> the level below which its records are dropped
LOGGER_LEVELS: dict[str, int] = {
    "pytorch_lightning.utilities.rank_zero": logging.WARNING,  # GPU/TPU available, AMP in use, litlogger tips
    "lightning.pytorch.utilities.rank_zero": logging.WARNING,
    "lightning_fabric.utilities.rank_zero": logging.WARNING,
    "mlflow.store.db.utils": logging.WARNING,  # "Creating initial MLflow database tables..."
    "alembic.runtime.migration": logging.WARNING,
    "faiss.loader": logging.WARNING,  # which SIMD build it tried to load
    "torch.fx._symbolic_trace": logging.ERROR,  # is_fx_tracing semantics note, on TorchRec's import
    "ray.serve": logging.WARNING,  # "Started Serve in namespace", "Application is ready"
    "ray._private.authentication.authentication_token_setup": logging.ERROR,  # local Ray's token auth note
    "ray.data._internal.progress": logging.ERROR,  # "Progress bars disabled": disabled on purpose (raycluster)
    "litserve": logging.WARNING,
}


class _MinLevel(logging.Filter):
    """Drops a logger's records below `level`. Set as a filter as well as the level because some libraries set
    their logger's level when they are imported, after this set-up (`import ray.serve` sets `ray.serve` to INFO);
    a logger's filters survive that."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


class _KnownChatter(logging.Filter):
    """Records of the root logger from libraries that log through it: FBGEMM's "Successfully loaded: '*.so'" at
    import, and TorchRec's note that exporting a KeyedJaggedTensor in non-strict mode is slow (the bundle exports
    one small example batch once: measured under a second)."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        if "/fbgemm_gpu/" in path and record.levelno <= logging.INFO:
            return False
        return not ("/torchrec/" in path and record.getMessage().startswith("Trying to non-strict torch.export KJT"))


class _Scrub(logging.Filter):
    """Masks the loaded config's secret values and any URL's credentials in every record (feature_store.secrets);
    installed with or without `-v`. The record's message is formatted once here and its arguments dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = secrets.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = secrets.scrub(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = secrets.scrub(record.exc_text)
        return True


def setup(verbose: bool = False) -> None:
    """Configure logging for one CLI process: INFO with the framework chatter filtered, or DEBUG with all of it.
    On a terminal the records go through the progress display's console, so that they print above a live
    progress line; in a log file they are plain lines."""
    level = logging.DEBUG if verbose else logging.INFO
    if progress.interactive():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=progress.console(), show_path=False, log_time_format="%H:%M:%S")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S")
    for name in LOGGER_LEVELS:  # what an earlier setup in this process installed (tests call main() repeatedly)
        logger = logging.getLogger(name)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, _MinLevel)]
    for handler in logging.getLogger().handlers:
        handler.filters[:] = [f for f in handler.filters if not isinstance(f, _KnownChatter | _Scrub)]
        handler.addFilter(_Scrub())
    if verbose:
        return
    for message, category, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, level in LOGGER_LEVELS.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).addFilter(_MinLevel(level))
    chatter = _KnownChatter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(chatter)

