"""Bootstrap intervals and paired tests on inputs with known answers."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tcpc_train.evaluation.stats import Predictions, bootstrap_ci, paired_test, point_estimate


def _run(labels, pred, score=None):
    labels, pred = np.asarray(labels), np.asarray(pred)
    return Predictions(labels, pred, pred.astype(float) if score is None else np.asarray(score, float))


def test_a_constant_metric_has_a_zero_width_interval():
    labels = np.arange(40) % 2
    runs = [_run(labels, labels) for _ in range(3)]  # every seed right on every patient
    ci = bootstrap_ci(runs, np.arange(40), n_boot=200)
    for m in ("acc", "balanced_acc", "auc"):
        assert ci[m] == (1.0, 1.0, 1.0)


def test_the_acc_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(0)
    n, p = 400, 0.7
    labels = rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < p, labels, 1 - labels)
    acc, lo, hi = bootstrap_ci([_run(labels, pred)], np.arange(n), n_boot=4000, seed=1)["acc"]
    half = 1.959964 * np.sqrt(acc * (1 - acc) / n)  # Wald interval of a proportion
    assert acc == pytest.approx((pred == labels).mean())
    assert lo == pytest.approx(acc - half, abs=0.01) and hi == pytest.approx(acc + half, abs=0.01)


def test_patients_are_the_unit_two_copies_of_a_patient_do_not_narrow_the_interval():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.75, labels, 1 - labels)
    single = bootstrap_ci([_run(labels, pred)], np.arange(200), n_boot=3000, seed=3)["acc"]
    twice = bootstrap_ci([_run(np.repeat(labels, 2), np.repeat(pred, 2))], np.repeat(np.arange(200), 2),
                         n_boot=3000, seed=3)["acc"]
    assert twice == pytest.approx(single, abs=1e-12)  # same draws, same clusters: the same interval
    naive = bootstrap_ci([_run(np.repeat(labels, 2), np.repeat(pred, 2))], np.arange(400), n_boot=3000)["acc"]
    assert (naive[2] - naive[1]) < 0.8 * (single[2] - single[1])  # what ignoring the clusters would claim


def test_seeds_are_resampled_too():
    labels = np.arange(10) % 2
    runs = [_run(labels, labels), _run(labels, 1 - labels)]  # one seed always right, one always wrong
    acc, lo, hi = bootstrap_ci(runs, np.arange(10), n_boot=2000)["acc"]
    assert (acc, lo, hi) == (0.5, 0.0, 1.0)  # two seeds drawn with replacement: 0, 1/2 or 1


def test_weighted_auc_and_balanced_acc_match_sklearn_on_the_full_set():
    rng = np.random.default_rng(4)
    labels = np.r_[np.zeros(30, int), np.ones(10, int)]
    score = np.round(rng.normal(labels, 1.0), 1)  # ties on purpose
    pred = (score > 0.5).astype(int)
    est = point_estimate([_run(labels, pred, score)])
    assert est["auc"] == pytest.approx(roc_auc_score(labels, score))
    recall = [(pred[labels == c] == c).mean() for c in (0, 1)]
    assert est["balanced_acc"] == pytest.approx(np.mean(recall))


def test_paired_test_gives_one_for_identical_rows_and_about_zero_for_a_row_always_better():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 60)
    groups = np.arange(60) // 2  # two samples per patient
    noisy = [_run(labels, np.where(rng.random(60) < 0.6, labels, 1 - labels), rng.random(60)) for _ in range(5)]
    same = paired_test(noisy, noisy, groups, n_boot=500)
    assert all(same[m] == (0.0, 1.0) for m in ("acc", "balanced_acc", "auc"))
    perfect = [_run(labels, labels, labels + 0.1 * rng.random(60)) for _ in range(5)]
    better = paired_test(perfect, noisy, groups, n_boot=500)
    for m in ("acc", "balanced_acc", "auc"):
        diff, p = better[m]
        assert diff > 0.2 and p == pytest.approx(2 / 501)


def test_bad_inputs_fail_in_one_line():
    labels = np.arange(4) % 2
    with pytest.raises(ValueError, match="groups name 5 test samples but a run has 4 labels"):
        bootstrap_ci([_run(labels, labels)], np.arange(5))
    with pytest.raises(ValueError, match="same seeds"):
        paired_test([_run(labels, labels)] * 2, [_run(labels, labels)], np.arange(4))
    with pytest.raises(ValueError, match="different test labels"):
        bootstrap_ci([_run(labels, labels), _run(1 - labels, labels)], np.arange(4))


def test_classification_metrics_report_balanced_accuracy():
    from tcpc_train.evaluation.metrics import classification_metrics

    labels = np.r_[np.zeros(9, int), 1]  # 90 % class 0
    always_zero = classification_metrics(labels, np.log(np.tile([0.9, 0.1], (10, 1))))
    assert always_zero["acc"] == 0.9 and always_zero["balanced_acc"] == 0.5  # a constant guess
    one_miss = classification_metrics(labels, np.log(np.r_[np.tile([0.9, 0.1], (8, 1)), [[0.1, 0.9]] * 2]))
    assert one_miss["balanced_acc"] == pytest.approx((8 / 9 + 1) / 2)
