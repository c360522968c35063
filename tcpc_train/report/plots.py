"""Pictures of a run: training curves and ROC curves (matplotlib, Agg backend).

Each picture is built as a figure (``*_figure``), which :mod:`tcpc_train.report.html`
embeds in a page, and saved as PNG by the ``plot_*`` functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from tcpc_train.evaluation.metrics import ranking_scores  # noqa: E402

# Curves with at most this many points get markers (per-epoch validation metrics), longer ones are lines.
_MARKED = 30


def curves_figure(rows: Sequence[dict], keys: Sequence[str] = ("loss",), title: str = "") -> Figure:
    """``keys`` of per-step log rows against their ``step``; one panel per key (rows without it skipped),
    three to a row."""
    cols = min(len(keys), 3)
    nrows = -(-len(keys) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols + 0.8, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), lw=1, marker="o" if len(pts) <= _MARKED else None, ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_curves(rows: list[dict], path: str | Path, keys: tuple[str, ...] = ("loss",), title: str = "") -> Path:
    """Save :func:`curves_figure` as PNG at ``path``."""
    return _save(curves_figure(rows, keys, title), path)


def roc_axes(ax, labels: np.ndarray, scores: np.ndarray, name: str = "") -> None:
    """Draw the one-vs-rest ROC curve of each class (class 1 only for two classes) on ``ax``, AUC in the label.

    ``scores``: (N, K) class probabilities or log-probabilities, ranked as in
    :func:`tcpc_train.evaluation.metrics.ranking_scores`; a class absent from ``labels`` (or
    the only one there) has no curve.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    classes = [1] if scores.shape[1] == 2 else range(scores.shape[1])
    for c, rank in zip(classes, ranking_scores(scores)):
        if 0 < (labels == c).sum() < len(labels):
            fpr, tpr, _ = roc_curve(labels == c, rank)
            what = name if name and len(classes) == 1 else f"{name} class {c}".strip()
            ax.plot(fpr, tpr, label=f"{what} (AUC {auc(fpr, tpr):.3f})")


def roc_figure(labels: np.ndarray, scores: np.ndarray, title: str = "") -> Figure:
    """One-vs-rest ROC curve per class (class 1 only for binary problems), AUC in the legend."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    roc_axes(ax, labels, scores)
    roc_frame(ax, title)
    fig.tight_layout()
    return fig


def roc_frame(ax, title: str) -> None:
    """The chance diagonal, axis labels, title and legend of ROC axes."""
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Save :func:`roc_figure` as PNG at ``path``."""
    return _save(roc_figure(labels, scores, title), path)


def _save(fig: Figure, path: str | Path) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
