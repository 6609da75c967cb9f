"""Two-tower retrieval: config, data (per-user time split, corpus, queries), model and training."""
