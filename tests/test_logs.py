"""recforge.logs: the frameworks' chatter is filtered at its source, other warnings still show, -v filters nothing."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest

from recforge import logs


@pytest.fixture
def restored() -> Iterator[None]:
    """Undo what `logs.setup` changes in this process (logger levels and filters, warning filters)."""
    names = list(logs.LOGGER_LEVELS)
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    root_filters = {h: list(h.filters) for h in logging.getLogger().handlers}
    with warnings.catch_warnings():
        yield
    for n, (level, filters) in saved.items():
        logging.getLogger(n).setLevel(level)
        logging.getLogger(n).filters[:] = filters
    for h, filters in root_filters.items():
        h.filters[:] = filters


def _emitted(name: str, level: int) -> bool:
    logger = logging.getLogger(name)
    record = logger.makeRecord(name, level, __file__, 1, "message", (), None)
    return logger.isEnabledFor(level) and logger.filter(record)


def test_framework_info_is_dropped_even_after_the_library_resets_its_level(restored: None) -> None:
    logs.setup(verbose=False)
    logging.getLogger("ray.serve").setLevel(logging.INFO)  # what `import ray.serve` does
    assert not _emitted("ray.serve", logging.INFO)
    assert _emitted("ray.serve", logging.WARNING)
    assert not _emitted("pytorch_lightning.utilities.rank_zero", logging.INFO)


def test_known_warnings_are_filtered_by_message_and_module_and_others_still_show(restored: None) -> None:
    logs.setup(verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("Checkpoint directory /x exists and is not empty.", UserWarning, "model_checkpoint.py",
                               881, module="pytorch_lightning.callbacks.model_checkpoint")
        warnings.warn_explicit("Checkpoint directory /x exists and is not empty.", UserWarning, "mine.py", 1,
                               module="my_module")
        warnings.warn_explicit("something new", UserWarning, "model_checkpoint.py", 882,
                               module="pytorch_lightning.callbacks.model_checkpoint")
    assert [str(w.message) for w in caught] == ["Checkpoint directory /x exists and is not empty.", "something new"]


def test_verbose_filters_nothing(restored: None) -> None:
    logging.getLogger("ray.serve").setLevel(logging.INFO)
    logs.setup(verbose=True)
    assert _emitted("ray.serve", logging.INFO)
