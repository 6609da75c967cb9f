"""Tests of training/common/metrics.py, topk_metrics.py and plots.py.

Exactness against scikit-learn and naive references, edge cases, plots.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from training.common.metrics import (
    GAUCResult,
    auc,
    calibration,
    ctr_metrics,
    expected_calibration_error,
    gauc,
    logloss,
    reliability_curve,
    roc_curve,
)
from training.common.plots import plot_loss_curves, plot_reliability, plot_roc
from training.common.topk_metrics import ranking_metrics


# --------------------------------------------------------------------------------------------- helpers
def _ctr_data(
    n: int, seed: int, *, decimals: int = 2, base_rate: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels and probabilities correlated with them, rounded so that many scores tie."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < base_rate).astype(np.int64)
    p = np.clip(0.5 * rng.random(n) + 0.3 * y, 0.0, 1.0)
    return y, np.round(p, decimals)


def _naive_gauc(y: np.ndarray, s: np.ndarray, g: np.ndarray) -> tuple[float, int, int]:
    """Reference gAUC: a plain loop over groups with sklearn's AUC, weighted by group impressions."""
    num = den = 0.0
    used = 0
    uniq = np.unique(g)
    for key in uniq:
        m = g == key
        if y[m].min() == y[m].max():
            continue
        num += m.sum() * roc_auc_score(y[m], s[m])
        den += m.sum()
        used += 1
    return (num / den if den else float("nan")), used, len(uniq)


def _naive_ranking(ranked: np.ndarray, relevant: list[np.ndarray], ks: tuple[int, ...]) -> dict[str, float]:
    """Reference ranking metrics: per-user Python loops (no padding, no duplicates in `ranked`)."""
    rows: dict[str, list[float]] = {}
    for items, rel in zip(ranked, relevant):
        rel_set = set(rel.tolist())
        if not rel_set:
            continue
        hits = [int(i) in rel_set for i in items]
        for k in ks:
            n_hit = sum(hits[:k])
            dcg = sum(1.0 / math.log2(j + 2) for j in range(k) if hits[j])
            idcg = sum(1.0 / math.log2(j + 2) for j in range(min(len(rel_set), k)))
            rows.setdefault(f"recall@{k}", []).append(n_hit / len(rel_set))
            rows.setdefault(f"ndcg@{k}", []).append(dcg / idcg)
            rows.setdefault(f"hit_rate@{k}", []).append(float(n_hit > 0))
        first = next((j for j, h in enumerate(hits) if h), None)
        rows.setdefault("mrr", []).append(0.0 if first is None else 1.0 / (first + 1))
    return {k: float(np.mean(v)) for k, v in rows.items()}


# ------------------------------------------------------------------------------------------------- AUC
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [1, 2, 6])
def test_auc_equals_sklearn_on_random_scores_with_ties(seed: int, decimals: int) -> None:
    y, p = _ctr_data(20_000, seed, decimals=decimals)
    assert abs(auc(y, p) - roc_auc_score(y, p)) < 1e-9


def test_auc_is_exact_for_integer_and_float32_scores_and_bool_labels() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(5_000) < 0.2
    s_int = rng.integers(0, 7, 5_000) + 3 * y
    assert abs(auc(y, s_int) - roc_auc_score(y, s_int)) < 1e-9
    s32 = (rng.random(5_000) + y).astype(np.float32)
    assert abs(auc(y, s32) - roc_auc_score(y, s32)) < 1e-9


def test_auc_counts_a_tied_positive_negative_pair_as_one_half() -> None:
    assert auc([0, 1], [0.5, 0.5]) == 0.5
    assert auc([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.9]) == pytest.approx((1 + 0.5 + 1 + 1) / 4, abs=1e-12)


def test_auc_is_nan_when_only_one_class_present() -> None:
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    assert math.isnan(auc(np.zeros(0), np.zeros(0)))


