"""The package's one error type: every refusal of the privacy layer is a `PrivacyError` whose message is shown to
the user verbatim (no traceback), so each names the field or data set at fault and what to do about it.
`BudgetExceeded` is the refusal of the privacy-budget ledger, kept apart so callers can tell "this query does not
fit what is left" from a configuration mistake.
"""

from __future__ import annotations

from fractions import Fraction


class PrivacyError(Exception):
    """A refusal with a message meant for the user: it names the field and what to change."""


class BudgetExceeded(PrivacyError):
    """A spend that would take a data set past its privacy budget; the ledger is left unchanged."""

    def __init__(self, dataset: str, requested: tuple[Fraction, Fraction], remaining: tuple[Fraction, Fraction]):
        self.dataset = dataset
        self.requested = requested
        self.remaining = remaining
        super().__init__(
            f"privacy budget of data set '{dataset}' exceeded: this query needs epsilon {float(requested[0]):.6g}, "
            f"delta {float(requested[1]):.6g} but only epsilon {float(remaining[0]):.6g}, delta "
            f"{float(remaining[1]):.6g} remain; lower the query's epsilon/delta or raise the data set's total "
            f"with set_budget(..., replace=True) (a policy decision, not a fix)"
        )
