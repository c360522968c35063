"""The paper's proxy-task baselines on 2×2×2 cube blocks: Rubik's cube and 3D Jigsaw.

- 3D Jigsaw (Noroozi & Favaro 2016, in 3D): the 8 cubes of a block are
  shuffled by one of K permutations from a fixed, seeded set of maximally
  distant permutations (greedy max-min Hamming distance); the network
  classifies which permutation it sees from the concatenated cube features.
- Rubik's cube (Zhuang et al. 2019): the same cube-ordering task plus cube
  orientation: each cube is independently rotated by 180° about the vertical
  axis (bit 0: flips z and x) and/or the horizontal axis (bit 1: flips z and
  y); the network predicts those 16 bits (multi-label, binary cross-entropy).

A block arrives from the shards as 8 cubes with grid positions (``block`` path
kind); :func:`canonical_order` sorts them into z-major order first, so the
label does not depend on the order the shard writer used.
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tcpc_train.models.encoders import encoder_features

N_CUBES = 8


@functools.lru_cache(maxsize=8)
def permutation_set(k: int, seed: int = 0) -> np.ndarray:
    """K permutations of 8 items chosen greedily for maximal minimum Hamming distance.

    Returns
    -------
    (K, 8) int64 array; row 0 is a seeded random permutation, each next row the
    permutation farthest (in min Hamming distance) from all rows so far, ties
    broken by a seeded shuffle. A pure function of (k, seed).
    """
    if not 2 <= k <= 1000:
        raise ValueError(f"number of permutations must be in [2, 1000], got {k}")
    rng = np.random.default_rng(seed)
    allp = np.array(list(itertools.permutations(range(N_CUBES))), dtype=np.int64)
    allp = allp[rng.permutation(len(allp))]
    chosen = [0]
    mind = (allp != allp[0]).sum(1)
    for _ in range(k - 1):
        i = int(np.argmax(mind))
        chosen.append(i)
        mind = np.minimum(mind, (allp != allp[i]).sum(1))
    return allp[chosen]


def canonical_order(path: np.ndarray) -> np.ndarray:
    """Indices that sort a block's 8 grid positions (8, 3) z-major; checks it is a 2×2×2 block."""
    path = np.asarray(path)
    if path.shape != (N_CUBES, 3) or len({tuple(p) for p in path.tolist()}) != N_CUBES \
            or any(len(np.unique(path[:, a])) != 2 for a in range(3)):
        raise ValueError(f"a block path must be 8 distinct positions on a 2x2x2 arrangement, got {path.tolist()}")
    return np.lexsort((path[:, 2], path[:, 1], path[:, 0]))


def shuffle_block(cubes: np.ndarray, path: np.ndarray, perms: np.ndarray, rotate: bool,
                  rng: np.random.Generator) -> tuple[np.ndarray, int, np.ndarray]:
    """Make one proxy-task example from a block.

    Parameters
    ----------
    cubes : (8, c, c, c) array
    path : (8, 3) grid positions of the cubes
    perms : (K, 8) permutation set
    rotate : bool
        Rubik's cube: also rotate cubes by 180° at random.
    rng : numpy Generator

    Returns
    -------
    shuffled : (8, c, c, c) in the dtype of ``cubes``, ``shuffled[i] = rotated canonical[perms[label][i]]``
    label : int, the permutation index
    rot : (8, 2) float32 rotation bits of the cubes in shuffled order (zeros without ``rotate``)
    """
    canon = cubes[canonical_order(path)]
    label = int(rng.integers(len(perms)))
    out = canon[perms[label]]  # fancy indexing copies
    rot = np.zeros((N_CUBES, 2), np.float32)
    if rotate:
        rot[:] = rng.integers(0, 2, size=(N_CUBES, 2))
        for i in range(N_CUBES):
            if rot[i, 0]:
                out[i] = out[i][::-1, :, ::-1]
            if rot[i, 1]:
                out[i] = out[i][::-1, ::-1, :]
    return out, label, rot


class BlockPuzzle(nn.Module):
    """Encoder + heads for Jigsaw / Rubik's cube; ``forward`` returns the loss.

    Parameters
    ----------
    encoder : nn.Module
    n_perms : int
        Number of permutation classes.
    rotate : bool
        Add the per-cube rotation head (Rubik's cube).
    """

    def __init__(self, encoder: nn.Module, n_perms: int, rotate: bool):
        super().__init__()
        self.encoder = encoder
        d = encoder.out_dim
        self.order_head = nn.Sequential(nn.Linear(N_CUBES * d, 2 * d), nn.ReLU(inplace=True),
                                        nn.Linear(2 * d, n_perms))
        self.rot_head = nn.Linear(d, 2) if rotate else None

    def forward(self, cubes: torch.Tensor, label: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        """cubes (B, 8, c, c, c), label (B,), rot (B, 8, 2) -> scalar loss."""
        b, n = cubes.shape[:2]
        feats = encoder_features(self.encoder, cubes.reshape(b * n, 1, *cubes.shape[2:])).reshape(b, n, -1)
        loss = F.cross_entropy(self.order_head(feats.reshape(b, -1)).float(), label)
        if self.rot_head is not None:
            loss = loss + F.binary_cross_entropy_with_logits(self.rot_head(feats).float(), rot)
        return loss