def test_torch_tensors_are_accepted_including_bf16_and_column_vectors() -> None:
    torch = pytest.importorskip("torch")
    y, p = _ctr_data(2_000, 4)
    ty = torch.tensor(y, dtype=torch.float32).reshape(-1, 1)
    tp = torch.tensor(p, dtype=torch.float64, requires_grad=True)
    assert auc(ty, tp) == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    bf = tp.detach().to(torch.bfloat16)
    assert auc(ty, bf) == pytest.approx(roc_auc_score(y, bf.float().numpy()), abs=1e-9)


def test_non_binary_labels_are_rejected_with_index_and_value() -> None:
    with pytest.raises(ValueError, match=r"'labels' must be 0/1.*2\.0.*index 3"):
        auc([0.0, 1.0, 0.0, 2.0], [0.1, 0.2, 0.3, 0.4])


def test_nan_scores_are_rejected_with_first_index() -> None:
    with pytest.raises(ValueError, match=r"'scores' has 1 NaN/inf values .*index 2"):
        auc([0, 1, 1], [0.1, 0.2, float("nan")])


def test_length_mismatch_names_both_arguments() -> None:
    with pytest.raises(ValueError, match=r"'labels' has 3 rows but 'scores' has 2"):
        auc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"'labels' has 2 rows but 'groups' has 1"):
        gauc([0, 1], [0.1, 0.2], [7])


# ------------------------------------------------------------------------------------------------ gAUC
@pytest.mark.parametrize("seed", [0, 1])
def test_gauc_equals_naive_per_group_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 6_000
    y, p = _ctr_data(n, seed, decimals=2)
    g = rng.integers(0, 400, n) * 17 - 3000  # sparse, negative and non-contiguous ids
    got = gauc(y, p, g)
    value, used, total = _naive_gauc(y, p, g)
    assert abs(got.value - value) < 1e-9
    assert (got.groups_used, got.groups_total) == (used, total)


def test_gauc_handles_string_and_huge_integer_group_ids_like_dense_ones() -> None:
    rng = np.random.default_rng(5)
    y, p = _ctr_data(3_000, 5)
    dense = rng.integers(0, 50, 3_000)
    huge = dense.astype(np.int64) * (2**55) - 2**62  # id span far beyond the row count
    strings = np.array([f"user-{i}" for i in dense])
    ref = gauc(y, p, dense)
    for other in (gauc(y, p, huge), gauc(y, p, strings)):  # strings sort differently: sum order differs
        assert other.value == pytest.approx(ref.value, abs=1e-12)
        assert (other.groups_used, other.groups_total) == (ref.groups_used, ref.groups_total)
    assert abs(ref.value - _naive_gauc(y, p, dense)[0]) < 1e-9


def test_single_class_groups_are_skipped_and_counted() -> None:
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0])
    s = np.array([0.9, 0.1, 0.5, 0.6, 0.2, 0.3, 0.4, 0.8])
    g = np.array([1, 1, 2, 2, 3, 3, 4, 4])  # groups 2 (all clicks) and 3 (no click) are skipped
    res = gauc(y, s, g)
    assert res == GAUCResult(value=(2 * 1.0 + 2 * 0.0) / 4, groups_used=2, groups_total=4, impressions_used=4)


def test_gauc_is_nan_when_no_group_has_both_classes() -> None:
    res = gauc([1, 1, 0], [0.3, 0.2, 0.1], ["a", "a", "b"])
    assert math.isnan(res.value)
    assert (res.groups_used, res.groups_total) == (0, 2)


