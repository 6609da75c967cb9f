"""Project scripts. The benchmarks live in `scripts.bench`; run them as modules from the repository root."""
