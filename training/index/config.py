"""The candidate index's configuration: `IndexConfig` (the `index:` section of the config file), the index-type
literals and `IndexRecallError`, the error of a build whose recall is below the floor.

Needs pydantic only; the index itself is `training.index.faiss_index.ItemIndex`, built by
`training.index.build.build_index`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from feature_store.config import StrictModel

IndexType = Literal["flat", "ivf_flat", "hnsw", "ivf_pq", "torch_exact"]
FAISS_TYPES = ("flat", "ivf_flat", "hnsw", "ivf_pq")


class IndexRecallError(ValueError):
    """The built approximate index returns too few of the exact top-k items; the message says what to try."""


class IndexConfig(StrictModel):
    """The candidate index of `recforge index build` over the retrieval bundle's item vectors: its type and
    parameters, and the recall guard. Every build measures recall@`recall_k` against exact search on real
    held-out user vectors; below `recall_floor` the build fails (exit code 3) with the figures and what to
    change, so a bad index is never written.

    `torch_exact` is exact inner-product search on torch (no faiss needed): a float32 matmul of `query_batch`
    queries against `chunk_items` items at a time, merged into a running top-k, so corpora that do not fit one
    matmul are still searched exactly; exclusions are masked to -inf inside the scan. `device` places it;
    `ItemIndex.load(dir, device=...)` can move a saved index. Matmuls run in IEEE float32 whatever the global
    matmul precision (never bf16) unless `allow_tf32`. It saves `vectors.npy` instead of `index.faiss`.

    `type: auto` picks: on a machine where torch sees a CUDA device (and `device` is not `cpu`), `torch_exact`
    when the n x dim float32 matrix takes at most 25% of the free GPU memory; otherwise (always on a CPU-only
    machine) `flat` up to `auto_exact_max` items and `hnsw` above. An index built by `auto` on a GPU machine is
    therefore exact search; set `type` explicitly when it will be served from CPU-only machines.
    """

    type: Literal["auto", "flat", "ivf_flat", "hnsw", "ivf_pq", "torch_exact"] = Field(
        "auto", description="flat: exact faiss search; ivf_flat, hnsw, ivf_pq: approximate faiss indexes (faster "
                            "on large corpora; ivf_pq also compresses the vectors); torch_exact: exact search on "
                            "torch, CPU or CUDA; auto: see above")
    nlist: int | None = Field(None, gt=0, description="ivf_flat, ivf_pq: number of IVF lists; null = about "
                                                      "4 sqrt(n_items)")
    nprobe: int = Field(16, gt=0, description="IVF lists visited per query (at most `nlist`): more = higher recall, "
                                              "slower search")
    hnsw_m: int = Field(32, ge=2, description="hnsw: links per node: more = higher recall, more memory")
    ef_construction: int = Field(200, gt=0, description="hnsw: candidate list size while building: more = a better "
                                                        "graph, slower build")
    ef_search: int = Field(128, gt=0, description="hnsw: candidate list size per query: more = higher recall, "
                                                  "slower search")
    pq_m: int | None = Field(None, gt=0, description="ivf_pq: sub-quantizers per vector (must divide the "
                                                     "dimension); null = dim / 4")
    pq_bits: int = Field(8, ge=1, le=16, description="ivf_pq: bits per sub-quantizer code")
    recall_k: int = Field(100, gt=0, description="the recall guard measures recall@this against exact search")
    recall_floor: float = Field(0.95, gt=0, le=1, description="the build fails (exit 3) below this recall@k")
    recall_queries: int = Field(1000, gt=0, description="held-out user vectors the recall guard queries")
    auto_exact_max: int = Field(100_000, ge=0, description="auto without a usable GPU: exact `flat` up to this many "
                                                           "items, `hnsw` above")
    threads: int | None = Field(None, gt=0, description="faiss OpenMP threads; null = faiss default (all cores)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="torch_exact: where the item matrix lives and is searched; auto = cuda when torch sees "
                            "one")
    chunk_items: int = Field(262_144, gt=0, description="torch_exact: items scored per matmul (running top-k "
                                                        "merge); lower it when a chunk does not fit memory")
    query_batch: int = Field(256, gt=0, description="torch_exact: queries per matmul")
    allow_tf32: bool = Field(False, description="torch_exact on CUDA: TF32 matmuls (faster, scores off by about "
                                                "1e-3); false = IEEE float32, exact to float32 rounding")

    @model_validator(mode="after")
    def _combinations(self) -> IndexConfig:
        if self.device == "cuda" and self.type in FAISS_TYPES:
            raise ValueError(f"'device: cuda' applies only to type 'torch_exact' or 'auto' (faiss type "
                             f"'{self.type}' searches on the CPU here); remove it or use type 'torch_exact'")
        ivf = self.type in ("ivf_flat", "ivf_pq")
        if self.nlist is not None and not ivf:
            raise ValueError(f"'nlist' applies only to type 'ivf_flat' or 'ivf_pq', not '{self.type}'; remove it")
        if self.pq_m is not None and self.type != "ivf_pq":
            raise ValueError(f"'pq_m' applies only to type 'ivf_pq', not '{self.type}'; remove it")
        if ivf and self.nlist is not None and self.nprobe > self.nlist:
            raise ValueError(f"'nprobe' ({self.nprobe}) cannot exceed 'nlist' ({self.nlist}); lower nprobe")
        return self
