"""Two-tower retrieval: the loss against a hand computation, the data split, and a real end-to-end run
(prepare -> train retrieval -> baselines -> exported embeddings -> FAISS index with the recall guard)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from feature_store.prepare import prepare
from recforge.config import RecForgeConfig, load
from training.index.build import build_from_embeddings
from training.index.config import IndexConfig
from training.index.faiss_index import ItemIndex
from training.retrieval.config import NegativesConfig, RetrievalConfig
from training.retrieval.data import load_retrieval_data
from training.retrieval.layout import tower_layout
from training.retrieval.model import sampled_softmax_loss
from training.retrieval.run import train_retrieval

ROOT = Path(__file__).resolve().parents[2]
SMALL = [
    "source.n_users=600", "source.n_items=300", "source.n_impressions=60000", "source.days=10",
    "features.categorical.0.min_freq=1", "features.categorical.1.min_freq=1",
    "retrieval.max_epochs=3", "retrieval.batch_size=256", "retrieval.runtime.num_threads=2",
    "retrieval.baselines=[most_popular, item_knn]", "retrieval.query_sample=200",
]


def test_logq_corrected_in_batch_loss_matches_a_hand_computation() -> None:
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    item = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    codes = torch.tensor([5, 7, 9])
    log_q = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    t = torch.tensor(0.5)
    got = sampled_softmax_loss(user, item, codes, log_q, t)
    expected = 0.0
    for i in range(3):
        logits = [float(user[i] @ item[j]) / 0.5 - math.log([0.5, 0.3, 0.2][j]) for j in range(3)]
        expected += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    assert float(got) == pytest.approx(expected / 3, rel=1e-6)


def test_duplicate_positives_in_a_batch_are_not_negatives_of_each_other() -> None:
    user = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    item = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    codes = torch.tensor([3, 3])  # the same item twice: neither row may treat the other as a negative
    loss = sampled_softmax_loss(user, item, codes, None, torch.tensor(1.0))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_hard_negatives_keep_the_highest_scoring_extra_items() -> None:
    user = torch.tensor([[1.0, 0.0]])
    item = torch.tensor([[1.0, 0.0]])
    extra = torch.tensor([[0.9, 0.1], [-1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor(1.0)
    hard = sampled_softmax_loss(user, item, torch.tensor([0]), None, t, extra, torch.tensor([1, 2, 3]), None, hard=1)
    expected = -(1.0 - math.log(math.exp(1.0) + math.exp(0.9)))
    assert float(hard) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match=r"negatives\.hard"):
        NegativesConfig(uniform=2, hard=3)


@pytest.fixture(scope="module")
def demo_prepared(tmp_path_factory: pytest.TempPathFactory, ray_local: object) -> RecForgeConfig:
    out = tmp_path_factory.mktemp("retrieval")
    cfg = load(ROOT / "configs" / "demo.yaml", [*SMALL, f"output_dir={out}"])
    prepare(cfg)
    return cfg


def test_per_user_split_holds_out_each_users_latest_positives(demo_prepared: RecForgeConfig) -> None:
    cfg = demo_prepared
    data = load_retrieval_data(Path(cfg.output_dir) / "prepared", cfg.retrieval)
    assert data.counts["test"] > 0 and data.counts["valid"] > 0 and data.counts["train"] > 0
    # seen items of a test query are exactly its user's train + valid items: never in its truth by time
    seen, truth = data.test.seen, data.test.truth
    assert seen.shape == truth.shape == (data.n_users, len(data.corpus_ids))
    assert len(data.test.users) == len(np.unique(data.test.users))
    assert data.fit_matrix.nnz == seen.nnz


def test_prior_sequences_take_earlier_rows_of_the_same_time_in_row_order() -> None:
    from training.retrieval.data import prior_sequences

    users = np.array([0, 0, 0, 0, 1, 1, 0])
    items = np.array([5, 6, 5, 7, 8, 9, 3])
    ts = np.array([1, 2, 3, 3, 1, 1, 4])
    history = np.arange(6)  # row 6 is a later query of user 0
    ids, lengths = prior_sequences(users, items, ts, history, np.array([0, 1, 3, 4, 5, 6]), max_len=2)
    # row 3 (t=3) sees row 2 of the same time; row 5 sees row 4 (same time, earlier row); the query all, latest 2
    assert ids.tolist() == [[0, 0], [5, 0], [6, 5], [0, 0], [8, 0], [5, 7]]
    assert lengths.tolist() == [0, 1, 2, 0, 1, 2]
    ids, lengths = prior_sequences(users, items, ts, history, np.array([6]), max_len=5)
    assert ids.tolist() == [[5, 6, 5, 7, 0]] and lengths.tolist() == [4]


def test_ordered_history_queries_see_every_seen_row_and_training_never_sees_valid(
        demo_prepared: RecForgeConfig) -> None:
    from training.common.features import SPARSE, seq_key, seq_len_key

    prepared = Path(demo_prepared.output_dir) / "prepared"
    data = load_retrieval_data(prepared, demo_prepared.retrieval.model_copy(update={"history": "ordered"}))
    vocab = data.corpus[SPARSE][:, [f.name for f in data.towers.layout.sparse].index("item_id")].numpy()
    to_corpus = {int(v): i for i, v in enumerate(vocab)}
    key, length = seq_key("hist_item_id"), seq_len_key("hist_item_id")
    # a test query's history: the user's latest train + valid rows, as many as fit (the seen items, in order)
    fit_rows = np.bincount(np.concatenate([data.train_users, data.valid_users]), minlength=data.n_users)
    q_len = data.test.batch[length].numpy()
    assert (q_len == np.minimum(fit_rows[data.test.users], 20)).all()
    for row, user in enumerate(data.test.users[:200]):
        hist = {to_corpus[int(c)] for c in data.test.batch[key][row, : q_len[row]]}
        assert hist <= set(data.test.seen[user].indices)
    # the selection run's training histories hold train items of the same user only: valid stays unseen
    train_sets: dict[int, set[int]] = {}
    for u, i in zip(data.train_users.tolist(), data.train_items.tolist()):
        train_sets.setdefault(u, set()).add(i)
    seqs, lens = data.train[key].numpy(), data.train[length].numpy()
    for row in range(0, len(lens), max(1, len(lens) // 500)):
        hist = {to_corpus[int(c)] for c in seqs[row, : lens[row]]}
        assert hist <= train_sets[int(data.train_users[row])], row
    # the refit trains on train + valid rows, whose histories may now hold valid items
    full = data.with_valid_in_train()
    assert len(full.train[key]) == len(data.train_items) + len(data.valid_items)
    assert (full.train[length].numpy() >= np.r_[lens, np.zeros(len(data.valid_items), np.int64)]).all()


def test_ordered_history_rejects_a_sequence_of_all_events() -> None:
    with pytest.raises(Exception, match=r"positive_only: false.*retrieval.history: point_in_time"):
        load(ROOT / "configs" / "retail.yaml", ["retrieval.history=ordered", "features.sequence.0.positive_only=false"])
    assert load(ROOT / "configs" / "retail.yaml", ["retrieval.history=ordered"]).retrieval.history == "ordered"


def test_exclude_history_masks_each_rows_history_items_but_not_its_positive(demo_prepared: RecForgeConfig) -> None:
    from training.common.features import SPARSE, seq_key
    from training.retrieval.model import TwoTower
    from training.retrieval.task import RetrievalTask, history_to_corpus

    rcfg = demo_prepared.retrieval.model_copy(
        update={"negatives": NegativesConfig(full_corpus=True, exclude_history=True)})
    data = load_retrieval_data(Path(demo_prepared.output_dir) / "prepared", rcfg)
    assert list(history_to_corpus(data)) == ["hist_item_id"]
    task = RetrievalTask(TwoTower(data.towers, rcfg.model), rcfg, data)
    n = 256
    batch = {k: v[:n] for k, v in data.train.items()}
    codes = torch.from_numpy(data.train_items[:n])
    mask = task._history_mask(batch, codes, len(data.corpus_ids)).numpy()
    vocab = data.corpus[SPARSE][:, [f.name for f in data.towers.layout.sparse].index("item_id")].numpy()
    seq, lengths = batch[seq_key("hist_item_id")].numpy(), batch["seq_len:hist_item_id"].numpy()
    masked_rows = 0
    for i in range(n):
        hist = seq[i, : lengths[i]]
        expected = set(np.flatnonzero(np.isin(vocab, hist[hist > 0])).tolist()) - {int(codes[i])}
        assert set(np.flatnonzero(mask[i]).tolist()) == expected, i
        masked_rows += bool(expected)
    assert masked_rows > n // 4
    loss = task._full_corpus_loss(batch, codes)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="full_corpus: true"):
        NegativesConfig(exclude_history=True)


def test_feature_dropout_replaces_a_share_of_the_field_by_oov_in_training_only(
        demo_prepared: RecForgeConfig) -> None:
    from training.common.features import SPARSE
    from training.retrieval.config import TwoTowerConfig
    from training.retrieval.model import TwoTower

    data = load_retrieval_data(Path(demo_prepared.output_dir) / "prepared", demo_prepared.retrieval)
    model = TwoTower(data.towers, TwoTowerConfig(feature_dropout={"user_id": 0.5}))
    seen: list[torch.Tensor] = []

    class Spy(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, batch: dict[str, torch.Tensor]) -> object:
            seen.append(batch[SPARSE])
            return self.inner(batch)

    model.embedding = Spy(model.embedding)
    batch = {k: v[:2000] for k, v in data.train.items()}
    col = [f.name for f in data.towers.layout.sparse].index("user_id")
    torch.manual_seed(0)
    model.train()(batch)
    dropped = (seen[-1][:, col] == 0) & (batch[SPARSE][:, col] != 0)
    assert 0.4 < float(dropped.float().mean()) < 0.6
    others = [c for c in range(batch[SPARSE].shape[1]) if c != col]
    assert torch.equal(seen[-1][:, others], batch[SPARSE][:, others])  # only the named field
    model.eval().user(batch)
    assert torch.equal(seen[-1], batch[SPARSE])  # evaluation and serving see every code
    with pytest.raises(ValueError, match=r"feature_dropout: \['colour'\]"):
        TwoTower(data.towers, TwoTowerConfig(feature_dropout={"colour": 0.1}))


def test_ema_decay_trains_online_weights_and_keeps_their_moving_average_as_the_model(
        demo_prepared: RecForgeConfig) -> None:
    import pytorch_lightning as pl

    from training.retrieval.model import TwoTower
    from training.retrieval.task import RetrievalTask

    cfg = demo_prepared.retrieval.model_copy(update={"ema_decay": 0.9})
    data = load_retrieval_data(Path(demo_prepared.output_dir) / "prepared", cfg)
    task = RetrievalTask(TwoTower(data.towers, cfg.model), cfg, data)
    assert task.online is not None and task.trained is task.online
    optimized = {id(p) for g in task.configure_optimizers().param_groups for p in g["params"]}
    assert optimized == {id(p) for p in task.online.parameters()}
    assert not any(p.requires_grad for p in task.model.parameters())
    before = [p.detach().clone() for p in task.model.parameters()]
    with torch.no_grad():
        for p in task.online.parameters():
            p.add_(1.0)
    task.on_train_batch_end(None, None, 0)  # first step: the warm-up decay min(0.9, 2 / 11)
    for avg, old in zip(task.model.parameters(), before, strict=True):
        assert torch.allclose(avg, old + (1 - 2 / 11), atol=1e-6)
    # a real fit: the average moves and stays apart from the online weights
    task = RetrievalTask(TwoTower(data.towers, cfg.model), cfg, data)
    key = "embedding.weight.weight"
    start = dict(task.model.named_parameters())[key].detach().clone()
    pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=5, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(task)
    avg, online = dict(task.model.named_parameters())[key], dict(task.online.named_parameters())[key]
    assert not torch.equal(avg, start) and not torch.equal(avg, online)


def test_unknown_tower_feature_is_an_error_naming_the_key(demo_prepared: RecForgeConfig) -> None:
    from feature_store.spec import FeatureSpec

    spec = FeatureSpec.load(Path(demo_prepared.output_dir) / "prepared" / "spec")
    bad = demo_prepared.retrieval.model_copy(update={"item_features": ["item_id", "colour"]})
    with pytest.raises(ValueError, match=r"retrieval.item_features: unknown feature\(s\) \['colour'\]"):
        tower_layout(spec, bad)


def test_two_tower_trains_beats_item_knn_and_its_index_passes_the_recall_guard(
    demo_prepared: RecForgeConfig,
) -> None:
    cfg = demo_prepared
    rcfg = cfg.retrieval.model_copy(update={"negatives": NegativesConfig(uniform=64, hard=32)})
    result = train_retrieval(cfg.output_dir, "retrieval_test", rcfg).to_dict()
    test = result["test"]
    assert set(test) == {"two_tower", "most_popular", "item_knn"}
    n_items = result["counts"]["items"]
    random_recall10 = 10 / n_items  # expected recall@10 of a random ranking
    assert test["two_tower"]["recall@10"] > 3 * random_recall10, test
    # the small synthetic set's clicks are mostly popularity-driven: popularity is a strong baseline there (the
    # benchmark on real data compares quality); the model must beat item-KNN and come close to popularity
    assert test["two_tower"]["recall@50"] > test["item_knn"]["recall@50"], test
    assert test["two_tower"]["ndcg@10"] > test["item_knn"]["ndcg@10"], test
    assert test["two_tower"]["recall@50"] > 0.9 * test["most_popular"]["recall@50"], test
    # the default refit: a fresh model trained on train + valid for the selected number of epochs
    assert result["refit_epochs"] == result["best_epoch"] + 1
    # per-epoch valid metric recorded, best checkpoint chosen from it
    hist = result["history"]["valid/recall@50"]
    assert len(hist) == result["epochs_run"] and result["best_epoch"] == int(np.argmax(hist))
    emb = Path(result["embeddings"]["dir"])
    items = pq.read_table(emb / "item_embeddings.parquet")
    vecs = np.stack(items.column("embedding").to_numpy(zero_copy_only=False))
    assert items.num_rows == n_items and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    # the index built from the exported embeddings passes the guard and answers with excluded items removed
    out = Path(cfg.output_dir) / "index"
    index = build_from_embeddings(emb, IndexConfig(), out)
    assert index.recall["recall_at_k"] >= 0.95 and index.recall["k"] == 100
    queries = np.stack(pq.read_table(emb / "query_embeddings.parquet").column("embedding")
                       .to_numpy(zero_copy_only=False))[:5].astype(np.float32)
    top, _ = index.search(queries, 10)
    banned = [top[i, :3] for i in range(len(top))]
    again, _ = ItemIndex.load(out).search(queries, 10, exclude=banned)
    for i in range(len(top)):
        assert not set(banned[i].tolist()) & set(again[i].tolist())
    metrics = json.loads((Path(cfg.output_dir) / "retrieval" / "metrics.json").read_text())
    assert metrics["test"]["two_tower"]["recall@50"] == pytest.approx(test["two_tower"]["recall@50"])


def test_retrieval_run_is_tracked_in_mlflow_with_the_bundle(demo_prepared: RecForgeConfig) -> None:
    import mlflow

    cfg = demo_prepared
    rcfg = RetrievalConfig(**{**cfg.retrieval.model_dump(), "max_epochs": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train_retrieval(cfg.output_dir, "retrieval_tracked", rcfg).to_dict()
    client = mlflow.MlflowClient(tracking_uri=result["mlflow"]["tracking_uri"])
    run = client.get_run(result["mlflow"]["run_id"])
    # per-epoch names made valid for MLflow by us (`@` dropped, as before), not by Lightning with a warning
    assert f"valid/recall{rcfg.select_k}" in run.data.metrics
    assert not [w for w in caught if "MLFlow only allows" in str(w.message)]
    assert "test/two_tower/recall_at_50" in run.data.metrics
    assert "test/most_popular/recall_at_50" in run.data.metrics
    files = {a.path for a in client.list_artifacts(run.info.run_id, "retrieval_bundle")}
    assert {f"retrieval_bundle/{name}" for name in
            ("bundle.json", "two_tower.pt", "embeddings", "spec", "popularity.parquet")} <= files


def _raw_users(n: int, rng: np.random.Generator) -> list[dict]:
    """Raw user-side rows of the demo scenario (values the spec may or may not know: OOV is part of the test)."""
    return [{"user_id": int(u), "age_band": str(rng.choice(["18-24", "25-34", "99+"])), "gender": "f",
             "region": f"r{int(u) % 7}", "rfm_recency_days": float(rng.uniform(0, 30)),
             "rfm_frequency": float(rng.integers(0, 20)), "rfm_monetary": float(rng.uniform(0, 500)),
             "cat_affinity": rng.dirichlet(np.ones(24)).astype(np.float32).tolist(),
             "hist_item_id": rng.integers(0, 300, size=int(rng.integers(0, 25))).tolist()} for u in range(n)]


def test_retrieval_bundle_loads_and_scores_raw_users_like_the_trained_towers(demo_prepared: RecForgeConfig) -> None:
    from training.common.data import table_to_tensors
    from training.retrieval.bundle import load_retriever

    cfg = demo_prepared
    rcfg = RetrievalConfig(**{**cfg.retrieval.model_dump(), "max_epochs": 1, "refit": False})
    result = train_retrieval(cfg.output_dir, "retrieval_bundle_test", rcfg).to_dict()
    retriever = load_retriever(result["bundle"])
    rng = np.random.default_rng(3)
    rows = _raw_users(40, rng)
    got = retriever.user_vectors(rows)
    assert got.shape == (40, retriever.item_vectors.shape[1])
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    # the user-only path equals the full-row transform with real item columns: the item side never leaks in
    full = [{**r, "item_id": 5, "category": "c1", "brand": "b2", "price": 9.5} for r in rows]
    table = retriever.spec.transform(full, with_label=False, features=[*rcfg.user_features, *rcfg.item_features])
    with torch.no_grad():
        want = retriever.model.user(table_to_tensors(table, retriever.towers.layout)).numpy()
    assert np.allclose(got, want, atol=1e-6)
    # exported item vectors are the towers' vectors of the corpus, and the bundle's test metrics match the run
    assert retriever.item_vectors.shape[0] == result["counts"]["items"]
    assert retriever.evaluate(Path(cfg.output_dir) / "prepared", [10, 50])["recall@50"] == pytest.approx(
        result["test"]["two_tower"]["recall@50"], abs=1e-9)
    # exact search (no index) equals a brute-force ranking, honours exclusions, pads when the corpus runs out
    ids, scores = retriever.search(got[:3], 10)
    brute = np.argsort(-(got[:3] @ retriever.item_vectors.T), axis=1, kind="stable")[:, :10]
    assert (ids == retriever.item_ids[brute]).all() and (np.diff(scores, axis=1) <= 1e-6).all()
    banned = [ids[i, :4].tolist() for i in range(3)]
    again, _ = retriever.search(got[:3], 10, exclude=banned)
    assert all(not set(banned[i]) & set(again[i].tolist()) for i in range(3))
    n = len(retriever.item_ids)
    wide, wide_scores = retriever.search(got[:1], n + 5, exclude=[banned[0]])
    assert (wide[0, n - 4:] == -1).all() and np.isneginf(wide_scores[0, n - 4:]).all()
    # with the FAISS index built into the bundle, the same answers come back
    from recforge.pipeline import build_index

    build_index(cfg.model_copy(update={"index": IndexConfig(type="flat")}))
    indexed = load_retriever(result["bundle"])
    assert indexed.index is not None and indexed.index_recall["recall_at_k"] == pytest.approx(1.0)
    ids2, _ = indexed.search(got[:3], 10, exclude=banned)
    assert (ids2 == again).all()
    # unknown users fall back to the most popular items, excluding what they already have
    pop = retriever.popular(5, exclude=[retriever.popular(1)[0]])
    assert len(pop) == 5 and retriever.popular(1)[0] not in pop.tolist()


@pytest.mark.slow
def test_two_tower_trains_through_ray_train_with_two_cpu_workers(demo_prepared: RecForgeConfig) -> None:
    cfg = demo_prepared
    rcfg = cfg.retrieval.model_copy(update={"max_epochs": 2, "runtime": cfg.retrieval.runtime.model_copy(
        update={"ray_workers": 2, "num_threads": 1})})
    result = train_retrieval(cfg.output_dir, "retrieval_ray", rcfg).to_dict()
    assert result["distributed"]["workers"] == 2 and result["epochs_run"] == 2
    assert len(result["history"]["valid/recall@50"]) == 2
    n_items = result["counts"]["items"]
    assert result["test"]["two_tower"]["recall@10"] > 3 * 10 / n_items, result["test"]
    assert (Path(result["embeddings"]["dir"]) / "item_embeddings.parquet").is_file()


def test_retrieval_on_events_prepared_without_time_says_it_needs_the_event_time(tmp_path: Path) -> None:
    from feature_store.config import ConfigError
    from feature_store.prepare import prepare
    from tests.feature_store.test_prepare import timeless_csv_config
    from training.retrieval.config import RetrievalConfig
    from training.retrieval.data import load_retrieval_data

    cfg = timeless_csv_config(tmp_path, {"method": "random", "valid_fraction": 0.2, "test_fraction": 0.2})
    prepare(cfg)
    retrieval = RetrievalConfig(user_features=["user_id"], item_features=["item_id"])
    with pytest.raises(ConfigError, match=r"prepared without time .* features\.timestamp naming the event time"):
        load_retrieval_data(tmp_path / "out" / "prepared", retrieval)
