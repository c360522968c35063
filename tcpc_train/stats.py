"""Intervals and paired tests for an experiment table, by bootstrap over test patients and seeds.

A row of the table at one label fraction is S fine-tuning runs (seeds), each
scored on the same test samples. The sampling units are the *patients* (a
patient with several nodules is one unit: its samples are not independent)
and the *seeds* (the training randomness). One bootstrap replicate draws S
seeds with replacement and the patients with replacement (cluster bootstrap:
a drawn patient brings all its samples), scores each drawn seed on the drawn
patients, and averages over the drawn seeds (docs/design.md, "Experiment
statistics"). The 95 % interval is the 2.5 and 97.5 percentiles of the
replicates.

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


def _auc(labels: np.ndarray, score: np.ndarray, w: np.ndarray) -> float:
    """Weighted ROC AUC of class 1 against 0: P(score_pos > score_neg) + P(tie) / 2, pairs weighted w_i w_j."""
    values, inverse = np.unique(score, return_inverse=True)
    pos = np.bincount(inverse, weights=w * (labels == 1), minlength=len(values))
    neg = np.bincount(inverse, weights=w * (labels == 0), minlength=len(values))
    total = pos.sum() * neg.sum()
    if total == 0:
        return float("nan")
    below = np.cumsum(neg) - neg  # negative weight strictly below each score value
    return float((pos * (below + 0.5 * neg)).sum() / total)


def _weighted_metrics(p: Predictions, w: np.ndarray) -> np.ndarray:
    """(acc, balanced_acc, auc) with sample weights ``w`` (counts of a bootstrap draw)."""
    correct = (p.pred == p.labels).astype(float)
    acc = (w * correct).sum() / w.sum()
    recalls = [(w * correct)[p.labels == c].sum() / w[p.labels == c].sum()
               for c in np.unique(p.labels) if w[p.labels == c].sum() > 0]
    auc = _auc(p.labels, p.score, w) if np.isin(p.labels, (0, 1)).all() else float("nan")
    return np.array([acc, np.mean(recalls), auc])


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
    out = np.empty((n_boot, len(rows), len(METRICS)))
    for b in range(n_boot):
        w = np.bincount(rng.integers(n_clusters, size=n_clusters), minlength=n_clusters)[cluster].astype(float)
        seeds = rng.integers(n_seeds, size=n_seeds)
        for i, row in enumerate(rows):
            out[b, i] = np.mean([_weighted_metrics(row[s], w) for s in seeds], axis=0)
    return out


def point_estimate(runs: list[Predictions]) -> dict[str, float]:
    """Mean over seeds of each metric on the whole test set."""
    one = np.ones(len(runs[0].labels))
    return dict(zip(METRICS, np.mean([_weighted_metrics(r, one) for r in runs], axis=0).tolist()))


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
