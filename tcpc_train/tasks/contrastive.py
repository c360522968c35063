"""TCPC / 3D CPC head and loss: a GRU over support features, a linear predictor, InfoNCE.

TCPC (U path) and 3D CPC (straight path) are the same code: the encoder maps
every cube of a path to a feature, a GRU reads the support features in path
order, a linear layer predicts the target's feature from the GRU's last state,
and InfoNCE picks the true target among the other samples' targets in the
batch (and, optionally, the sample's own support cubes as hard negatives).
Under DDP the batch is every rank's batch: the targets of all ranks are
gathered (moco-v3's ``concat_all_gather``) through a differentiable gather, so
the loss and, after DDP's gradient averaging, the gradients are those of one
process training on the concatenated batch.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from tcpc_train.models.encoders import encoder_features
from tcpc_train.loops.runtime import world_size


class _GatherRows(torch.autograd.Function):
    """Every rank's rows (padded to the largest count) concatenated in rank order; the backward pass
    sums the gradient of the whole over ranks and returns this rank's rows of it, so every rank's
    loss reaches every rank's features."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counts: list[int], rank: int) -> torch.Tensor:
        padded = F.pad(x.contiguous(), (0, 0, 0, max(counts) - len(x)))
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        ctx.lo = sum(counts[:rank])
        ctx.n = len(x)
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.lo:ctx.lo + ctx.n], None, None


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows of ``x`` (n_r, D) concatenated in rank order, and the index of this rank's
    first row in it; differentiable. Ranks may hold different numbers of rows (a batch that lost
    bad samples): the counts are exchanged first. One process: ``(x, 0)``."""
    if world_size() == 1:
        return x, 0
    counts = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([len(x)], device=x.device))
    counts = [int(c) for c in counts]
    rank = dist.get_rank()
    return _GatherRows.apply(x, counts, rank), sum(counts[:rank])


def info_nce(pred: torch.Tensor, targets: torch.Tensor, temperature: float = 0.1,
             extra_negatives: torch.Tensor | None = None, all_ranks: bool = False) -> torch.Tensor:
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
    all_ranks : bool
        Under torch.distributed, also contrast with the targets of every other
        rank's batch (:func:`gather_rows`); the mean over ranks of the returned
        losses is then the loss of the concatenated batch, and DDP's averaged
        gradients are its gradients. No effect in one process.

    Returns
    -------
    Scalar tensor: mean cross-entropy of picking the true target (≈ log B for
    features that carry no information, log(B · ranks) with ``all_ranks``, → 0
    for perfect predictions).
    """
    if pred.shape != targets.shape or pred.dim() != 2:
        raise ValueError(f"pred and targets must both be (B, D), got {tuple(pred.shape)} and {tuple(targets.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = F.normalize(pred.float(), dim=1)
    t = F.normalize(targets.float(), dim=1)
    t, first = gather_rows(t) if all_ranks else (t, 0)
    logits = p @ t.T
    if extra_negatives is not None:
        n = F.normalize(extra_negatives.float(), dim=2)
        logits = torch.cat([logits, torch.einsum("bd,bkd->bk", p, n)], dim=1)
    labels = torch.arange(first, first + p.shape[0], device=p.device)
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
    all_ranks : bool
        Under DDP, negatives from every rank's batch (:func:`info_nce`).
    """

    def __init__(self, encoder: nn.Module, temperature: float = 0.1, own_negatives: bool = False,
                 all_ranks: bool = True):
        super().__init__()
        self.encoder = encoder
        self.head = PredictiveHead(encoder.out_dim)
        self.temperature = temperature
        self.own_negatives = own_negatives
        self.all_ranks = all_ranks

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        """cubes: (B, P+1, c, c, c) in path order, the target last -> scalar loss."""
        b, n = cubes.shape[:2]
        feats = encoder_features(self.encoder, cubes.reshape(b * n, 1, *cubes.shape[2:]))
        feats = feats.reshape(b, n, -1)
        support, target = feats[:, :-1], feats[:, -1]
        with torch.autocast(cubes.device.type, enabled=False):  # the GRU runs in float32 under mixed precision
            pred = self.head(support.float())
        return info_nce(pred, target, self.temperature, support if self.own_negatives else None, self.all_ranks)


def chance_loss(batch_size: int) -> float:
    """InfoNCE of an uninformed predictor: log(batch size)."""
    return math.log(batch_size)
