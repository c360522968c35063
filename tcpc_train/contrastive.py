"""TCPC / 3D CPC head and loss: a GRU over support features, a linear predictor, InfoNCE.

TCPC (U path) and 3D CPC (straight path) are the same code: the encoder maps
every cube of a path to a feature, a GRU reads the support features in path
order, a linear layer predicts the target's feature from the GRU's last state,
and InfoNCE picks the true target among the other samples' targets in the
batch (and, optionally, the sample's own support cubes as hard negatives).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def info_nce(pred: torch.Tensor, targets: torch.Tensor, temperature: float = 0.1,
             extra_negatives: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE with in-batch negatives on cosine similarities.

    Parameters
    ----------
    pred : (B, D) tensor
        Predicted target features.
    targets : (B, D) tensor
        True target features; ``targets[j]``, j != i, are the negatives of sample i.
    temperature : float
        Softmax temperature, > 0.
    extra_negatives : (B, K, D) tensor, optional
        Per-sample additional negatives (e.g. the sample's own support features).

    Returns
    -------
    Scalar tensor: mean cross-entropy of picking the true target (≈ log B for
    features that carry no information, → 0 for perfect predictions).
    """
    if pred.shape != targets.shape or pred.dim() != 2:
        raise ValueError(f"pred and targets must both be (B, D), got {tuple(pred.shape)} and {tuple(targets.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = F.normalize(pred.float(), dim=1)
    t = F.normalize(targets.float(), dim=1)
    logits = p @ t.T
    if extra_negatives is not None:
        n = F.normalize(extra_negatives.float(), dim=2)
        logits = torch.cat([logits, torch.einsum("bd,bkd->bk", p, n)], dim=1)
    labels = torch.arange(p.shape[0], device=p.device)
    return F.cross_entropy(logits / temperature, labels)


class PredictiveHead(nn.Module):
    """GRU over support features + linear predictor: (B, P, D) -> (B, D)."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.predictor = nn.Linear(hidden, dim)

    def forward(self, support: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(support)
        return self.predictor(h[-1])


class ContrastivePredictiveCoding(nn.Module):
    """Encoder + predictive head; ``forward(cubes)`` returns the InfoNCE loss.

    Parameters
    ----------
    encoder : nn.Module
        Maps (N, 1, c, c, c) to (N, encoder.out_dim).
    temperature : float
    own_negatives : bool
        Also contrast each prediction with the sample's own support cubes.
    """

    def __init__(self, encoder: nn.Module, temperature: float = 0.1, own_negatives: bool = False):
        super().__init__()
        self.encoder = encoder
        self.head = PredictiveHead(encoder.out_dim)
        self.temperature = temperature
        self.own_negatives = own_negatives

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        """cubes: (B, P+1, c, c, c) in path order, the target last -> scalar loss."""
        b, n = cubes.shape[:2]
        feats = self.encoder.forward_features(cubes.reshape(b * n, 1, *cubes.shape[2:]))
        feats = feats.reshape(b, n, -1)
        support, target = feats[:, :-1], feats[:, -1]
        with torch.autocast(cubes.device.type, enabled=False):  # the GRU runs in float32 under mixed precision
            pred = self.head(support.float())
        return info_nce(pred, target, self.temperature, support if self.own_negatives else None)


def chance_loss(batch_size: int) -> float:
    """InfoNCE of an uninformed predictor: log(batch size)."""
    return math.log(batch_size)
