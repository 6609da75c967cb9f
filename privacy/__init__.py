"""What may leave: k-anonymous and differentially private releases, the privacy-budget ledger.

- `privacy.mechanisms`: Laplace and Gaussian noise calibrated and sampled through OpenDP.
- `privacy.release`: one aggregate release (counts, sums, means per group, with margins), contribution-bounded,
  noised, then k-suppressed with complementary suppression.
- `privacy.suppress`: k-anonymity cell suppression over a table with margins.
- `privacy.ledger`: the persistent per-data-set privacy budget (exact rational arithmetic, atomic spends).
- `privacy.checks`: the measurements (noise variance, a differencing attack) shared by tests and benchmarks.

The package imports nothing from the rest of RecForge; its modules are imported explicitly (`from privacy.ledger
import Ledger`) so that reading the ledger does not load OpenDP, numpy or pandas.
"""
