"""Classification metrics: accuracy, ROC AUC (scikit-learn) and the confusion matrix."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """ACC, AUC and confusion matrix of predicted class probabilities.

    Parameters
    ----------
    labels : (N,) int
        True classes in [0, K).
    probs : (N, K) float
        Predicted probabilities (rows sum to 1).

    Returns
    -------
    dict: ``acc``; ``auc`` (binary: of class 1's probability; K > 2: one-vs-rest
    macro average; None when ``labels`` hold a single class, where AUC is
    undefined); ``confusion`` (K × K list, rows true, columns predicted); ``n``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (N,) labels and (N, K) probabilities with N > 0, got {labels.shape} and {probs.shape}")
    k = probs.shape[1]
    pred = probs.argmax(1)
    auc = None
    if len(np.unique(labels)) > 1:
        auc = float(roc_auc_score(labels, probs[:, 1]) if k == 2 else
                    roc_auc_score(labels, probs, multi_class="ovr", labels=list(range(k))))
    return {"acc": float(accuracy_score(labels, pred)), "auc": auc,
            "confusion": confusion_matrix(labels, pred, labels=list(range(k))).tolist(), "n": int(len(labels))}
