"""medzero.evaluation.metrics against scikit-learn, to 1e-9, on fixed random data with ties and edge cases."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")
from sklearn.calibration import calibration_curve  # noqa: E402

from medzero.evaluation import metrics as M  # noqa: E402

TOL = 1e-9


def _binary_cases():
    rng = np.random.default_rng(20240611)
    cases = {}
    y = rng.integers(0, 2, 200)
    cases["continuous"] = (y, np.clip(0.35 * y + rng.normal(0.3, 0.25, 200), 0, 1))
    # heavy ties: scores rounded to one decimal, so many rows share a score across both classes
    y = rng.integers(0, 2, 150)
    cases["ties"] = (y, np.round(np.clip(0.2 * y + rng.uniform(0, 0.8, 150), 0, 1), 1))
    cases["all_tied"] = (np.array([0, 1, 1, 0, 1]), np.full(5, 0.5))
    cases["perfect"] = (np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    cases["inverted"] = (np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1]))
    cases["rare_positive"] = (np.r_[np.zeros(60, int), 1], np.r_[rng.uniform(0, 1, 60), 0.55])
    # scores exactly on the bin edges and on 0 and 1
    cases["bin_edges"] = (rng.integers(0, 2, 22), np.r_[np.linspace(0, 1, 11), np.linspace(0, 1, 11)])
    cases["two_rows"] = (np.array([1, 0]), np.array([0.3, 0.3]))
    return cases


CASES = _binary_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_roc_auroc_and_average_precision_match_sklearn(name):
    y, s = CASES[name]
    fpr, tpr, thr = M.roc_curve(y, s)
    ref_fpr, ref_tpr, ref_thr = sklearn_metrics.roc_curve(y, s)
    np.testing.assert_allclose(fpr, ref_fpr, rtol=0, atol=TOL)
    np.testing.assert_allclose(tpr, ref_tpr, rtol=0, atol=TOL)
    np.testing.assert_array_equal(thr, ref_thr)
    fpr2, tpr2, _ = M.roc_curve(y, s, drop_intermediate=False)
    ref2 = sklearn_metrics.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr2, ref2[0], atol=TOL)
    np.testing.assert_allclose(tpr2, ref2[1], atol=TOL)
    assert M.auroc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=TOL)
    assert M.average_precision(y, s) == pytest.approx(sklearn_metrics.average_precision_score(y, s), abs=TOL)
    p, r, t = M.precision_recall_curve(y, s)
    rp, rr, rt = sklearn_metrics.precision_recall_curve(y, s)
    np.testing.assert_allclose(p, rp, atol=TOL)
    np.testing.assert_allclose(r, rr, atol=TOL)
    np.testing.assert_array_equal(t, rt)


def test_known_values_and_ties_count_half():
    assert M.auroc([0, 1, 1, 0, 1], [0.5] * 5) == 0.5
    assert M.auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert M.auroc([0, 1], [0.3, 0.3]) == 0.5
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0


def test_undefined_statistics_are_nan_not_invented():
    assert np.isnan(M.auroc([1, 1, 1], [0.2, 0.5, 0.9]))
    assert np.isnan(M.auroc([0, 0], [0.2, 0.5]))
    assert np.isnan(M.average_precision([0, 0, 0], [0.2, 0.5, 0.1]))
    stats = M.threshold_stats([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert np.isnan(stats.sensitivity) and np.isnan(stats.ppv) and stats.specificity == 1.0
    assert stats.to_dict()["sensitivity"] is None
    with pytest.raises(ValueError, match="0 or 1"):
        M.auroc([0, 2], [0.1, 0.2])


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.55, 1.0])
def test_threshold_stats_match_sklearn(name, threshold):
    y, s = CASES[name]
    stats = M.threshold_stats(y, s, threshold)
    pred = (s >= threshold).astype(int)  # at or above the threshold is positive, as medzero decides
    tn, fp, fn, tp = sklearn_metrics.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert (stats.tp, stats.fp, stats.tn, stats.fn) == (tp, fp, tn, fn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sens = sklearn_metrics.recall_score(y, pred, zero_division=np.nan)
        spec = sklearn_metrics.recall_score(y, pred, pos_label=0, zero_division=np.nan)
        ppv = sklearn_metrics.precision_score(y, pred, zero_division=np.nan)
    for ours, ref in ((stats.sensitivity, sens), (stats.specificity, spec), (stats.ppv, ppv)):
        assert (np.isnan(ours) and np.isnan(ref)) or ours == pytest.approx(ref, abs=TOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_brier_and_calibration_match_sklearn(name):
    y, s = CASES[name]
    assert M.brier_score(y, s) == pytest.approx(sklearn_metrics.brier_score_loss(y, s), abs=TOL)
    edges, count, mean_score, frac = M.calibration_bins(y, s)
    ref_true, ref_pred = calibration_curve(y, s, n_bins=10, strategy="uniform")
    used = count > 0
    np.testing.assert_allclose(frac[used], ref_true, atol=TOL)
    np.testing.assert_allclose(mean_score[used], ref_pred, atol=TOL)
    assert count.sum() == len(y)
    # ECE by its definition, bin by bin: [0, .1], (.1, .2], ..., (.9, 1]
    ece = 0.0
    for b in range(10):
        lo, hi = b / 10, (b + 1) / 10
        inside = (s <= hi) & ((s > lo) if b else (s >= lo))
        if inside.any():
            ece += inside.sum() / len(y) * abs(y[inside].mean() - s[inside].mean())
    assert M.expected_calibration_error(y, s) == pytest.approx(ece, abs=TOL)


def test_bootstrap_ci_is_the_percentile_interval_of_the_seeded_resamples():
    y, s = CASES["ties"]
    ci = M.bootstrap_ci(y, s, n_boot=300, seed=7)
    rng = np.random.default_rng(7)
    values, skipped = [], 0
    for _ in range(300):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) < 2:
            skipped += 1
            continue
        values.append(sklearn_metrics.roc_auc_score(y[idx], s[idx]))
    low, high = np.percentile(values, [2.5, 97.5])
    assert (ci.low, ci.high) == (pytest.approx(low, abs=TOL), pytest.approx(high, abs=TOL))
    assert ci.n_skipped == skipped == 0 and ci.low < M.auroc(y, s) < ci.high
    assert M.bootstrap_ci(y, s, n_boot=300, seed=7) == ci  # seeded: the same interval every run
    assert M.bootstrap_ci(y, s, n_boot=300, seed=8) != ci


def test_bootstrap_skips_and_counts_one_class_resamples():
    y, s = CASES["rare_positive"]  # one positive in 61 rows: about 37 % of resamples miss it
    ci = M.bootstrap_ci(y, s, n_boot=1000, seed=0)
    rng = np.random.default_rng(0)
    expected_skips = sum(int(y[rng.integers(0, len(y), len(y))].sum() == 0) for _ in range(1000))
    assert ci.n_skipped == expected_skips and 250 < ci.n_skipped < 500
    assert 0 <= ci.low <= ci.high <= 1
    empty = M.bootstrap_ci([1, 1, 1], [0.1, 0.2, 0.3], n_boot=50)
    assert empty.n_skipped == 50 and empty.to_dict()["low"] is None


def _multiclass_data():
    rng = np.random.default_rng(3)
    n, k = 240, 7
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.0
    logits = np.round(logits, 1)  # ties between classes
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, p


@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_k_accuracy_matches_sklearn(k):
    y, p = _multiclass_data()
    ref = sklearn_metrics.top_k_accuracy_score(y, p, k=k, labels=np.arange(p.shape[1]))
    assert M.top_k_accuracy(y, p, k) == pytest.approx(ref, abs=TOL)
    tied = np.full((4, 6), 1 / 6)
    assert M.top_k_accuracy([0, 5, 2, 3], tied, k) == pytest.approx(
        sklearn_metrics.top_k_accuracy_score([0, 5, 2, 3], tied, k=k, labels=np.arange(6)), abs=TOL
    )


def test_confusion_balanced_accuracy_and_macro_f1_match_sklearn():
    y, p = _multiclass_data()
    pred = p.argmax(axis=1)
    names = np.array(["a", "b", "c", "d", "e", "f", "g"])
    yt, yp = list(names[y]), list(names[pred])
    np.testing.assert_array_equal(
        M.confusion_matrix(yt, yp, list(names)), sklearn_metrics.confusion_matrix(yt, yp, labels=list(names))
    )
    assert M.balanced_accuracy(yt, yp) == pytest.approx(sklearn_metrics.balanced_accuracy_score(yt, yp), abs=TOL)
    assert M.macro_f1(yt, yp) == pytest.approx(sklearn_metrics.f1_score(yt, yp, average="macro"), abs=TOL)
    # a class that is predicted but never true, and one never predicted
    yt2, yp2 = ["a", "a", "b", "b", "b"], ["a", "c", "b", "a", "b"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert M.balanced_accuracy(yt2, yp2) == pytest.approx(sklearn_metrics.balanced_accuracy_score(yt2, yp2), abs=TOL)
        assert M.macro_f1(yt2, yp2) == pytest.approx(sklearn_metrics.f1_score(yt2, yp2, average="macro"), abs=TOL)


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_cohen_kappa_matches_sklearn(weights):
    rng = np.random.default_rng(11)
    order = ["accept", "review", "re-record"]
    human = rng.choice(order, 90, p=[0.5, 0.3, 0.2])
    model = np.where(rng.uniform(size=90) < 0.6, human, rng.choice(order, 90))
    ours = M.cohen_kappa(list(human), list(model), labels=order, weights=weights)
    ref = sklearn_metrics.cohen_kappa_score(human, model, labels=order, weights=weights)
    assert ours == pytest.approx(ref, abs=TOL)
    # a category nobody used changes nothing unweighted, and its position matters when weighted
    two = ["accept", "re-record", "accept", "re-record", "accept"]
    other = ["accept", "accept", "accept", "re-record", "re-record"]
    assert M.cohen_kappa(two, other, labels=order, weights=weights) == pytest.approx(
        sklearn_metrics.cohen_kappa_score(two, other, labels=order, weights=weights), abs=TOL
    )
    assert M.cohen_kappa(list(human), list(human), labels=order, weights=weights) == 1.0
    assert np.isnan(M.cohen_kappa(["accept"] * 3, ["accept"] * 3, labels=order))
