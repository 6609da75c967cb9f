"""RecForge's benchmarks, each a module run from the repository root, e.g. `.venv/bin/python -m scripts.bench.train`.

Shared parts:

- `common`: the machine a run is on (CPU, cores usable, RAM, the load average at start), log lines, the command
  line a report quotes, the libraries' quiet mode, seeded unit vectors for the search benchmarks;
- `timing`: a contender's figures over rounds, interleaving RecForge and its peer, timing training steps;
- `ctr`: RecForge's side of the CTR benchmarks (model sizes, `CTRTask` driven one step at a time, the precision
  `recforge train ctr` picks);
- `peer`: DeepCTR-Torch, the peer of the CTR benchmarks;
- `doc`: rewriting a benchmark's own marker block of docs/benchmarks.md.

Benchmarks: `prepare` (feature preparation against pandas), `train` (CTR training throughput), `quality` (CTR model
quality), `index` (FAISS candidate index), `retrieval` (retrieval quality), `gpu` (the GPU paths), `serve` (the
recommendation API). Each owns the block of docs/benchmarks.md between `<!-- bench_NAME:start -->` and
`<!-- bench_NAME:end -->` and rewrites only that block (unless `--no-doc`).
"""
