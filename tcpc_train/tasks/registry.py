"""The pretraining tasks as data: what each reads, what its head predicts, and its loss.

A :class:`Task` names the path kind of the shards it reads (a key of
``tcpc_data.shards.cubepaths.PATHS``), the ranks of a sample's path it accepts
(1: on a line, 2: in a plane, 3: solid), how a decoded sample becomes the
model's input (:attr:`Task.prepare`, run in loader workers), which batch
members the model takes, and how the model is built around an encoder. The
model's ``forward`` returns the loss. The pretraining loop
(:mod:`tcpc_train.loops.pretraining`) and the experiment's rows
(:mod:`tcpc_train.apps.experiment`) read only this registry.

Adding a task is one entry in ``TASKS``: e.g. a task on straight paths with
another head would be ``Task("mine", "My task", "straight", (1,), "...",
"...", my_model, path_cubes, ("cubes",))`` where ``my_model(encoder, cfg)``
returns an ``nn.Module`` with ``.encoder`` whose ``forward(cubes)`` is the
loss; ``tcpc pretrain --task mine`` and the experiment row ``mine`` then
exist. See ``docs/design.md`` (extension points).
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache, partial
from typing import Callable, Literal

import numpy as np
import torch

from tcpc_train.tasks.contrastive import ContrastivePredictiveCoding, chance_loss
from tcpc_train.tasks.proxy import BlockPuzzle, permutation_set, shuffle_block

# What a path of each rank looks like, for error messages.
_RANK_WORDS = {0: "a single point", 1: "straight", 2: "planar", 3: "not planar (a solid block)"}


@dataclasses.dataclass(frozen=True)
class Task:
    """One pretraining task.

    Attributes
    ----------
    name
        Key in ``TASKS`` and value of ``PretrainConfig.task``.
    label
        Row name in tables and plots.
    path_kind
        Path kind of the shards it reads (``tcpc_data.shards.cubepaths.PATHS``).
    support_ranks
        Accepted ranks of a sample's grid path (see :func:`path_rank`).
    predicts, loss
        What the head predicts and the loss, in words (docs, ``--help``).
    model
        ``model(encoder, cfg) -> nn.Module`` with ``.encoder``; ``forward(*inputs)`` is the loss.
    prepare
        ``prepare(cubes (P+1, c, c, c), path (P+1, 3), rng, cfg) -> dict`` of batch members.
    inputs
        Batch members passed to the model's ``forward``, in order.
    chance
        ``chance(batch_size)``: the loss of an untrained model, or None when there is no closed form.
    min_batch_size
        Smallest batch the loss is defined on (2 when the batch's other samples are the negatives).
    """

    name: str
    label: str
    path_kind: str
    support_ranks: tuple[int, ...]
    predicts: str
    loss: str
    model: Callable
    prepare: Callable
    inputs: tuple[str, ...]
    chance: Callable[[int], float] | None = None
    min_batch_size: int = 1

    def check_path(self, path: np.ndarray, where: str) -> None:
        """Raise ValueError naming ``where`` when ``path`` has a rank this task does not read."""
        rank = path_rank(path)
        if rank in self.support_ranks:
            return
        other = [t.name for t in TASKS.values() if rank in t.support_ranks]
        hint = f" (use --task {other[0]})" if other else ""
        raise ValueError(f"{where}: task {self.name} needs '{self.path_kind}' paths ({self.predicts}); "
                         f"this path is {_RANK_WORDS[rank]}{hint}")


def path_rank(path: np.ndarray) -> int:
    """1: a straight path; 2: a planar path such as a U; 3: a solid arrangement such as a block.

    The rank of the integer offsets from the first position, read exactly off
    their Gram matrix G (positive semi-definite): rank 3 iff det G > 0, rank
    >= 2 iff the sum of G's principal 2×2 minors is > 0. Python integers, no
    SVD: this runs for every sample in the loader.
    """
    d = path.astype(np.int64) - path[0]
    (a, b, c), (_, e, f), (_, _, i) = (d.T @ d).tolist()
    if a * (e * i - f * f) - b * (b * i - f * c) + c * (b * f - e * c):
        return 3
    if a * e - b * b + a * i - c * c + e * i - f * f:
        return 2
    return 1 if a + e + i else 0


def _contrastive(encoder: torch.nn.Module, cfg) -> torch.nn.Module:
    return ContrastivePredictiveCoding(encoder, cfg.temperature, cfg.own_negatives, cfg.all_rank_negatives)


def path_cubes(cubes: np.ndarray, path: np.ndarray, rng: np.random.Generator, cfg) -> dict:
    """The input of the predictive tasks: the augmented cubes as they are (draws nothing)."""
    return {"cubes": cubes}


_permutations = lru_cache(maxsize=4)(permutation_set)  # one set per loader worker, not per sample


def _puzzle(encoder: torch.nn.Module, cfg, rotate: bool) -> torch.nn.Module:
    return BlockPuzzle(encoder, cfg.n_permutations, rotate=rotate)


def _shuffled_block(cubes: np.ndarray, path: np.ndarray, rng: np.random.Generator, cfg, rotate: bool) -> dict:
    shuffled, label, rot = shuffle_block(cubes, path, _permutations(cfg.n_permutations), rotate, rng)
    return {"cubes": shuffled, "label": np.int64(label), "rot": rot}


_INFONCE = "InfoNCE over the batch's targets (tcpc_train.tasks.contrastive)"
_PUZZLE = "cross-entropy over the permutation set (tcpc_train.tasks.proxy)"

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("tcpc", "TCPC", "u", (2,), "the target cube's embedding from the U-shaped support around it", _INFONCE,
         _contrastive, path_cubes, ("cubes",), chance_loss, 2),
    Task("cpc", "3D CPC", "straight", (1,), "the target cube's embedding from the cubes on a line before it",
         _INFONCE, _contrastive, path_cubes, ("cubes",), chance_loss, 2),
    Task("rubik", "Rubik's cube", "block", (3,), "the permutation of a 2x2x2 block and each cube's rotation",
         _PUZZLE + " plus binary cross-entropy of the rotations", partial(_puzzle, rotate=True),
         partial(_shuffled_block, rotate=True), ("cubes", "label", "rot"), None),
    Task("jigsaw", "3D Jigsaw", "block", (3,), "the permutation of a 2x2x2 block", _PUZZLE,
         partial(_puzzle, rotate=False), partial(_shuffled_block, rotate=False), ("cubes", "label", "rot"), None),
)}

# The type of ``PretrainConfig.task``: the CLI offers exactly the registered names.
TaskName = Literal[tuple(TASKS)]
