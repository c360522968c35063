"""Intervals and paired tests for an experiment table, by bootstrap over test patients and seeds.

A row of the table at one label fraction is S fine-tuning runs (seeds), each
scored on the same test samples. The sampling units are the *patients* (a
patient with several nodules is one unit: its samples are not independent)
and the *seeds* (the training randomness). One bootstrap replicate draws S
seeds with replacement and the patients with replacement (cluster bootstrap:
a drawn patient brings all its samples), scores each drawn seed on the drawn
patients, and averages over the drawn seeds. The 95 % interval is the 2.5
and 97.5 percentiles of the replicates.

The paired test of two rows draws the *same* seeds and patients for both in
each replicate (the rows share fine-tuning seeds, pretraining seeds and test
patients), so what the two rows have in common cancels out of the difference.
Its two-sided p-value is twice the smaller tail of the replicate differences
around 0 (the interval-inversion p-value), with the +1 correction so it is
never exactly 0.

Binary tasks only for AUC (class 1 against class 0); ACC and balanced ACC work
for any number of classes. Pure numpy: replicate weights turn every metric
into a weighted one, so no sample is copied.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("acc", "balanced_acc", "auc")


@dataclass(frozen=True)
class Predictions:
    """One run's test predictions.

    labels : (N,) int, true class
    pred : (N,) int, predicted class
    score : (N,) float, ranking score of class 1 (e.g. a logit difference); only its order matters
    """

    labels: np.ndarray
    pred: np.ndarray
    score: np.ndarray


def _metrics(p: Predictions, w: np.ndarray) -> np.ndarray:
    """(B, 3) acc, balanced_acc, auc of one run under B rows of sample weights ``w`` (B, N).

    Weighted AUC: the weight of (positive, negative) pairs ranked right, ties
    counting half, over all pairs' weight (w_i w_j per pair); nan without both classes.
    """
    w = np.atleast_2d(w).astype(float)
    correct = (p.pred == p.labels).astype(float)
    acc = w @ correct / w.sum(1)
    recalls = []
    for c in np.unique(p.labels):
        wc = w[:, p.labels == c]
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(wc @ correct[p.labels == c] / wc.sum(1))  # nan where the draw has no class c
    balanced = np.nanmean(np.stack(recalls), axis=0)
    auc = np.full(len(w), np.nan)
    pos, neg = p.labels == 1, p.labels == 0
    if pos.any() and neg.any() and (pos | neg).all():
        # per distinct score, the positive and negative weight of each replicate: O(B N), no pair matrix
        _, inverse = np.unique(p.score, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) > 0])
        wp = np.add.reduceat((w * pos)[:, order], starts, axis=1)
        wn = np.add.reduceat((w * neg)[:, order], starts, axis=1)
        below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each score
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (wp * (below + 0.5 * wn)).sum(1) / (wp.sum(1) * wn.sum(1))
    return np.stack([acc, balanced, auc], axis=1)


def _check(runs: list[Predictions], groups: np.ndarray) -> np.ndarray:
    groups = np.asarray(groups)
    if not runs:
        raise ValueError("need at least one run (seed)")
    for r in runs:
        if not (len(r.labels) == len(r.pred) == len(r.score) == len(groups)):
            raise ValueError(f"groups name {len(groups)} test samples but a run has {len(r.labels)} labels, "
                             f"{len(r.pred)} predictions and {len(r.score)} scores; all must match")
        if not np.array_equal(r.labels, runs[0].labels):
            raise ValueError("the runs were scored on different test labels; they must share the test set")
    return groups


def _replicates(rows: list[list[Predictions]], groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(rows), 3) seed-averaged metrics of each row on shared seed/patient draws."""
    _, cluster = np.unique(groups, return_inverse=True)
    n_clusters, n_seeds = cluster.max() + 1, len(rows[0])
    rng = np.random.default_rng(seed)
    # replicate b: how often each patient and each seed was drawn
    patients = np.stack([np.bincount(rng.integers(n_clusters, size=n_clusters), minlength=n_clusters)
                         for _ in range(n_boot)])
    seeds = np.stack([np.bincount(rng.integers(n_seeds, size=n_seeds), minlength=n_seeds)
                      for _ in range(n_boot)])
    w = patients[:, cluster]
    out = np.zeros((n_boot, len(rows), len(METRICS)))
    for i, row in enumerate(rows):
        for s, run in enumerate(row):
            out[:, i] += seeds[:, s, None] * _metrics(run, w)
    return out / n_seeds


def point_estimate(runs: list[Predictions]) -> dict[str, float]:
    """Mean over seeds of each metric on the whole test set."""
    one = np.ones((1, len(runs[0].labels)))
    return dict(zip(METRICS, np.mean([_metrics(r, one)[0] for r in runs], axis=0).tolist()))


def bootstrap_ci(runs: list[Predictions], groups, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Mean over seeds and its percentile interval by bootstrap over patients and seeds.

    Parameters
    ----------
    runs : list of Predictions, one per seed, all on the same N test samples
    groups : (N,) patient of each test sample (any hashable values)
    n_boot : bootstrap replicates
    level : interval coverage, e.g. 0.95
    seed : seed of the resampling

    Returns
    -------
    ``{metric: (mean, low, high)}`` for acc, balanced_acc, auc (nan where undefined).
    """
    groups = _check(runs, groups)
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got {level} and {n_boot}")
    reps = _replicates([runs], groups, n_boot, seed)[:, 0]
    point = point_estimate(runs)
    out = {}
    for j, m in enumerate(METRICS):
        v = reps[:, j][np.isfinite(reps[:, j])]
        lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2]) if len(v) else (np.nan, np.nan)
        out[m] = (point[m], float(lo), float(hi))
    return out


def paired_test(a: list[Predictions], b: list[Predictions], groups, n_boot: int = 2000,
                seed: int = 0) -> dict[str, tuple[float, float]]:
    """Paired bootstrap test of the difference ``a - b`` of each seed-averaged metric.

    ``a[i]`` and ``b[i]`` must come from the same seeds (fine-tuning and
    pretraining) and score the same test samples; every replicate draws the
    same seeds and patients for both.

    Returns
    -------
    ``{metric: (mean difference, two-sided p-value)}``; p is 1 for identical
    rows and 2 / (n_boot + 1) (its floor) when ``a`` beats ``b`` in every replicate.
    """
    groups = _check(a + b, groups)
    if len(a) != len(b):
        raise ValueError(f"paired rows need the same seeds, got {len(a)} and {len(b)} runs")
    reps = _replicates([a, b], groups, n_boot, seed)
    diff = reps[:, 0] - reps[:, 1]
    pa, pb = point_estimate(a), point_estimate(b)
    out = {}
    for j, m in enumerate(METRICS):
        d = diff[:, j][np.isfinite(diff[:, j])]
        if not len(d):
            out[m] = (float("nan"), float("nan"))
            continue
        tail = min((d <= 0).sum() + 1, (d >= 0).sum() + 1) / (len(d) + 1)
        out[m] = (pa[m] - pb[m], float(min(1.0, 2 * tail)))
    return out
