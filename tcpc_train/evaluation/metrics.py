"""Classification metrics: accuracy, balanced accuracy, ROC AUC (scikit-learn) and the confusion matrix."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score


def ranking_scores(scores: np.ndarray) -> list[np.ndarray]:
    """Per class, the score that ranks samples for its one-vs-rest ROC (binary: class 1 only).

    ``scores`` are probabilities or log-probabilities. For two classes the
    difference of the columns is used: with log-probabilities it is the logit
    difference, which keeps its order where a confident model's probabilities
    round to exactly 0 and 1 and every sample would tie (AUC 0.5).
    """
    scores = np.asarray(scores, dtype=np.float64)
    return [scores[:, 1] - scores[:, 0]] if scores.shape[1] == 2 else [scores[:, c] for c in range(scores.shape[1])]


def classification_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    """ACC, balanced ACC, AUC and confusion matrix of predicted class scores.

    Parameters
    ----------
    labels : (N,) int
        True classes in [0, K).
    scores : (N, K) float
        Class probabilities or log-probabilities (``predict`` gives the latter).

    Returns
    -------
    dict: ``acc``; ``balanced_acc`` (mean recall over the classes present in
    ``labels``: 0.5 for a constant guess on two classes, whatever the
    prevalence); ``auc`` (binary: of class 1 against class 0; K > 2:
    one-vs-rest macro average over classes present; None when ``labels`` hold
    a single class, where AUC is undefined); ``confusion`` (K × K list, rows
    true, columns predicted); ``n``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or len(scores) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (N,) labels and (N, K) scores with N > 0, got {labels.shape} and {scores.shape}")
    k = scores.shape[1]
    pred = scores.argmax(1)
    auc = None
    if len(np.unique(labels)) > 1:
        ranks = ranking_scores(scores)
        classes = [1] if k == 2 else range(k)
        aucs = [roc_auc_score(labels == c, r) for c, r in zip(classes, ranks) if 0 < (labels == c).sum() < len(labels)]
        auc = float(np.mean(aucs))
    recalls = [(pred[labels == c] == c).mean() for c in np.unique(labels)]
    return {"acc": float(accuracy_score(labels, pred)), "balanced_acc": float(np.mean(recalls)), "auc": auc,
            "confusion": confusion_matrix(labels, pred, labels=list(range(k))).tolist(), "n": int(len(labels))}