def test_gauc_of_a_single_group_equals_auc() -> None:
    y, p = _ctr_data(4_000, 6)
    assert abs(gauc(y, p, np.zeros(4_000, dtype=np.int64)).value - auc(y, p)) < 1e-12


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_auc_gauc_logloss_and_reliability_are_equal_whatever_the_chunk_size(monkeypatch: pytest.MonkeyPatch,
                                                                             chunk: int) -> None:
    """The chunked passes carry their running sums across chunk edges: a group or a tie run cut by an edge counts
    once (chunk 1 cuts everything; 7 cuts groups and runs mid-way)."""
    import training.common.metrics as m

    rng = np.random.default_rng(11)
    y, p = _ctr_data(3_000, 11, decimals=2)
    g = rng.integers(0, 60, 3_000) * 3 + 10**12  # integer ids far from zero, shifted to codes
    monkeypatch.setattr(m, "_CHUNK", chunk)
    got = ctr_metrics(y, p.astype(np.float32), g, n_bins=7, strategy="quantile")
    value, used, total = _naive_gauc(y, p.astype(np.float32), g)
    assert got["auc"] == pytest.approx(roc_auc_score(y, p.astype(np.float32)), abs=1e-12)
    assert got["gauc"] == pytest.approx(value, abs=1e-12) and got["gauc_groups_used"] == used
    assert gauc(y, p, g).groups_total == total
    clipped = np.clip(p.astype(np.float32).astype(np.float64), 1e-7, 1 - 1e-7)  # ctr_metrics' eps; rows at 0.0
    assert got["logloss"] == pytest.approx(log_loss(y, clipped), rel=1e-12)
    prob_true, prob_pred = calibration_curve(y, p.astype(np.float32), n_bins=7, strategy="quantile")
    curve = reliability_curve(y, p.astype(np.float32), n_bins=7, strategy="quantile")
    np.testing.assert_allclose(curve.observed_rate, prob_true, atol=1e-12)
    np.testing.assert_allclose(curve.mean_predicted, prob_pred, atol=1e-7)


def test_auc_orders_negative_float32_logits_and_ties_plus_and_minus_zero() -> None:
    """float32 scores are compared through their bits: negative numbers must sort below positive ones, -0.0 must tie
    with +0.0, and float64 or integer scores (ranked instead) must give the same value."""
    rng = np.random.default_rng(12)
    y = (rng.random(4_000) < 0.3).astype(np.int64)
    logits = np.round(rng.standard_normal(4_000) + y, 1).astype(np.float32)
    logits[::50] = np.float32(-0.0)
    logits[1::50] = np.float32(0.0)
    want = roc_auc_score(y, logits.astype(np.float64))
    assert auc(y, logits) == pytest.approx(want, abs=1e-12)
    assert auc(y, logits.astype(np.float64)) == pytest.approx(want, abs=1e-12)
    assert auc(y, (logits * 10).astype(np.int64)) == pytest.approx(want, abs=1e-12)
    assert auc([0, 1], np.array([0.0, -0.0], dtype=np.float32)) == 0.5
    groups = rng.integers(0, 30, 4_000)
    assert gauc(y, logits, groups).value == pytest.approx(_naive_gauc(y, logits.astype(np.float64), groups)[0],
                                                          abs=1e-12)


