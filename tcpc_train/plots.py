"""Pictures of a run: training curves and ROC curves as PNG (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from tcpc_train.metrics import ranking_scores  # noqa: E402


def plot_curves(rows: list[dict], path: str | Path, keys: tuple[str, ...] = ("loss",), title: str = "") -> Path:
    """Plot ``keys`` of per-step log rows against their ``step``; one panel per key."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: str | Path, title: str = "") -> Path:
    """One-vs-rest ROC curve per class (class 1 only for binary problems), AUC in the legend.

    ``scores``: class probabilities or log-probabilities, ranked as in
    :func:`tcpc_train.metrics.ranking_scores`.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    classes = [1] if scores.shape[1] == 2 else range(scores.shape[1])
    for c, rank in zip(classes, ranking_scores(scores)):
        if 0 < (labels == c).sum() < len(labels):
            fpr, tpr, _ = roc_curve(labels == c, rank)
            ax.plot(fpr, tpr, label=f"class {c} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
