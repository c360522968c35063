"""Probe of the copy shortcut: how far InfoNCE falls when only the head learns, on a frozen random encoder.

A random encoder knows nothing about tissue, so whatever InfoNCE a trained
GRU + predictor reaches on its features comes from what the geometry and the
augmentation leave to copy: target voxels that also lie in support cubes
(:func:`tcpc_data.shards.cubepaths.target_share`) and intensity statistics
that all cubes of a sample share. The probe encodes every cube once (eval
mode: a cube's feature depends on that cube alone, no batch statistics),
trains only the head on the cases of one part of the samples, and scores
InfoNCE on the held-out cases against the chance level log(batch size).
A geometry without a shortcut keeps the held-out loss near chance
(``docs/design.md``, Geometry).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from pathlib import Path

import numpy as np
import torch

from tcpc_train.tasks.contrastive import PredictiveHead, info_nce
from tcpc_train.input.loader import augment_intensity, augment_path, decode_path_sample, open_shards, raw_samples, \
    sample_rng
from tcpc_train.models.encoders import build_encoder
from tcpc_train.loops.pretraining import PretrainConfig


# A small head on fixed features: more steps and a higher rate than a whole network's pretraining.
_HEAD = PretrainConfig(width=0.25, steps=400, batch_size=32, lr=3e-3, cube_intensity=0.0)


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Settings of one probe run (returned with its result).

    The head is trained with the settings of the pretraining it stands in
    for: ``pretrain`` gives the encoder (``arch``, ``width``; frozen at its
    random init), ``steps``, ``batch_size`` (chance loss log(batch)), ``lr``
    (Adam at a constant rate: a small head needs no warm-up or decay),
    ``temperature``, ``cube_intensity`` and the seed (``runtime.seed``: the
    encoder, the augmentation, the split and the batches); its other fields
    do not apply.
    """

    pretrain: PretrainConfig = field(default=_HEAD, metadata={
        "help": "The pretraining settings the head is trained with (see the class docstring)."})
    held_out: float = field(default=0.3, metadata={"help": "Fraction of the cases whose samples score the head."})

    def validate(self) -> None:
        self.pretrain.validate()
        if not 0 < self.held_out < 1:
            raise ValueError(f"held_out must be in (0, 1), got {self.held_out}")


@torch.no_grad()
def _encode(encoder: torch.nn.Module, cubes: np.ndarray, chunk: int = 256) -> torch.Tensor:
    """(N, P+1, c, c, c) -> (N, P+1, D) features of a frozen encoder in eval mode."""
    n, k = cubes.shape[:2]
    flat = torch.from_numpy(np.ascontiguousarray(cubes, dtype=np.float32)).reshape(n * k, 1, *cubes.shape[2:])
    out = torch.cat([encoder.forward_features(flat[i:i + chunk]) for i in range(0, len(flat), chunk)])
    return out.reshape(n, k, -1)


def probe_arrays(cubes: np.ndarray, cases: list[str], config: ProbeConfig = ProbeConfig()) -> dict:
    """Train a head on frozen random features of path samples; score InfoNCE on held-out cases.

    Parameters
    ----------
    cubes : (N, P+1, c, c, c) float array
        Path samples, support in reading order, target last (already augmented).
    cases : list of N str
        The case of each sample; the split keeps a case's samples together.
    config : ProbeConfig

    Returns
    -------
    dict: ``chance`` (log batch size), ``train_loss`` (mean of the last 10 %
    of steps), ``held_out_loss`` (mean over held-out batches), ``drop`` (chance
    − held-out loss, nats), ``n_train``, ``n_held_out``.
    """
    config.validate()
    p = config.pretrain
    if len(cubes) != len(cases) or cubes.ndim != 5:
        raise ValueError(f"cubes must be (N, P+1, c, c, c) with one case each, got {cubes.shape} and {len(cases)}")
    rng = np.random.default_rng(p.runtime.seed)
    names = sorted(set(cases))
    held = set(rng.permutation(names)[:max(1, round(config.held_out * len(names)))].tolist())
    test = np.array([c in held for c in cases])
    b = p.batch_size
    if test.sum() < b or (~test).sum() < b:
        raise ValueError(f"need at least batch_size={b} samples on each side of the split, got "
                         f"{(~test).sum()} train and {test.sum()} held out ({len(names)} cases)")
    torch.manual_seed(p.runtime.seed)
    encoder = build_encoder(p.arch, p.width).eval()
    feats = _encode(encoder, cubes)
    train, hold = feats[torch.from_numpy(~test)], feats[torch.from_numpy(test)]
    head = PredictiveHead(feats.shape[-1])
    opt = torch.optim.Adam(head.parameters(), lr=p.lr)
    gen = torch.Generator().manual_seed(p.runtime.seed)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small head: handing its tiny ops to threads costs far more than it saves
    try:
        for _ in range(p.steps):
            batch = train[torch.randperm(len(train), generator=gen)[:b]]
            loss = info_nce(head(batch[:, :-1]), batch[:, -1], p.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        head.eval()
        with torch.no_grad():
            order = hold[torch.randperm(len(hold), generator=gen)]
            held_losses = [info_nce(head(x[:, :-1]), x[:, -1], p.temperature).item()
                           for x in order[:len(order) // b * b].split(b)]
    finally:
        torch.set_num_threads(threads)
    chance = math.log(b)
    held_loss = float(np.mean(held_losses))
    return {"chance": chance, "train_loss": float(np.mean(losses[-max(1, p.steps // 10):])),
            "held_out_loss": held_loss, "drop": chance - held_loss,
            "n_train": int((~test).sum()), "n_held_out": int(test.sum())}


def load_samples(shards: str | Path, config: ProbeConfig = ProbeConfig()) -> tuple[np.ndarray, list[str]]:
    """Every sample of a pretraining shard set, augmented as pretraining does (epoch 0).

    Returns (N, P+1, c, c, c) float32 cubes and the N case names (the key up
    to ``_c<candidate>``).
    """
    data = open_shards(shards)
    cubes, cases = [], []
    for url in data.urls:
        for raw in raw_samples(url):
            s = decode_path_sample(raw)
            rng = sample_rng(config.pretrain.runtime.seed, 0, s["key"])
            c, _ = augment_path(s["cubes"], s["path"], rng)
            cubes.append(augment_intensity(c, rng, config.pretrain.cube_intensity).astype(np.float32))
            cases.append(s["key"].rsplit("_c", 1)[0])
    return np.stack(cubes), cases


def probe(shards: str | Path, config: ProbeConfig = ProbeConfig()) -> dict:
    """Probe a pretraining shard set (see :func:`probe_arrays`); the result also holds the config."""
    cubes, cases = load_samples(shards, config)
    return {**probe_arrays(cubes, cases, config), "config": dataclasses.asdict(config),
            "shards": str(shards)}