def test_ctr_metrics_of_a_large_split_hold_far_less_than_an_int64_argsort_per_row() -> None:
    """Memory, measured by tracemalloc (numpy reports its buffers to it): exact AUC + gAUC + the rest over 2M rows
    holds under 40 bytes per row above the inputs; an argsort-based evaluation held 154 (5M rows, measured)."""
    import tracemalloc

    rng = np.random.default_rng(13)
    n = 2_000_000
    y = (rng.random(n) < 0.05).astype(np.float32)
    p = rng.random(n).astype(np.float32)
    g = rng.integers(0, n // 200, n)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        ctr_metrics(y, p, g)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / n < 40, f"{peak / n:.0f} bytes per row"


# -------------------------------------------------------------------------------- logloss, calibration
def test_logloss_equals_sklearn() -> None:
    y, p = _ctr_data(10_000, 7, decimals=6)
    p = np.clip(p, 1e-4, 1 - 1e-4)
    assert abs(logloss(y, p) - log_loss(y, p)) < 1e-9


def test_logloss_clips_certain_wrong_predictions_to_a_finite_loss() -> None:
    value = logloss([1, 0], [0.0, 1.0], eps=1e-7)
    assert value == pytest.approx(-math.log(1e-7), rel=1e-9)


def test_logits_instead_of_probabilities_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*-2\.5.*index 1.*sigmoid"):
        logloss([0, 1], [0.5, -2.5])


def test_calibration_is_mean_prediction_over_observed_rate() -> None:
    assert calibration([1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(2.0)
    assert math.isnan(calibration([0, 0], [0.1, 0.2]))


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve_equals_sklearn_calibration_curve(strategy: str) -> None:
    y, p = _ctr_data(8_000, 8, decimals=3)
    curve = reliability_curve(y, p, n_bins=10, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
    np.testing.assert_allclose(curve.observed_rate, prob_true, atol=1e-12)
    np.testing.assert_allclose(curve.mean_predicted, prob_pred, atol=1e-12)
    assert curve.counts.sum() == 8_000
    assert np.all(curve.bin_lower < curve.bin_upper)


def test_reliability_curve_drops_empty_bins_and_ece_is_count_weighted_gap() -> None:
    y = np.array([0, 1, 1, 0, 0])
    p = np.array([0.05, 0.05, 0.85, 0.85, 0.95])
    curve = reliability_curve(y, p, n_bins=10)
    np.testing.assert_allclose(curve.bin_lower, [0.0, 0.8, 0.9])
    np.testing.assert_array_equal(curve.counts, [2, 2, 1])
    expected = (2 * abs(0.05 - 0.5) + 2 * abs(0.85 - 0.5) + 1 * abs(0.95 - 0.0)) / 5
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(expected, abs=1e-12)
    assert curve.ece == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------------- ROC curve, bundle
def test_roc_curve_equals_sklearn_without_downsampling() -> None:
    y, p = _ctr_data(3_000, 9, decimals=2)
    fpr, tpr, thr = roc_curve(y, p, max_points=10_000)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-12)
    np.testing.assert_array_equal(thr, sk_thr)


def test_roc_curve_downsampled_keeps_ends_and_points_of_the_exact_curve() -> None:
    y, p = _ctr_data(20_000, 10, decimals=6)
    full_fpr, full_tpr, full_thr = roc_curve(y, p, max_points=100_000)
    fpr, tpr, thr = roc_curve(y, p, max_points=200)
    assert full_fpr.shape[0] > 1_000 and 100 < fpr.shape[0] <= 200
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    idx = np.searchsorted(-full_thr, -thr)  # thresholds decrease
    np.testing.assert_array_equal(full_fpr[idx], fpr)
    np.testing.assert_array_equal(full_tpr[idx], tpr)
    assert abs(np.trapezoid(tpr, fpr) - auc(y, p)) < 2e-3


def test_roc_curve_of_a_single_class_is_an_error_naming_the_counts() -> None:
    with pytest.raises(ValueError, match="2 positives and 0 negatives"):
        roc_curve([1, 1], [0.2, 0.3])


def test_ctr_metrics_returns_prefixed_consistent_values() -> None:
    rng = np.random.default_rng(11)
    y, p = _ctr_data(5_000, 11)
    g = rng.integers(0, 100, 5_000)
    m = ctr_metrics(y, p, groups=g, prefix="test")
    names = ("auc", "logloss", "calibration", "ece", "mean_pred", "observed_ctr", "n", "gauc")
    names += ("gauc_groups_used",)
    assert set(m) == {f"test/{k}" for k in names}
    assert m["test/auc"] == auc(y, p)
    assert m["test/gauc"] == gauc(y, p, g).value
    assert m["test/n"] == 5_000.0
    assert m["test/calibration"] == pytest.approx(m["test/mean_pred"] / m["test/observed_ctr"])
    assert all(isinstance(v, float) for v in m.values())
    assert "auc" in ctr_metrics(y, p) and "gauc" not in ctr_metrics(y, p)
    assert "val_auc" in ctr_metrics(y, p, prefix="val_")


# --------------------------------------------------------------------------------------------- ranking
def test_ranking_metrics_match_a_hand_computed_example() -> None:
    ranked = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]])
    relevant = [np.array([2, 4, 99]), np.array([], dtype=np.int64), np.array([9])]
    m = ranking_metrics(ranked, relevant, ks=(2, 4))
    l2, l3, l5 = math.log2(3), math.log2(3), math.log2(5)
    assert m["n_users"] == 2.0 and m["n_users_skipped"] == 1.0  # user 1 has no relevant item
    assert m["recall@2"] == pytest.approx((1 / 3 + 1) / 2)  # hits / |relevant|, not / min(|relevant|, K)
    assert m["recall@4"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["hit_rate@2"] == 1.0 and m["hit_rate@4"] == 1.0
    assert m["ndcg@2"] == pytest.approx(((1 / l2) / (1 + 1 / l3) + 1.0) / 2)
    assert m["ndcg@4"] == pytest.approx(((1 / l2 + 1 / l5) / (1 + 1 / l3 + 0.5) + 1.0) / 2)
    assert m["mrr"] == pytest.approx((1 / 2 + 1) / 2)


def test_ranking_metrics_csr_input_equals_list_input() -> None:
    ranked = np.array([[3, 1, 2], [4, 5, 6]])
    relevant = [np.array([1, 2]), np.array([6])]
    csr = (np.array([0, 2, 3]), np.array([1, 2, 6]))
    assert ranking_metrics(ranked, relevant, ks=(1, 3)) == ranking_metrics(ranked, csr, ks=(1, 3))


def test_ranking_metrics_ignore_padding_and_count_repeated_items_once() -> None:
    ranked = np.array([[7, 7, -1, -1]])
    m = ranking_metrics(ranked, [np.array([7, 8, 8])], ks=(4,))  # duplicate relevant ids count once too
    assert m["recall@4"] == pytest.approx(0.5)
    assert m["mrr"] == 1.0
    assert m["ndcg@4"] == pytest.approx(1.0 / (1.0 + 1.0 / math.log2(3)))


def test_ranking_metrics_equal_naive_loop_on_random_data_with_huge_ids() -> None:
    rng = np.random.default_rng(12)
    n_users, k_max, n_items = 300, 50, 2_000
    ranked = np.stack([rng.permutation(n_items)[:k_max] for _ in range(n_users)])
    relevant = [rng.choice(n_items, size=rng.integers(0, 30), replace=False) for _ in range(n_users)]
    ks = (5, 10, 50)
    got = ranking_metrics(ranked, relevant, ks=ks)
    ref = _naive_ranking(ranked, relevant, ks)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    shift = 2**50  # ids up to 2.3e18: user x id span overflows int64, so the densified path must agree
    huge = ranking_metrics(ranked * shift, [r * shift for r in relevant], ks=ks, pad_id=None)
    for key, value in got.items():
        assert huge[key] == pytest.approx(value, abs=1e-12), key


def test_ranking_metrics_reject_k_beyond_list_length_and_misaligned_users() -> None:
    ranked = np.array([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"ks \[10\] outside 1..K_max=2"):
        ranking_metrics(ranked, [np.array([1]), np.array([3])], ks=(1, 10))
    with pytest.raises(ValueError, match=r"has 2 users .* 'relevant' has 1 entries"):
        ranking_metrics(ranked, [np.array([1])], ks=(1,))


# ----------------------------------------------------------------------------------------------- plots
def test_plots_return_figures_that_save_to_png(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    y, p = _ctr_data(2_000, 13)
    figures = {
        "roc.png": plot_roc(y, p, max_points=100),
        "reliability.png": plot_reliability(y, p, n_bins=8, strategy="quantile"),
        "loss.png": plot_loss_curves({"train/loss": [0.7, 0.6, 0.55], "val/loss": [0.72, 0.65, 0.63]}),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        fig.savefig(tmp_path / name)
        assert (tmp_path / name).stat().st_size > 5_000


def test_roc_of_several_models_draws_one_curve_each_with_its_auc_in_the_legend() -> None:
    y, p = _ctr_data(2_000, 14)
    worse = np.clip(p + np.random.default_rng(0).normal(0, 0.3, len(p)), 0, 1)
    fig = plot_roc(y, {"candidate v2": p, "champion v1": worse})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == [f"candidate v2 (AUC {auc(y, p):.4f})", f"champion v1 (AUC {auc(y, worse):.4f})", "chance"]
    assert len(fig.axes[0].get_lines()) == 3
